# `make run` and `make test` are all a fresh machine needs. Both use the same
# cargo profile (dev, with optimised dependencies), so the dependency stack is
# built once and shared by run, test, bench and CI.

CARGO      ?= cargo
TARGET_DIR := $(or $(CARGO_TARGET_DIR),target)
BIN        := $(TARGET_DIR)/debug
DATA_DIR   ?= default.raftkv

.PHONY: all deps doctor pydeps go-peers node-peers test-peers build run cluster test test-k8s chaos sim fuzz bench bench-cluster bench-k8s clean-data

# The chart tests' Python packages (Helm 4's engine, Kubernetes' schemas).
VENV       ?= .venv

all: build

deps:
	@./scripts/deps.sh

# One line per prerequisite: found (version, path) or missing (what to install).
doctor:
	@./scripts/deps.sh --doctor

pydeps:
	@./scripts/pydeps.sh $(VENV) charts/tests/requirements.txt

# Test peers built from Go modules (tests/go): etcd 3.5 and 3.6, and the
# object stores of the backup tests (versitygw for S3, fake-gcs-server);
# and a Kubernetes control plane (tests/k8s: kube-apiserver,
# kube-controller-manager, kubectl). About 10 minutes from nothing.
go-peers: deps
	@./scripts/go-peers.sh

# Test peers from npm (tests/node): Azurite, Azure Storage's emulator.
node-peers: deps
	@./scripts/node-peers.sh

test-peers: go-peers node-peers

build: deps
	$(CARGO) build --workspace --bins --examples

# One member on 127.0.0.1:2379 (clients) and 127.0.0.1:2380 (peers), data in ./$(DATA_DIR).
run: build
	$(BIN)/raftkv --name default --data-dir $(DATA_DIR) \
	  --listen-client-urls http://127.0.0.1:2379 --advertise-client-urls http://127.0.0.1:2379 \
	  --listen-peer-urls http://127.0.0.1:2380 --initial-advertise-peer-urls http://127.0.0.1:2380

# Three members on loopback as in etcd's Procfile (clients 2379, 22379, 32379;
# peers 2380, 22380, 32380), data in ./cluster.raftkv; Ctrl-C stops them.
cluster: build
	./scripts/cluster.sh

# Every test: unit, property, and end-to-end over the real binaries and real
# etcd; then the Helm chart, CRD and examples, offline (charts/tests).
test: build pydeps test-peers
	$(CARGO) test --workspace
	RAFTKV_OPERATOR=$(BIN)/raftkv-operator $(VENV)/bin/python -m unittest discover -s charts/tests -v

# Only the tests on a real Kubernetes control plane (kube-apiserver on
# raftkv, the operator and the chart against it, the lifecycles on pods the
# test node agent runs; root); `make test` runs them too.
test-k8s: build pydeps go-peers
	$(CARGO) test -p raftkv-tests --test kubernetes --test operator_k8s --test lifecycles_k8s --test walkthrough_k8s --test nodeagent_k8s

# Fault runs on real 3-member clusters (kill -9, pauses, partitions,
# leadership moves, every member killed) under the linearizability checker
# and the watch validators, for CHAOS_MINUTES (default 10) or CHAOS_RUNS;
# CHAOS_FAULT and CHAOS_SEED run one failed run's schedule again
# (docs/reliability.md). `make test` runs each fault once.
chaos: build go-peers
	$(BIN)/examples/chaos

# The deterministic simulation: SEEDS (default 100) whole clusters in one
# process each, simulated time, network and disk, faults from the seed,
# the same checkers; SEED (default 1) is the first, `make sim SEEDS=1
# SEED=n` replays seed n exactly (docs/reliability.md). `make test` runs 200.
SEEDS ?= 100
SEED  ?= 1
sim: build go-peers
	SEEDS=$(SEEDS) SEED=$(SEED) $(BIN)/examples/sim

# The fuzz targets (fuzz/, cargo-fuzz and libFuzzer; docs/fuzzing.md), each
# for FUZZ_SECONDS (default 60); FUZZ_TARGETS picks some. Installs
# cargo-fuzz from crates.io when missing. `make test` replays their seeds
# and every input kept in fuzz/regressions.
fuzz: deps
	./scripts/fuzz.sh

# raftkv and Debian's etcd side by side on this machine, with ratios.
bench: build
	./scripts/bench.sh

# The same for three-member clusters: puts to the leader, ranges to every member.
bench-cluster: build
	./scripts/bench-cluster.sh

# kube-apiserver on raftkv against kube-apiserver on etcd 3.6: creating,
# watching and listing 10 000 ConfigMaps (BENCH_OBJECTS, BENCH_ROUNDS).
bench-k8s: build go-peers
	$(BIN)/examples/k8s_bench

clean-data:
	rm -rf $(DATA_DIR)
