# podwall build, test and benchmark entry points (GNU make).
SHELL := /bin/bash
.SHELLFLAGS := -euo pipefail -c

GO ?= go
BIN_DIR := $(CURDIR)/bin
CNI_BIN_DIR := $(BIN_DIR)/cni
# Static, stripped binaries: the IPAM benchmark is dominated by process start.
GO_BUILD := CGO_ENABLED=0 $(GO) build -trimpath -ldflags='-s -w'
REFERENCE_PLUGINS := \
	github.com/containernetworking/plugins/plugins/main/bridge \
	github.com/containernetworking/plugins/plugins/main/ptp \
	github.com/containernetworking/plugins/plugins/ipam/host-local \
	github.com/containernetworking/plugins/plugins/main/loopback \
	github.com/containernetworking/plugins/plugins/meta/portmap \
	github.com/containernetworking/plugins/plugins/meta/firewall

export PODWALL_BIN_DIR := $(BIN_DIR)
# ip, iptables and friends live in sbin, which a non-login PATH may lack.
export PATH := $(PATH):/usr/sbin:/sbin

.PHONY: all deps build plugins k8s-tools test bench demo clean

all: build

deps:
	@scripts/install-deps.sh

plugins:
	@mkdir -p $(CNI_BIN_DIR)
	$(GO_BUILD) -o $(CNI_BIN_DIR)/ $(REFERENCE_PLUGINS)

# Every main package under cmd/ becomes bin/<dir name>; an empty cmd/ is fine.
build: plugins
	@mkdir -p $(BIN_DIR)
	@if [ -n "$$(find cmd -name '*.go' -print -quit 2>/dev/null)" ]; then \
		echo "$(GO_BUILD) -o $(BIN_DIR)/ ./cmd/..."; \
		$(GO_BUILD) -o $(BIN_DIR)/ ./cmd/...; \
	fi

# Kubernetes binaries, etcd and the pause image for the cluster tests under
# test/k8s, in bin/k8s/; rebuilt only when their inputs change (cold ~12 min).
k8s-tools:
	@scripts/build-k8s.sh

test: deps build k8s-tools
	@unformatted="$$(gofmt -l .)"; \
	if [ -n "$$unformatted" ]; then echo "gofmt needed:"; echo "$$unformatted"; exit 1; fi
	$(GO) vet ./...
	$(GO) test -race -count=1 -timeout 40m ./...

bench: deps build k8s-tools
	$(GO) test -run '^$$' -bench . -benchtime 1x -timeout 40m ./...

demo: deps build
	@if [ -x scripts/demo.sh ]; then scripts/demo.sh; else echo "demo not yet available"; fi

clean:
	rm -rf $(BIN_DIR)
