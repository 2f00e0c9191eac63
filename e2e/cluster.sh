#!/usr/bin/env bash
# Local Kubernetes control plane for the e2e tests: etcd, kube-apiserver, kube-controller-manager,
# kube-scheduler and kwok (fake nodes/pods) as plain processes on 127.0.0.1, on free ports.
#
#   e2e/cluster.sh up       start (no-op when already healthy; a stale run is torn down first)
#   e2e/cluster.sh down     stop exactly the processes `up` started, remove the run state
#   e2e/cluster.sh status   component PIDs, ports and health (exit 1 when not healthy)
#   e2e/cluster.sh logs     tails of every component log (current run, else the last one)
#   e2e/cluster.sh env      prints `export KUBECONFIG=...`
#
# Binaries come from e2e/build-binaries.sh ($E2E_ROOT/bin/<k8s version>). Run state lives in
# $E2E_ROOT/run (pki, kubeconfigs, pids, logs); etcd data in /dev/shm. `down` keeps a copy of the
# logs in $E2E_ROOT/last-logs. Port overrides (mainly for tests of this script): E2E_ETCD_PORT,
# E2E_ETCD_PEER_PORT, E2E_API_PORT, E2E_KCM_PORT, E2E_SCHED_PORT. E2E_NODES sets the number of
# fake nodes (default 3).
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
# shellcheck source=./versions.env source-path=SCRIPTDIR
. "$here/versions.env"
E2E_ROOT=${E2E_ROOT:-/var/tmp/istio-install-operator-e2e}
BIN=$E2E_ROOT/bin/$K8S_VERSION
RUN=$E2E_ROOT/run
LOGS=$RUN/logs
PKI=$RUN/pki
KUBECTL=$BIN/kubectl
NODES=${E2E_NODES:-3}
# Start order; `down` stops them in reverse.
COMPONENTS=(etcd kube-apiserver kube-controller-manager kube-scheduler kwok)
STARTED=()

say() { printf '[cluster %s] %s\n' "$(date +%H:%M:%S)" "$*" >&2; }
now_ms() { date +%s%3N; }

# ---------------------------------------------------------------------------------------------
# processes

pid_of() { cat "$RUN/$1.pid" 2>/dev/null || true; }

# alive <pid>: the process exists and is not a zombie.
alive() {
  local p=$1 st
  [ -n "$p" ] && [ -r "/proc/$p/stat" ] || return 1
  st=$(sed 's/.*) //' "/proc/$p/stat" 2>/dev/null | cut -d' ' -f1) || return 1
  [ -n "$st" ] && [ "$st" != Z ]
}

# ours <name> <pid>: the pid still runs the binary we started for <name> (guards against PID reuse).
ours() {
  local want exe
  want=$(cat "$RUN/$1.exe" 2>/dev/null) || return 1
  exe=$(readlink "/proc/$2/exe" 2>/dev/null) || return 1
  [ "${exe% (deleted)}" = "$want" ]
}

# start <name> <binary> [args...]: runs detached in its own session, output to $LOGS/<name>.log.
# The child writes its own PID before exec'ing, so the PID file is exact whether or not setsid forks.
start() {
  local n=$1 exe
  shift
  exe=$(readlink -f "$1")
  echo "$exe" >"$RUN/$n.exe"
  rm -f "$RUN/$n.pid"
  # fd 9 holds the cluster lock: the components must not inherit it.
  # shellcheck disable=SC2016 # $$ and $0 are expanded by the child shell on purpose
  setsid bash -c 'echo $$ >"$0.tmp" && mv "$0.tmp" "$0" && exec "$@"' "$RUN/$n.pid" "$@" \
    </dev/null >"$LOGS/$n.log" 2>&1 9>&- &
  local i
  for i in $(seq 100); do
    [ -s "$RUN/$n.pid" ] && break
    sleep 0.02
  done
  [ -s "$RUN/$n.pid" ] || fail "$n" "did not start"
  STARTED+=("$n")
}

log_tail() {
  local f=$LOGS/$1.log
  [ -f "$f" ] || f=$E2E_ROOT/last-logs/$1.log
  [ -f "$f" ] || return 0
  echo "----- last ${2:-40} lines of $1.log -----" >&2
  tail -n "${2:-40}" "$f" >&2
}

# fail <component> <message>: print its log tail, tear down what was started, exit 1.
fail() {
  trap - INT TERM
  say "FAILED: $1: $2"
  log_tail "$1" 60
  say "tearing down"
  do_down >/dev/null 2>&1 || true
  say "component logs kept in $E2E_ROOT/last-logs"
  exit 1
}

# every started component must stay alive while we wait; a death fails `up` at once.
check_started() {
  local n
  for n in "${STARTED[@]}"; do
    alive "$(pid_of "$n")" || fail "$n" "process exited (see log)"
  done
}

# wait_for <component> <timeout-s> <description> <command...>
wait_for() {
  local n=$1 t=$2 what=$3 deadline
  shift 3
  deadline=$(($(now_ms) + t * 1000))
  while :; do
    check_started
    if "$@" >/dev/null 2>&1; then return 0; fi
    [ "$(now_ms)" -lt "$deadline" ] || fail "$n" "$what not reached after ${t}s"
    sleep 0.2
  done
}

# ---------------------------------------------------------------------------------------------
# ports

used_ports() { ss -Htan | awk '{n=split($4,a,":"); print a[n]}' | sort -u; }

# pick_ports <n>: n distinct ports below the ephemeral range that nothing uses right now.
pick_ports() {
  local want=$1 used p picked=()
  used=" $(used_ports | tr '\n' ' ') "
  while [ ${#picked[@]} -lt "$want" ]; do
    p=$((20000 + RANDOM % 12000))
    case "$used ${picked[*]} " in *" $p "*) continue ;; esac
    picked+=("$p")
  done
  echo "${picked[@]}"
}

# ---------------------------------------------------------------------------------------------
# pki and kubeconfigs

# ECDSA P-256 keys: generating them is ~40x faster than RSA 2048 (about 1.5 s saved per `up`);
# Go, kubectl and rustls (kube-rs) all accept them, as does the ServiceAccount token signer (ES256).
make_pki() {
  mkdir -p "$PKI"
  (
    cd "$PKI"
    key() { openssl genpkey -algorithm EC -pkeyopt ec_paramgen_curve:P-256 -out "$1" 2>/dev/null; }
    key ca.key
    openssl req -x509 -new -nodes -key ca.key -sha256 -days 3650 -subj "/CN=istio-install-e2e-ca" \
      -addext "basicConstraints=critical,CA:TRUE" \
      -addext "keyUsage=critical,keyCertSign,cRLSign,digitalSignature" -out ca.crt 2>/dev/null
    sign() { # sign <name> <subject> <extensions>
      key "$1.key"
      openssl req -new -key "$1.key" -subj "$2" -out "$1.csr"
      printf '%s\n' "$3" >"$1.ext"
      openssl x509 -req -in "$1.csr" -CA ca.crt -CAkey ca.key -CAcreateserial -days 3650 -sha256 \
        -extfile "$1.ext" -out "$1.crt" 2>/dev/null
      rm -f "$1.csr" "$1.ext"
    }
    sign apiserver "/CN=kube-apiserver" "basicConstraints=critical,CA:FALSE
keyUsage=critical,digitalSignature
extendedKeyUsage=serverAuth
subjectAltName=DNS:localhost,DNS:kubernetes,DNS:kubernetes.default,DNS:kubernetes.default.svc,DNS:kubernetes.default.svc.cluster.local,IP:127.0.0.1,IP:10.96.0.1"
    local client="basicConstraints=critical,CA:FALSE
keyUsage=critical,digitalSignature
extendedKeyUsage=clientAuth"
    sign admin "/O=system:masters/CN=e2e-admin" "$client"
    sign kube-controller-manager "/CN=system:kube-controller-manager" "$client"
    sign kube-scheduler "/CN=system:kube-scheduler" "$client"
    sign kwok "/O=system:masters/CN=kwok-controller" "$client"
    key sa.key
    openssl pkey -in sa.key -pubout -out sa.pub 2>/dev/null
    chmod 600 ./*.key
  )
}

b64() { base64 -w0 <"$1"; }

# kubeconfig <file> <user> <pki name>: cluster `e2e`, certs embedded.
kubeconfig() {
  cat >"$1" <<EOF
apiVersion: v1
kind: Config
clusters:
- name: e2e
  cluster:
    server: https://127.0.0.1:$API_PORT
    certificate-authority-data: $(b64 "$PKI/ca.crt")
users:
- name: $2
  user:
    client-certificate-data: $(b64 "$PKI/$3.crt")
    client-key-data: $(b64 "$PKI/$3.key")
contexts:
- name: e2e
  context:
    cluster: e2e
    user: $2
current-context: e2e
EOF
  chmod 600 "$1"
}

# ---------------------------------------------------------------------------------------------
# kwok configuration: the "fast" Stages from the kwok module source. No KwokConfiguration in the
# file: kwok v0.8.0 does not default one read from a file (playStageParallelism stays 0 and kwok
# exits), so the options are passed as flags and kwok builds its own defaulted configuration.

kwok_stage_dir() {
  local d
  for d in "$BIN/kwok-stages" "$(go env GOMODCACHE 2>/dev/null)/sigs.k8s.io/kwok@$KWOK_VERSION/kustomize/stage"; do
    [ -f "$d/node/fast/node-initialize.yaml" ] && { echo "$d"; return 0; }
  done
  return 1
}

make_kwok_config() {
  local src f
  src=$(kwok_stage_dir) || fail kwok "kwok Stage files not found (run e2e/build-binaries.sh kwok)"
  {
    for f in node/fast/node-initialize.yaml node/heartbeat-with-lease/node-heartbeat-with-lease.yaml \
      pod/fast/pod-ready.yaml pod/fast/pod-complete.yaml pod/fast/pod-delete.yaml; do
      echo '---'
      cat "$src/$f"
    done
  } >"$RUN/kwok.yaml"
}

node_manifests() {
  local i
  for i in $(seq 0 $((NODES - 1))); do
    cat <<EOF
---
apiVersion: v1
kind: Node
metadata:
  name: kwok-node-$i
  annotations:
    kwok.x-k8s.io/node: fake
    node.alpha.kubernetes.io/ttl: "0"
  labels:
    kubernetes.io/hostname: kwok-node-$i
    kubernetes.io/os: linux
    kubernetes.io/arch: amd64
    type: kwok
status:
  allocatable: {cpu: "32", memory: 256Gi, pods: "110"}
  capacity: {cpu: "32", memory: 256Gi, pods: "110"}
EOF
  done
}

# ---------------------------------------------------------------------------------------------
# readiness probes

k() { "$KUBECTL" --kubeconfig="$RUN/admin.kubeconfig" --request-timeout=5s "$@"; }
etcd_ready() { curl -fsS -m 1 "http://127.0.0.1:$ETCD_PORT/health" | grep -q '"health":"true"'; }
apiserver_ready() { curl -fsS -m 2 --cacert "$PKI/ca.crt" "https://127.0.0.1:$API_PORT/readyz" | grep -q '^ok$'; }
healthz() { curl -fsSk -m 2 "https://127.0.0.1:$1/healthz" | grep -q '^ok$'; }
nodes_ready() {
  local n
  n=$(k get nodes -l type=kwok -o jsonpath='{range .items[*]}{.status.conditions[?(@.type=="Ready")].status}{"\n"}{end}' | grep -c '^True$')
  [ "$n" -eq "$NODES" ]
}
nodes_untainted() { [ -z "$(k get nodes -l type=kwok -o jsonpath='{.items[*].spec.taints}')" ]; }
default_sa() { k -n default get serviceaccount default; }

# healthy: every recorded component is alive and ours, and the apiserver is ready.
healthy() {
  [ -f "$RUN/cluster.env" ] || return 1
  # shellcheck disable=SC1091
  . "$RUN/cluster.env"
  local n p
  for n in "${COMPONENTS[@]}"; do
    p=$(pid_of "$n")
    alive "$p" && ours "$n" "$p" || return 1
  done
  apiserver_ready
}

usage_hint() {
  echo "cluster is up: kube-apiserver https://127.0.0.1:$API_PORT, $NODES kwok nodes"
  echo "  export KUBECONFIG=$RUN/admin.kubeconfig"
  echo "  kubectl: $KUBECTL"
}

# ---------------------------------------------------------------------------------------------
# commands

do_up() {
  local t0 t1
  t0=$(now_ms)
  if healthy; then
    say "already running and healthy"
    usage_hint
    return 0
  fi
  if [ -e "$RUN" ]; then
    say "stale run state in $RUN: tearing it down first"
    do_down
  fi
  local b
  for b in etcd kube-apiserver kube-controller-manager kube-scheduler kwok kubectl; do
    [ -x "$BIN/$b" ] || { say "missing $BIN/$b: run 'make e2e-binaries' (e2e/build-binaries.sh all)"; exit 1; }
  done
  trap 'fail up "interrupted"' INT TERM
  mkdir -p "$LOGS"
  local ports
  read -r -a ports <<<"$(pick_ports 5)"
  ETCD_PORT=${E2E_ETCD_PORT:-${ports[0]}}
  ETCD_PEER_PORT=${E2E_ETCD_PEER_PORT:-${ports[1]}}
  API_PORT=${E2E_API_PORT:-${ports[2]}}
  KCM_PORT=${E2E_KCM_PORT:-${ports[3]}}
  SCHED_PORT=${E2E_SCHED_PORT:-${ports[4]}}
  ETCD_DATA=$(mktemp -d /dev/shm/istio-install-operator-e2e-etcd.XXXXXX)
  cat >"$RUN/cluster.env" <<EOF
ETCD_PORT=$ETCD_PORT
ETCD_PEER_PORT=$ETCD_PEER_PORT
API_PORT=$API_PORT
KCM_PORT=$KCM_PORT
SCHED_PORT=$SCHED_PORT
ETCD_DATA=$ETCD_DATA
NODES=$NODES
KUBECONFIG=$RUN/admin.kubeconfig
KUBECTL=$KUBECTL
EOF
  say "ports: etcd $ETCD_PORT/$ETCD_PEER_PORT, apiserver $API_PORT, kcm $KCM_PORT, scheduler $SCHED_PORT"

  make_pki
  kubeconfig "$RUN/admin.kubeconfig" e2e-admin admin
  kubeconfig "$RUN/kcm.kubeconfig" system:kube-controller-manager kube-controller-manager
  kubeconfig "$RUN/scheduler.kubeconfig" system:kube-scheduler kube-scheduler
  kubeconfig "$RUN/kwok.kubeconfig" kwok-controller kwok
  make_kwok_config
  cat >"$RUN/scheduler.yaml" <<EOF
apiVersion: kubescheduler.config.k8s.io/v1
kind: KubeSchedulerConfiguration
clientConnection:
  kubeconfig: $RUN/scheduler.kubeconfig
  qps: 100
  burst: 200
leaderElection:
  leaderElect: false
EOF

  start etcd "$BIN/etcd" \
    --name=e2e --data-dir="$ETCD_DATA" \
    --listen-client-urls="http://127.0.0.1:$ETCD_PORT" --advertise-client-urls="http://127.0.0.1:$ETCD_PORT" \
    --listen-peer-urls="http://127.0.0.1:$ETCD_PEER_PORT" --initial-advertise-peer-urls="http://127.0.0.1:$ETCD_PEER_PORT" \
    --initial-cluster="e2e=http://127.0.0.1:$ETCD_PEER_PORT" \
    --unsafe-no-fsync=true --auto-compaction-retention=1 --log-level=warn
  wait_for etcd 30 "etcd /health" etcd_ready
  say "etcd ready ($(($(now_ms) - t0)) ms)"

  start kube-apiserver "$BIN/kube-apiserver" \
    --etcd-servers="http://127.0.0.1:$ETCD_PORT" \
    --bind-address=127.0.0.1 --secure-port="$API_PORT" \
    --advertise-address=127.0.0.1 --endpoint-reconciler-type=none \
    --tls-cert-file="$PKI/apiserver.crt" --tls-private-key-file="$PKI/apiserver.key" \
    --client-ca-file="$PKI/ca.crt" \
    --authorization-mode=RBAC \
    --service-account-issuer=https://kubernetes.default.svc.cluster.local \
    --service-account-key-file="$PKI/sa.pub" \
    --service-account-signing-key-file="$PKI/sa.key" \
    --service-cluster-ip-range=10.96.0.0/16 \
    --allow-privileged=true \
    --profiling=false \
    --disable-admission-plugins=MutatingAdmissionWebhook,ValidatingAdmissionWebhook \
    --v=1
  # Admission webhooks are off: istiod's webhooks point at Services whose ClusterIPs (and pods'
  # IPs) are fiction here. With the plugins on, the API server would dial those private-range
  # addresses whenever a pod or an Istio resource is written; this machine must never send
  # traffic off loopback. The webhook configurations are still stored and reconciled.
  wait_for kube-apiserver 90 "kube-apiserver /readyz" apiserver_ready
  say "kube-apiserver ready ($(($(now_ms) - t0)) ms)"

  start kube-controller-manager "$BIN/kube-controller-manager" \
    --kubeconfig="$RUN/kcm.kubeconfig" \
    --authentication-kubeconfig="$RUN/kcm.kubeconfig" --authorization-kubeconfig="$RUN/kcm.kubeconfig" \
    --bind-address=127.0.0.1 --secure-port="$KCM_PORT" \
    --leader-elect=false \
    --use-service-account-credentials=true \
    --controllers='*' \
    --service-account-private-key-file="$PKI/sa.key" \
    --root-ca-file="$PKI/ca.crt" \
    --cluster-signing-cert-file="$PKI/ca.crt" --cluster-signing-key-file="$PKI/ca.key" \
    --service-cluster-ip-range=10.96.0.0/16 \
    --node-monitor-period=1s \
    --kube-api-qps=100 --kube-api-burst=200 \
    --profiling=false \
    --v=1
  start kube-scheduler "$BIN/kube-scheduler" --config="$RUN/scheduler.yaml" \
    --authentication-kubeconfig="$RUN/scheduler.kubeconfig" --authorization-kubeconfig="$RUN/scheduler.kubeconfig" \
    --bind-address=127.0.0.1 --secure-port="$SCHED_PORT" --profiling=false --v=1
  # HOME points at the run dir so that a stray ~/.kwok/kwok.yaml cannot add stages twice.
  mkdir -p "$RUN/kwok-home"
  HOME="$RUN/kwok-home" start kwok "$BIN/kwok" \
    --kubeconfig="$RUN/kwok.kubeconfig" \
    --config="$RUN/kwok.yaml" \
    --manage-all-nodes=false \
    --manage-nodes-with-annotation-selector=kwok.x-k8s.io/node=fake \
    --cidr=10.244.0.0/16 \
    --node-lease-duration-seconds=40
  wait_for kube-controller-manager 60 "kube-controller-manager /healthz" healthz "$KCM_PORT"
  wait_for kube-scheduler 60 "kube-scheduler /healthz" healthz "$SCHED_PORT"
  say "kube-controller-manager and kube-scheduler healthy ($(($(now_ms) - t0)) ms)"

  node_manifests >"$RUN/nodes.yaml"
  wait_for kube-apiserver 30 "creating the kwok nodes" k apply -f "$RUN/nodes.yaml"
  wait_for kwok 60 "$NODES nodes Ready" nodes_ready
  wait_for kube-controller-manager 60 "node taints removed" nodes_untainted
  wait_for kube-controller-manager 60 "ServiceAccount default/default" default_sa
  trap - INT TERM
  t1=$(now_ms)
  say "cluster up in $(((t1 - t0) / 1000)).$(((t1 - t0) % 1000 / 100)) s"
  usage_hint
}

# stop <name>: SIGTERM, wait up to 15 s, then SIGKILL. Only the recorded PID, only if it is ours.
signal_component() {
  local n=$1 sig=$2 p
  p=$(pid_of "$n")
  alive "$p" || return 0
  if ours "$n" "$p"; then
    kill "-$sig" "$p" 2>/dev/null || true
  else
    say "$n: pid $p is no longer ours; not signalling it"
  fi
}

wait_gone() { # wait_gone <name> <seconds>
  local n=$1 p i
  p=$(pid_of "$n")
  for i in $(seq $(($2 * 10))); do
    alive "$p" && ours "$n" "$p" || return 0
    sleep 0.1
  done
  return 1
}

do_down() {
  if [ ! -d "$RUN" ]; then
    say "nothing to stop ($RUN does not exist)"
    return 0
  fi
  local n i
  # kwok first (so it does not fight the pod deletions of a dying control plane), etcd last.
  for ((i = ${#COMPONENTS[@]} - 1; i >= 0; i--)); do
    n=${COMPONENTS[$i]}
    signal_component "$n" TERM
    if ! wait_gone "$n" 15; then
      say "$n did not stop after SIGTERM; sending SIGKILL"
      signal_component "$n" KILL
      wait_gone "$n" 5 || say "$n (pid $(pid_of "$n")) still running"
    fi
  done
  local data=""
  if [ -f "$RUN/cluster.env" ]; then
    data=$(sed -n 's/^ETCD_DATA=//p' "$RUN/cluster.env")
  fi
  case "$data" in
    /dev/shm/istio-install-operator-e2e-etcd.*) rm -rf "$data" ;;
  esac
  if [ -d "$LOGS" ]; then
    rm -rf "$E2E_ROOT/last-logs"
    cp -a "$LOGS" "$E2E_ROOT/last-logs"
  fi
  rm -rf "$RUN"
  say "stopped; logs kept in $E2E_ROOT/last-logs"
}

do_status() {
  if [ ! -f "$RUN/cluster.env" ]; then
    echo "not running"
    return 1
  fi
  # shellcheck disable=SC1091
  . "$RUN/cluster.env"
  local n p ok=0 state
  for n in "${COMPONENTS[@]}"; do
    p=$(pid_of "$n")
    if alive "$p" && ours "$n" "$p"; then state=running; else
      state=DEAD
      ok=1
    fi
    printf '%-24s pid %-8s %s\n' "$n" "${p:-?}" "$state"
  done
  echo "ports: etcd $ETCD_PORT/$ETCD_PEER_PORT, apiserver $API_PORT, kcm $KCM_PORT, scheduler $SCHED_PORT"
  if apiserver_ready; then echo "kube-apiserver /readyz: ok"; else
    echo "kube-apiserver /readyz: NOT ready"
    ok=1
  fi
  if [ $ok -eq 0 ]; then
    k get nodes -o wide 2>/dev/null || true
    echo "export KUBECONFIG=$RUN/admin.kubeconfig"
  fi
  return $ok
}

do_logs() {
  local dir=$LOGS n
  [ -d "$dir" ] || dir=$E2E_ROOT/last-logs
  [ -d "$dir" ] || { echo "no logs (neither $LOGS nor $E2E_ROOT/last-logs)"; return 0; }
  echo "component logs from $dir"
  for n in "${COMPONENTS[@]}"; do
    [ -f "$dir/$n.log" ] || continue
    echo "===== $n (last ${E2E_LOG_LINES:-50} lines) ====="
    tail -n "${E2E_LOG_LINES:-50}" "$dir/$n.log"
  done
}

lock() {
  mkdir -p "$E2E_ROOT"
  exec 9>"$E2E_ROOT/.cluster.lock"
  flock -w 300 9 || { say "another cluster.sh up/down holds $E2E_ROOT/.cluster.lock"; exit 1; }
}

case "${1:-}" in
  up) lock; do_up ;;
  down) lock; do_down ;;
  status) do_status ;;
  logs) do_logs ;;
  env) echo "export KUBECONFIG=$RUN/admin.kubeconfig" ;;
  *)
    echo "usage: $0 up|down|status|logs|env" >&2
    exit 2
    ;;
esac
