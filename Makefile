# One entry point for developers and CI alike: `.ci/run` calls these same targets.
PYTHON ?= python3
VENV ?= .venv
VPY := $(VENV)/bin/python
WHEEL_DIR := build-out/wheels

.PHONY: install demo default-state test lint cargo-test bench bench-rust ci clean

$(VPY):
	$(PYTHON) -m venv $(VENV)
	$(VPY) -m pip install --quiet --upgrade pip maturin

# Build the abi3 wheel users get and install it (with test, bench and eval extras) into the venv,
# so the tests exercise exactly what `pip install` gives, never the source tree.
install: $(VPY)
	rm -rf $(WHEEL_DIR)
	$(VENV)/bin/maturin build --release --out $(WHEEL_DIR)
	$(VPY) -m pip install --quiet "$$(ls $(WHEEL_DIR)/mixllm-*.whl)[test,bench,eval]"
	$(VPY) -m pip install --quiet --force-reinstall --no-deps $(WHEEL_DIR)/mixllm-*.whl

# The main job: install, then route queries with the router shipped in the package.
demo: install
	$(VENV)/bin/mixllm models
	$(VENV)/bin/mixllm route "Write a Python function that returns the n-th Fibonacci number."
	$(VENV)/bin/mixllm route "Which is heavier, a kilogram of feathers or a kilogram of iron?"

# Retrains the router shipped in the package (RouterBench's 11 models, train split); run
# `make install` afterwards to put it in the wheel.
DATA ?= ../shared/data/routerbench_subset_routerdc
default-state: install
	rm -rf python/mixllm/default_state
	$(VENV)/bin/mixllm train --data $(DATA) --config configs/routerbench.toml --out python/mixllm/default_state --threads 2

test:
	$(VPY) -m pytest -q tests
	$(VPY) -m mypy.stubtest mixllm._core --allowlist tests/stubtest-allowlist.txt

lint:
	cargo fmt --all --check
	cargo clippy --workspace --all-targets -- -D warnings
	$(VPY) -m ruff check python tests benches
	$(VPY) -m ruff format --check python tests benches
	$(VPY) -m mypy

# With the kernels this CPU selects, with the portable ones forced, and (where qemu-user is
# installed, as CI does) on an emulated x86-64 CPU with no extension beyond the baseline.
cargo-test:
	cargo test --workspace --exclude mixllm-py
	MIXLLM_PORTABLE_KERNELS=1 cargo test --workspace --exclude mixllm-py
	if command -v qemu-x86_64 >/dev/null; then \
	    CARGO_TARGET_X86_64_UNKNOWN_LINUX_GNU_RUNNER="qemu-x86_64 -cpu qemu64" \
	    cargo test -p mixllm-core; \
	fi

bench:
	$(VPY) -m pytest benches --benchmark-only --benchmark-columns=min,median,mean,max,ops -q

bench-rust:
	cargo bench -p mixllm-core

ci: install cargo-test lint test

clean:
	rm -rf target $(VENV) build-out
