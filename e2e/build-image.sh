#!/usr/bin/env bash
# `make image`: the operator's OCI image as an OCI image layout, built without a container
# daemon. One layer: the release binary at /usr/local/bin/istio-install-operator and the glibc
# runtime libraries it links (from `ldd`, at the paths ldd names, so the binary's own
# PT_INTERP /lib64/ld-linux-x86-64.so.2 finds them), nothing else: no shell, no package
# manager, no CA bundle (in a cluster the client trusts only the ServiceAccount's ca.crt).
# Runs as 65532:65532. The Dockerfile at the repository root describes the same image for teams
# that build with Docker. No musl target here, hence glibc plus its libraries.
#
#   e2e/build-image.sh <release binary> <output layout dir>
# Environment: IMAGE_SOURCE (org.opencontainers.image.source; default: the git remote `origin`,
# else the local repository as a file:// URL), SOURCE_DATE_EPOCH (default: the commit time).
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
repo=$(cd "$here/.." && pwd)
bin=${1:?usage: $0 <release binary> <output layout dir>}
out=${2:?usage: $0 <release binary> <output layout dir>}
E2E_ROOT=${E2E_ROOT:-/var/tmp/istio-install-operator-e2e}
tools=$E2E_ROOT/bin/e2e-tools
"$here/build-binaries.sh" tools >/dev/null
[ -x "$bin" ] || { echo "build-image: $bin: no such binary (run \`make build\`)" >&2; exit 1; }

version=$("$bin" version | sed -n 's/^istio-install-operator //p')
license=$(sed -n 's/^license = "\(.*\)"/\1/p' "$repo/Cargo.toml")
revision=$(git -C "$repo" rev-parse HEAD 2>/dev/null || echo unknown)
source=${IMAGE_SOURCE:-$(git -C "$repo" remote get-url origin 2>/dev/null || echo "file://$repo")}
export SOURCE_DATE_EPOCH=${SOURCE_DATE_EPOCH:-$(git -C "$repo" log -1 --format=%ct 2>/dev/null || echo 0)}

work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
# Debug symbols are of no use in the image: 21 MB → about 15 MB (the layer is compressed too).
strip --strip-all -o "$work/istio-install-operator" "$bin"
files=(--file "$work/istio-install-operator=/usr/local/bin/istio-install-operator")
# `ldd` prints `name => /path (addr)` for libraries and `/path (addr)` for the loader; the
# vDSO has no file. Each file goes to the path ldd names, its content dereferenced.
while read -r path; do
  files+=(--file "$(readlink -f "$path")=$path")
done < <(ldd "$bin" | sed -n -E 's#^[[:space:]]*([^[:space:]]+ => )?(/[^[:space:]]+) \(0x[0-9a-f]+\)$#\2#p')

"$tools/ociimage" --out "$out" --entrypoint /usr/local/bin/istio-install-operator \
  --user 65532:65532 --ref-name "$version" "${files[@]}" \
  --label "org.opencontainers.image.title=istio-install-operator" \
  --label "org.opencontainers.image.description=Installs and upgrades Istio from one IstioInstall custom resource" \
  --label "org.opencontainers.image.version=$version" \
  --label "org.opencontainers.image.licenses=$license" \
  --label "org.opencontainers.image.source=$source" \
  --label "org.opencontainers.image.revision=$revision"
size=$(du -sb "$out/blobs" | cut -f1)
echo "image: $out (OCI image layout, tag $version): $size bytes of blobs (compressed layer + config + manifest)"
