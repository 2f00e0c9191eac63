#!/usr/bin/env bash
# `make demo`: the local cluster, the operator under its own restricted ServiceAccount, the
# sample ambient IstioInstall reaching Ready on Istio 1.23, then upgraded to 1.24 by changing
# spec.version. Leaves the cluster up (make e2e-down removes it) and stops the operator.
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
root=$(cd "$here/.." && pwd)
. "$here/versions.env"
E2E_ROOT=${E2E_ROOT:-/var/tmp/istio-install-operator-e2e}
KUBECTL=$E2E_ROOT/bin/$K8S_VERSION/kubectl
OPERATOR=${OPERATOR:-${CARGO_TARGET_DIR:-$root/target}/release/istio-install-operator}
say() { printf '\n\033[1m== %s\033[0m\n' "$*"; }

say "Starting the local control plane (etcd, kube-apiserver, controller-manager, scheduler, kwok)"
"$here/cluster.sh" up
export KUBECONFIG=$E2E_ROOT/run/admin.kubeconfig
k() { "$KUBECTL" "$@"; }

say "Installing the CRD and the operator's least-privilege RBAC"
operator_kubeconfig=$("$here/operator-env.sh")

say "Running the operator as ServiceAccount istio-install-operator"
log=$E2E_ROOT/run/logs/operator.log
KUBECONFIG=$operator_kubeconfig POD_NAMESPACE=istio-install-operator \
  "$OPERATOR" run --metrics-addr 127.0.0.1:0 >"$log" 2>&1 &
op=$!
trap 'kill $op 2>/dev/null; wait $op 2>/dev/null || true' EXIT
echo "operator pid $op, log $log"

wait_ready() { # wait_ready <name> <installed version> <timeout s>
  local end=$(( $(date +%s) + $3 )) last=""
  while [ "$(date +%s)" -lt "$end" ]; do
    local line
    line=$(k get ii "$1" -o jsonpath='{.status.conditions[?(@.type=="Ready")].status} {.status.installedVersion} {.status.observedGeneration}/{.metadata.generation} {.status.conditions[?(@.type=="Ready")].message}' 2>/dev/null || true)
    [ "$line" != "$last" ] && { echo "  $line"; last=$line; }
    read -r ready installed gens _ <<<"$line"
    if [ "$ready" = True ] && [ "$installed" = "$2" ] && [ "${gens%/*}" = "${gens#*/}" ]; then return 0; fi
    kill -0 "$op" 2>/dev/null || { echo "the operator exited:"; tail -20 "$log"; return 1; }
    sleep 1
  done
  echo "not Ready with $2 after $3 s"; tail -30 "$log"; return 1
}

say "Applying manifests/samples/ambient.yaml (Istio 1.23, ambient profile)"
k apply -f "$root/manifests/samples/ambient.yaml"
start=$(date +%s)
wait_ready ambient 1.23.6 300
echo "Ready on 1.23.6 after $(( $(date +%s) - start )) s"
k get ii ambient -o wide

say "Upgrading: spec.version 1.23 -> 1.24"
k patch ii ambient --type merge -p '{"spec":{"version":"1.24"}}'
start=$(date +%s)
wait_ready ambient 1.24.6 300
echo "Ready on 1.24.6 after $(( $(date +%s) - start )) s"

say "Result"
k get ii -o wide
k get ii ambient -o jsonpath='{range .status.components[*]}{.name}{"\t"}{.version}{"\tready="}{.ready}{"\n"}{end}'
k -n istio-system get deploy,daemonset
echo
echo "The cluster is still up: export KUBECONFIG=$KUBECONFIG; 'make e2e-down' removes it."
