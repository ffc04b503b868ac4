# One entry point for developers and CI alike: `.ci/run` calls these same targets.
PYTHON ?= python3
VENV ?= .venv
VPY := $(VENV)/bin/python
WHEEL_DIR := build-out/wheels

.PHONY: install demo test lint cargo-test bench bench-rust ci clean

$(VPY):
	$(PYTHON) -m venv $(VENV)
	$(VPY) -m pip install --quiet --upgrade pip maturin

# Build the abi3 wheel users get and install it (with test and bench extras) into the venv,
# so the tests exercise exactly what `pip install` gives, never the source tree.
install: $(VPY)
	rm -rf $(WHEEL_DIR)
	$(VENV)/bin/maturin build --release --out $(WHEEL_DIR)
	$(VPY) -m pip install --quiet "$$(ls $(WHEEL_DIR)/mixllm-*.whl)[test,bench]"
	$(VPY) -m pip install --quiet --force-reinstall --no-deps $(WHEEL_DIR)/mixllm-*.whl

# The main job: install, then route a few queries.
demo: install
	$(VPY) -m mixllm.demo

test:
	$(VPY) -m pytest -q tests
	$(VPY) -m mypy.stubtest mixllm._core --allowlist tests/stubtest-allowlist.txt

lint:
	cargo fmt --all --check
	cargo clippy --workspace --all-targets -- -D warnings
	$(VPY) -m ruff check python tests benches
	$(VPY) -m ruff format --check python tests benches
	$(VPY) -m mypy

cargo-test:
	cargo test --workspace --exclude mixllm-py

bench:
	$(VPY) -m pytest benches --benchmark-only --benchmark-columns=min,median,mean,max,ops -q

bench-rust:
	cargo bench -p mixllm-core

ci: install cargo-test lint test

clean:
	rm -rf target $(VENV) build-out
