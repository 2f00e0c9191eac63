# The README's two commands: `make demo` (the main job) and `make test` (every test).
# Heavy builds (Go control plane, cargo target) are cached outside the repo.
SHELL := /bin/bash
export E2E_ROOT ?= /var/tmp/istio-install-operator-e2e
# One release-profile build serves the binary, the unit tests and the e2e tests (built once).
export CARGO_TARGET_DIR ?= /var/tmp/istio-install-operator-cargo-target
REFERENCE ?= $(CURDIR)/../shared/reference/upstream-digest
OPERATOR := $(CARGO_TARGET_DIR)/release/istio-install-operator

.PHONY: all build test unit parity e2e e2e-binaries e2e-up e2e-down e2e-test crds check-crds demo lint bench tools istiod

all: build

tools: ## installs what the tests need that a fresh machine may lack
	@python3 -c 'import yaml' 2>/dev/null || python3 -m pip install --quiet pyyaml

build:
	cargo build --release --locked -p istio-install-operator

unit:
	cargo test --release --locked --workspace --exclude istio-install-e2e

crds: build
	$(OPERATOR) crd > crds/istioinstall.io_istioinstalls.yaml

parity: build tools
	e2e/parity.sh "$(OPERATOR)" "$(REFERENCE)"

e2e-binaries:
	e2e/build-binaries.sh all

# pilot-discovery of each bundled minor's newest patch, from upstream source trees (git
# repositories) in ISTIO_SRC, ISTIO_API_SRC and ISTIO_CLIENT_GO_SRC; see e2e/README.md.
istiod:
	e2e/build-istiod.sh

e2e-up: e2e-binaries
	e2e/cluster.sh up

e2e-down:
	e2e/cluster.sh down

e2e-test:
	cargo test --release --locked --no-fail-fast -p istio-install-e2e -- --test-threads=2

# Brings the cluster up, runs the e2e tests, and always takes the cluster down again.
e2e: build e2e-binaries
	e2e/cluster.sh up
	set -o pipefail; status=0; $(MAKE) --no-print-directory e2e-test || status=$$?; \
	  [ $$status -eq 0 ] || e2e/cluster.sh logs; e2e/cluster.sh down; exit $$status

test: unit parity e2e

lint:
	cargo fmt --all -- --check
	cargo clippy --workspace --all-targets --locked -- -D warnings

bench:
	cargo bench -p istio-install-operator --bench render

demo: build e2e-binaries
	e2e/demo.sh
