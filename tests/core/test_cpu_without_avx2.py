"""The installed wheel decides the same on a CPU without AVX2 or FMA, where the portable kernels
run: the same script under an emulated Sandy Bridge (AVX only: the oldest x86 CPU numpy's own
wheels run on) and natively. Needs qemu-user; CI installs it."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys

import numpy as np
import pytest

SCRIPT = """
import json
import numpy as np
import mixllm
rng = np.random.default_rng(11)
policy = mixllm.Policy(65)
for m in range(6):
    policy.add_model(f"m{m}", price_in=m, price_out=3 * m, ttft_s=0.2, tokens_per_s=50 + m,
                     concurrency=4)
    for _ in range(60):
        policy.update(f"m{m}", rng.normal(size=65), quality=float(rng.random()),
                      output_tokens=float(rng.integers(1, 300)))
queries = rng.normal(size=(40, 65))
decisions = [policy.decide(q, prompt_tokens=100, willingness_to_pay=0.01) for q in queries]
print(json.dumps({"models": [d.model for d in decisions],
                  "scores": [d.score.tolist() for d in decisions],
                  "batch": policy.decide_batch(queries, prompt_tokens=100,
                                               willingness_to_pay=0.01).tolist()}))
"""


def run(*prefix: str) -> dict[str, list]:
    result = subprocess.run(
        [*prefix, sys.executable, "-c", SCRIPT],
        capture_output=True,
        text=True,
        check=True,
        timeout=600,
    )
    return json.loads(result.stdout)


@pytest.mark.skipif(shutil.which("qemu-x86_64") is None, reason="qemu-user is not installed")
def test_decisions_on_a_cpu_without_avx2_match_the_native_ones() -> None:
    native = run()
    emulated = run("qemu-x86_64", "-cpu", "SandyBridge")
    assert emulated["models"] == native["models"]
    assert emulated["batch"] == native["batch"]
    np.testing.assert_allclose(emulated["scores"], native["scores"], rtol=1e-9, atol=1e-12)
    if host_has_avx2():
        # Different kernels really ran: vectorised sums round differently from portable ones.
        assert emulated["scores"] != native["scores"]


def host_has_avx2() -> bool:
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as handle:
            return " avx2" in handle.read()
    except OSError:
        return False
