# One entry point for developers and CI alike: `.ci/run` calls these same targets.
PYTHON ?= python3
VENV ?= .venv
VPY := $(VENV)/bin/python
WHEEL_DIR := build-out/wheels

.PHONY: help install demo default-state test test-slow lint cargo-test bench bench-rust wheel-check ci clean

help:  ## this list
	@grep -E '^[a-z-]+:.*## ' $(MAKEFILE_LIST) | sed -E 's/:.*## /\t/' | expand -t 16

$(VPY):
	$(PYTHON) -m venv $(VENV)
	@echo "== creating $(VENV) and upgrading pip"
	$(VPY) -m pip install --quiet --upgrade pip

# Build the abi3 wheel users get and install it (with the test, bench, eval, serve and redis
# extras) into the venv, so the tests exercise exactly what `pip install` gives, never the source
# tree. zig links it against glibc 2.17, so the wheel is manylinux2014 and installs on any current
# Linux x86-64.
install: $(VPY)  ## build the wheel and install it into .venv
	@echo "== installing the build tools (maturin, zig, auditwheel) into $(VENV)"
	$(VPY) -m pip install --quiet maturin ziglang auditwheel
	rm -rf $(WHEEL_DIR)
	PATH="$(abspath $(VENV))/bin:$$PATH" $(VENV)/bin/maturin build --release --out $(WHEEL_DIR) \
	    --zig --compatibility manylinux2014
	@echo "== installing the wheel and its dependencies (with the test, bench, eval, serve and redis extras)"
	$(VPY) -m pip install --quiet "$$(ls $(WHEEL_DIR)/mixllm-*.whl)[test,bench,eval,serve,redis]"
	$(VPY) -m pip install --quiet --force-reinstall --no-deps $(WHEEL_DIR)/mixllm-*.whl

# The main job: install, then route queries with the router shipped in the package.
demo: install  ## install, then route two queries with the shipped router
	$(VENV)/bin/mixllm models
	$(VENV)/bin/mixllm route "Write a Python function that returns the n-th Fibonacci number."
	$(VENV)/bin/mixllm route "Which is heavier, a kilogram of feathers or a kilogram of iron?"

# Retrains the router shipped in the package (RouterBench's 11 models, train split); run
# `make install` afterwards to put it in the wheel.
DATA ?= ../shared/data/routerbench_subset_routerdc
default-state: install  ## retrain the router shipped in the package
	rm -rf python/mixllm/default_state
	$(VENV)/bin/mixllm train --data $(DATA) --config configs/routerbench.toml --out python/mixllm/default_state --threads 2

test:  ## the test suite (less the slow tests) and the stub check, against the installed wheel
	$(VPY) -m pytest -q -m "not slow" tests
	$(VPY) -m mypy.stubtest mixllm._core --allowlist tests/stubtest-allowlist.txt

test-slow:  ## the slow tests: mixllm eval end to end, training on real data, reloads in new processes
	$(VPY) -m pytest -q -m slow tests

lint:  ## cargo fmt, clippy, ruff, mypy, and no function over 80 lines
	cargo fmt --all --check
	cargo clippy --workspace --all-targets -- -D warnings
	$(VPY) -m ruff check python tests benches testkit studies scripts
	$(VPY) -m ruff format --check python tests benches testkit studies scripts
	$(VPY) -m mypy
	$(VPY) scripts/long_functions.py python rust benches tests studies testkit

# With the kernels this CPU selects, with the portable ones forced, and (where qemu-user is
# installed, as CI does) on an emulated x86-64 CPU with no extension beyond the baseline and on
# an emulated aarch64 CPU (where the aarch64 Rust target and cross linker are installed).
cargo-test:  ## the core's tests, also with portable kernels and an old CPU
	cargo test --workspace --exclude mixllm-py
	MIXLLM_PORTABLE_KERNELS=1 cargo test --workspace --exclude mixllm-py
	if command -v qemu-x86_64 >/dev/null; then \
	    CARGO_TARGET_X86_64_UNKNOWN_LINUX_GNU_RUNNER="qemu-x86_64 -cpu qemu64" \
	    cargo test -p mixllm-core; \
	fi
	if rustup target list --installed 2>/dev/null | grep -q aarch64-unknown-linux-gnu \
	    && command -v aarch64-linux-gnu-gcc >/dev/null && command -v qemu-aarch64 >/dev/null; then \
	    CARGO_TARGET_AARCH64_UNKNOWN_LINUX_GNU_LINKER=aarch64-linux-gnu-gcc \
	    CARGO_TARGET_AARCH64_UNKNOWN_LINUX_GNU_RUNNER="qemu-aarch64 -L /usr/aarch64-linux-gnu" \
	    cargo test -p mixllm-core --target aarch64-unknown-linux-gnu; \
	fi

bench:  ## the Python benchmarks
	$(VPY) -m pytest benches --benchmark-only --benchmark-columns=min,median,mean,max,ops -q

bench-rust:  ## the core's criterion benchmarks
	cargo bench -p mixllm-core

# The wheel is manylinux2014, the sdist builds, and the wheel runs from a fresh virtual
# environment with no Rust toolchain, on the oldest and newest CPython found here.
wheel-check:  ## (after make install) check the wheel and the sdist as users get them
	scripts/check-wheel.sh $(WHEEL_DIR) $(VPY)

ci: install cargo-test lint test test-slow wheel-check  ## everything CI runs

clean:  ## remove build output and the venv
	rm -rf target $(VENV) build-out
