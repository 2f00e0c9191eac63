# The README's two commands: `make demo` (the main job) and `make test` (every test).
# Heavy builds (Go control plane, cargo target) are cached outside the repo.
SHELL := /bin/bash
export E2E_ROOT ?= /var/tmp/istio-install-operator-e2e
# One release-profile build serves the binary, the unit tests and the e2e tests (built once).
export CARGO_TARGET_DIR ?= /var/tmp/istio-install-operator-cargo-target
# Optional independent cross-checks of e2e/reference (folders of digests made outside this
# repository); `make parity` prints a SKIPPED line for each folder that is not there.
CROSS_CHECK ?= $(CURDIR)/../shared/reference/upstream-digest $(CURDIR)/../shared/reference/upstream-digest-1.25
HELM_VERSION := $(shell sed -n 's/^HELM_VERSION=//p' e2e/versions.env)
HELM ?= $(E2E_ROOT)/bin/helm-$(HELM_VERSION)/helm
REFTOOL := PYTHONPATH=$(CURDIR)/e2e python3 -m reftool
OPERATOR := $(CARGO_TARGET_DIR)/release/istio-install-operator
# `make image` writes the operator's image here (an OCI image layout; the e2e tests read it).
IMAGE_LAYOUT ?= $(CARGO_TARGET_DIR)/image/istio-install-operator

.PHONY: all build image generate test unit parity render-baseline render-baseline-update upstream-reference reference-drift helm e2e e2e-binaries e2e-up e2e-down e2e-test crds check-crds demo lint bench tools istiod ztunnel

all: build

tools: ## installs what the tests need that a fresh machine may lack
	@python3 -c 'import yaml' 2>/dev/null || python3 -m pip install --quiet pyyaml

build:
	cargo build --release --locked -p istio-install-operator

unit: tools
	cargo test --release --locked --workspace --exclude istio-install-e2e
	python3 e2e/reftool/selftest.py

# The operator's OCI image, without a container daemon (e2e/build-image.sh; same image as the
# Dockerfile). Also packed as an oci-archive tarball next to the layout.
image: build
	e2e/build-image.sh "$(OPERATOR)" "$(IMAGE_LAYOUT)"
	tar -C "$(IMAGE_LAYOUT)" --sort=name --owner=0 --group=0 --numeric-owner --mtime=@0 -cf "$(IMAGE_LAYOUT).tar" .
	@echo "oci-archive: $(IMAGE_LAYOUT).tar ($$(stat -c %s "$(IMAGE_LAYOUT).tar") bytes)"

crds: build
	$(OPERATOR) crd > crds/istioinstall.io_istioinstalls.yaml
	$(OPERATOR) crd > manifests/crd.yaml

# Everything generated from the Rust sources (unit tests fail when any of it drifts): the CRD,
# manifests/rbac.yaml, and the chart's CRD and RBAC templates.
generate: crds
	$(OPERATOR) rbac > manifests/rbac.yaml
	$(OPERATOR) crd --helm > manifests/chart/templates/crd.yaml
	$(OPERATOR) rbac --helm > manifests/chart/templates/rbac.yaml

# `render` against every upstream digest in e2e/reference, field by field.
parity: build tools
	$(REFTOOL).parity "$(OPERATOR)" $(foreach d,$(CROSS_CHECK),--cross-check "$(d)")

# Every release x profile (and value sets) rendered, compared with e2e/render-baseline.json;
# `make render-baseline-update` records the current output after an intended change.
render-baseline: build tools
	$(REFTOOL).renders "$(OPERATOR)"

render-baseline-update: build tools
	$(REFTOOL).renders "$(OPERATOR)" --write

helm:
	e2e/build-binaries.sh helm

# Renders e2e/reference/<case>.json from the upstream charts of an Istio source tree
# (ISTIO_SRC: a git directory or checkout of istio/istio with the release tags) by real Helm.
upstream-reference: tools helm
	@[ -n "$(ISTIO_SRC)" ] || { echo "upstream-reference: set ISTIO_SRC to a clone of github.com/istio/istio with its release tags" >&2; exit 2; }
	$(REFTOOL).generate --istio-src "$(ISTIO_SRC)" --helm "$(HELM)"

# The committed digests are what upstream renders: regenerated and compared when ISTIO_SRC is set.
reference-drift: tools
	@if [ -z "$(ISTIO_SRC)" ]; then \
	  echo "SKIPPED upstream reference drift: ISTIO_SRC is not set (set it to a clone of github.com/istio/istio with its release tags to re-render e2e/reference and compare)"; \
	else $(MAKE) --no-print-directory helm && $(REFTOOL).generate --istio-src "$(ISTIO_SRC)" --helm "$(HELM)" --check; fi

e2e-binaries:
	e2e/build-binaries.sh all

# pilot-discovery of each bundled minor's newest patch, from upstream source trees (git
# repositories) in ISTIO_SRC, ISTIO_API_SRC and ISTIO_CLIENT_GO_SRC; see e2e/README.md.
istiod:
	e2e/build-istiod.sh

# ztunnel from upstream source (ZTUNNEL_SRC: a git clone of istio/ztunnel) for the ambient
# scenarios of the real-istiod tests; ZTUNNEL_TAGS picks the tags (default: as `make istiod`).
ztunnel:
	e2e/build-ztunnel.sh $(ZTUNNEL_TAGS)

e2e-up: e2e-binaries
	e2e/cluster.sh up

e2e-down:
	e2e/cluster.sh down

e2e-test:
	cargo test --release --locked --no-fail-fast -p istio-install-e2e -- --test-threads=2

# Brings the cluster up, runs the e2e tests, and always takes the cluster down again.
e2e: build e2e-binaries image
	e2e/cluster.sh up
	set -o pipefail; status=0; $(MAKE) --no-print-directory e2e-test || status=$$?; \
	  [ $$status -eq 0 ] || e2e/cluster.sh logs; e2e/cluster.sh down; exit $$status

test: unit parity render-baseline reference-drift e2e

lint:
	cargo fmt --all -- --check
	cargo clippy --workspace --all-targets --locked -- -D warnings

bench:
	cargo bench -p istio-install-operator --bench render

demo: build e2e-binaries
	e2e/demo.sh
