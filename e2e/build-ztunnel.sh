#!/usr/bin/env bash
# Builds Istio's ztunnel from upstream source into $E2E_ROOT/bin/ztunnel-<tag>/ztunnel, for the
# real-istiod e2e tests (e2e/tests/istiod.rs runs it against the real istiod in the ambient
# scenarios). Nothing here touches the repo: the source is extracted from the git repository
# given by ZTUNNEL_SRC into $E2E_ROOT/src.
#
#   ZTUNNEL_SRC=.../ztunnel e2e/build-ztunnel.sh [tag...]
#
# Default tags: the newest release of each bundled minor, as for `make istiod`.
#
# Needs cargo and protoc (Debian: protobuf-compiler). Built with upstream's `quick-release`
# profile (release without LTO) and its default TLS provider (ring). The optional `tls-boring`
# feature is removed from the extracted Cargo.toml before the build: it pulls a git dependency
# from github.com that cargo resolves even when the feature is off. Idempotent: a binary that
# reports the tag's version is not rebuilt.
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
repo=$(cd "$here/.." && pwd)
E2E_ROOT=${E2E_ROOT:-/var/tmp/istio-install-operator-e2e}

log() { printf '[ztunnel %s] %s\n' "$(date +%H:%M:%S)" "$*"; }
die() { echo "build-ztunnel: $*" >&2; exit 1; }

reports() { # reports <binary> <tag>: `version` prints "... version.BuildInfo{Version:\"<tag>\"..."
  [ -x "$1" ] && "$1" version 2>/dev/null | grep -q "Version:\"$2\""
}

build_tag() {
  local tag=$1 out=$E2E_ROOT/bin/ztunnel-$1 src=$E2E_ROOT/src/ztunnel-$1
  if reports "$out/ztunnel" "$tag"; then
    log "ztunnel $tag present"
    return 0
  fi
  [ -n "${ZTUNNEL_SRC:-}" ] || die "ZTUNNEL_SRC is not set: point it at a git clone of github.com/istio/ztunnel (see e2e/README.md, 'Real istiod')"
  git -C "$ZTUNNEL_SRC" cat-file -e "$tag^{commit}" 2>/dev/null || die "$ZTUNNEL_SRC has no tag $tag"
  command -v protoc >/dev/null || die "protoc is required to build ztunnel (Debian: apt-get install protobuf-compiler)"
  if [ ! -f "$src/.done" ]; then
    rm -rf "$src" && mkdir -p "$src"
    # vendor/ holds prebuilt BoringSSL libraries for the FIPS build, not needed here.
    git -C "$ZTUNNEL_SRC" archive "$tag" -- . ':!vendor' | tar -x -C "$src"
    sed -i -e '/^tls-boring *=/d' -e '/^boring-rustls-provider *=/d' \
      -e '/^boring *=/d' -e '/^boring-sys *=/d' "$src/Cargo.toml"
    touch "$src/.done"
  fi
  log "building ztunnel $tag (a few minutes cold)"
  # VERSION: the version ztunnel reports (its build script reads it; the tree is no git clone).
  (cd "$src" && VERSION="$tag" CARGO_TARGET_DIR="$E2E_ROOT/target-ztunnel" \
    cargo build --profile quick-release --bin ztunnel)
  mkdir -p "$out"
  cp "$E2E_ROOT/target-ztunnel/quick-release/ztunnel" "$out/ztunnel.tmp"
  mv "$out/ztunnel.tmp" "$out/ztunnel"
  reports "$out/ztunnel" "$tag" || die "$out/ztunnel does not report version $tag"
  log "ztunnel $tag built: $out/ztunnel"
}

tags=("$@")
if [ ${#tags[@]} -eq 0 ]; then
  for b in "$repo"/charts/*/bundle.yaml; do
    tags+=("$(sed -n 's/^releases:.*"\([0-9][0-9.]*\)"\].*/\1/p' "$b")")
  done
fi
for t in "${tags[@]}"; do
  build_tag "$t"
done
