# sluice — `make help` lists the targets.
SHELL := /bin/bash
GO ?= go
BIN := bin/sluice
VERSION ?= $(shell git describe --tags --always --dirty 2>/dev/null || echo dev)
LDFLAGS := -X main.version=$(VERSION)
# make test: scripts/test.sh runs check-generate, then test/e2e, the raced
# packages (the longest first) and lint at the same time, compiles the
# fuzzing binaries meanwhile, then the fuzz smoke run; it says why, and
# prints each part's wall and CPU time.
# -p 4: four package test binaries at a time (the default, one per CPU,
# queued pkg/enforcer and pkg/proxy, 90 s each, behind each other).
# -parallel 2: two tests of a package at a time. test/e2e runs 4: at 4 its
# tests (then raced, with 10 s waits) once timed out a daemon start and a
# curl on 2 loaded cores; with plain probes and 30 s condition waits it
# passed at 4 under two busy loops (120 s) and at a load average of 25.
# test/e2e runs without -race: what it tests is bin/sluice (built without
# -race) and real clients; its test binary holds only loopback helpers
# (pkg/testutil, raced by the package tests) and is re-executed as the
# probe inside sandboxes hundreds of times, and a -race binary takes
# 1.2-1.5 s to start on the 2-core machine (a plain one 0.07 s).
# -vet=off: go test's own vet is a subset of the go vet ./... that make
# lint runs in the same make test (and that one covers the test files).
GOTEST_FLAGS ?= -race -count=1 -p 4 -parallel 2 -vet=off
E2E_FLAGS ?= -count=1 -parallel 4 -vet=off
# FUZZTIME_TEST: the fuzz smoke run of make test, per target (scripts/fuzz.sh).
FUZZTIME_TEST ?= 2s

.DEFAULT_GOAL := build

.PHONY: help build generate check-generate test test-unit demo bench fuzz soak lint deadcode deadcode-secrets deps clean package package-test check-deploy

help: ## list the targets
	@grep -hE '^[a-zA-Z_-]+:.*## ' $(MAKEFILE_LIST) | awk -F':.*## ' '{printf "  %-16s %s\n", $$1, $$2}'

deps: ## install build and test dependencies (Debian; idempotent)
	@scripts/deps.sh

build: ## build bin/sluice (needs no clang: the eBPF objects are committed)
	@mkdir -p bin
	$(GO) build -ldflags "$(LDFLAGS)" -o $(BIN) ./cmd/sluice

generate: deps ## regenerate the eBPF objects with bpf2go and clang-19
	$(GO) generate ./pkg/enforcer/...

check-generate: generate ## fail when the committed eBPF objects are stale
	@git diff --exit-code -- pkg/enforcer/ || { echo "committed eBPF objects are stale: run make generate and commit"; exit 1; }

test: deps build ## the whole suite: lint, stale eBPF check, unit, privileged e2e (as root), short fuzz
	@GO="$(GO)" GOTEST_FLAGS="$(GOTEST_FLAGS)" E2E_FLAGS="$(E2E_FLAGS)" FUZZTIME="$(FUZZTIME_TEST)" scripts/test.sh

test-unit: ## unprivileged tests only
	$(GO) test -count=1 ./...

demo: deps build ## offline end-to-end demonstration on loopback
	@scripts/demo.sh

bench: deps build ## benchmarks: ratios against direct connections, measured in one run; 10,000-sandbox scale test
	@scripts/bench/run.sh
	SLUICE_SCALE=$${SLUICE_SCALE:-10000} SLUICE_BIN=$(CURDIR)/$(BIN) $(GO) test -count=1 -run '^TestDaemonScale$$' -v ./test/e2e/ | grep -E 'scale_test|^(ok|FAIL|---)'

soak: deps build ## load and soak, not in make test (SLUICE_SOAK_MINUTES=30 for the full run); writes scripts/soak/RESULTS.md
	SLUICE_SOAK=1 SLUICE_BIN=$(CURDIR)/$(BIN) $(GO) test -count=1 -timeout 0 -v -run '^TestSoak' ./test/e2e/

fuzz: ## run every fuzz target for FUZZTIME (default 30s each)
	@scripts/fuzz.sh $${FUZZTIME:-30s}

lint: ## gofmt and go vet
	@out=$$(gofmt -l $$(git ls-files '*.go' | grep -v '_bpfel.go$$')); if [ -n "$$out" ]; then echo "gofmt needed:"; echo "$$out"; exit 1; fi
	$(GO) vet ./...

deadcode: deadcode-secrets ## fail on unreachable functions outside tests (deadcode -test), and on any in pkg/secrets the binary cannot reach (deadcode without -test)
	@out=$$($(GO) run golang.org/x/tools/cmd/deadcode@v0.52.0 -test ./... 2>&1 | grep -v '_test\.go:' || true); \
		if [ -n "$$out" ]; then echo "dead code:"; echo "$$out"; exit 1; fi

# deadcode-secrets: issue #20's acceptance (the OAuth2, SigV4 and callback
# code is reachable from the binary), run by make test with lint. Its root
# is the binary's main package alone (./... would add the probe's and the
# bench report's, and cost a fifth more CPU for no more answer).
deadcode-secrets: ## fail on any function in pkg/secrets the binary cannot reach (deadcode without -test)
	@out=$$($(GO) run golang.org/x/tools/cmd/deadcode@v0.52.0 ./cmd/sluice 2>&1) || { echo "deadcode failed:"; echo "$$out"; exit 1; }; \
		out=$$(echo "$$out" | grep '^pkg/secrets/' || true); \
		if [ -n "$$out" ]; then echo "unreachable from the binary in pkg/secrets:"; echo "$$out"; exit 1; fi

package: ## build the .deb (dist/) with nfpm: binary, systemd unit, config, man pages, completions
	@scripts/package.sh dist

package-test: package ## install the .deb on this machine; check the daemon attaches and enforces (root)
	@scripts/package-test.sh "$$(ls -t dist/sluice_*.deb | head -1)"

check-deploy: ## validate the Kubernetes manifests (kubectl dry-run, strict k8s.io/api decode)
	@scripts/deploy/kubernetes/validate.sh

clean: ## remove build output
	rm -rf bin dist
