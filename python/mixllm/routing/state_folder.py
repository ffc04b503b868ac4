"""The folder a Router saves into: state folders, the ``CURRENT`` pointer, a save lock, and the
bounded reads a load makes.

Layout of a saved folder::

    CURRENT               the name of the state folder to load ("state-000042\\n")
    state-000042/         one complete state: manifest.json and the files it lists
    .lock                 advisory lock (flock) held by the one save writing here

A save holds the lock for its whole run, so saves into one folder, from threads or from
processes, take turns. It writes a complete state into a staging folder
(``.state-NNNNNN.tmp-*``), renames it into place, switches ``CURRENT`` to it with an atomic
rename, and only then deletes older state folders: a crash at any point leaves the previous
state loadable. Whatever a crashed save left (staging folders, ``.CURRENT.tmp-*`` files, state
folders ``CURRENT`` does not name) is removed by the next save, under the lock, so it can never
be another live save's work. A load never waits for a save and writes nothing (the folder may be
read-only, like the state shipped in the package): it pins the state folder ``CURRENT`` names
(:func:`pinned_state`: a shared ``flock`` on the folder itself, which needs no write access) and
reads every file through :func:`read_bounded`, whose size is checked before a byte is read. A
save deletes only the state folders no load has pinned (a later save deletes the others), so a
load reads one whole state however many saves run beside it.

Where ``flock`` is refused (some network filesystems), nothing can be pinned: saves delete old
state folders as they would unpinned ones (with a warning, once), and a load whose folder a save
deleted while it read starts again from the new ``CURRENT`` (see `Pinned.held`).
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import logging
import os
import re
import secrets
import shutil
import stat
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import NamedTuple

from mixllm._core import StateFileError

__all__ = [
    "CURRENT",
    "MAX_CURRENT_BYTES",
    "Pinned",
    "clean_leftovers",
    "current_state",
    "pinned_state",
    "read_bounded",
    "save_lock",
    "state_number",
    "write_state",
]

CURRENT = "CURRENT"
LOCK = ".lock"
# "state-" and up to 18 digits and a newline, with room to spare.
MAX_CURRENT_BYTES = 64
_STATE_NAME = re.compile(r"state-(\d{1,18})")
_STAGING_NAME = re.compile(r"\.state-\d{1,18}\.tmp-.+")
_POINTER_TMP_NAME = re.compile(rf"\.{CURRENT}\.tmp-.+")
# How many times a load reads ``CURRENT`` again when the folder it named was deleted before it
# could be pinned (each time a whole save has run in that moment).
_PIN_ATTEMPTS = 100
_FOLDER_FLAGS = os.O_RDONLY | os.O_DIRECTORY | getattr(os, "O_NOFOLLOW", 0)
# What flock raises for a lock another holds; anything else means it cannot lock here at all.
_HELD = frozenset({errno.EWOULDBLOCK, errno.EAGAIN})
# What opening a folder raises for a file or a symbolic link in its place.
_NOT_A_FOLDER = frozenset({errno.ENOTDIR, errno.ELOOP})

log = logging.getLogger(__name__)
# The kinds of failure already warned about: a save runs often, and each would say it again.
_warned: set[tuple[str, int | None]] = set()


def _warn_once(kind: str, path: Path, err: OSError, consequence: str) -> None:
    if (kind, err.errno) in _warned:
        return
    _warned.add((kind, err.errno))
    log.warning("%s: %s; %s", path, err, consequence)


class Pinned(NamedTuple):
    """The state folder ``CURRENT`` named (None when there is no ``CURRENT``), and whether it
    is pinned (False where the filesystem refuses ``flock``: a save may then delete it while it
    is read)."""

    folder: Path | None
    held: bool


def state_number(name: str) -> int:
    """The number of a ``state-NNNNNN`` folder name, 0 for anything else."""
    match = _STATE_NAME.fullmatch(name)
    return int(match.group(1)) if match else 0


@contextlib.contextmanager
def save_lock(root: Path) -> Iterator[None]:
    """Holds the advisory lock of saves into ``root`` (released when the process ends, however
    it ends). Each call opens the lock file anew, so threads of one process take turns too."""
    flags = os.O_RDWR | os.O_CREAT | getattr(os, "O_NOFOLLOW", 0)
    try:
        descriptor = os.open(root / LOCK, flags, 0o644)
    except OSError as err:
        raise StateFileError(f"cannot open the save lock {root / LOCK}: {err}") from err
    try:
        fcntl.flock(descriptor, fcntl.LOCK_EX)
        yield
    finally:
        os.close(descriptor)  # releases the lock


def current_state(root: Path) -> str | None:
    """The state folder name ``CURRENT`` holds, or None when there is none. Raises
    `StateFileError` for a ``CURRENT`` that is not a small text naming a state folder."""
    path = root / CURRENT
    try:
        raw = read_bounded(path, MAX_CURRENT_BYTES, what=CURRENT)
    except FileNotFoundError:
        return None
    try:
        name = raw.decode("utf-8").strip()
    except UnicodeDecodeError as err:
        raise StateFileError(f"{path} is not UTF-8 text: {err}") from None
    if state_number(name) == 0:
        raise StateFileError(f"{path} names {name!r}, not a state folder")
    return name


@contextlib.contextmanager
def pinned_state(root: Path) -> Iterator[Pinned]:
    """The state folder ``CURRENT`` names under ``root``, which no save deletes until the block
    ends (unless the filesystem cannot lock it: `Pinned.held`). A folder that cannot be pinned
    and that ``CURRENT`` still names (missing, not a folder) is given as it is, for the reading
    to name what is wrong. Raises `StateFileError` as `current_state` does."""
    for _ in range(_PIN_ATTEMPTS):
        name = current_state(root)
        if name is None:
            yield Pinned(None, held=False)
            return
        descriptor, lockable = _pin(root / name)
        if descriptor is None and lockable and current_state(root) != name:
            continue  # deleted by a save since CURRENT named it: read the new one
        try:
            yield Pinned(root / name, held=descriptor is not None)
        finally:
            if descriptor is not None:
                os.close(descriptor)  # releases the pin
        return
    raise StateFileError(f"{root}: saves replaced the state faster than it could be opened")


def _pin(folder: Path) -> tuple[int | None, bool]:
    """A descriptor of ``folder`` holding a shared lock on it, or None when the folder is gone,
    being deleted, not a folder, or cannot be locked here; and whether it could be locked (False
    where the filesystem refuses ``flock``)."""
    try:
        descriptor = os.open(folder, _FOLDER_FLAGS)
    except OSError:
        return None, True
    try:
        # A save holds the exclusive lock only while it deletes the folder.
        fcntl.flock(descriptor, fcntl.LOCK_SH | fcntl.LOCK_NB)
    except OSError as err:
        os.close(descriptor)
        if err.errno in _HELD:
            return None, True
        _warn_once("pin", folder, err, "loads cannot pin the state they read")
        return None, False
    try:
        # Locked, but perhaps after a save deleted it: the name must still lead to it.
        named, held = os.stat(folder, follow_symlinks=False), os.fstat(descriptor)
        if (named.st_dev, named.st_ino) == (held.st_dev, held.st_ino):
            return descriptor, True
    except OSError:
        pass
    os.close(descriptor)
    return None, True


def read_bounded(path: Path, limit: int, *, what: str) -> bytes:
    """The bytes of the regular file ``path``, refused with `StateFileError` when it is larger
    than ``limit`` bytes (checked before reading, and again while reading, in case it grew).
    A missing file raises `FileNotFoundError`, for the caller to name."""
    try:
        # Non-blocking, so that a named pipe in place of the file cannot hang the load.
        descriptor = os.open(path, os.O_RDONLY | os.O_NONBLOCK)
        with os.fdopen(descriptor, "rb") as handle:
            info = os.fstat(handle.fileno())
            if not stat.S_ISREG(info.st_mode):
                raise StateFileError(f"{path}: {what} is not a regular file")
            if info.st_size > limit:
                raise StateFileError(
                    f"{path}: {what} is {info.st_size} bytes, more than the {limit} a state holds"
                )
            data = handle.read(limit + 1)
    except FileNotFoundError:
        raise
    except IsADirectoryError:
        raise StateFileError(f"{path}: {what} is a folder, not a file") from None
    except OSError as err:
        raise StateFileError(f"{path}: cannot read {what}: {err}") from err
    if len(data) > limit:
        raise StateFileError(f"{path}: {what} is more than the {limit} bytes a state holds")
    return data


def clean_leftovers(root: Path) -> None:
    """Removes what crashed saves left in ``root``: staging folders, temporary pointers, and
    state folders ``CURRENT`` does not name. Only for the holder of :func:`save_lock`. Nothing
    is removed while ``CURRENT`` cannot be read: then it is not clear which state is the good
    one."""
    try:
        keep = current_state(root)
    except StateFileError:
        return
    for entry in root.iterdir():
        name = entry.name
        if _STAGING_NAME.fullmatch(name) or _POINTER_TMP_NAME.fullmatch(name):
            _remove(entry)
        elif keep is not None and name != keep and state_number(name) > 0:
            _remove_unpinned(entry)


def _remove_unpinned(folder: Path) -> None:
    """Deletes a state folder unless a load has it pinned (a later save deletes it then), or
    it cannot be opened now (too many open files, no permission: a later save tries again).
    Where the filesystem refuses ``flock`` no load can pin it, and it is deleted."""
    try:
        descriptor = os.open(folder, _FOLDER_FLAGS)
    except FileNotFoundError:
        return
    except OSError as err:
        if err.errno in _NOT_A_FOLDER:
            _remove(folder)  # nothing can pin it
        else:
            _warn_once("open", folder, err, "old states are kept until a later save")
        return
    try:
        try:
            fcntl.flock(descriptor, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as err:
            if err.errno in _HELD:
                return  # pinned by a load
            _warn_once("delete", folder, err, "old states are deleted without checking for loads")
        shutil.rmtree(folder, ignore_errors=True)
    finally:
        os.close(descriptor)


def _remove(path: Path) -> None:
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path, ignore_errors=True)
    else:
        with contextlib.suppress(FileNotFoundError):
            path.unlink()


def write_state(root: Path, files: Mapping[str, bytes]) -> Path:
    """Writes ``files`` (name to contents) as a new state folder under ``root`` and points
    ``CURRENT`` at it; returns the folder. Takes the save lock, cleans what crashed saves
    left, and deletes the previous state only once the new one is complete and pointed to."""
    root.mkdir(parents=True, exist_ok=True)
    with save_lock(root):
        clean_leftovers(root)
        number = 1 + max((state_number(p.name) for p in root.iterdir()), default=0)
        name = f"state-{number:06d}"
        token = f"{os.getpid()}-{secrets.token_hex(4)}"
        staging = root / f".{name}.tmp-{token}"
        staging.mkdir()
        final = root / name
        try:
            for file, contents in files.items():
                path = staging / file
                path.write_bytes(contents)
                _fsync(path)
            _fsync(staging)
            staging.rename(final)
        except BaseException:
            shutil.rmtree(staging, ignore_errors=True)
            raise
        pointer = root / f".{CURRENT}.tmp-{token}"
        try:
            pointer.write_text(name + "\n", encoding="utf-8")
            _fsync(pointer)
            pointer.replace(root / CURRENT)
        except BaseException:
            with contextlib.suppress(FileNotFoundError):
                pointer.unlink()
            raise
        _fsync(root)
        for old in root.iterdir():
            if old.name != name and state_number(old.name) > 0:
                _remove_unpinned(old)
    return final


def _fsync(path: Path) -> None:
    """Flushes a file or folder to disk (best effort for folders, which some systems refuse)."""
    flags = os.O_RDONLY | (os.O_DIRECTORY if path.is_dir() else 0)
    try:
        fd = os.open(path, flags)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)
