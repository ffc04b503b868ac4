#!/usr/bin/env bash
# Checks the wheel users get: it is manylinux2014 (glibc 2.17) compliant, the sdist builds, the
# aarch64 wheel cross-builds (where that Rust target is installed), and the wheel installs and
# runs in a fresh virtual environment with no Rust toolchain on the path, from outside the
# repository, on the oldest and the newest Python the package supports.
# Usage: scripts/check-wheel.sh WHEEL_DIR VENV_PYTHON
set -euo pipefail
wheel_dir=$1
vpy=$2
wheels=("$wheel_dir"/mixllm-*.whl)
[ ${#wheels[@]} -eq 1 ] && [ -f "${wheels[0]}" ] \
    || { echo "check-wheel: expected exactly one wheel in $wheel_dir, found: ${wheels[*]}" >&2; exit 1; }
wheel=$(realpath "${wheels[0]}")
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT

echo "== auditwheel show $(basename "$wheel")"
"$vpy" -m auditwheel show "$wheel" | tee "$work/audit.txt"
grep -q 'consistent with the following platform tag: *"manylinux_2_17_x86_64"' \
    <(tr -s ' \n' ' ' < "$work/audit.txt") \
    || { echo "check-wheel: the wheel is not manylinux2014 (manylinux_2_17) compliant" >&2; exit 1; }

echo "== the sdist builds a wheel"
"$vpy" -m maturin sdist --out "$work/sdist" >/dev/null
"$vpy" -m pip wheel --quiet --no-deps --wheel-dir "$work/from-sdist" "$work"/sdist/mixllm-*.tar.gz
ls "$work"/from-sdist/mixllm-*.whl

# The aarch64 wheel, cross-built with zig, where the aarch64 Rust target is installed.
if rustup target list --installed 2>/dev/null | grep -q aarch64-unknown-linux-gnu; then
    echo "== the aarch64 wheel builds and is manylinux2014"
    PATH="$(dirname "$vpy"):$PATH" "$vpy" -m maturin build --release --quiet \
        --target aarch64-unknown-linux-gnu --zig --compatibility manylinux2014 --out "$work/aarch64"
    "$vpy" -m auditwheel show "$work"/aarch64/mixllm-*.whl | tee "$work/audit-aarch64.txt"
    grep -q 'consistent with the following platform tag: *"manylinux_2_17_aarch64"' \
        <(tr -s ' \n' ' ' < "$work/audit-aarch64.txt") \
        || { echo "check-wheel: the aarch64 wheel is not manylinux2014" >&2; exit 1; }
else
    echo "check-wheel: no aarch64 Rust target here (rustup target add aarch64-unknown-linux-gnu)"
fi

# Oldest and newest supported CPython, where pyenv has them, and the default one.
pythons=()
for version in 3.10 3.13; do
    found=$(ls -d "${PYENV_ROOT:-$HOME/.pyenv}"/versions/"$version".*/bin/python3 2>/dev/null | tail -1 || true)
    if [ -n "$found" ]; then pythons+=("$found"); else echo "check-wheel: no CPython $version here"; fi
done
pythons+=("$(python3 -c 'import sys; print(sys.executable)')")

# What venv and pip put in bin/ themselves, and the commands allowed besides: mixllm's own,
# those of numpy (f2py, numpy-config) and onnxruntime (onnxruntime_test), and on Python 3.10,
# where the newest onnxruntime is 1.23, those of the dependencies it still had: coloredlogs
# (coloredlogs, humanfriendly) and sympy (isympy).
own_commands='^(python[0-9.]*|pip[0-9.]*|activate.*|Activate\.ps1|__pycache__)$'
for python in "${pythons[@]}"; do
    echo "== fresh install with $("$python" --version)"
    allowed_commands='mixllm|f2py|numpy-config|onnxruntime_test'
    if "$python" -c 'import sys; sys.exit(sys.version_info >= (3, 11))'; then
        allowed_commands="$allowed_commands|coloredlogs|humanfriendly|isympy"
    fi
    venv="$work/venv-$("$python" -c 'import sys; print("%d.%d" % sys.version_info[:2])')"
    # No cargo, rustc or maturin on the path: the wheel must not need them.
    env -i HOME="$HOME" PATH=/usr/bin:/bin "$python" -m venv "$venv"
    (
        cd "$work"
        export PATH="$venv/bin:/usr/bin:/bin"
        ! command -v cargo >/dev/null || { echo "check-wheel: cargo is on the path" >&2; exit 1; }
        pip install --quiet "$wheel"
        commands=$(ls "$venv/bin" | grep -v -E "$own_commands" || true)
        echo "installed: $(du -sh "$venv" | cut -f1); commands:" $commands
        # Nothing but mixllm itself, and what the two libraries it computes with cannot be
        # installed without, may land on the user's PATH.
        stray=$(grep -v -x -E "$allowed_commands" <<<"$commands" || true)
        [ -z "$stray" ] || { echo "check-wheel: unrelated commands installed:" $stray >&2; exit 1; }
        mixllm --version
        mixllm models >/dev/null
        mixllm route "Which is heavier, a kilogram of feathers or a kilogram of iron?"
    )
done
echo "check-wheel: all checks passed"
