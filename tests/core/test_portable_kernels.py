"""The portable kernels (what a CPU without AVX2 runs) decide like the vectorised ones.

The instruction set is chosen once per process, so the portable run happens in a child process
with MIXLLM_PORTABLE_KERNELS set."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import numpy as np

SCRIPT = """
import json, sys
import numpy as np
import mixllm
rng = np.random.default_rng(5)
policy = mixllm.Policy(37, refactor_every=50)
for m in range(5):
    policy.add_model(f"m{m}", price_in=m, price_out=2 * m, ttft_s=0.3, tokens_per_s=40 + m,
                     concurrency=2)
    for _ in range(120):
        policy.update(f"m{m}", rng.normal(size=37), quality=float(rng.random()),
                      output_tokens=float(rng.integers(1, 400)))
queries = rng.normal(size=(200, 37))
scores = [policy.decide(q, prompt_tokens=50, willingness_to_pay=0.01).score.tolist()
          for q in queries]
batch = policy.decide_batch(queries, prompt_tokens=50, willingness_to_pay=0.01).tolist()
print(json.dumps({"scores": scores, "batch": batch,
                  "a_inv": policy.inspect("m3")["a_inv"].tolist()}))
"""


def run(portable: bool) -> dict[str, list]:
    env = dict(os.environ)
    env.pop("MIXLLM_PORTABLE_KERNELS", None)
    if portable:
        env["MIXLLM_PORTABLE_KERNELS"] = "1"
    out = subprocess.run(
        [sys.executable, "-c", SCRIPT],
        env=env,
        capture_output=True,
        text=True,
        check=True,
        timeout=120,
    )
    return json.loads(out.stdout)


def test_portable_and_vectorised_kernels_agree() -> None:
    fast, portable = run(portable=False), run(portable=True)
    np.testing.assert_allclose(fast["a_inv"], portable["a_inv"], rtol=1e-9, atol=1e-12)
    np.testing.assert_allclose(fast["scores"], portable["scores"], rtol=1e-9, atol=1e-12)
    chosen_fast = np.argmax(fast["scores"], axis=1)
    assert fast["batch"] == portable["batch"] == chosen_fast.tolist()
    if cpu_has_avx2():
        # Different code really ran: fused multiply-adds and wider sums round differently.
        assert fast["a_inv"] != portable["a_inv"]


def cpu_has_avx2() -> bool:
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as handle:
            return " avx2" in handle.read()
    except OSError:
        return False
