#!/usr/bin/env bash
# Builds etcd, kube-apiserver, kube-controller-manager, kube-scheduler, kubectl and kwok from
# Go modules into $E2E_ROOT/bin/<k8s version>, Helm v4 into $E2E_ROOT/bin/helm-<version>/helm
# (`make upstream-reference` and the chart tests), and the project's own Go helpers (e2e/tools:
# the OCI image writer and the GitOps health readers) into $E2E_ROOT/bin/e2e-tools. Idempotent: a
# binary already reporting the pinned version (the helpers: built from the same sources) is not
# rebuilt. Everything lives outside the repo (never commit binaries).
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
# shellcheck source=./versions.env source-path=SCRIPTDIR
. "$here/versions.env"
E2E_ROOT=${E2E_ROOT:-/var/tmp/istio-install-operator-e2e}
BIN=$E2E_ROOT/bin/$K8S_VERSION
STAGING_VERSION=v0.${K8S_VERSION#v1.}
export GOTOOLCHAIN=local CGO_ENABLED=0 GOFLAGS=-buildvcs=false
mkdir -p "$BIN"

log() { printf '[build %s] %s\n' "$(date +%H:%M:%S)" "$*"; }

has_version() { # has_version <binary> <expected substring>
  [ -x "$1" ] || return 1
  local out
  # kubectl and helm have no --version flag; every other binary prints its version with it.
  case "$(basename "$1")" in
    kubectl) out=$("$1" version --client 2>/dev/null) ;;
    helm) out=$("$1" version --short 2>/dev/null) ;;
    *) out=$("$1" --version 2>/dev/null) ;;
  esac || return 1
  grep -q -- "$2" <<<"$out"
}

build_kube() {
  local want=(kube-apiserver kube-controller-manager kube-scheduler kubectl) missing=() b
  for b in "${want[@]}"; do has_version "$BIN/$b" "$K8S_VERSION" || missing+=("$b"); done
  [ ${#missing[@]} -eq 0 ] && { log "kubernetes $K8S_VERSION binaries present"; return; }
  log "building ${missing[*]} $K8S_VERSION"
  local src=$E2E_ROOT/src/kube-$K8S_VERSION
  mkdir -p "$src" && cd "$src"
  if [ ! -f .resolved ]; then
    rm -f go.mod go.sum
    go mod init e2e.invalid/kubebins >/dev/null 2>&1
    local gomod
    gomod=$(go mod download -json "k8s.io/kubernetes@$K8S_VERSION" | sed -n 's/.*"GoMod": "\([^"]*\)".*/\1/p')
    [ -f "$gomod" ] || { echo "cannot download k8s.io/kubernetes@$K8S_VERSION go.mod" >&2; exit 1; }
    # k8s.io/kubernetes maps its staging modules to ./staging; a dependent must pin the published tags.
    local m
    for m in $(sed -n -E 's#^[[:space:]]*(replace[[:space:]]+)?(k8s\.io/[A-Za-z0-9._-]+)[[:space:]]*=>[[:space:]]*\./staging/.*#\2#p' "$gomod"); do
      go mod edit -replace="$m=$m@$STAGING_VERSION"
    done
    # Upstream's GODEBUG defaults; a dependency's godebug lines are ignored otherwise.
    awk '/^godebug[[:space:]]*\(/{b=1;next} b&&/^\)/{b=0;next} b{print $1;next} /^godebug[[:space:]]+[^(]/{print $2}' "$gomod" |
      while read -r kv; do [ -n "$kv" ] && go mod edit -godebug="$kv"; done
    local c tools=()
    for c in "${want[@]}"; do tools+=("k8s.io/kubernetes/cmd/$c@$K8S_VERSION"); done
    go get -tool "${tools[@]}"
    touch .resolved
  fi
  local minor now ldflags p pkgs=()
  minor=$(echo "$K8S_VERSION" | cut -d. -f2)
  now=$(date -u +%Y-%m-%dT%H:%M:%SZ)
  ldflags="-s -w"
  for p in k8s.io/component-base/version k8s.io/client-go/pkg/version; do
    ldflags="$ldflags -X $p.gitVersion=$K8S_VERSION -X $p.gitMajor=1 -X $p.gitMinor=$minor -X $p.gitTreeState=clean -X $p.buildDate=$now"
  done
  for b in "${missing[@]}"; do pkgs+=("k8s.io/kubernetes/cmd/$b"); done
  go build -p "$(nproc)" -trimpath -ldflags "$ldflags" -o "$BIN/" "${pkgs[@]}"
}

build_etcd() {
  has_version "$BIN/etcd" "${ETCD_VERSION#v}" && { log "etcd $ETCD_VERSION present"; return; }
  log "building etcd $ETCD_VERSION"
  local src=$E2E_ROOT/src/etcd-$ETCD_VERSION
  mkdir -p "$src" && cd "$src"
  [ -f go.mod ] || go mod init e2e.invalid/etcdbin >/dev/null 2>&1
  go get -tool "go.etcd.io/etcd/server/v3@$ETCD_VERSION"
  go build -trimpath -ldflags "-s -w" -o "$BIN/etcd" go.etcd.io/etcd/server/v3
}

# The kwok binary has no built-in Stages; cluster.sh feeds it the "fast" ones from the module
# source. Copy them next to the binaries so that running the cluster needs no Go toolchain.
copy_kwok_stages() {
  local src dst=$BIN/kwok-stages
  [ -f "$dst/node/fast/node-initialize.yaml" ] && return 0
  src=$(go env GOMODCACHE)/sigs.k8s.io/kwok@$KWOK_VERSION/kustomize/stage
  [ -d "$src" ] || go mod download "sigs.k8s.io/kwok@$KWOK_VERSION"
  rm -rf "$dst.tmp" && mkdir -p "$dst.tmp"
  (cd "$src" && find node pod -name '*.yaml' -not -path '*/testdata/*' -not -name kustomization.yaml |
    while read -r f; do mkdir -p "$dst.tmp/$(dirname "$f")" && cp "$f" "$dst.tmp/$f"; done)
  chmod -R u+w "$dst.tmp" && mv "$dst.tmp" "$dst"
  log "kwok stages copied to $dst"
}

build_kwok() {
  if has_version "$BIN/kwok" "${KWOK_VERSION#v}"; then
    log "kwok $KWOK_VERSION present"
  else
    log "building kwok $KWOK_VERSION"
    # Its own module graph: kwok is built against newer k8s libraries than the control plane.
    GOBIN="$BIN" go install -trimpath -ldflags "-s -w" "sigs.k8s.io/kwok/cmd/kwok@$KWOK_VERSION"
  fi
  copy_kwok_stages
}

# Real Helm v4 renders the upstream charts for the reference digests (make upstream-reference).
# Not part of `all`: the tests read the committed digests and need no Helm.
build_helm() {
  local dir=$E2E_ROOT/bin/helm-$HELM_VERSION
  BIN=$dir
  if has_version "$dir/helm" "$HELM_VERSION"; then log "helm $HELM_VERSION present"; return; fi
  log "building helm $HELM_VERSION"
  mkdir -p "$dir"
  # Helm's own Makefile stamps the version the same way; without it `helm version` says v4.x.
  GOBIN="$dir" nice -n 10 go install -trimpath \
    -ldflags "-s -w -X helm.sh/helm/v4/internal/version.version=$HELM_VERSION" \
    "helm.sh/helm/v4/cmd/helm@$HELM_VERSION"
}

# e2e/tools: one Go module of our own (go.mod pins go-containerregistry, cli-utils and
# gopher-lua). Rebuilt when its sources change (a digest of them is kept next to the binaries).
build_tools() {
  local dir=$E2E_ROOT/bin/e2e-tools src=$here/tools sum
  BIN=$dir
  sum=$(cd "$src" && find . -type f \( -name '*.go' -o -name go.mod -o -name go.sum \) | LC_ALL=C sort |
    xargs sha256sum | sha256sum | cut -d' ' -f1)
  if [ -x "$dir/ociimage" ] && [ -x "$dir/gitopshealth" ] && [ "$(cat "$dir/.sources" 2>/dev/null)" = "$sum" ]; then
    log "e2e tools present"; return
  fi
  log "building e2e tools (ociimage, gitopshealth)"
  mkdir -p "$dir"
  (cd "$src" && nice -n 10 go build -mod=readonly -trimpath -ldflags "-s -w" -o "$dir/" ./cmd/...)
  echo "$sum" >"$dir/.sources"
}

case "${1:-all}" in
  etcd) build_etcd ;;
  kube) build_kube ;;
  kwok) build_kwok ;;
  helm) build_helm ;;
  tools) build_tools ;;
  all) build_etcd; build_kwok; build_kube; build_helm; build_tools ;;
  *) echo "usage: $0 [all|etcd|kube|kwok|helm|tools]" >&2; exit 2 ;;
esac
log "done: $BIN"
