#!/usr/bin/env bash
# Builds Istio's pilot-discovery (istiod) from upstream source for the newest patch of each
# bundled minor, into $E2E_ROOT/bin/istiod-<tag>/pilot-discovery. Used by the real-istiod e2e
# tests (e2e/tests/istiod.rs). Nothing here touches the repo: sources are extracted from the git
# repositories given by ISTIO_SRC, ISTIO_API_SRC and ISTIO_CLIENT_GO_SRC into $E2E_ROOT/src.
#
#   ISTIO_SRC=.../istio ISTIO_API_SRC=.../api ISTIO_CLIENT_GO_SRC=.../client-go e2e/build-istiod.sh [tag...]
#
# Each *_SRC is a git repository (bare or not) holding the tag, or for api/client-go the commit
# that the tag's go.mod pins: those pseudo-versions are not served by the Go module proxy, so the
# build replaces them with trees extracted at the pinned commits. Idempotent: a binary that
# reports the tag's version is not rebuilt.
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
repo=$(cd "$here/.." && pwd)
E2E_ROOT=${E2E_ROOT:-/var/tmp/istio-install-operator-e2e}
export GOTOOLCHAIN=local CGO_ENABLED=0 GOFLAGS=-buildvcs=false

log() { printf '[istiod %s] %s\n' "$(date +%H:%M:%S)" "$*"; }
die() { echo "build-istiod: $*" >&2; exit 1; }

# The newest release of each bundled minor (charts/<minor>/bundle.yaml, `releases:` list).
default_tags() {
  local b
  for b in "$repo"/charts/*/bundle.yaml; do
    sed -n 's/^releases:.*"\([0-9][0-9.]*\)"\].*/\1/p' "$b"
  done
}

need_git() { # need_git <var name> <value>
  [ -n "$2" ] || die "$1 is not set: point it at a git clone of the repository (see e2e/README.md, 'Real istiod')"
  git -C "$2" rev-parse --git-dir >/dev/null 2>&1 || die "$1=$2 is not a git repository"
}

# extract <git dir> <rev> <dest>: a plain tree of <rev>, written once (a .done marker).
extract() {
  [ -f "$3/.done" ] && return 0
  git -C "$1" cat-file -e "$2^{commit}" 2>/dev/null || die "$1 has no commit $2 (fetch a newer copy of it)"
  rm -rf "$3" && mkdir -p "$3"
  git -C "$1" archive "$2" | tar -x -C "$3"
  touch "$3/.done"
}

# The commit of a pseudo-version pinned in go.mod: v1.24.5-0.20250409200717-4933c1da972e -> 4933c1da972e.
pinned_commit() { # pinned_commit <go.mod> <module>
  local v
  v=$(awk -v m="$2" '$1 == m {print $2; exit}' "$1")
  [ -n "$v" ] || die "$1 does not require $2"
  case "$v" in
    *-*-*) echo "${v##*-}" ;;
    *) echo "$v" ;; # a release tag: the repository has it as a tag
  esac
}

# The Gateway API CRDs (standard channel) of the version the tag builds against, for the
# waypoint tests: istiod's gateway controller starts only once they exist.
copy_gateway_crds() { # copy_gateway_crds <src> <out>
  [ -s "$2/gateway-api-crds.yaml" ] && return 0
  local dir
  dir=$(cd "$1" && go list -mod=mod -m -f '{{.Dir}}' sigs.k8s.io/gateway-api)
  [ -d "$dir/config/crd/standard" ] || (cd "$1" && go mod download sigs.k8s.io/gateway-api)
  local f
  for f in "$dir"/config/crd/standard/*.yaml; do
    echo "---"; cat "$f"
  done > "$2/gateway-api-crds.yaml.tmp"
  mv "$2/gateway-api-crds.yaml.tmp" "$2/gateway-api-crds.yaml"
}

reports() { # reports <binary> <tag>: `version -s` prints "client version: <tag>"
  [ -x "$1" ] && "$1" version -s 2>/dev/null | sed 's/^client version: //' | grep -qx "$2"
}

build_tag() {
  local tag=$1 out=$E2E_ROOT/bin/istiod-$1
  if reports "$out/pilot-discovery" "$tag"; then
    [ -s "$out/gateway-api-crds.yaml" ] || copy_gateway_crds "$E2E_ROOT/src/istio-$tag" "$out"
    log "pilot-discovery $tag present"
    return 0
  fi
  need_git ISTIO_SRC "${ISTIO_SRC:-}"
  need_git ISTIO_API_SRC "${ISTIO_API_SRC:-}"
  need_git ISTIO_CLIENT_GO_SRC "${ISTIO_CLIENT_GO_SRC:-}"
  local src=$E2E_ROOT/src/istio-$tag
  extract "$ISTIO_SRC" "refs/tags/$tag" "$src"
  local api cgo
  api=$(pinned_commit "$src/go.mod" istio.io/api)
  cgo=$(pinned_commit "$src/go.mod" istio.io/client-go)
  extract "$ISTIO_API_SRC" "$api" "$E2E_ROOT/src/istio-api-$api"
  extract "$ISTIO_CLIENT_GO_SRC" "$cgo" "$E2E_ROOT/src/istio-client-go-$cgo"
  (cd "$src" &&
    go mod edit -replace "istio.io/api=$E2E_ROOT/src/istio-api-$api" \
      -replace "istio.io/client-go=$E2E_ROOT/src/istio-client-go-$cgo")
  log "building pilot-discovery $tag (api $api, client-go $cgo)"
  local p=istio.io/istio/pkg/version ldflags
  ldflags="-s -w -X $p.buildVersion=$tag -X $p.buildGitRevision=$tag -X $p.buildStatus=Clean"
  ldflags="$ldflags -X $p.buildTag=$tag -X $p.buildHub=docker.io/istio -X $p.buildOS=linux -X $p.buildArch=$(go env GOARCH)"
  mkdir -p "$out"
  # -mod=mod: the replaced trees bring go.mod files that go.sum has no lines for.
  (cd "$src" && nice -n 10 go build -mod=mod -trimpath -tags vtprotobuf,disable_pgv \
    -ldflags "$ldflags" -o "$out/pilot-discovery.tmp" ./pilot/cmd/pilot-discovery)
  mv "$out/pilot-discovery.tmp" "$out/pilot-discovery"
  copy_gateway_crds "$src" "$out"
  reports "$out/pilot-discovery" "$tag" || die "$out/pilot-discovery does not report $tag"
  log "built $out/pilot-discovery"
}

tags=("$@")
[ ${#tags[@]} -gt 0 ] || mapfile -t tags < <(default_tags)
[ ${#tags[@]} -gt 0 ] || die "no bundled releases found under $repo/charts"
for t in "${tags[@]}"; do build_tag "$t"; done
