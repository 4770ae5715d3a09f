# The two commands a newcomer needs are `make demo` and `make test`;
# everything else here is what they are made of.
SHELL := /usr/bin/env bash
.SHELLFLAGS := -euo pipefail -c
GO ?= go

.PHONY: demo test setup sandbox-deps lint unit e2e bench bench-scale bench-prometheus build gen-injector clean

## demo: install what the sandbox needs, start it and run a whole Online Boutique migration.
demo: sandbox-deps
	bash scripts/demo.sh

## test: install what is needed, then lint, unit tests (race detector) and end-to-end tests in the sandbox.
test: setup lint unit e2e

## sandbox-deps: Prometheus (Debian package), kube-apiserver and istiod built from source, cached.
sandbox-deps:
	bash scripts/install-prometheus.sh
	bash scripts/build-kube-apiserver.sh >/dev/null
	bash scripts/build-istiod.sh >/dev/null

## setup: the sandbox's dependencies and golangci-lint (pinned, cached).
setup: sandbox-deps
	bash scripts/install-tools.sh >/dev/null

## lint: gofmt, go vet and golangci-lint on both modules.
lint:
	@unformatted="$$(gofmt -l $$(git ls-files '*.go'))"; \
	if [[ -n "$$unformatted" ]]; then echo "gofmt needed on:"; echo "$$unformatted"; exit 1; fi
	$(GO) vet ./...
	cd sandbox && $(GO) vet ./...
	"$$(bash scripts/install-tools.sh)" run ./...
	cd sandbox && "$$(bash ../scripts/install-tools.sh)" run ./...

## unit: fast tests of both modules, with the race detector.
unit:
	$(GO) test -race -short -count=1 ./...
	cd sandbox && $(GO) test -race -short -count=1 ./...

## e2e: end-to-end tests against the sandbox (real kube-apiserver, real Prometheus).
e2e:
	cd sandbox && $(GO) test -count=1 -timeout 45m ./...

## bench: the planner benchmark (2,000 namespaces, 20,000 workloads, 200,000 flows).
bench:
	$(GO) test ./planner -run '^$$' -bench BenchmarkPlan -benchmem -benchtime 3x

## bench-scale: the built binary's plan and status against the sandbox's API server and a synthetic Prometheus at 20, 200 and 2,000 namespaces (about 10 minutes; the 200-namespace run is TestE2EScale in e2e).
bench-scale: sandbox-deps
	cd sandbox && $(GO) test ./scale -run '^$$' -bench BenchmarkScale -benchtime 1x -timeout 3h -v -scale.namespaces=20,200,2000

## bench-prometheus: the product's queries against a real Prometheus backfilled with 7 days of 200 namespaces (about 20 minutes).
bench-prometheus: sandbox-deps
	cd sandbox && $(GO) test ./scale -run '^$$' -bench BenchmarkRealPrometheus -benchtime 1x -timeout 3h -v

## gen-injector: regenerate sandbox/controlplane/injector.gen.yaml (istiod's injection template and webhook) from the pinned Istio charts; committed, so only after an Istio bump.
gen-injector:
	bash scripts/gen-injector.sh

## build: the mtls-migrate binary in bin/.
build:
	$(GO) build -o bin/mtls-migrate ./cmd/mtls-migrate

clean:
	rm -rf bin
