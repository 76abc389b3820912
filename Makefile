# muster: see README.md. `make demo` and `make test` are the two entry points.
SHELL := /bin/bash
GO ?= go
BIN := $(CURDIR)/bin
TOOLS := $(CURDIR)/.local/tools
# Debian's torch lives at /usr/bin/python3 (the python3 first on PATH may not have it).
TORCH_PYTHON ?= /usr/bin/python3

PROTOC_GEN_GO_VERSION := v1.36.12
PROTOC_GEN_GO_GRPC_VERSION := v1.6.2

.PHONY: all help build test test-unit vet lint fmt fuzz bench bench-deps coscheduling-bin proto demo demo-kserve demo-bare clean deps

all: build

help:
	@echo "make demo          a local Kubernetes cluster; the tensor-parallel model served by a group of 4 pods (KSERVE=1: through KServe)"
	@echo "make test          every test: unit, integration, end-to-end (real etcd, kube-apiserver, torch), then the fuzz targets"
	@echo "make test-unit     the tests outside e2e/ and bench/ with -short: no control plane, no torch"
	@echo "make vet           gofmt and go vet, as CI runs them"
	@echo "make lint          staticcheck $(STATICCHECK_VERSION) over every package, as CI runs it"
	@echo "make fmt           gofmt every Go file"
	@echo "make demo-bare     the rendezvous on bare hosts, no Kubernetes"
	@echo "make demo-kserve   the demo through KServe's own controller"
	@echo "make bench         every comparison of docs/performance.md"
	@echo "make cluster       a local cluster in the background (cluster-down stops it); see the comment above the target for its knobs"
	@echo "make proto         regenerate proto/muster/v1/*.pb.go"
	@echo "make build         bin/coordinator, bin/agent, bin/scheduler, bin/kubectl-muster (the kubectl plugin: PATH=$$PWD/bin:$$PATH kubectl muster --help)"
	@echo "make images        an OCI image per binary for linux/amd64 and linux/arm64 in .local/images/, no container engine (docs/install.md)"

# vet: what CI checks before the tests: every Go file gofmt'd, go vet clean.
vet:
	@unformatted=$$(gofmt -l $$(git ls-files '*.go')); \
	if [ -n "$$unformatted" ]; then echo "not gofmt'd (make fmt):"; echo "$$unformatted"; exit 1; fi
	$(GO) vet ./...

# lint: staticcheck at a pinned version, through `go run` (nothing to
# install; the module cache keeps it). Its default checks; a finding that
# is deliberate carries a //lint:ignore with the reason.
STATICCHECK_VERSION := v0.8.2
lint:
	$(GO) run honnef.co/go/tools/cmd/staticcheck@$(STATICCHECK_VERSION) ./...

fmt:
	gofmt -w $$(git ls-files '*.go')

# test-unit: the packages outside e2e/ and bench/ with -short: no control
# plane (tests that need one skip), no torch; embedded etcd and real
# processes still run.
test-unit:
	$(GO) test -short -count=1 $$($(GO) list ./... | grep -v -e /e2e -e /bench)

# What --version prints: `git describe` (a tag, or the commit) and the commit.
VERSION ?= $(shell git describe --tags --always --dirty 2>/dev/null || echo dev)
COMMIT ?= $(shell git rev-parse HEAD 2>/dev/null)$(shell git diff --quiet HEAD 2>/dev/null || echo -dirty)
VERSION_LDFLAGS := -X github.com/muster-dev/muster/internal/version.Version=$(VERSION) \
	-X github.com/muster-dev/muster/internal/version.Commit=$(COMMIT)

build:
	$(GO) build -ldflags '$(VERSION_LDFLAGS)' -o $(BIN)/coordinator ./coordinator/cmd/coordinator
	$(GO) build -ldflags '$(VERSION_LDFLAGS)' -o $(BIN)/agent ./agent/cmd/agent
	$(GO) build -ldflags '$(KUBE_LDFLAGS) $(VERSION_LDFLAGS)' -o $(BIN)/scheduler ./scheduler-plugin/cmd/scheduler
	$(GO) build -ldflags '$(VERSION_LDFLAGS)' -o $(BIN)/kubectl-muster ./kubectl-muster/cmd/kubectl-muster

# images: an OCI image per binary (coordinator, agent, scheduler) for
# IMAGE_PLATFORMS, with no container engine and no base image from a
# registry: deploy/images cross-compiles each binary static (CGO_ENABLED=0,
# -trimpath, build's ldflags) onto an empty base that runs it as user 65532,
# and writes .local/images/<name>/, an OCI layout whose index has an image
# per platform, named IMAGE_REGISTRY/muster-<name>:IMAGE_TAG (the tag
# defaults to the chart's appVersion, as the chart's values do). A cold
# cross-compile of the scheduler takes several minutes per platform.
# deploy/images/*.Dockerfile build the same images with docker or buildah;
# docs/install.md says how to push or load them.
IMAGE_REGISTRY ?= ghcr.io/muster-dev
IMAGE_TAG ?=
IMAGE_PLATFORMS ?= linux/amd64,linux/arm64
SOURCE_DATE_EPOCH ?= $(shell git log -1 --format=%ct 2>/dev/null || echo 0)
.PHONY: images lint-workflows
images:
	$(GO) run ./deploy/images/cmd/mkimage -out .local/images \
		-registry '$(IMAGE_REGISTRY)' -tag '$(IMAGE_TAG)' -platforms '$(IMAGE_PLATFORMS)' \
		-version '$(VERSION)' -commit '$(COMMIT)' -source-date-epoch '$(SOURCE_DATE_EPOCH)' \
		-ldflags '$(VERSION_LDFLAGS)' -kube-ldflags '$(KUBE_LDFLAGS)'

# lint-workflows: actionlint, pinned, through go run, over
# .github/workflows/ (the release workflow); make test runs it first.
ACTIONLINT_VERSION := v1.7.12
lint-workflows:
	$(GO) run github.com/rhysd/actionlint/cmd/actionlint@$(ACTIONLINT_VERSION)

# model: the demo model's weights (e2e/model/train.py on e2e/model/corpus.txt,
# about 15 s on one core; nothing to do when they are current). The model
# trains them itself when missing; this keeps that out of first-answer times.
.PHONY: model
model: deps
	$(TORCH_PYTHON) e2e/model/train.py

# deps installs what the tests need on a Debian machine (root): torch for the
# real distributed program, protoc for `make proto`.
deps:
	@if ! $(TORCH_PYTHON) -c 'import torch.distributed' 2>/dev/null || ! command -v protoc >/dev/null; then \
		echo "installing python3-torch and protobuf-compiler (Debian packages)"; \
		apt-get update -q && DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends python3-torch protobuf-compiler; \
	fi

test: lint-workflows deps build model lws-bin kserve-bin
	# -p 1: one package at a time. Several start a Kubernetes control plane
	# and torch processes; on 2 cores running them side by side only makes
	# each slower and their timings noisier.
	MUSTER_BIN=$(BIN) TORCH_PYTHON=$(TORCH_PYTHON) $(GO) test -p 1 -count=1 -timeout 25m ./...
	$(MAKE) fuzz

# fuzz runs each fuzz target for FUZZTIME (go test runs their seeds with
# the rest): what reaches a process from the network or a pod spec, and
# what reaches a runtime's argv.
FUZZTIME ?= 10s
# FuzzAdmit (coordinator/webhook) is not fuzzed here, only its 72 seeds run
# with go test: with coverage guidance over the Kubernetes API packages it
# links, the engine makes about 80 executions and then none (0/s, seen on
# every run since at least c1b8ad9; without instrumentation it runs 28k/s),
# and a worker stuck at the end of FUZZTIME fails the run with "context
# deadline exceeded" (clean-clone CI, 2026-12-02). Run it by hand for longer:
#   go test -run '^$$' -fuzz '^FuzzAdmit$$' -fuzztime 5m ./coordinator/webhook
FUZZ_TARGETS := FuzzBuild:./agent/preset FuzzRender:./agent/preset FuzzCheckJoin:./coordinator/server
fuzz:
	@for t in $(FUZZ_TARGETS); do \
		echo "fuzz $${t%%:*} in $${t#*:} for $(FUZZTIME)"; \
		$(GO) test -run '^$$' -fuzz "^$${t%%:*}$$" -fuzztime $(FUZZTIME) $${t#*:} || exit 1; \
	done

# bench: every comparison of docs/performance.md side by side (bench/*/): each
# benchmark appends rows to $(BENCH_OUT); benchreport turns them into
# .local/bench.json and a table. Benchmarks report; they assert no timings.
BENCH_OUT := $(CURDIR)/.local/bench.jsonl
BENCH_TIMEOUT ?= 25m
bench: deps bench-deps build kube-bins coscheduling-bin
	@mkdir -p $(CURDIR)/.local; rm -f $(BENCH_OUT)
	MUSTER_BIN=$(BIN) TORCH_PYTHON=$(TORCH_PYTHON) MUSTER_BENCH_OUT=$(BENCH_OUT) \
		$(GO) test -p 1 -count=1 -run '^$$' -bench . -benchtime 1x -timeout $(BENCH_TIMEOUT) ./bench/...; \
	status=$$?; $(GO) run ./bench/cmd/benchreport $(BENCH_OUT) $(CURDIR)/.local/bench.json; exit $$status

# bench-deps: the anchors that come from Debian (nginx as a reverse proxy,
# wrk as the load generator).
bench-deps:
	@if ! command -v nginx >/dev/null || ! command -v wrk >/dev/null; then \
		echo "installing nginx-light and wrk (Debian packages)"; \
		apt-get update -q && DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends nginx-light wrk; \
	fi

# coscheduling-bin: scheduler-plugins' upstream Coscheduling plugin in
# kube-scheduler, built in its own module (tools/coscheduling, pinned to
# Kubernetes v1.34.4) only when missing. Anchor for the gang benchmarks.
coscheduling-bin:
	@test -x $(BIN)/coscheduling-scheduler || { echo "building tools/coscheduling into $(BIN)/coscheduling-scheduler"; \
		cd tools/coscheduling && $(GO) build -o $(BIN)/coscheduling-scheduler . ; }

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

# demo: the model on the local Kubernetes cluster (see e2e/demo.sh); with
# KSERVE=1, through KServe (demo-kserve).
demo: deps build model kube-bins $(if $(KSERVE),kserve-bin)
	$(if $(KSERVE),./e2e/demo-kserve.sh,./e2e/demo.sh)

# demo-kserve: the same model as a multi-node KServe InferenceService, with
# KServe's own controller (see e2e/demo-kserve.sh).
demo-kserve: deps build model kube-bins kserve-bin
	./e2e/demo-kserve.sh

# demo-bare: the same rendezvous on bare hosts, no Kubernetes.
demo-bare: deps build model
	./e2e/demo-bare.sh

clean:
	rm -rf $(BIN) .local

# ---------------------------------------------------------------------------
# Local Kubernetes control plane (e2e/cluster): etcd in-process, a real
# kube-apiserver, kube-controller-manager and bin/scheduler, kwok nodes.
#   make cluster [NODES=4 GPUS=8 RACK_SIZE=2 NODE_CPU=64 NODE_MEMORY=512Gi NODE_PODS=110 NODE_BACKEND=process|kwok]
#   export KUBECONFIG=$PWD/.local/kubeconfig; bin/kubectl get nodes
#   make cluster-down
# Everything listens on 127.0.0.1 (free ports); logs in .local/logs/.

KUBE_VERSION := v1.37.2
# Binaries built from the k8s.io/kubernetes module report v0.0.0-master
# otherwise, which clients and version-skew checks refuse.
KUBE_LDFLAGS := -X k8s.io/component-base/version.gitVersion=$(KUBE_VERSION) \
	-X k8s.io/component-base/version.gitMajor=1 -X k8s.io/component-base/version.gitMinor=37
KWOK_VERSION := v0.8.0
CLUSTER_DIR ?= $(CURDIR)/.local
NODES ?= 4
GPUS ?= 8
RACK_SIZE ?= 2
NODE_CPU ?= 64
NODE_MEMORY ?= 512Gi
NODE_PODS ?= 110
# kwok: pods go Running but run nothing; process: each container's command
# runs as a local process (e2e/procnode; the agent image runs bin/agent).
NODE_BACKEND ?= process
# Seconds `make cluster` waits for the cluster to be ready.
CLUSTER_WAIT ?= 300

.PHONY: kube-bins lws-bin kserve-bin cluster cluster-down

# kube-bins: go build relinks only what changed (about a second per binary
# when nothing did; a cold build of all of them takes several minutes on 2
# cores). kwok is built outside this module (it pins its own Kubernetes
# libraries) and only when bin/kwok is missing.
kube-bins:
	$(GO) build -ldflags '$(KUBE_LDFLAGS)' -o $(BIN)/kube-apiserver k8s.io/kubernetes/cmd/kube-apiserver
	$(GO) build -ldflags '$(KUBE_LDFLAGS)' -o $(BIN)/kube-controller-manager k8s.io/kubernetes/cmd/kube-controller-manager
	$(GO) build -ldflags '$(KUBE_LDFLAGS)' -o $(BIN)/kubectl k8s.io/kubernetes/cmd/kubectl
	$(GO) build -ldflags '$(KUBE_LDFLAGS) $(VERSION_LDFLAGS)' -o $(BIN)/scheduler ./scheduler-plugin/cmd/scheduler
	$(GO) build -ldflags '$(KUBE_LDFLAGS)' -o $(BIN)/kube-scheduler k8s.io/kubernetes/cmd/kube-scheduler
	@test -x $(BIN)/kwok || { echo "installing kwok $(KWOK_VERSION) into $(BIN)"; \
		GOBIN=$(BIN) $(GO) install sigs.k8s.io/kwok/cmd/kwok@$(KWOK_VERSION); }

# lws-bin: the LeaderWorkerSet controller (sigs.k8s.io/lws, the version
# tools/lws/go.mod pins) for e2e/lws. It is a module of its own because LWS
# pins older Kubernetes libraries than ours. Built only when missing or older
# than tools/lws/go.mod: about 2 minutes cold on 2 cores, from the Go module
# proxy alone.
lws-bin:
	@test $(BIN)/lws-controller -nt tools/lws/go.mod || { echo "building the LeaderWorkerSet controller into $(BIN)/lws-controller"; \
		cd tools/lws && v=$$($(GO) list -m -f '{{.Version}}' sigs.k8s.io/lws) && \
		$(GO) build -ldflags "-X sigs.k8s.io/lws/pkg/version.GitVersion=$$v" -o $(BIN)/lws-controller sigs.k8s.io/lws/cmd; }

# kserve-bin: KServe's controller manager and LLMInferenceService controller
# (github.com/kserve/kserve cmd/manager and cmd/llmisvc, the version
# tools/kserve/go.mod pins) for e2e/kserve and
# `make demo-kserve`. A module of its own: KServe pins older Kubernetes
# libraries and controller-runtime through replace directives. Built only
# when missing or older than tools/kserve/go.mod: about 10 minutes cold on
# 2 cores, from the Go module proxy alone.
kserve-bin:
	@test $(BIN)/kserve-manager -nt tools/kserve/go.mod || { echo "building KServe's controller manager into $(BIN)/kserve-manager"; \
		cd tools/kserve && $(GO) build -o $(BIN)/kserve-manager github.com/kserve/kserve/cmd/manager; }
	@test $(BIN)/kserve-llmisvc -nt tools/kserve/go.mod || { echo "building KServe's LLMInferenceService controller into $(BIN)/kserve-llmisvc"; \
		cd tools/kserve && $(GO) build -o $(BIN)/kserve-llmisvc github.com/kserve/kserve/cmd/llmisvc; }

# KSERVE=1: the cluster also runs KServe's controller manager (make
# kserve-bin), its CRDs, ConfigMap and webhooks (e2e/kserve).
KSERVE ?=
KSERVE_FLAGS = $(if $(KSERVE),--kserve-manager $(BIN)/kserve-manager --kserve-module $$(cd tools/kserve && $(GO) list -m -f '{{.Dir}}' github.com/kserve/kserve))

# cluster starts `bin/cluster up` in its own session (it outlives make and a
# Ctrl-C in this terminal), then waits for its ready marker.
cluster: kube-bins $(if $(KSERVE),kserve-bin)
	$(GO) build -o $(BIN)/cluster ./e2e/cmd/cluster
	$(GO) build -o $(BIN)/agent ./agent/cmd/agent
	$(GO) build -o $(BIN)/coordinator ./coordinator/cmd/coordinator
	@mkdir -p $(CLUSTER_DIR)/logs
	@if [ -f $(CLUSTER_DIR)/cluster.pid ] && kill -0 $$(cat $(CLUSTER_DIR)/cluster.pid) 2>/dev/null; then \
		echo "a cluster is already running in $(CLUSTER_DIR) (pid $$(cat $(CLUSTER_DIR)/cluster.pid)): make cluster-down first"; exit 1; fi
	@rm -f $(CLUSTER_DIR)/cluster.ready; \
	setsid $(BIN)/cluster up --dir $(CLUSTER_DIR) --bin-dir $(BIN) \
		--scheduler-config $(CURDIR)/deploy/scheduler/config.yaml --crd-dir $(CURDIR)/deploy/crds \
		--nodes $(NODES) --gpus $(GPUS) --rack-size $(RACK_SIZE) \
		--cpu $(NODE_CPU) --memory $(NODE_MEMORY) --pods $(NODE_PODS) \
		--node-backend $(NODE_BACKEND) $(KSERVE_FLAGS) \
		</dev/null >$(CLUSTER_DIR)/logs/cluster.log 2>&1 & \
	pid=$$!; start=$$(date +%s); n=0; \
	printf 'starting the cluster (%s %s nodes; log: %s) ' $(NODES) $(NODE_BACKEND) $(CLUSTER_DIR)/logs/cluster.log; \
	until [ -f $(CLUSTER_DIR)/cluster.ready ]; do \
		if ! kill -0 $$pid 2>/dev/null; then \
			echo " failed:"; tail -n 25 $(CLUSTER_DIR)/logs/cluster.log; exit 1; fi; \
		if [ $$(( $$(date +%s) - start )) -ge $(CLUSTER_WAIT) ]; then \
			echo " not ready after $(CLUSTER_WAIT)s; see $(CLUSTER_DIR)/logs/"; $(BIN)/cluster down --dir $(CLUSTER_DIR); exit 1; fi; \
		n=$$((n+1)); [ $$((n % 4)) -eq 0 ] && printf .; sleep 0.25; \
	done; \
	echo " ready in $$(( $$(date +%s) - start ))s (pid $$pid)"; \
	echo; \
	echo "  export KUBECONFIG=$(CLUSTER_DIR)/kubeconfig"; \
	echo "  $(BIN)/kubectl get nodes"; \
	echo "  make cluster-down"

# cluster-down stops the cluster and checks that none of its processes (each
# names a file under CLUSTER_DIR on its command line) is left.
cluster-down:
	@if [ -x $(BIN)/cluster ]; then $(BIN)/cluster down --dir $(CLUSTER_DIR); \
	else echo "no $(BIN)/cluster: nothing started here"; fi
	@left=$$(ps -eo pid=,args= | grep -F -e '$(CLUSTER_DIR)/kubeconfig' -e '$(CLUSTER_DIR)/cluster/' -e 'up --dir $(CLUSTER_DIR)' | grep -v grep); \
	if [ -n "$$left" ]; then echo "left running:"; echo "$$left"; exit 1; fi; \
	echo "no cluster process left"
