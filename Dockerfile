# The operator's image for teams that build with Docker/BuildKit. It describes the same image
# as `make image` (e2e/build-image.sh, which needs no container daemon and is what the tests
# run): one layer with the stripped release binary at /usr/local/bin/istio-install-operator and
# the glibc runtime libraries it links, at the paths `ldd` names; no shell; user 65532:65532;
# entrypoint the binary; the same OCI labels. Not built in CI (no container daemon there):
# keep the two in step by hand when either changes.
#
#   docker build --build-arg VERSION=0.1.0 --build-arg SOURCE=<repository URL> \
#     --build-arg REVISION=$(git rev-parse HEAD) -t istio-install-operator:0.1.0 .
#
# Debian bookworm (glibc 2.36) as on the machines `make image` runs on.
FROM docker.io/library/rust:1.95-bookworm AS build
WORKDIR /src
COPY . .
RUN cargo build --release --locked -p istio-install-operator \
 && mkdir -p /rootfs/usr/local/bin \
 && strip --strip-all -o /rootfs/usr/local/bin/istio-install-operator target/release/istio-install-operator \
 && ldd target/release/istio-install-operator \
    | sed -n -E 's#^[[:space:]]*([^[:space:]]+ => )?(/[^[:space:]]+) \(0x[0-9a-f]+\)$#\2#p' \
    | while read -r lib; do mkdir -p "/rootfs$(dirname "$lib")" && cp -L "$lib" "/rootfs$lib"; done

FROM scratch
ARG VERSION=0.1.0
ARG SOURCE
ARG REVISION
LABEL org.opencontainers.image.title="istio-install-operator" \
      org.opencontainers.image.description="Installs and upgrades Istio from one IstioInstall custom resource" \
      org.opencontainers.image.version="${VERSION}" \
      org.opencontainers.image.licenses="Apache-2.0" \
      org.opencontainers.image.source="${SOURCE}" \
      org.opencontainers.image.revision="${REVISION}"
COPY --from=build /rootfs/ /
USER 65532:65532
WORKDIR /
ENTRYPOINT ["/usr/local/bin/istio-install-operator"]
