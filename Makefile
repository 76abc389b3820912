# muster: see README.md. `make demo` and `make test` are the two entry points.
SHELL := /bin/bash
GO ?= go
BIN := $(CURDIR)/bin
TOOLS := $(CURDIR)/.local/tools
# Debian's torch lives at /usr/bin/python3 (the python3 first on PATH may not have it).
TORCH_PYTHON ?= /usr/bin/python3

PROTOC_GEN_GO_VERSION := v1.36.12
PROTOC_GEN_GO_GRPC_VERSION := v1.6.2

.PHONY: all build test test-short bench proto demo clean deps

all: build

build:
	$(GO) build -o $(BIN)/coordinator ./coordinator/cmd/coordinator
	$(GO) build -o $(BIN)/agent ./agent/cmd/agent

# deps installs what the tests need on a Debian machine (root): torch for the
# real distributed program, protoc for `make proto`.
deps:
	@if ! $(TORCH_PYTHON) -c 'import torch.distributed' 2>/dev/null || ! command -v protoc >/dev/null; then \
		echo "installing python3-torch and protobuf-compiler (Debian packages)"; \
		apt-get update -q && DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends python3-torch protobuf-compiler; \
	fi

test: deps build
	MUSTER_BIN=$(BIN) TORCH_PYTHON=$(TORCH_PYTHON) $(GO) test -count=1 -timeout 20m ./...

bench: build
	$(GO) test -run '^$$' -bench . -benchtime 3x -timeout 30m ./coordinator/...

$(TOOLS)/protoc-gen-go:
	GOBIN=$(TOOLS) $(GO) install google.golang.org/protobuf/cmd/protoc-gen-go@$(PROTOC_GEN_GO_VERSION)

$(TOOLS)/protoc-gen-go-grpc:
	GOBIN=$(TOOLS) $(GO) install google.golang.org/grpc/cmd/protoc-gen-go-grpc@$(PROTOC_GEN_GO_GRPC_VERSION)

# proto regenerates the committed Go code from proto/**/*.proto.
proto: $(TOOLS)/protoc-gen-go $(TOOLS)/protoc-gen-go-grpc
	PATH=$(TOOLS):$$PATH protoc -I proto \
		--go_out=proto --go_opt=paths=source_relative \
		--go-grpc_out=proto --go-grpc_opt=paths=source_relative \
		proto/muster/v1/rendezvous.proto

demo: deps build
	./e2e/demo.sh

clean:
	rm -rf $(BIN) .local
