"""Saving and loading `mixllm.Policy`: exact round trips, damaged or foreign files, atomic saves."""

from __future__ import annotations

import os
import signal
import struct
import subprocess
import sys
import threading
import time
import zlib
from pathlib import Path

import numpy as np
import pytest

import mixllm
from mixllm import StateFileError

DIM = 6
HEADER_LEN = 20  # magic (8) + version (4) + payload length (8)


def build_policy(seed: int = 0) -> mixllm.Policy:
    rng = np.random.default_rng(seed)
    p = mixllm.Policy(
        DIM,
        alpha=0.2,
        beta=0.3,
        ridge=0.8,
        tau_s=9.0,
        refactor_every=13,
        service_time_smoothing=0.25,
    )
    p.add_model("gpt-ø", price_in=2.0, price_out=8.0, ttft_s=0.5, tokens_per_s=80.0, concurrency=2)
    p.add_model(
        "local",
        price_in=0.0,
        price_out=0.0,
        fee=0.001,
        ttft_s=0.1,
        tokens_per_s=20.0,
        concurrency=1,
        prior_quality=0.3,
        prior_output_tokens=50.0,
    )
    p.add_model("fresh", price_in=1.0, price_out=1.0, ttft_s=1.0, tokens_per_s=40.0, concurrency=3)
    X = rng.normal(size=(50, DIM))
    p.fit("gpt-ø", X, rng.uniform(size=50), rng.uniform(0, 900, size=50))
    for _ in range(30):
        p.update(
            "local",
            rng.normal(size=DIM),
            quality=float(rng.uniform()),
            output_tokens=None if rng.uniform() < 0.3 else float(rng.uniform(0, 400)),
            weight=float(10 ** rng.uniform(-1, 1)),
        )
    for latency in (2.0, 4.5, 3.25):
        p.begin("local")
        p.end("local", latency)
    return p


def decisions(p: mixllm.Policy, seed: int = 1) -> list[tuple[int, list[float], list[float]]]:
    rng = np.random.default_rng(seed)
    out = []
    for _ in range(100):
        d = p.decide(
            rng.normal(size=DIM) * 2,
            prompt_tokens=float(rng.uniform(0, 3000)),
            willingness_to_pay=float(10 ** rng.uniform(-3, 3)),
        )
        out.append((d.index, d.score.tolist(), d.latency.tolist()))
    return out


def assert_same_state(a: mixllm.Policy, b: mixllm.Policy) -> None:
    assert a.models == b.models
    for attribute in ("dim", "alpha", "beta", "ridge", "tau_s", "refactor_every"):
        assert getattr(a, attribute) == getattr(b, attribute)
    assert a.service_time_smoothing == b.service_time_smoothing
    for name in a.models:
        sa, sb = a.inspect(name), b.inspect(name)
        assert sa.keys() == sb.keys()
        for key, value in sa.items():
            if isinstance(value, np.ndarray):
                np.testing.assert_array_equal(value, sb[key], err_msg=key)
            else:
                assert value == sb[key], key
    assert decisions(a) == decisions(b)


def test_save_and_load_round_trip_exactly(tmp_path: Path) -> None:
    p = build_policy()
    path = tmp_path / "policy.mixllm"
    p.save(path)
    loaded = mixllm.Policy.load(path)
    assert_same_state(p, loaded)
    assert loaded.to_bytes() == p.to_bytes()
    assert mixllm.Policy.load(str(path), dim=DIM).to_bytes() == p.to_bytes()
    assert path.read_bytes() == p.to_bytes()


def test_bytes_round_trip_exactly_and_learning_continues_identically() -> None:
    p = build_policy()
    twin = mixllm.Policy.from_bytes(p.to_bytes())
    assert_same_state(p, twin)
    # The refactorisation schedule is part of the state: both continue bit for bit.
    rng = np.random.default_rng(5)
    for _ in range(40):
        x = rng.normal(size=DIM)
        for q in (p, twin):
            q.update("local", x, quality=0.7, output_tokens=33.0, weight=1.5)
            q.update("fresh", x, quality=0.1)
    assert p.to_bytes() == twin.to_bytes()
    assert decisions(p, seed=9) == decisions(twin, seed=9)


def test_an_empty_policy_round_trips() -> None:
    p = mixllm.Policy(3, tau_s=4.0)
    q = mixllm.Policy.from_bytes(p.to_bytes(), dim=3)
    assert q.models == [] and q.tau_s == 4.0 and q.dim == 3


def test_in_flight_is_not_saved_but_service_times_are(tmp_path: Path) -> None:
    p = build_policy()
    for _ in range(5):
        p.begin("local")
    p.begin("fresh")
    path = tmp_path / "p.bin"
    p.save(path)
    loaded = mixllm.Policy.load(path)
    for name in p.models:
        assert loaded.in_flight(name) == 0
        before, after = p.inspect(name), loaded.inspect(name)
        assert after["mean_service_s"] == before["mean_service_s"]
        assert after["completed"] == before["completed"]
    mean = 2.0  # the first observation, then exponential smoothing with weight 0.25
    for latency in (4.5, 3.25):
        mean += 0.25 * (latency - mean)
    assert loaded.inspect("local")["mean_service_s"] == pytest.approx(mean, rel=1e-15)
    assert loaded.inspect("fresh")["mean_service_s"] is None
    x = np.ones(DIM)
    queued = p.decide(x, prompt_tokens=10.0, willingness_to_pay=1.0).latency
    idle = loaded.decide(x, prompt_tokens=10.0, willingness_to_pay=1.0).latency
    assert idle[1] < queued[1]
    assert idle[0] == queued[0]
    # The saved average is the work of a request begun without a prediction once the queue
    # fills again ("local" has one slot).
    loaded.begin("local", now_s=100.0)
    waiting = loaded.decide(x, prompt_tokens=10.0, willingness_to_pay=1.0, now_s=100.0).latency[1]
    assert waiting == pytest.approx(idle[1] + mean, rel=1e-12)


def test_the_service_ratio_is_saved(tmp_path: Path) -> None:
    """What a model's requests have taught about its predictions (they ran 3x as long, and
    vary) carries over a restart: the loaded policy predicts the same latencies, with the same
    spreads."""
    p = build_policy()
    assert p.inspect("local")["service_means_s"] is None
    assert p.inspect("local")["service_mse_s2"] is None
    for i, took in enumerate((3.0, 3.0, 3.0, 4.0)):
        p.begin("local", 1.0, now_s=10.0 * i)
        p.end("local", took, 1.0, now_s=10.0 * i + took)
    state, s = p.inspect("local"), p.service_time_smoothing
    # The two moving averages the ratio is made of: 1 s predicted, 3 s and then 4 s observed.
    assert state["service_means_s"] == pytest.approx((1.0, 3.0 + s), rel=1e-12)
    assert state["service_ratio"] == pytest.approx(3.0 + s, rel=1e-12)
    # Squared errors of the ratio-scaled estimates: 2² (no ratio yet), 0, 0, then 1².
    assert state["service_mse_s2"] == pytest.approx(4.0 * (1 - s) ** 3 + s, rel=1e-12)
    path = tmp_path / "p.bin"
    p.save(path)
    loaded = mixllm.Policy.load(path)
    for key in ("service_ratio", "service_means_s", "service_mse_s2"):
        assert loaded.inspect("local")[key] == state[key]
    x = np.ones(DIM)
    before = p.decide(x, prompt_tokens=10.0, willingness_to_pay=1.0, now_s=100.0)
    after = loaded.decide(x, prompt_tokens=10.0, willingness_to_pay=1.0, now_s=100.0)
    assert after.latency.tolist() == before.latency.tolist()
    assert after.latency_sd.tolist() == before.latency_sd.tolist()
    assert before.latency_sd[p.models.index("local")] > 0


def test_a_file_of_another_dimension_is_rejected(tmp_path: Path) -> None:
    path = tmp_path / "p.bin"
    build_policy().save(path)
    with pytest.raises(StateFileError, match=f"dimension {DIM}, expected {DIM + 1}"):
        mixllm.Policy.load(path, dim=DIM + 1)
    with pytest.raises(StateFileError, match=f"dimension {DIM}, expected 3"):
        mixllm.Policy.from_bytes(path.read_bytes(), dim=3)


def with_crc(body: bytes) -> bytes:
    return body + struct.pack("<I", zlib.crc32(body))


def load_error(tmp_path: Path, data: bytes) -> StateFileError:
    path = tmp_path / "bad.bin"
    path.write_bytes(data)
    with pytest.raises(StateFileError) as raised:
        mixllm.Policy.load(path)
    assert str(path) in str(raised.value)
    with pytest.raises(StateFileError):
        mixllm.Policy.from_bytes(data)
    return raised.value


def test_a_flipped_byte_fails_the_checksum(tmp_path: Path) -> None:
    data = bytearray(build_policy().to_bytes())
    for position in (len(data) // 2, HEADER_LEN + 3, len(data) - 1):
        damaged = bytearray(data)
        damaged[position] ^= 0x10
        assert "checksum" in str(load_error(tmp_path, bytes(damaged)))


def test_truncated_files_are_rejected(tmp_path: Path) -> None:
    data = build_policy().to_bytes()
    for length in [*range(0, 40), *range(40, len(data), 97), len(data) - 1]:
        message = str(load_error(tmp_path, data[:length]))
        assert ("truncated" if length >= 8 else "magic") in message, (length, message)


@pytest.mark.parametrize(
    ("data", "match"),
    [
        (b"", "magic"),
        (b"dim,alpha\n4,0.01\n", "magic"),
        (bytes(np.random.default_rng(0).integers(0, 256, size=4096, dtype=np.uint8)), "magic"),
        (b"MIXLLMP\0", "truncated"),
        (b"\x80\x04\x95pickle", "magic"),
    ],
    ids=["empty", "text", "random", "magic only", "pickle"],
)
def test_foreign_files_are_rejected(tmp_path: Path, data: bytes, match: str) -> None:
    assert match in str(load_error(tmp_path, data))


def test_other_versions_padding_and_invalid_content_are_rejected(tmp_path: Path) -> None:
    data = build_policy().to_bytes()
    body = data[:-4]
    newer = body[:8] + struct.pack("<I", 5) + body[12:]
    assert "version 5" in str(load_error(tmp_path, newer + data[-4:]))
    assert "version 5" in str(load_error(tmp_path, with_crc(newer)))
    assert "padded" in str(load_error(tmp_path, data + b"\0"))
    # A valid checksum over content that no caller could have set up.
    ridge_at = HEADER_LEN + 8 + 2 * 8
    assert struct.unpack("<d", body[ridge_at : ridge_at + 8]) == (0.8,)
    bad_ridge = body[:ridge_at] + struct.pack("<d", -1.0) + body[ridge_at + 8 :]
    assert "ridge" in str(load_error(tmp_path, with_crc(bad_ridge)))
    huge_dim = body[:HEADER_LEN] + struct.pack("<Q", 10**9) + body[HEADER_LEN + 8 :]
    assert "dim" in str(load_error(tmp_path, with_crc(huge_dim)))
    # dim, alpha, beta, ridge, tau_s, refactor_every, smoothing, then length_ridge.
    length_ridge_at = HEADER_LEN + 8 + 4 * 8 + 8 + 8
    assert struct.unpack("<d", body[length_ridge_at : length_ridge_at + 8]) == (1.0,)
    bad_length_ridge = body[:length_ridge_at] + struct.pack("<d", 0.0) + body[length_ridge_at + 8 :]
    assert "length_ridge" in str(load_error(tmp_path, with_crc(bad_length_ridge)))
    # Then tau_margin_sd.
    margin_at = length_ridge_at + 8
    assert struct.unpack("<d", body[margin_at : margin_at + 8]) == (0.0,)
    bad_margin = body[:margin_at] + struct.pack("<d", -0.5) + body[margin_at + 8 :]
    assert "tau_margin_sd must be >= 0" in str(load_error(tmp_path, with_crc(bad_margin)))
    models_at = margin_at + 8
    assert struct.unpack("<Q", body[models_at : models_at + 8]) == (3,)
    extra_model = body[:models_at] + struct.pack("<Q", 4) + body[models_at + 8 :]
    assert "end of data" in str(load_error(tmp_path, with_crc(extra_model)))


def test_a_failing_load_leaves_a_loaded_policy_alone(tmp_path: Path) -> None:
    path = tmp_path / "p.bin"
    build_policy().save(path)
    loaded = mixllm.Policy.load(path)
    before = (loaded.to_bytes(), decisions(loaded))
    path.write_bytes(path.read_bytes()[:-10])
    with pytest.raises(StateFileError):
        mixllm.Policy.load(path)
    with pytest.raises(FileNotFoundError):
        mixllm.Policy.load(tmp_path / "missing.bin")
    assert (loaded.to_bytes(), decisions(loaded)) == before


def test_save_replaces_an_existing_file_atomically(tmp_path: Path) -> None:
    path = tmp_path / "p.bin"
    first, second = build_policy(0), build_policy(1)
    first.save(path)
    inode = path.stat().st_ino
    second.save(str(path))
    assert path.read_bytes() == second.to_bytes()
    assert path.stat().st_ino != inode  # a new file renamed over the old one, not rewritten
    assert os.listdir(tmp_path) == ["p.bin"]
    for _ in range(5):
        first.save(path)
    assert os.listdir(tmp_path) == ["p.bin"]
    assert mixllm.Policy.load(path).to_bytes() == first.to_bytes()


def test_saving_where_it_cannot_leaves_nothing_behind(tmp_path: Path) -> None:
    p = build_policy()
    missing = tmp_path / "no" / "such" / "dir" / "p.bin"
    with pytest.raises(FileNotFoundError, match="no/such/dir"):
        p.save(missing)
    assert os.listdir(tmp_path) == []
    # The target is a folder: the rename fails and the temporary file is cleaned up.
    (tmp_path / "taken").mkdir()
    (tmp_path / "taken" / "inside").write_text("keep")
    with pytest.raises(OSError):
        p.save(tmp_path / "taken")
    assert sorted(os.listdir(tmp_path)) == ["taken"]
    assert os.listdir(tmp_path / "taken") == ["inside"]


def test_saving_a_policy_in_use_gives_a_loadable_state(tmp_path: Path) -> None:
    p = build_policy()
    p.begin("fresh")
    path = tmp_path / "p.bin"
    p.save(path)
    p.update("fresh", np.ones(DIM), quality=1.0)
    loaded = mixllm.Policy.load(path)
    assert loaded.inspect("fresh")["observations"] == 0
    assert p.inspect("fresh")["observations"] == 1


HOLD_LOCK = """
import fcntl, sys, time
f = open(sys.argv[1], "ab")
fcntl.flock(f, fcntl.LOCK_EX)
print("locked", flush=True)
time.sleep(600)
"""


def test_a_save_removes_crashed_saves_temporaries_but_never_a_live_writers(
    tmp_path: Path,
) -> None:
    path = tmp_path / "p.bin"
    crashed = tmp_path / "p.bin.tmp-1-0"
    crashed.write_bytes(b"half a state")
    live = tmp_path / "p.bin.tmp-2-0"
    unrelated = tmp_path / "other.bin.tmp-3-0"
    unrelated.write_bytes(b"not ours")
    # Another process writing `live`, holding its lock as a save does.
    writer = subprocess.Popen(
        [sys.executable, "-c", HOLD_LOCK, str(live)], stdout=subprocess.PIPE, text=True
    )
    try:
        assert writer.stdout is not None and writer.stdout.readline() == "locked\n"
        build_policy().save(path)
        assert sorted(os.listdir(tmp_path)) == ["other.bin.tmp-3-0", "p.bin", "p.bin.tmp-2-0"]
    finally:
        writer.send_signal(signal.SIGKILL)
        writer.wait()
    # Killed, it holds no lock: its file is a crashed save's now.
    build_policy().save(path)
    assert sorted(os.listdir(tmp_path)) == ["other.bin.tmp-3-0", "p.bin"]
    assert mixllm.Policy.load(path).to_bytes() == build_policy().to_bytes()


SAVE_FOREVER = """
import sys
import mixllm
p = mixllm.Policy(512)
for i in range(4):
    p.add_model(f"m{i}", price_in=1.0, price_out=1.0, ttft_s=0.1, tokens_per_s=10.0, concurrency=1)
while True:
    p.save(sys.argv[1])
"""


def test_the_temporary_file_of_a_save_killed_midway_is_removed_by_the_next(
    tmp_path: Path,
) -> None:
    path = tmp_path / "p.bin"
    left: list[str] = []
    for _ in range(20):
        saver = subprocess.Popen([sys.executable, "-c", SAVE_FOREVER, str(path)])
        try:
            deadline = time.monotonic() + 60
            while not any(".tmp-" in n for n in os.listdir(tmp_path)):
                assert time.monotonic() < deadline, "the child never started a save"
                time.sleep(0.001)
        finally:
            saver.send_signal(signal.SIGKILL)
            saver.wait()
        left = [n for n in os.listdir(tmp_path) if ".tmp-" in n]
        if left:
            break
    assert left, "no save was caught midway in 20 tries"
    build_policy().save(path)
    assert os.listdir(tmp_path) == ["p.bin"]
    assert mixllm.Policy.load(path).to_bytes() == build_policy().to_bytes()


def test_only_a_regular_file_is_read(tmp_path: Path) -> None:
    # A FIFO would wait for a writer forever, /dev/zero never ends, a folder is no file.
    fifo = tmp_path / "fifo"
    os.mkfifo(fifo)
    for path in (fifo, Path("/dev/zero"), tmp_path):
        with pytest.raises(StateFileError, match="not a regular file"):
            mixllm.Policy.load(path)


def test_a_huge_file_is_refused_on_its_header(tmp_path: Path) -> None:
    # 1 TiB, sparse: reading it before the header would not end, allocating it would fail.
    path = tmp_path / "huge.bin"
    with path.open("wb") as f:
        f.truncate(1 << 40)
    with pytest.raises(StateFileError, match="bad magic bytes"):
        mixllm.Policy.load(path)
    # A policy's header announcing its own length, at the start of that file: the declared
    # length is not the file's.
    data = build_policy().to_bytes()
    with path.open("r+b") as f:
        f.write(data[:HEADER_LEN])
    with pytest.raises(StateFileError, match="truncated or padded"):
        mixllm.Policy.load(path)


def test_concurrent_saves_of_one_path_never_remove_each_others_files(tmp_path: Path) -> None:
    path = tmp_path / "p.bin"
    policies = [build_policy(seed) for seed in range(4)]
    errors: list[BaseException] = []

    def save_often(policy: mixllm.Policy) -> None:
        try:
            for _ in range(25):
                policy.save(path)
        except BaseException as e:  # reported by the main thread
            errors.append(e)

    threads = [threading.Thread(target=save_often, args=(p,)) for p in policies]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=120)
    assert errors == []
    assert os.listdir(tmp_path) == ["p.bin"]
    assert mixllm.Policy.load(path).to_bytes() in {p.to_bytes() for p in policies}
