#!/usr/bin/env bash
# Benchmark (measures, asserts nothing): `istio-install-operator render` as a whole process, the
# way a user or CI runs it: 1.24.6 ambient to /dev/null, N runs, median/min/max wall time.
#
#   e2e/bench-render-cli.sh                 # N=50 runs of the release binary
#   N=100 e2e/bench-render-cli.sh
#   OPERATOR=/path/to/istio-install-operator e2e/bench-render-cli.sh
#
# Optional comparison with the upstream Helm engine (nothing of it is in this repo): set
# HELM_RENDER to a program `render CHARTDIR VALUES RELEASE NAMESPACE` built on
# helm.sh/helm/v3/pkg/engine (what `helm template` runs), and UPSTREAM_CHARTS to the
# `manifests/charts` directory of the Istio 1.24.6 tag. The four charts of the ambient profile
# (base, istiod, istio-cni, ztunnel) are then rendered one process each, in sequence, as a
# Helm-based install does:
#
#   HELM_RENDER=/tmp/node-helm/render UPSTREAM_CHARTS=/var/tmp/ii-bench/charts-1.24.6/manifests/charts \
#     e2e/bench-render-cli.sh
#
# Uses hyperfine when installed (`apt-get install -y hyperfine`), else (or with NO_HYPERFINE=1) a
# python3 timing loop.
# Build first: `cargo build --release -p istio-install-operator`.
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
root=$(cd "$here/.." && pwd)
OPERATOR=${OPERATOR:-${CARGO_TARGET_DIR:-$root/target}/release/istio-install-operator}
N=${N:-50}
WARMUP=${WARMUP:-5}
[ -x "$OPERATOR" ] || { echo "no $OPERATOR: cargo build --release -p istio-install-operator" >&2; exit 1; }

echo "machine: $(nproc) cores, $(sed -n 's/^model name[[:space:]]*: //p' /proc/cpuinfo | head -1), $(date -u +%Y-%m-%dT%H:%MZ)"
echo "load before: $(cut -d' ' -f1-3 /proc/loadavg)"
echo "operator: $OPERATOR ($("$OPERATOR" --version))"
echo "objects rendered: $("$OPERATOR" render --version 1.24.6 --profile ambient | grep -c '^kind:')"

cmds=("$OPERATOR render --version 1.24.6 --profile ambient")
names=("operator-render-1.24.6-ambient")
if [ -n "${HELM_RENDER:-}" ]; then
  : "${UPSTREAM_CHARTS:?set UPSTREAM_CHARTS to the manifests/charts dir of the istio 1.24.6 tag}"
  vals=$(mktemp)
  trap 'rm -f "$vals"' EXIT
  printf 'profile: ambient\n' >"$vals"
  h="for c in base istio-control/istio-discovery istio-cni ztunnel; do $HELM_RENDER $UPSTREAM_CHARTS/\$c $vals istio istio-system || exit 1; done"
  echo "helm engine objects rendered: $(bash -c "$h" | grep -c '^kind:')"
  cmds+=("$h")
  names+=("helm-engine-4-charts-ambient")
fi

if [ -z "${NO_HYPERFINE:-}" ] && command -v hyperfine >/dev/null; then
  json=${BENCH_JSON:-$(mktemp)}
  # hyperfine runs each command through sh and subtracts the measured shell start-up time.
  args=(--warmup "$WARMUP" --runs "$N" --output null --export-json "$json")
  for i in "${!cmds[@]}"; do args+=(-n "${names[$i]}" "${cmds[$i]}"); done
  hyperfine "${args[@]}"
  # hyperfine prints mean ± σ and min/max; the median is in its JSON.
  python3 - "$json" <<'EOF2'
import json, sys
for r in json.load(open(sys.argv[1]))["results"]:
    print(f"{r['command']}: median {r['median']*1e3:.2f} ms, min {r['min']*1e3:.2f} ms, "
          f"max {r['max']*1e3:.2f} ms, mean {r['mean']*1e3:.2f} ms over {len(r['times'])} runs")
EOF2
  [ -n "${BENCH_JSON:-}" ] || rm -f "$json"
else
  for i in "${!cmds[@]}"; do
    python3 - "$N" "$WARMUP" "${names[$i]}" "${cmds[$i]}" <<'EOF'
import statistics, subprocess, sys, time
n, warm, name, cmd = int(sys.argv[1]), int(sys.argv[2]), sys.argv[3], sys.argv[4]
run = lambda: subprocess.run(["bash", "-c", cmd], stdout=subprocess.DEVNULL, check=True)
for _ in range(warm):
    run()
ts = []
for _ in range(n):
    t = time.perf_counter(); run(); ts.append(time.perf_counter() - t)
print(f"{name}: median {statistics.median(ts)*1e3:.2f} ms, min {min(ts)*1e3:.2f} ms, "
      f"max {max(ts)*1e3:.2f} ms over {n} runs (includes a bash start)")
EOF
  done
fi
echo "load after: $(cut -d' ' -f1-3 /proc/loadavg)"
