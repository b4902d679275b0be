# Tooling for github.com/drl-go/distributed-rate-limiter.
# Run `make help` for the list of targets.

SHELL       := /bin/bash
.SHELLFLAGS := -eu -o pipefail -c
.DEFAULT_GOAL := help

# Make sure the standard Go install and installed tools are reachable.
GO_ROOT_BIN := /usr/local/go/bin
export PATH := $(GO_ROOT_BIN):$(PATH)
GO      ?= go
GOBIN   ?= $(shell $(GO) env GOBIN)
ifeq ($(strip $(GOBIN)),)
GOBIN   := $(shell $(GO) env GOPATH)/bin
endif
export PATH := $(GOBIN):$(PATH)

REDIS_ADDR ?= 127.0.0.1:6379
export REDIS_ADDR

# Overridable knobs.
TESTFLAGS  ?= -race -shuffle=on -count=1 -timeout 20m
BENCH      ?= .
COUNT      ?= 6
FUZZTIME   ?= 20s
STATICCHECK_VERSION          ?= latest
STATICCHECK_FALLBACK_VERSION ?= v0.8.2

.PHONY: help redis test bench lint vet staticcheck tools fuzz demo cluster-up cluster-down test-cluster

help: ## Show this help
	@echo "Targets:"
	@grep -E '^[a-zA-Z_-]+:.*## ' $(firstword $(MAKEFILE_LIST)) | \
		awk 'BEGIN {FS = ":.*## "}; {printf "  %-12s %s\n", $$1, $$2}'
	@echo
	@echo "Variables: BENCH=$(BENCH) COUNT=$(COUNT) FUZZTIME=$(FUZZTIME) REDIS_ADDR=$(REDIS_ADDR)"

redis: ## Ensure a Redis server answers on 127.0.0.1:6379 (start/install one if needed)
	@bash scripts/ensure-redis.sh

test: redis ## Run all tests (root module, then bench/ module) with -race -shuffle=on
	@status=0; \
	echo "==> go test $(TESTFLAGS) -skip '^TestCluster' ./...  (root module; the cluster suite is make test-cluster's)"; \
	$(GO) test $(TESTFLAGS) -skip '^TestCluster' ./... || status=1; \
	echo "==> go test -count=1 -run TestSweep ./sim/  (the full simulation grid, without -race)"; \
	$(GO) test -count=1 -run TestSweep ./sim/ || status=1; \
	echo "==> go test -count=1 -run TestHybridHotKeysOutlastAFlood .  (again without -race, as before the doorkeeper let it run under -race)"; \
	$(GO) test -count=1 -run TestHybridHotKeysOutlastAFlood -v . | grep -E '^(---|ok|FAIL|panic)|flood_test' || status=1; \
	if [ -f bench/go.mod ]; then \
		echo "==> go test $(TESTFLAGS) ./...  (bench module)"; \
		( cd bench && $(GO) test $(TESTFLAGS) ./... ) || status=1; \
	fi; \
	if [ $$status -ne 0 ]; then echo "make test: FAILED" >&2; fi; \
	exit $$status

cluster-up: ## Start a throwaway Redis Cluster (3 masters, 3 replicas; RL_CLUSTER_PORT, default 7100) and print REDIS_CLUSTER_ADDRS=...
	@bash scripts/redis-cluster.sh start

cluster-down: ## Stop the cluster cluster-up started (only its own pids; a no-op if none runs)
	@bash scripts/redis-cluster.sh stop

test-cluster: ## Start a Redis Cluster of its own, run the cluster suite (TestCluster*) on it, stop it even on failure
	@dir=$$(mktemp -d "$${TMPDIR:-/tmp}/rl-cluster-test.XXXXXX"); \
	export RL_CLUSTER_DIR="$$dir"; \
	trap 'bash scripts/redis-cluster.sh stop' EXIT; \
	trap 'exit 130' INT TERM; \
	echo "==> starting a Redis Cluster (scripts/redis-cluster.sh, state in $$dir)"; \
	start=$$(date +%s); \
	addrs=$$(bash scripts/redis-cluster.sh start | sed -n 's/^REDIS_CLUSTER_ADDRS=//p'); \
	if [ -z "$$addrs" ]; then echo "make test-cluster: no cluster addresses" >&2; exit 1; fi; \
	echo "REDIS_CLUSTER_ADDRS=$$addrs (up in $$(( $$(date +%s) - start )) s)"; \
	echo "==> go test $(TESTFLAGS) -run '^TestCluster' -v . ./global/  (cluster suite)"; \
	REDIS_CLUSTER_ADDRS="$$addrs" $(GO) test $(TESTFLAGS) -timeout 5m -run '^TestCluster' -v . ./global/ 2>&1 | grep -Ev '^\s*=== '

bench: redis ## Run benchmarks in bench/ (BENCH=regexp COUNT=n), output tee'd to bench/bench.txt
	cd bench && $(GO) test -run '^$$' -bench '$(BENCH)' -benchmem -count $(COUNT) ./... | tee bench.txt

lint: vet staticcheck ## Run go vet and staticcheck on the root module

vet:
	$(GO) vet ./...

staticcheck: tools
	staticcheck ./...

tools: ## Install staticcheck into GOBIN if missing
	@if command -v staticcheck >/dev/null 2>&1; then \
		echo "staticcheck present: $$(staticcheck -version)"; \
	else \
		echo "installing honnef.co/go/tools/cmd/staticcheck@$(STATICCHECK_VERSION) into $(GOBIN)"; \
		if ! GOBIN="$(GOBIN)" $(GO) install honnef.co/go/tools/cmd/staticcheck@$(STATICCHECK_VERSION); then \
			echo "retrying with staticcheck@$(STATICCHECK_FALLBACK_VERSION)" >&2; \
			GOBIN="$(GOBIN)" $(GO) install honnef.co/go/tools/cmd/staticcheck@$(STATICCHECK_FALLBACK_VERSION); \
		fi; \
		staticcheck -version; \
	fi

fuzz: ## Run each Fuzz target of the root package for FUZZTIME (default 20s)
	@list=$$($(GO) test -list '^Fuzz' .); \
	targets=$$(printf '%s\n' "$$list" | grep -E '^Fuzz' || true); \
	if [ -z "$$targets" ]; then echo "no fuzz targets found in root package"; exit 0; fi; \
	for f in $$targets; do \
		echo "==> fuzzing $$f for $(FUZZTIME)"; \
		$(GO) test -run '^$$' -fuzz "^$${f}\$$" -fuzztime $(FUZZTIME) . ; \
	done

demo: ## Run the demo (go run ./cmd/demo)
	$(GO) run ./cmd/demo
