#!/usr/bin/env bash
# Benchmark (measures, asserts nothing): the operator on the local control plane (e2e/cluster.sh),
# running as in e2e/demo.sh under its restricted ServiceAccount. It prints:
#   (a) time from `kubectl apply` of an ambient IstioInstall ({version: "1.24", profile: ambient})
#       to Ready=True, installedVersion 1.24.6, observedGeneration == generation; RUNS times, with a
#       delete (the operator's uninstall) and a wait until istio-system is empty in between;
#   (b) mean duration of a no-op reconcile (annotation changes on the Ready install), from the
#       operator's Prometheus histogram (sum/count deltas);
#   (c) the operator's VmRSS/VmHWM, idle, with the Ready install;
#   (d) the same after LOAD_NAMESPACES namespaces holding LOAD_CONFIGMAPS unrelated ConfigMaps
#       and LOAD_PODS unrelated Pods in all (the pods are scheduled on the kwok nodes, whose pod
#       capacity is raised for it), and (b) once more under that load.
#
#   e2e/bench-operator.sh            # E2E_ROOT=/var/tmp/ii-bench: its own cluster, on free ports
#
# Its own E2E_ROOT (default /var/tmp/ii-bench, with bin/ linked to the default e2e root's
# binaries) keeps it clear of a cluster someone else runs. It brings the cluster up, and stops
# the operator and takes the cluster down at the end (KEEP_CLUSTER=1 leaves the cluster up).
# Knobs: RUNS (5), NOOPS (40), LOAD_NAMESPACES (20), LOAD_CONFIGMAPS (10000), LOAD_PODS (2000),
# SETTLE (30 s after the load), OPERATOR (the release binary).
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
root=$(cd "$here/.." && pwd)
# shellcheck source=./versions.env source-path=SCRIPTDIR
. "$here/versions.env"
export E2E_ROOT=${E2E_ROOT:-/var/tmp/ii-bench}
DEFAULT_BIN=/var/tmp/istio-install-operator-e2e/bin
OPERATOR=${OPERATOR:-${CARGO_TARGET_DIR:-$root/target}/release/istio-install-operator}
RUNS=${RUNS:-5}
NOOPS=${NOOPS:-40}
LOAD_NAMESPACES=${LOAD_NAMESPACES:-20}
LOAD_CONFIGMAPS=${LOAD_CONFIGMAPS:-10000}
LOAD_PODS=${LOAD_PODS:-2000}
SETTLE=${SETTLE:-30}
KUBECTL=$E2E_ROOT/bin/$K8S_VERSION/kubectl
RUN=$E2E_ROOT/run
NAME=bench

say() { printf '[bench %s] %s\n' "$(date -u +%H:%M:%S)" "$*" >&2; }
result() { printf '%s\n' "$*" | tee -a "$E2E_ROOT/results.txt"; }
now_ms() { date +%s%3N; }

mkdir -p "$E2E_ROOT"
if [ ! -e "$E2E_ROOT/bin" ] && [ "$E2E_ROOT" != /var/tmp/istio-install-operator-e2e ]; then
  ln -sfn "$DEFAULT_BIN" "$E2E_ROOT/bin"
fi
[ -x "$KUBECTL" ] || { echo "no $KUBECTL: run 'make e2e-binaries'" >&2; exit 1; }
[ -x "$OPERATOR" ] || { echo "no $OPERATOR: cargo build --release -p istio-install-operator" >&2; exit 1; }
# A private copy: a rebuild of target/ during the run cannot change what is measured.
cp "$OPERATOR" "$E2E_ROOT/istio-install-operator"
OP_BIN=$E2E_ROOT/istio-install-operator

: >"$E2E_ROOT/results.txt"
result "machine: $(nproc) cores, $(sed -n 's/^model name[[:space:]]*: //p' /proc/cpuinfo | head -1), $(free -g | awk '/^Mem:/{print $2}') GiB; $(date -u +%Y-%m-%dT%H:%MZ)"
result "operator: $("$OP_BIN" --version), commit $(git -C "$root" rev-parse --short HEAD 2>/dev/null || echo '?')"
result "load before: $(cut -d' ' -f1-3 /proc/loadavg)"

op=""
cleanup() {
  if [ -n "$op" ] && kill -0 "$op" 2>/dev/null; then
    kill "$op" 2>/dev/null || true
    wait "$op" 2>/dev/null || true
  fi
  if [ -z "${KEEP_CLUSTER:-}" ]; then "$here/cluster.sh" down || true; fi
}
trap cleanup EXIT

"$here/cluster.sh" up
export KUBECONFIG=$RUN/admin.kubeconfig
k() { "$KUBECTL" --request-timeout=30s "$@"; }

# Room for the load pods on the 3 kwok nodes (kwok keeps a node's own capacity).
for n in $(k get nodes -l type=kwok -o name); do
  k patch "$n" --subresource=status --type=merge \
    -p '{"status":{"capacity":{"pods":"2000"},"allocatable":{"pods":"2000"}}}' >/dev/null
done

operator_kubeconfig=$("$here/operator-env.sh")
port=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')
log=$RUN/logs/operator.log
KUBECONFIG=$operator_kubeconfig POD_NAMESPACE=istio-install-operator \
  "$OP_BIN" run --leader-elect=false --metrics-addr "127.0.0.1:$port" >"$log" 2>&1 &
op=$!
say "operator pid $op, metrics 127.0.0.1:$port, log $log"
for _ in $(seq 100); do
  curl -fsS -m 1 "http://127.0.0.1:$port/readyz" >/dev/null 2>&1 && break
  kill -0 "$op" || { tail -20 "$log"; exit 1; }
  sleep 0.1
done

metric() { # metric <name>: its value from /metrics (0 when absent)
  curl -fsS -m 5 "http://127.0.0.1:$port/metrics" | awk -v m="$1" '$1 == m { v = $2 } END { print v + 0 }'
}
rss() { awk '/^VmRSS|^VmHWM/ { printf "%s %.1f MiB  ", $1, $2 / 1024 }' "/proc/$op/status"; }
rss_kib() { awk '/^VmRSS/ { print $2 }' "/proc/$op/status"; }

ready_line() {
  k get ii "$NAME" -o jsonpath='{.status.conditions[?(@.type=="Ready")].status} {.status.installedVersion} {.status.observedGeneration} {.metadata.generation}' 2>/dev/null || true
}
is_ready() {
  local ready installed og gen
  read -r ready installed og gen <<<"$(ready_line)"
  [ "$ready" = True ] && [ "$installed" = 1.24.6 ] && [ -n "$og" ] && [ "$og" = "$gen" ]
}
wait_ready() { # wait_ready <timeout s>: polls every 0.1 s
  local end=$(($(date +%s) + $1))
  while [ "$(date +%s)" -lt "$end" ]; do
    is_ready && return 0
    kill -0 "$op" || { tail -20 "$log"; exit 1; }
    sleep 0.1
  done
  say "not Ready after $1 s: $(ready_line)"
  tail -30 "$log" >&2
  return 1
}
istio_system_empty() {
  [ -z "$(k -n istio-system get deploy,daemonset,pods -o name 2>/dev/null)" ]
}
install_yaml() {
  cat <<EOF
apiVersion: istioinstall.io/v1alpha1
kind: IstioInstall
metadata:
  name: $NAME
spec:
  version: "1.24"
  profile: ambient
EOF
}

# ---------------------------------------------------------------------------------------------
# (a) apply -> Ready
times=()
for i in $(seq "$RUNS"); do
  t0=$(now_ms)
  install_yaml | k apply -f - >/dev/null
  wait_ready 300
  t=$(($(now_ms) - t0))
  times+=("$t")
  say "run $i: Ready on 1.24.6 after $t ms ($(k -n istio-system get pods --no-headers 2>/dev/null | wc -l) pods in istio-system)"
  if [ "$i" -lt "$RUNS" ]; then
    t1=$(now_ms)
    k delete ii "$NAME" --wait=true --timeout=300s >/dev/null
    for _ in $(seq 600); do istio_system_empty && break; sleep 0.1; done
    say "  uninstalled in $(($(now_ms) - t1)) ms"
    sleep 2
  fi
done
median() { sort -n | awk '{a[NR]=$1} END {print (NR%2 ? a[(NR+1)/2] : (a[NR/2]+a[NR/2+1])/2)}'; }
result "(a) apply -> Ready (ms, $RUNS runs): ${times[*]}; median $(printf '%s\n' "${times[@]}" | median) ms; run 1 (fresh cluster: creates the Istio CRDs, waits for them) ${times[0]} ms, median of the re-installs (CRDs kept by the uninstall) $(printf '%s\n' "${times[@]:1}" | median) ms"

# ---------------------------------------------------------------------------------------------
# (b) no-op reconciles
# GET and LIST requests the API server has served, on the kinds the operator reads (so not
# istioinstalls, which the annotating kubectl reads, nor kwok's leases, pods and nodes).
api_reads() {
  k get --raw /metrics | awk '/^apiserver_request_total\{/ && /verb="(GET|LIST)"/ && !/[{,]resource=""/ &&
    !/[{,]resource="(istioinstalls|leases|pods|nodes)"/ { s += $NF } END { print s + 0 }'
}
buckets() { # the reconcile-duration histogram's cumulative buckets: "le count" lines
  curl -fsS -m 5 "http://127.0.0.1:$port/metrics" |
    sed -n 's/^istio_install_operator_reconcile_duration_seconds_bucket{le="\([^"]*\)"} \([0-9.e+]*\)$/\1 \2/p'
}
median_between() { # median_between <before> <after>: median of the reconciles in between, from
  # the bucket deltas, interpolated linearly inside the bucket that holds it (an estimate)
  python3 - "$1" "$2" <<'PY'
import sys
def parse(text):
    out = []
    for line in text.splitlines():
        le, count = line.split()
        out.append((float("inf") if le == "+Inf" else float(le), float(count)))
    return out
before, after = parse(sys.argv[1]), parse(sys.argv[2])
delta = [(le, y - x) for (le, x), (_, y) in zip(before, after)]
n = delta[-1][1] if delta else 0
if n == 0:
    print("n/a")
    sys.exit()
under_5ms = next((c for le, c in delta if le >= 0.005), 0)
lo, prev = 0.0, 0.0
for le, c in delta:
    if c >= n / 2:
        frac = (n / 2 - prev) / (c - prev) if c > prev else 1.0
        print(f"{(lo + (le - lo) * frac) * 1000:.2f} ms (estimated from the histogram; {int(under_5ms)}/{int(n)} under 5 ms)")
        break
    lo, prev = le, c
PY
}
noop() { # noop <label>
  sleep 5 # let the install's own follow-up reconciles finish
  local c0 s0 r0 w0 c1 s1 r1 w1 q0 q1 h0 h1
  h0=$(buckets)
  q0=$(metric istio_install_operator_api_read_requests_total)
  c0=$(metric istio_install_operator_reconcile_duration_seconds_count)
  s0=$(metric istio_install_operator_reconcile_duration_seconds_sum)
  r0=$(metric istio_install_operator_reconciles_total)
  w0=$(metric istio_install_operator_write_requests_total)
  a0=$(api_reads)
  for j in $(seq "$NOOPS"); do
    k annotate ii "$NAME" --overwrite "bench.istioinstall.io/poke=$1-$j" >/dev/null
    sleep 0.25
  done
  sleep 3
  h1=$(buckets)
  q1=$(metric istio_install_operator_api_read_requests_total)
  c1=$(metric istio_install_operator_reconcile_duration_seconds_count)
  s1=$(metric istio_install_operator_reconcile_duration_seconds_sum)
  r1=$(metric istio_install_operator_reconciles_total)
  w1=$(metric istio_install_operator_write_requests_total)
  a1=$(api_reads)
  result "(b) no-op reconcile, $1: $NOOPS annotation changes -> $(awk -v a="$r0" -v b="$r1" 'BEGIN{print b-a}') reconciles, mean $(awk -v c0="$c0" -v c1="$c1" -v s0="$s0" -v s1="$s1" 'BEGIN { if (c1 > c0) printf "%.2f", (s1-s0)/(c1-c0)*1000; else print "n/a" }') ms (histogram sum/count deltas), write requests +$(awk -v a="$w0" -v b="$w1" 'BEGIN{print b-a}'); still Ready: $(is_ready && echo yes || echo NO); API server GET+LIST requests (all clients, without istioinstalls, leases, pods, nodes) per reconcile: $(awk -v a="$a0" -v b="$a1" -v r0="$r0" -v r1="$r1" 'BEGIN { if (r1 > r0) printf "%.1f", (b-a)/(r1-r0); else print "n/a" }'); the operator's own read requests (api_read_requests_total) +$(awk -v a="$q0" -v b="$q1" 'BEGIN{print b-a}'); median $(median_between "$h0" "$h1")"
}
noop idle

# ---------------------------------------------------------------------------------------------
# (c) RSS idle
sleep 10
k annotate ii "$NAME" --overwrite bench.istioinstall.io/poke=rss-idle >/dev/null
sleep 3
rss_idle=$(rss_kib)
result "(c) operator memory, idle with a Ready ambient install: $(rss)"

# ---------------------------------------------------------------------------------------------
# (d) unrelated load
gen=$E2E_ROOT/load
rm -rf "$gen"
mkdir -p "$gen"
python3 - "$gen" "$LOAD_NAMESPACES" "$LOAD_CONFIGMAPS" "$LOAD_PODS" <<'EOF'
import sys
out, nns, ncm, npod = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4])
payload = "x" * 1024  # 1 KiB a ConfigMap: a cache of them would show
for n in range(nns):
    ns = f"bench-load-{n:02d}"
    with open(f"{out}/namespaces.yaml", "a") as f:
        f.write(f"---\napiVersion: v1\nkind: Namespace\nmetadata:\n  name: {ns}\n")
    with open(f"{out}/{ns}-objects.yaml", "w") as f:
        for i in range(n, ncm, nns):
            f.write(f"---\napiVersion: v1\nkind: ConfigMap\nmetadata:\n  name: cm-{i:05d}\n  namespace: {ns}\n"
                    f"  labels:\n    app: unrelated\ndata:\n  payload: {payload}\n")
        for i in range(n, npod, nns):
            f.write(f"---\napiVersion: v1\nkind: Pod\nmetadata:\n  name: pod-{i:05d}\n  namespace: {ns}\n"
                    f"  labels:\n    app: unrelated\nspec:\n  containers:\n  - name: app\n"
                    f"    image: registry.invalid/unrelated:1\n"
                    f"  tolerations:\n  - operator: Exists\n")
EOF
t0=$(now_ms)
k apply --server-side -f "$gen/namespaces.yaml" >/dev/null
printf '%s\0' "$gen"/*-objects.yaml | xargs -0 -P 4 -I{} "$KUBECTL" --request-timeout=60s apply --server-side -f {} -o name >/dev/null
say "created $LOAD_CONFIGMAPS ConfigMaps and $LOAD_PODS Pods in $LOAD_NAMESPACES namespaces in $(($(now_ms) - t0)) ms"
for _ in $(seq 300); do
  running=$(k get pods -A -l app=unrelated --field-selector=status.phase=Running --no-headers 2>/dev/null | wc -l)
  [ "$running" -ge "$LOAD_PODS" ] && break
  sleep 1
done
cms=$(k get configmaps -A -l app=unrelated --no-headers | wc -l)
result "(d) load: $cms unrelated ConfigMaps, $running/$LOAD_PODS unrelated Pods Running, $LOAD_NAMESPACES namespaces (created and running after $(($(now_ms) - t0)) ms)"
sleep "$SETTLE"
k annotate ii "$NAME" --overwrite bench.istioinstall.io/poke=rss-load >/dev/null
sleep 3
rss_load=$(rss_kib)
result "(d) operator memory, after the load + ${SETTLE} s + a reconcile: $(rss); VmRSS vs (c): $(awk -v a="$rss_idle" -v b="$rss_load" 'BEGIN { printf "%+.1f%%", (b-a)/a*100 }')"
noop "under load"
result "(d) operator memory, after the no-op reconciles under load: $(rss)"
result "load after: $(cut -d' ' -f1-3 /proc/loadavg)"
result "operator log lines: $(wc -l <"$log"), errors/warnings: $(grep -ciE '"?level"?[=:]"?(error|warn)|\b(ERROR|WARN)\b' "$log" || true)"
