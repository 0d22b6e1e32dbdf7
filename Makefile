# ecr-pull-secrets: the two commands in README.md are `make demo` and `make test`.
SHELL := /bin/bash
.SHELLFLAGS := -euo pipefail -c
TESTENV := tests/testenv.sh
CARGO ?= cargo

.PHONY: demo demo-node test check-layers lint test-unit test-alerts test-emulator test-registry test-image test-testenv test-testenv-node test-e2e test-node test-demo test-demo-node testenv testenv-node build image audit deny bench
.PHONY: install uninstall run deploy undeploy

## demo: real local control plane + ECR emulator + the controller; Ctrl-C stops it.
demo:
	tests/demo.sh

## demo-node: the image on a real node (root), ending with a pod pulling a private ECR image
## through the secret; Ctrl-C stops it.
demo-node:
	tests/demo-node.sh

## test: every tier: lint, unit + component, emulators, image, end to end, the real node (root),
## demo smoke run.
test: lint test-unit test-alerts test-emulator test-registry test-image test-testenv test-e2e test-testenv-node test-node test-demo test-demo-node

## the source layout: no import cycle between the files of src/, layers only depend downwards
## (tests/layout.rs); prints the import graph.
check-layers:
	$(CARGO) test --locked --test layout -- --nocapture

lint:
	$(CARGO) fmt --all -- --check
	$(CARGO) clippy --all-targets --locked -- -D warnings

## unit tests (src/) and component tests (kube through a scripted API server).
test-unit:
	$(CARGO) test --locked --lib --bins --test component --test deploy --test layout

## alert rules: syntax, and a firing and a quiet case per alert (promtool from Debian's prometheus).
test-alerts:
	promtool check rules deploy/alerts/ecr-pull-secrets.rules.yaml
	promtool test rules tests/alerts/ecr-pull-secrets.test.yaml

testenv:
	$(TESTENV) build

## the emulator's own tests, in the venv testenv builds.
test-emulator: testenv
	"$$($(TESTENV) venv)/bin/python" -m pytest -q -p no:cacheprovider tests/ecr-emulator

## the ECR registry emulator: its Go tests, then real pulls (skopeo; containerd too when the
## cache has it) with passwords the ECR emulator issued, and its refusals.
test-registry: testenv
	cd tests/ecr-registry && test -z "$$(gofmt -l .)" && go vet ./... && go test -count=1 ./...
	$(TESTENV) run -- tests/ecr-registry/pull-test.sh

## the image as shipped: the Dockerfile's runtime-from-binary target built with buildah (no
## registry needed), then checked: non-root user, no shell, size, --version, its CA bundle.
test-image: testenv
	$(TESTENV) run -- tests/image.sh check

## the test environment itself: up, /readyz, RBAC refusing a stranger, down leaving nothing.
test-testenv: testenv
	tests/testenv-selftest.sh

## the test environment's real node (root; not in `test`): up --node, a Ready node, pods, the
## kubernetes Service through kube-proxy, down leaving nothing (docs/testing.md#a-real-node-up---node).
test-testenv-node: testenv-node
	tests/testenv-node-selftest.sh

testenv-node:
	tests/install-deps.sh --node
	$(TESTENV) build --node

## the product as shipped on the real node (root): the image imported into containerd, the
## shipped Deployment and Helm chart started by the kubelet, pulls from the ECR registry
## emulator with the Secret we write (tests/e2e_node.rs).
test-node: testenv-node
	$(CARGO) build --locked --tests
	tests/image.sh build >/dev/null
	$(TESTENV) run --node -- $(CARGO) test --locked --test e2e_node -- --test-threads=1 --nocapture

## end to end: the real binary against kube-apiserver + etcd + the ECR emulator. Serial:
## the tests share one emulator and its call counter.
# Every tests/e2e_*.rs but e2e_node, which needs the node (test-node).
E2E_TESTS := $(filter-out e2e_node,$(basename $(notdir $(wildcard tests/e2e_*.rs))))
test-e2e: testenv
	$(CARGO) build --locked --bins --tests
	$(TESTENV) run -- $(CARGO) test --locked $(addprefix --test ,$(E2E_TESTS)) -- --test-threads=1

## other Kubernetes versions (docs/testing.md#kubernetes-versions): the end-to-end suites
## COMPAT_TESTS on each of COMPAT_VERSIONS in turn, each built first if the cache lacks it; one
## environment per version, every suite run, a pass/fail and seconds table at the end. `test`
## stays on the default version (tests/testenv.sh's KUBE_VERSION). COMPAT_TESTS=$(E2E_TESTS)
## for the full matrix.
COMPAT_VERSIONS ?= v1.30.14 v1.37.2
# The core subset CI runs on the other versions (the default version runs every suite): where
# the API server's behaviour could differ (server-side apply, watches and field selectors, the
# CRD's CEL rules and status, ValidatingAdmissionPolicy, server-side dry runs, Leases, RBAC,
# FlowSchemas). Left out, to keep CI in its 90 minutes cold: e2e_fanout (500 namespaces),
# e2e_tokens, e2e_observability and e2e_hardening (the controller's timing against AWS faults,
# token expiry and Prometheus). docs/testing.md#kubernetes-versions has the full matrix.
COMPAT_CORE := e2e_skeleton e2e_ha e2e_resources e2e_rbac e2e_packaging e2e_credentials e2e_status e2e_check
COMPAT_TESTS ?= $(COMPAT_CORE)
.PHONY: test-compat testenv-compat
test-compat: testenv
	CARGO="$(CARGO)" tests/compat.sh $(COMPAT_VERSIONS) -- $(COMPAT_TESTS)

testenv-compat:
	CARGO="$(CARGO)" tests/compat.sh --build-only $(COMPAT_VERSIONS)

## the node demo (`make demo-node`), bounded in time.
test-demo-node: testenv-node
	DEMO_DURATION=1 tests/demo-node.sh

## the README's first command, bounded in time.
test-demo: testenv
	DEMO_DURATION=10 tests/demo.sh

build:
	$(CARGO) build --locked --release

## image: the container image archive (OCI) from a static release binary; prints its path.
image:
	tests/image.sh build

## scale benchmark on the real control plane (docs/performance.md): prints a table and writes
## JSON. Not part of `test`: it measures, it does not assert. NAMESPACES=10000 for the large run.
NAMESPACES ?= 2000
BENCH_JSON ?= target/scale-$(NAMESPACES).json
bench: testenv
	$(CARGO) bench --locked --bench scale -- --namespaces $(NAMESPACES) --json $(BENCH_JSON)

## advisory check (needs the RustSec advisory database).
audit:
	$(CARGO) audit

## licenses, duplicate crates and sources against deny.toml; offline (`cargo install cargo-deny`).
deny:
	$(CARGO) deny check bans licenses sources

# Operator workflow, as a kubebuilder project offers it, against the cluster of the current
# kubeconfig (KUBECONFIG or ~/.kube/config): `make install run` while developing,
# `make deploy` / `make undeploy` for the whole base. docs/install.md#operator-workflow.
KUBECTL ?= kubectl
CRD := deploy/crd/ecrpullsecrets.yaml
RUN_ARGS ?=
DELETE_TIMEOUT ?= 120s

# Deletes every EcrPullSecret (when the CRD is installed) and waits until a running controller
# has removed their Secrets and ServiceAccount entries and released the finalizer. Deleting the
# CRD deletes them anyway; doing it first, while the controller runs, lets it clean up.
define delete_resources
if $(KUBECTL) get crd ecrpullsecrets.ecr-pull-secrets.io >/dev/null 2>&1; then \
  $(KUBECTL) delete ecrpullsecrets --all --wait --timeout=$(DELETE_TIMEOUT) || { \
    echo "EcrPullSecrets not all gone after $(DELETE_TIMEOUT): while they hold the finalizer" \
         "ecr-pull-secrets.io/cleanup, a running controller must remove their Secrets. Start it" \
         "(make run, or make deploy) and retry; docs/install.md#the-ecrpullsecret-crd has the manual way." >&2; \
    exit 1; }; \
fi
endef

## install: the EcrPullSecret CRD into the current kubeconfig's cluster.
install:
	$(KUBECTL) apply --server-side -f $(CRD)
	$(KUBECTL) wait --for=condition=Established --timeout=60s crd/ecrpullsecrets.ecr-pull-secrets.io

## uninstall: every EcrPullSecret (cleaned up by a running controller), then the CRD.
uninstall:
	$(delete_resources)
	$(KUBECTL) delete --ignore-not-found -f $(CRD)

## run: the controller from source against the current kubeconfig, serving EcrPullSecrets;
## RUN_ARGS adds flags, e.g. RUN_ARGS="--region eu-west-1 --credentials-secret aws-credentials".
run:
	$(CARGO) run -- run --resources $(RUN_ARGS)

## deploy: the kustomize base (CRD, namespace, RBAC, Deployment): kubectl apply -k deploy.
deploy:
	$(KUBECTL) apply -k deploy

## undeploy: every EcrPullSecret (cleaned up by the deployed controller), then the base.
undeploy:
	$(delete_resources)
	$(KUBECTL) delete --ignore-not-found -k deploy
