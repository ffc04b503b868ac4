"""Saving and loading a Router under stress: saves racing pool changes and each other (threads
and processes), saves killed midway, and folders whose every file is hostile."""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import signal
import subprocess
import sys
import threading
from pathlib import Path
from typing import Any

import hypothesis.strategies as st
import pytest
from hypothesis import HealthCheck, given, settings

import mixllm
from light_router import light_router, model
from mixllm.routing import persistence
from mixllm.routing.persistence import MAX_MANIFEST_BYTES
from mixllm.routing.router import Router

STATE_FILES = ("config.json", "projection.npz", "policy.bin")


def entries(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir())


def test_saves_racing_pool_changes_all_load(tmp_path: Path) -> None:
    """Each save is one snapshot: config.json and policy.bin always describe the same pool."""
    router = light_router()
    stop = threading.Event()
    errors: list[BaseException] = []

    def churn() -> None:
        try:
            while not stop.is_set():
                router.add_model(model("extra"))
                router.remove_model("extra")
        except BaseException as err:
            errors.append(err)

    churner = threading.Thread(target=churn)
    churner.start()
    try:
        folders = [tmp_path / f"s{i}" for i in range(60)]
        for folder in folders:
            router.save(folder)
    finally:
        stop.set()
        churner.join(timeout=30)
    assert not errors, errors
    pools = {tuple(Router.load(folder).models) for folder in folders}
    assert pools <= {("small", "medium", "large"), ("small", "medium", "large", "extra")}


def test_saves_from_many_threads_into_one_folder_take_turns(tmp_path: Path) -> None:
    router = light_router()
    errors: list[BaseException] = []

    def save_many() -> None:
        try:
            for _ in range(8):
                router.save(tmp_path)
        except BaseException as err:
            errors.append(err)

    threads = [threading.Thread(target=save_many) for _ in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=120)
    assert not any(t.is_alive() for t in threads)
    assert not errors, errors
    assert entries(tmp_path) == [".lock", "CURRENT", "state-000032"]
    assert Router.load(tmp_path).models == router.models


def test_loads_beside_saves_see_one_state_or_the_next(tmp_path: Path) -> None:
    """A save that replaces the state a load is reading sends the load to the new one."""
    router = light_router()
    router.save(tmp_path)
    stop = threading.Event()
    errors: list[BaseException] = []

    def save_forever() -> None:
        try:
            while not stop.is_set():
                router.save(tmp_path)
        except BaseException as err:
            errors.append(err)

    saver = threading.Thread(target=save_forever)
    saver.start()
    try:
        for _ in range(150):
            assert Router.load(tmp_path).models == router.models
    finally:
        stop.set()
        saver.join(timeout=60)
    assert not errors, errors


def test_a_load_reads_the_state_it_started_on_however_many_saves_replace_it(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Saves that replace the state while a load reads it, as a loaded machine interleaves
    them, each time the load starts reading a state: it still reads that one whole."""
    router = light_router()
    router.save(tmp_path)
    read = persistence.read_state_folder
    started_on: list[str] = []

    def saves_beside(folder: Path) -> Any:
        started_on.append(folder.name)
        for _ in range(4):
            router.save(tmp_path)
        return read(folder)

    monkeypatch.setattr(persistence, "read_state_folder", saves_beside)
    assert Router.load(tmp_path).models == router.models
    assert started_on == ["state-000001"]
    # The state it read outlived the saves; the next save deletes it.
    assert entries(tmp_path) == [".lock", "CURRENT", "state-000001", "state-000005"]
    monkeypatch.undo()
    router.save(tmp_path)
    assert entries(tmp_path) == [".lock", "CURRENT", "state-000006"]


SAVE_LOOP = """
import sys
from mixllm.routing.router import Router
router = Router.load(sys.argv[1])
for _ in range(int(sys.argv[3])):
    router.save(sys.argv[2])
"""


def test_saves_from_many_processes_into_one_folder_take_turns(tmp_path: Path) -> None:
    source = tmp_path / "source"
    light_router().save(source)
    target = tmp_path / "target"
    children = [
        subprocess.Popen(
            [sys.executable, "-c", SAVE_LOOP, str(source), str(target), "6"],
            stderr=subprocess.PIPE,
            text=True,
        )
        for _ in range(3)
    ]
    for child in children:
        _, err = child.communicate(timeout=300)
        assert child.returncode == 0, err
    assert entries(target) == [".lock", "CURRENT", "state-000018"]
    assert Router.load(target).models == ["small", "medium", "large"]


# Saves with its disk flushes replaced by a pause at the step named by argv[2]: the point where
# the parent kills it. It says when it got there.
STALLED_SAVE = """
import sys, time
from pathlib import Path
from mixllm.routing import state_folder
from mixllm.routing.router import Router
flush = state_folder._fsync
def stall(path: Path) -> None:
    if path.name.startswith(sys.argv[2]):
        print("stalled", flush=True)
        time.sleep(600)
    flush(path)
state_folder._fsync = stall
Router.load(sys.argv[1]).save(sys.argv[1])
"""


@pytest.mark.parametrize("stage", [".state-", ".CURRENT.tmp-"])
def test_a_save_killed_midway_leaves_a_loadable_state_and_its_leftovers_go(
    tmp_path: Path, stage: str
) -> None:
    router = light_router()
    first = router.save(tmp_path)
    child = subprocess.Popen(
        [sys.executable, "-c", STALLED_SAVE, str(tmp_path), stage],
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert child.stdout is not None
        assert child.stdout.readline().strip() == "stalled"
        # The child holds the save lock: a save here waits for it.
        waiting = threading.Thread(target=router.save, args=(tmp_path,))
        waiting.start()
        waiting.join(timeout=0.5)
        assert waiting.is_alive()
        leftovers = [n for n in entries(tmp_path) if n.startswith(stage)]
        assert leftovers
        assert Router.load(tmp_path).models == router.models  # still the first state
    finally:
        child.send_signal(signal.SIGKILL)
        child.wait(timeout=30)
    # The lock died with the child; the waiting save cleans what the child left.
    waiting.join(timeout=60)
    assert not waiting.is_alive()
    assert entries(tmp_path) == [".lock", "CURRENT", "state-000002"]
    assert not first.exists()
    assert Router.load(tmp_path).models == router.models


def test_a_crash_between_rename_and_pointer_leaves_a_folder_the_next_save_removes(
    tmp_path: Path,
) -> None:
    router = light_router()
    router.save(tmp_path)
    # As a save killed after renaming its folder into place, before switching CURRENT.
    orphan = tmp_path / "state-000002"
    orphan.mkdir()
    (orphan / "policy.bin").write_bytes(b"partial")
    assert Router.load(tmp_path).models == router.models
    router.save(tmp_path)
    assert entries(tmp_path) == [".lock", "CURRENT", "state-000002"]
    assert (orphan / "policy.bin").read_bytes() != b"partial"
    assert Router.load(tmp_path).models == router.models


def rewrite(folder: Path, file: str, data: bytes) -> None:
    """Replaces a state file and its checksum in the manifest, as a crafted state would."""
    (folder / file).write_bytes(data)
    manifest = json.loads((folder / "manifest.json").read_text(encoding="utf-8"))
    manifest["files"][file] = hashlib.sha256(data).hexdigest()
    (folder / "manifest.json").write_text(json.dumps(manifest), encoding="utf-8")


@pytest.fixture
def saved(tmp_path: Path) -> tuple[Path, Path]:
    root = tmp_path / "saved"
    return root, light_router().save(root)


def test_bad_current_files_are_state_file_errors(saved: tuple[Path, Path]) -> None:
    root, _ = saved
    current = root / "CURRENT"
    cases: list[tuple[bytes | None, str]] = [
        (b"\xff\xfe\x00", "not UTF-8"),
        (b"9" * 5000, "5000 bytes, more than the 64"),
        (b"state-" + b"9" * 40, "not a state folder"),
        (b"state-000007\n", "manifest.json is missing"),
        (None, "is a folder"),
    ]
    for contents, message in cases:
        if current.is_dir():
            current.rmdir()
        if contents is None:
            current.unlink()
            current.mkdir()
        else:
            current.write_bytes(contents)
        with pytest.raises(mixllm.StateFileError, match=message):
            Router.load(root)


@pytest.mark.parametrize(
    ("file", "contents", "message"),
    [
        ("config.json", b"[1, 2]", "config.json holds a list, not an object"),
        ("config.json", b"[" * 100_000, "unreadable config.json"),
        ("config.json", b'{"router": {"alpha": 1' + b"0" * 400 + b"}}", "invalid configuration"),
        ("config.json", b'{"router": []}', "invalid configuration"),
        ("config.json", b"\xff", "unreadable config.json"),
        ("projection.npz", b"PK\x03\x04 not really a zip", "not a mixllm projection file"),
        ("projection.npz", b"\x93NUMPY", "not a mixllm projection file"),
    ],
)
def test_crafted_state_files_are_state_file_errors(
    saved: tuple[Path, Path], file: str, contents: bytes, message: str
) -> None:
    root, folder = saved
    rewrite(folder, file, contents)
    with pytest.raises(mixllm.StateFileError, match=message):
        Router.load(root)


def test_a_policy_file_that_does_not_fit_names_itself(saved: tuple[Path, Path]) -> None:
    root, folder = saved
    raw = json.loads((folder / "config.json").read_text(encoding="utf-8"))
    raw["router"]["dim"] = 5
    rewrite(folder, "config.json", json.dumps(raw).encode("utf-8"))
    with pytest.raises(mixllm.StateFileError, match=r"policy\.bin: .*dimension"):
        Router.load(root)


def test_a_manifest_that_is_not_an_object_or_nests_deeply(saved: tuple[Path, Path]) -> None:
    root, folder = saved
    for contents, message in [
        (b"[]", "holds a list"),
        (b"[" * 60_000, "unreadable manifest.json"),
        (b'{"format": 1, "files": []}', "lists no files"),
    ]:
        (folder / "manifest.json").write_bytes(contents)
        with pytest.raises(mixllm.StateFileError, match=message):
            Router.load(root)


def test_a_damaged_projection_with_a_stale_checksum(saved: tuple[Path, Path]) -> None:
    root, folder = saved
    data = bytearray((folder / "projection.npz").read_bytes())
    data[10:20] = b"\x00" * 10
    (folder / "projection.npz").write_bytes(bytes(data))
    with pytest.raises(mixllm.StateFileError, match="checksum"):
        Router.load(root)


def test_oversized_files_are_refused_before_they_are_read(saved: tuple[Path, Path]) -> None:
    """A 3 GiB manifest and a 1 GiB policy file (sparse: no disk used) are refused by their
    size, which the message gives, before a byte is read."""
    root, folder = saved
    with open(folder / "manifest.json", "r+b") as handle:
        handle.truncate(3 << 30)
    with pytest.raises(
        mixllm.StateFileError, match=f"3221225472 bytes, more than the {MAX_MANIFEST_BYTES}"
    ):
        Router.load(root)
    os.truncate(folder / "manifest.json", 0)
    rewrite_manifest = json.dumps({"format": 1, "files": {}})
    (folder / "manifest.json").write_text(rewrite_manifest, encoding="utf-8")
    for file in STATE_FILES:
        with open(folder / file, "r+b") as handle:
            handle.truncate(1 << 30)
    with pytest.raises(mixllm.StateFileError, match=r"config\.json is 1073741824 bytes"):
        Router.load(root)


@settings(
    max_examples=150,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
@given(
    file=st.sampled_from(["CURRENT", "manifest.json", *STATE_FILES]),
    contents=st.one_of(
        st.binary(max_size=2000),
        st.text(max_size=500).map(lambda t: t.encode("utf-8", "surrogatepass")),
        st.recursive(
            st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=20),
            lambda inner: (
                st.lists(inner, max_size=4)
                | st.dictionaries(st.text(max_size=10), inner, max_size=4)
            ),
            max_leaves=20,
        ).map(lambda v: json.dumps(v).encode("utf-8", "surrogatepass")),
    ),
    keep_checksum=st.booleans(),
)
def test_any_file_content_loads_or_is_a_state_file_error(
    saved: tuple[Path, Path], file: str, contents: bytes, keep_checksum: bool
) -> None:
    root, folder = saved
    backup = {f: (folder / f).read_bytes() for f in ("manifest.json", *STATE_FILES)}
    current = (root / "CURRENT").read_bytes()
    try:
        if file == "CURRENT":
            (root / "CURRENT").write_bytes(contents)
        elif file == "manifest.json" or not keep_checksum:
            (folder / file).write_bytes(contents)
        else:
            rewrite(folder, file, contents)
        with contextlib.suppress(mixllm.StateFileError):
            Router.load(root)
    finally:
        (root / "CURRENT").write_bytes(current)
        for f, data in backup.items():
            (folder / f).write_bytes(data)


def test_add_model_refuses_a_name_that_is_not_unicode() -> None:
    """What no state file could hold is refused before the pool changes."""
    router = light_router()
    with pytest.raises(mixllm.ConfigError, match="not valid Unicode"):
        router.add_model(model("\ud800"))
    assert router.models == ["small", "medium", "large"]
