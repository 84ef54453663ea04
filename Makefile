# Celeriac — the README's commands.
#   make run      build everything, then run a worker on the embedded SQLite broker
#   make test     unit, end-to-end and Python Celery interop tests
#   make plugins  build the Rust plugins under plugins/ into $(CARGO_TARGET_DIR)/plugins/NAME.wasm
#   make example-plugins  the Python, JavaScript and C ones too (installs their toolchains once)
#   make dist     the binary to deploy: optimised across crates, $(CARGO_TARGET_DIR)/dist/celeriac
#   make dist-pgo the same, optimised again with a profile of drains (needs Redis and RabbitMQ)
#   make bench    Celeriac (the dist-pgo binary) against Celery's prefork worker; writes tests/bench/RESULTS.md
#   make fuzz     fuzz the message decoders (FUZZ_SECONDS per target, default 600)
#   make soak     30 minutes of mixed tasks with broker restarts (SOAK_MINUTES)

CARGO_TARGET_DIR ?= $(CURDIR)/target
export CARGO_TARGET_DIR
JOBS ?= 2
CARGO ?= cargo
PYTHON ?= python3

BIN := $(CARGO_TARGET_DIR)/release/celeriac
PLUGIN_OUT := $(CARGO_TARGET_DIR)/plugins
VENV := $(CARGO_TARGET_DIR)/venv
RUST_PLUGINS := $(patsubst plugins/%/Cargo.toml,%,$(wildcard plugins/*/Cargo.toml))
# A Python plugin is a folder plugins/NAME holding NAME.py.
PYTHON_PLUGINS := $(foreach d,$(wildcard plugins/*/),$(if $(wildcard $(d)$(notdir $(d:/=)).py),$(notdir $(d:/=))))
# A JavaScript plugin is a folder plugins/NAME holding NAME.js; a C plugin one holding NAME.c.
JS_PLUGINS := $(foreach d,$(wildcard plugins/*/),$(if $(wildcard $(d)$(notdir $(d:/=)).js),$(notdir $(d:/=))))
C_PLUGINS := $(foreach d,$(wildcard plugins/*/),$(if $(wildcard $(d)$(notdir $(d:/=)).c),$(notdir $(d:/=))))

.PHONY: all build dist dist-pgo plugins example-plugins wasm-target run test services test-rust test-interop test-fuzz fuzz fuzz-tools soak bench venv fixtures c-bindings fmt lint clean

all: build plugins

build:
	$(CARGO) build --release -j $(JOBS) -p celeriac

# Cargo.toml's `dist` profile: slower to build, faster to run (see its comment).
dist:
	$(CARGO) build --profile dist -j $(JOBS) -p celeriac --bin celeriac

# The dist build optimised again with a profile of the work it does (profile-guided): a build
# with counters drains Redis and RabbitMQ queues and answers one call at a time, then the
# dist build is redone with the counts. Needs Redis and RabbitMQ running; two dist
# builds from cold, in folders of their own under pgo/ (their flags differ from dist's), for
# the host's target named, so the flags reach the binary and not build scripts or macros.
# The second is always from scratch: cargo would keep crates optimised with an older profile.
HOST = $(shell rustc -vV | sed -n 's/^host: //p')
PGO := $(CARGO_TARGET_DIR)/pgo
LLVM_PROFDATA = $(shell rustc --print sysroot)/lib/rustlib/$(HOST)/bin/llvm-profdata
PGO_BIN := $(CARGO_TARGET_DIR)/dist-pgo/celeriac
PGO_TRAINEE = $(PGO)/generate/$(HOST)/dist/celeriac

dist-pgo: plugins venv
	@rustup component list --installed | grep -q '^llvm-tools' || rustup component add llvm-tools
	rm -rf $(PGO)/profiles
	RUSTFLAGS="-Cprofile-generate=$(PGO)/profiles" $(CARGO) build --profile dist -j $(JOBS) \
		-p celeriac --bin celeriac --target $(HOST) --target-dir $(PGO)/generate
	cd tests/bench && export LLVM_PROFILE_FILE=$(PGO)/profiles/%p.profraw CELERIAC_PLUGIN_DIR=$(PLUGIN_OUT) && \
		$(VENV)/bin/python drain_ab.py --broker redis --tasks 20000 --pairs 1 $(PGO_TRAINEE) && \
		$(VENV)/bin/python drain_ab.py --broker rabbitmq --tasks 20000 --pairs 1 $(PGO_TRAINEE) && \
		$(VENV)/bin/python worker_latency.py --calls 500 --pairs 1 $(PGO_TRAINEE)
	$(LLVM_PROFDATA) merge -o $(PGO)/merged.profdata $(PGO)/profiles
	rm -rf $(PGO)/use
	RUSTFLAGS="-Cprofile-use=$(PGO)/merged.profdata" $(CARGO) build --profile dist -j $(JOBS) \
		-p celeriac --bin celeriac --target $(HOST) --target-dir $(PGO)/use
	@mkdir -p $(dir $(PGO_BIN))
	cp $(PGO)/use/$(HOST)/dist/celeriac $(PGO_BIN)
	@echo "built $(PGO_BIN)"

wasm-target:
	@rustup target list --installed | grep -qx wasm32-wasip2 || rustup target add wasm32-wasip2

# Copy through a temporary name: a running worker watching the folder never sees half a file.
plugins: wasm-target
	cd plugins && $(CARGO) build --release -j $(JOBS) --target wasm32-wasip2
	@mkdir -p $(PLUGIN_OUT)
	@for p in $(RUST_PLUGINS); do \
		cp $(CARGO_TARGET_DIR)/wasm32-wasip2/release/$$p.wasm $(PLUGIN_OUT)/.$$p.wasm.tmp && \
		mv $(PLUGIN_OUT)/.$$p.wasm.tmp $(PLUGIN_OUT)/$$p.wasm && \
		echo "built $(PLUGIN_OUT)/$$p.wasm"; \
	done

# The first-party Python, JavaScript and C plugins, built with `celeriac plugins build`
# (which installs componentize-py and componentize-js on first use; C needs clang and
# wasi-libc, which `make services` installs). `make test` and `make bench` use them.
example-plugins: build
	@mkdir -p $(PLUGIN_OUT)
	@for p in $(PYTHON_PLUGINS) $(JS_PLUGINS) $(C_PLUGINS); do \
		if [ -f plugins/$$p/$$p.c ] && ! command -v clang > /dev/null; then \
			echo "skipped plugins/$$p: C plugins need clang and wasi-libc (make services installs them)"; continue; \
		fi; \
		$(BIN) plugins build plugins/$$p > /dev/null && \
		cp plugins/$$p/$$p.wasm $(PLUGIN_OUT)/.$$p.wasm.tmp && \
		mv $(PLUGIN_OUT)/.$$p.wasm.tmp $(PLUGIN_OUT)/$$p.wasm && \
		echo "built $(PLUGIN_OUT)/$$p.wasm"; \
	done

run: build plugins
	@echo
	@echo "Celeriac worker on the embedded broker (sqlite://celeriac.db), serving $(PLUGIN_OUT)."
	@echo "From a second terminal in this folder:"
	@echo "    $(BIN) call math.add 2 3 --wait"
	@echo
	$(BIN) worker --plugins $(PLUGIN_OUT)

venv: $(VENV)/.installed

$(VENV)/.installed: tests/interop/requirements.txt
	$(PYTHON) -m venv $(VENV)
	$(VENV)/bin/pip install -q -r tests/interop/requirements.txt
	touch $@

test: services build plugins example-plugins venv test-rust test-interop test-fuzz

# Redis and RabbitMQ on 127.0.0.1, started if they are not running; the Debian packages the
# tests need (ZooKeeper, clang and wasi-libc for C plugins, Chromium), installed if missing.
services:
	@tests/services.sh

test-rust:
	CELERIAC_BIN=$(BIN) CELERIAC_PLUGIN_DIR=$(PLUGIN_OUT) \
		$(CARGO) test --release -j $(JOBS) --workspace -- --test-threads 4
	$(CARGO) test --release -j $(JOBS) --manifest-path sdk/rust/celeriac-sdk/Cargo.toml

test-interop:
	CELERIAC_BIN=$(BIN) CELERIAC_PLUGIN_DIR=$(PLUGIN_OUT) \
		$(VENV)/bin/python -m pytest -q tests/interop

# Fuzzing (cargo-fuzz on the nightly toolchain) of every decoder a broker's bytes reach:
# kombu's envelope, SQS bodies, AMQP header tables, task messages, result metas. The
# committed corpus (fuzz/corpus) holds the seeds (fuzz/make_seeds.py) and a set of inputs
# covering every edge reached so far; new finds go to a scratch folder under `make test`,
# into the corpus under `make fuzz`, which then minimizes it again.
FUZZ_TARGETS := kombu_envelope sqs_body amqp_headers task_message result_meta
FUZZ_SECONDS ?= 600
FUZZ_TEST_SECONDS ?= 20

fuzz-tools:
	@rustup toolchain list | grep -q '^nightly' || rustup toolchain install nightly --profile minimal
	@command -v cargo-fuzz > /dev/null || $(CARGO) install cargo-fuzz --locked -j $(JOBS)

test-fuzz: fuzz-tools
	@for t in $(FUZZ_TARGETS); do \
		scratch=$(CARGO_TARGET_DIR)/fuzz-scratch/$$t; mkdir -p $$scratch; \
		if ! cargo +nightly fuzz run --fuzz-dir fuzz $$t $$scratch fuzz/corpus/$$t \
			-- -max_total_time=$(FUZZ_TEST_SECONDS) -max_len=65536 -print_final_stats=1 > $$scratch.log 2>&1; then \
			tail -n 60 $$scratch.log; echo "fuzz target $$t failed; the input is under fuzz/artifacts/$$t"; exit 1; \
		fi; \
		echo "fuzz $$t: $$(grep -o 'number_of_executed_units: *[0-9]*' $$scratch.log | grep -o '[0-9]*$$') inputs in $(FUZZ_TEST_SECONDS) s, no failure"; \
	done

fuzz: fuzz-tools
	@for t in $(FUZZ_TARGETS); do \
		cargo +nightly fuzz run --fuzz-dir fuzz $$t fuzz/corpus/$$t -- -max_total_time=$(FUZZ_SECONDS) -max_len=65536 || exit 1; \
		cargo +nightly fuzz cmin --fuzz-dir fuzz $$t fuzz/corpus/$$t -- -set_cover_merge=1 -use_counters=0 -use_cmp=0 -use_value_profile=0; \
		python3 fuzz/make_seeds.py; \
	done

# Soak: mixed tasks (good, failing, timing out, crashing) on Redis and RabbitMQ with
# periodic broker restarts; reports tasks run, lost, duplicated and the workers' RSS.
SOAK_MINUTES ?= 30
soak: build plugins venv
	CELERIAC_BIN=$(BIN) CELERIAC_PLUGIN_DIR=$(PLUGIN_OUT) \
		$(VENV)/bin/python tests/soak/soak.py --minutes $(SOAK_MINUTES) $(SOAK_ARGS)

# Speed is measured here, never asserted in tests. BENCH_ARGS="--tasks 5000 --runs 1" for a quick look.
# First the host's per-task cost (criterion), then Celeriac against Celery (RESULTS.md, RESULTS.png).
# The Celeriac compared is the fastest binary one can deploy (`make dist-pgo`).
bench: dist-pgo plugins example-plugins venv
	$(VENV)/bin/pip install -q matplotlib
	CELERIAC_PLUGIN_DIR=$(PLUGIN_OUT) $(CARGO) bench -j $(JOBS) -p celeriac --bench host_cost
	CELERIAC_BIN=$(PGO_BIN) CELERIAC_PLUGIN_DIR=$(PLUGIN_OUT) \
		$(VENV)/bin/python tests/bench/bench.py $(BENCH_ARGS)

# Re-create the C bindings after a change to wit/celeriac.wit (needs `cargo install wit-bindgen-cli@0.63.0`).
c-bindings:
	cd sdk/c && wit-bindgen c ../../wit --world plugin --no-object-file

# Re-create the codec fixtures from the real Celery library.
fixtures: venv
	$(VENV)/bin/python tests/fixtures/make_fixtures.py

fmt:
	$(CARGO) fmt --all
	cd plugins && $(CARGO) fmt --all

lint:
	$(CARGO) fmt --all --check
	cd fuzz && $(CARGO) fmt --check
	$(CARGO) clippy --release -j $(JOBS) --all-targets -- -D warnings
	cd plugins && $(CARGO) clippy --release -j $(JOBS) --target wasm32-wasip2 -- -D warnings

clean:
	$(CARGO) clean
