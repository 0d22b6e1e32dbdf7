# ecr-pull-secrets: the two commands in README.md are `make demo` and `make test`.
SHELL := /bin/bash
.SHELLFLAGS := -euo pipefail -c
TESTENV := tests/testenv.sh
CARGO ?= cargo

.PHONY: demo test lint test-unit test-alerts test-emulator test-testenv test-e2e test-demo testenv build audit bench

## demo: real local control plane + ECR emulator + the controller; Ctrl-C stops it.
demo:
	tests/demo.sh

## test: every tier: lint, unit + component, emulator, end to end, demo smoke run.
test: lint test-unit test-alerts test-emulator test-testenv test-e2e test-demo

lint:
	$(CARGO) fmt --all -- --check
	$(CARGO) clippy --all-targets --locked -- -D warnings

## unit tests (src/) and component tests (kube through a scripted API server).
test-unit:
	$(CARGO) test --locked --lib --bins --test component --test deploy

## alert rules: syntax, and a firing and a quiet case per alert (promtool from Debian's prometheus).
test-alerts:
	promtool check rules deploy/alerts/ecr-pull-secrets.rules.yaml
	promtool test rules tests/alerts/ecr-pull-secrets.test.yaml

testenv:
	$(TESTENV) build

## the emulator's own tests, in the venv testenv builds.
test-emulator: testenv
	"$$($(TESTENV) venv)/bin/python" -m pytest -q -p no:cacheprovider tests/ecr-emulator

## the test environment itself: up, /readyz, RBAC refusing a stranger, down leaving nothing.
test-testenv: testenv
	tests/testenv-selftest.sh

## end to end: the real binary against kube-apiserver + etcd + the ECR emulator. Serial:
## the tests share one emulator and its call counter.
test-e2e: testenv
	$(CARGO) build --locked --bins --tests
	$(TESTENV) run -- $(CARGO) test --locked --test 'e2e_*' -- --test-threads=1

## the README's first command, bounded in time.
test-demo: testenv
	DEMO_DURATION=10 tests/demo.sh

build:
	$(CARGO) build --locked --release

## scale benchmark on the real control plane (docs/performance.md): prints a table and writes
## JSON. Not part of `test`: it measures, it does not assert. NAMESPACES=10000 for the large run.
NAMESPACES ?= 2000
BENCH_JSON ?= target/scale-$(NAMESPACES).json
bench: testenv
	$(CARGO) bench --locked --bench scale -- --namespaces $(NAMESPACES) --json $(BENCH_JSON)

## advisory check (needs the RustSec advisory database).
audit:
	$(CARGO) audit
