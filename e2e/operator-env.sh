#!/usr/bin/env bash
# Prepares the local cluster for the operator, as an admin would in a real cluster: the
# IstioInstall CRD, the operator's namespace, ServiceAccount and least-privilege RBAC from
# manifests/, and a kubeconfig holding only that ServiceAccount's token, so the operator runs
# with exactly the rights manifests/rbac.yaml gives it.
# Prints the path of that kubeconfig.
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
. "$here/versions.env"
E2E_ROOT=${E2E_ROOT:-/var/tmp/istio-install-operator-e2e}
RUN=$E2E_ROOT/run
KUBECTL=$E2E_ROOT/bin/$K8S_VERSION/kubectl
admin=$RUN/admin.kubeconfig
k() { "$KUBECTL" --kubeconfig="$admin" "$@"; }
[ -f "$admin" ] || { echo "no cluster: run 'make e2e-up' first" >&2; exit 1; }
k apply --server-side -f "$here/../crds/istioinstall.io_istioinstalls.yaml" >&2
k wait --for=condition=Established crd/istioinstalls.istioinstall.io --timeout=60s >&2
k apply --server-side -f "$here/../manifests/namespace.yaml" -f "$here/../manifests/rbac.yaml" >&2
token=$(k -n istio-install-operator create token istio-install-operator --duration=24h)
out=$RUN/operator.kubeconfig
server=$(k config view --minify -o jsonpath='{.clusters[0].cluster.server}')
k config view --raw --minify -o jsonpath='{.clusters[0].cluster.certificate-authority-data}' | base64 -d > "$RUN/operator-ca.crt"
rm -f "$out"
"$KUBECTL" config --kubeconfig="$out" set-cluster e2e --server="$server" --certificate-authority="$RUN/operator-ca.crt" --embed-certs=true >/dev/null
"$KUBECTL" config --kubeconfig="$out" set-credentials istio-install-operator --token="$token" >/dev/null
"$KUBECTL" config --kubeconfig="$out" set-context e2e --cluster=e2e --user=istio-install-operator --namespace=istio-install-operator >/dev/null
"$KUBECTL" config --kubeconfig="$out" use-context e2e >/dev/null
echo "$out"
