#!/usr/bin/env bash
# Holds `render` against the reference digests of upstream Istio installs:
# for each <case>.json, renders its `spec` and runs the reference's compare.py on the output.
# usage: e2e/parity.sh OPERATOR_BINARY REFERENCE_DIR [case ...]
set -euo pipefail
bin=$1 ref=$2; shift 2
[ -x "$bin" ] || { echo "parity: no operator binary at $bin (run make build)" >&2; exit 2; }
[ -f "$ref/compare.py" ] || { echo "parity: no compare.py in $ref" >&2; exit 2; }
work=$(mktemp -d); trap 'rm -rf "$work"' EXIT
cases=("$@")
[ ${#cases[@]} -gt 0 ] || cases=($(cd "$ref" && ls *.json | sed 's/\.json$//'))
passed=0 failed=0
for c in "${cases[@]}"; do
  python3 -c 'import json,sys; print(json.dumps(json.load(open(sys.argv[1]))["spec"]))' "$ref/$c.json" > "$work/$c.spec.json"
  if ! "$bin" render -f "$work/$c.spec.json" > "$work/$c.yaml" 2> "$work/$c.err"; then
    echo "parity $c: render failed: $(cat "$work/$c.err")"; failed=$((failed+1)); continue
  fi
  if python3 "$ref/compare.py" "$ref/$c.json" "$work/$c.yaml" --verbose > "$work/$c.out"; then
    echo "parity $c: $(tail -1 "$work/$c.out")"; passed=$((passed+1))
  else
    cat "$work/$c.out"; echo "parity $c: FAILED"; failed=$((failed+1))
  fi
done
echo "parity: $passed passed, $failed failed"
[ "$failed" -eq 0 ]
