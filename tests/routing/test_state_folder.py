"""The state folder where its locks or folders cannot be opened as usual: flock refused (as some
network filesystems do), a pin held, a folder that cannot be opened, a file in a folder's
place."""

from __future__ import annotations

import errno
import fcntl
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

import mixllm
from light_router import light_router
from mixllm.routing import persistence, state_folder
from mixllm.routing.router import Router

real_flock = fcntl.flock
real_open = os.open


def refuse_trylocks(monkeypatch: pytest.MonkeyPatch, code: int) -> None:
    """Makes every non-blocking flock (a pin, or a save's check for one) fail with ``code``;
    the save lock, which blocks, still works."""

    def flock(descriptor: int, operation: int) -> None:
        if operation & fcntl.LOCK_NB:
            raise OSError(code, os.strerror(code))
        real_flock(descriptor, operation)

    monkeypatch.setattr(fcntl, "flock", flock)
    monkeypatch.setattr(state_folder, "_warned", set(), raising=False)


def states(root: Path) -> list[str]:
    return sorted(p.name for p in root.iterdir() if p.name.startswith("state-"))


def save(root: Path, times: int) -> None:
    for i in range(times):
        state_folder.write_state(root, {"data": str(i).encode()})


def test_where_flock_is_refused_old_states_are_deleted_with_one_warning(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    refuse_trylocks(monkeypatch, errno.ENOLCK)
    save(tmp_path, 3)
    assert states(tmp_path) == ["state-000003"]
    assert caplog.text.count("old states are deleted without checking for loads") == 1


def test_a_pinned_state_is_kept_for_a_later_save(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    save(tmp_path, 1)
    with state_folder.pinned_state(tmp_path) as pinned:
        assert pinned.held and pinned.folder == tmp_path / "state-000001"
        save(tmp_path, 1)
        assert states(tmp_path) == ["state-000001", "state-000002"]
    refuse_trylocks(monkeypatch, errno.EWOULDBLOCK)  # as if loads held every one still
    save(tmp_path, 1)
    assert states(tmp_path) == ["state-000001", "state-000002", "state-000003"]
    monkeypatch.undo()
    save(tmp_path, 1)
    assert states(tmp_path) == ["state-000004"]


def failing_folder_opens(code: int) -> Callable[..., int]:
    def fake(path: Any, flags: int, *args: Any, **kwargs: Any) -> int:
        if flags == state_folder._FOLDER_FLAGS and Path(path).name.startswith("state-"):
            raise OSError(code, os.strerror(code), str(path))
        return real_open(path, flags, *args, **kwargs)

    return fake


@pytest.mark.parametrize("code", [errno.EMFILE, errno.ENFILE, errno.EACCES])
def test_a_state_folder_that_cannot_be_opened_is_left_for_a_later_save(
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
    code: int,
) -> None:
    save(tmp_path, 1)
    monkeypatch.setattr(state_folder, "_warned", set(), raising=False)
    with monkeypatch.context() as patch:
        patch.setattr(os, "open", failing_folder_opens(code))
        save(tmp_path, 1)
    # Not known to be unpinned: kept, and said.
    assert states(tmp_path) == ["state-000001", "state-000002"]
    assert "old states are kept until a later save" in caplog.text
    save(tmp_path, 1)
    assert states(tmp_path) == ["state-000003"]


def test_a_file_in_place_of_a_state_folder_is_removed(tmp_path: Path) -> None:
    save(tmp_path, 1)
    (tmp_path / "state-000005").write_text("not a folder")
    (tmp_path / "state-000006").symlink_to(tmp_path / "state-000001")
    save(tmp_path, 1)
    assert states(tmp_path) == ["state-000002"]


def test_an_unpinned_load_whose_state_a_save_deletes_reads_the_new_one(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    router = light_router()
    router.save(tmp_path)
    refuse_trylocks(monkeypatch, errno.ENOLCK)
    real_read = persistence.read_state_folder
    read: list[str] = []

    def read_beside_a_save(folder: Path) -> Any:
        read.append(folder.name)
        if len(read) == 1:
            router.save(tmp_path)  # replaces the state being read, and deletes it
        return real_read(folder)

    monkeypatch.setattr(persistence, "read_state_folder", read_beside_a_save)
    loaded = Router.load(tmp_path)
    assert read == ["state-000001", "state-000002"]
    assert loaded.models == router.models
    assert "loads cannot pin the state they read" in caplog.text


def test_an_unpinned_load_gives_up_after_a_few_replacements(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    router = light_router()
    router.save(tmp_path)
    refuse_trylocks(monkeypatch, errno.ENOLCK)
    real_read = persistence.read_state_folder

    def read_beside_saves(folder: Path) -> Any:
        router.save(tmp_path)
        return real_read(folder)

    monkeypatch.setattr(persistence, "read_state_folder", read_beside_saves)
    with pytest.raises(mixllm.StateFileError):
        Router.load(tmp_path)
