"""A Router's saved state: writing it, reading and checking it, and its compatibility rules."""

from __future__ import annotations

import contextlib
import hashlib
import io
import json
import os
import warnings
import zipfile
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from mixllm._core import MixllmError, Policy, StateFileError, __version__
from mixllm.config import TUNED_KNOBS, RouterConfig
from mixllm.data import RoutingDataset
from mixllm.errors import ConfigError, ProjectionError, UnusedDataWarning
from mixllm.routing import state_folder
from mixllm.routing.calibration import Calibration
from mixllm.routing.learning import LoggedFeedback
from mixllm.routing.refit_state import (
    FEEDBACK_FILE,
    MAX_FEEDBACK_BYTES,
    MAX_TRAINING_BYTES,
    TRAINING_FILE,
    feedback_from_bytes,
    feedback_to_bytes,
    training_from_bytes,
    training_to_bytes,
)
from mixllm.routing.router_base import RouterBase
from mixllm.store.position import StreamPosition
from mixllm.understanding.projection import (
    MAX_PROJECTION_BYTES,
    LinearProjection,
    projection_from_bytes,
)

STATE_FORMAT = 1
# The largest manifest and config.json a load reads (checked before reading): a manifest is
# a few hundred bytes, a configuration some hundreds per model.
MAX_MANIFEST_BYTES = 64 << 10
# The stream position and the ids of the observations learned past it (a buffer's worth).
MAX_STREAM_POSITION_BYTES = 64 << 20
MAX_CONFIG_BYTES = 16 << 20
# How many times a load that could not pin its state starts again when a save replaced it.
_UNPINNED_ATTEMPTS = 10
_CALIBRATION = "calibration.json"
_STREAM_POSITION = "store.json"
MAX_CALIBRATION_BYTES = 1 << 20
# Knobs added after the first states were saved: a config.json without one continues with the
# value its policy.bin carries (what that policy decided with when it was saved).
_LATER_KNOBS = ("length_ridge", "tau_margin_sd")


@dataclass(frozen=True)
class RefitInputs:
    """What a saved state holds for `Router.refit`: the knobs each fit chooses again (the
    manifest's ``tuned``), the rows of the last fit and the feedback logged since. States
    saved before these were kept have none of them."""

    tuned: tuple[str, ...] | None = None
    training: RoutingDataset | None = None
    feedback: tuple[LoggedFeedback, ...] = ()


class Persistence(RouterBase):
    """The Router's `save` (`Router.load` reads what it writes: `read_current_state`)."""

    def save(self, directory: str | os.PathLike[str]) -> Path:
        """Saves configuration, projection and every arm under ``directory``.

        The state is one snapshot, taken under the Router's lock (routing, feedback and pool
        changes wait only for the copy, never for the disk). Saves into one folder, from threads
        or processes, take turns. Each writes a complete new state folder, then switches the
        ``CURRENT`` pointer to it with an atomic rename, then deletes older folders and whatever
        crashed saves left: a crash at any point leaves the previous save loadable
        (docs/guarantees.md). Returns the folder written.
        """
        store = self._store
        with (
            store.saving() if store is not None else contextlib.nullcontext() as position,
            self._lock,
        ):
            projection = self._require_projection()
            config = self._config.to_dict()
            policy = self._policy.to_bytes()
            calibration = self._calibration
            training = self._training
            logged = list(self._feedback_log)
            tuned = list(self._tuned)
        files = {
            "config.json": json.dumps(config, indent=2, allow_nan=True).encode("utf-8"),
            "projection.npz": projection.to_bytes(),
            "policy.bin": policy,
        }
        if calibration is not None:
            files[_CALIBRATION] = json.dumps(calibration.to_dict(), indent=2).encode("utf-8")
        if position is not None:
            files[_STREAM_POSITION] = json.dumps(position.to_dict()).encode("utf-8")
        if training is not None:
            _add_training(files, training)
        if logged:
            _add_bounded(files, FEEDBACK_FILE, feedback_to_bytes(logged), MAX_FEEDBACK_BYTES)
        manifest = {
            "format": STATE_FORMAT,
            "mixllm": __version__,
            "files": {f: hashlib.sha256(data).hexdigest() for f, data in files.items()},
            "tuned": tuned,
        }
        files["manifest.json"] = json.dumps(manifest, indent=2).encode("utf-8")
        return state_folder.write_state(Path(directory), files)


def _add_bounded(files: dict[str, bytes], name: str, data: bytes, limit: int) -> None:
    """Adds a file of what refit relearns from, unless it is past the size a load reads:
    then the state is saved without it (a refit after loading learns from less), with a
    warning that says so."""
    if len(data) > limit:
        warnings.warn(
            f"{name} would be {len(data)} bytes, more than the {limit} a state holds: saved "
            "without it, so a refit after loading this state does not learn from it",
            UnusedDataWarning,
            stacklevel=3,
        )
        return
    files[name] = data


def _add_training(files: dict[str, bytes], training: RoutingDataset) -> None:
    """Adds the rows of the last fit, or as many of the newest as fit within the size a load
    reads (packed and unpacked), with a warning naming how many of the oldest it left out."""
    kept, data = training, training_to_bytes(training)
    size = _training_size(data)
    while size > MAX_TRAINING_BYTES and len(kept) > 1:
        # The rows' bytes grow about linearly with their count: aim a little below the bound.
        rows = min(len(kept) - 1, int(len(kept) * 0.95 * MAX_TRAINING_BYTES / size))
        kept = kept.select(slice(len(kept) - max(rows, 1), None))
        data = training_to_bytes(kept)
        size = _training_size(data)
    if size > MAX_TRAINING_BYTES:
        _add_bounded(files, TRAINING_FILE, data, MAX_TRAINING_BYTES)
        return
    if len(kept) < len(training):
        warnings.warn(
            f"{TRAINING_FILE} would be more than the {MAX_TRAINING_BYTES} bytes a state holds: "
            f"saved with the newest {len(kept)} rows, leaving out the oldest "
            f"{len(training) - len(kept)} rows, which a refit after loading does not learn from",
            UnusedDataWarning,
            stacklevel=3,
        )
    files[TRAINING_FILE] = data


def _training_size(data: bytes) -> int:
    """A rows file's size as a load bounds it: the larger of its packed and unpacked sizes."""
    with zipfile.ZipFile(io.BytesIO(data)) as archive:
        unpacked = sum(info.file_size for info in archive.infolist())
    return max(len(data), unpacked)


def saved_refit_inputs(folder: Path, config: RouterConfig) -> RefitInputs:
    """What a state folder holds for `Router.refit` (`RefitInputs`), every file checked."""
    manifest = _json_object(folder, "manifest.json", MAX_MANIFEST_BYTES)
    checksums = manifest.get("files")
    if not isinstance(checksums, dict):
        raise StateFileError(f"{folder}: the manifest lists no files")
    tuned = manifest.get("tuned")
    if tuned is not None and (not isinstance(tuned, list) or not set(tuned) <= set(TUNED_KNOBS)):
        raise StateFileError(f"{folder}: the manifest's tuned is not a list of {TUNED_KNOBS}")
    training = None
    if TRAINING_FILE in checksums:
        data = _checked_file(folder, TRAINING_FILE, MAX_TRAINING_BYTES, checksums)
        training = training_from_bytes(data, str(folder / TRAINING_FILE))
    feedback: tuple[LoggedFeedback, ...] = ()
    if FEEDBACK_FILE in checksums:
        data = _checked_file(folder, FEEDBACK_FILE, MAX_FEEDBACK_BYTES, checksums)
        feedback = tuple(
            feedback_from_bytes(data, str(folder / FEEDBACK_FILE), config.feedback_log_size)
        )
    return RefitInputs(None if tuned is None else tuple(tuned), training, feedback)


def read_state_folder(
    folder: Path,
) -> tuple[RouterConfig, LinearProjection, Policy, Calibration | None]:
    """The configuration, projection, policy and calibration table (optional: states saved
    before it, or fitted on too few rows, have none) of one state folder, every file checked."""
    manifest = _json_object(folder, "manifest.json", MAX_MANIFEST_BYTES)
    if manifest.get("format") != STATE_FORMAT:
        raise StateFileError(
            f"{folder}: state format {manifest.get('format')!r}, this mixllm reads {STATE_FORMAT}"
        )
    checksums = manifest.get("files")
    if not isinstance(checksums, dict):
        raise StateFileError(f"{folder}: the manifest lists no files")
    raw_config = _json_object(folder, "config.json", MAX_CONFIG_BYTES, checksums)
    try:
        config = RouterConfig.from_dict(raw_config)
    except (ValueError, TypeError, AttributeError, OverflowError, RecursionError) as err:
        raise StateFileError(f"{folder}: invalid configuration: {err}") from err
    try:
        projection = projection_from_bytes(
            _checked_file(folder, "projection.npz", MAX_PROJECTION_BYTES, checksums),
            str(folder / "projection.npz"),
        )
    except ProjectionError as err:
        raise StateFileError(f"{folder}: {err}") from err
    policy_bytes = _checked_file(folder, "policy.bin", _policy_bytes_bound(config), checksums)
    try:
        policy = Policy.from_bytes(policy_bytes, dim=config.dim + 1)
    except MixllmError as err:
        raise StateFileError(f"{folder / 'policy.bin'}: {err}") from err
    saved_knobs = raw_config.get("router", {})
    # Saved before the length head had its own ridge, or before the margin below τ: it
    # continues with what its policy file carries (the quality ridge, no margin), and a
    # refit keeps using it.
    config = replace(
        config,
        **{k: getattr(policy, k) for k in _LATER_KNOBS if k not in saved_knobs},
    )
    calibration = None
    if _CALIBRATION in checksums:
        try:
            calibration = Calibration.from_dict(
                _json_object(folder, _CALIBRATION, MAX_CALIBRATION_BYTES, checksums)
            )
        except ValueError as err:
            raise StateFileError(f"{folder}: invalid {_CALIBRATION}: {err}") from err
    return config, projection, policy, calibration


def read_current_state(
    directory: Path,
) -> tuple[
    Path,
    RouterConfig,
    LinearProjection,
    Policy,
    Calibration | None,
    StreamPosition | None,
    RefitInputs,
]:
    """The folder ``CURRENT`` names under ``directory`` and what it holds (`read_state_folder`,
    the store's stream position when it was saved with a store attached, and what a refit
    relearns from).
    The folder is pinned while it is read, so the saves that may run beside it leave it whole;
    where it cannot be pinned, a save that deleted it meanwhile sends the reading to the new
    state (a few times at most)."""
    for attempt in range(_UNPINNED_ATTEMPTS):
        with state_folder.pinned_state(directory) as (folder, held):
            if folder is None:
                raise StateFileError(
                    f"{directory} holds no saved router (no {state_folder.CURRENT} file)"
                )
            try:
                config, projection, policy, calibration = read_state_folder(folder)
                return (
                    folder,
                    config,
                    projection,
                    policy,
                    calibration,
                    saved_position(folder),
                    saved_refit_inputs(folder, config),
                )
            except StateFileError:
                replaced = not held and state_folder.current_state(directory) != folder.name
                if not replaced or attempt == _UNPINNED_ATTEMPTS - 1:
                    raise
    raise AssertionError("unreachable: the last attempt re-raises")


def saved_position(folder: Path) -> StreamPosition | None:
    """The store's stream position a state saved with a store attached records."""
    checksums = _json_object(folder, "manifest.json", MAX_MANIFEST_BYTES).get("files")
    if not isinstance(checksums, dict) or _STREAM_POSITION not in checksums:
        return None
    raw = _json_object(folder, _STREAM_POSITION, MAX_STREAM_POSITION_BYTES, checksums)
    try:
        return StreamPosition.from_dict(raw)
    except ValueError as err:
        raise StateFileError(f"{folder}: invalid {_STREAM_POSITION}: {err}") from err


def check_knobs(config: RouterConfig, policy: Policy) -> None:
    """Refuses a configuration and a policy that disagree on a decision knob: a policy decides
    with its own knobs, so a Router whose configuration said otherwise would save a state that
    does not describe itself."""
    for knob, configured in config.policy_knobs().items():
        if configured != getattr(policy, knob):
            raise ConfigError(
                f"the configuration's {knob} is {getattr(config, knob)!r} but the policy's is "
                f"{getattr(policy, knob)!r}"
            )


def _checked_file(
    folder: Path, file: str, limit: int, checksums: dict[str, Any] | None = None
) -> bytes:
    """The bytes of a state file, at most ``limit`` of them, checked against the manifest's
    sha256 when ``checksums`` is given. What is hashed is what is parsed: one read."""
    try:
        data = state_folder.read_bounded(folder / file, limit, what=file)
    except FileNotFoundError:
        raise StateFileError(f"{folder}: {file} is missing") from None
    if checksums is not None and hashlib.sha256(data).hexdigest() != checksums.get(file):
        raise StateFileError(f"{folder}: {file} does not match its checksum (damaged)")
    return data


def _json_object(
    folder: Path, file: str, limit: int, checksums: dict[str, Any] | None = None
) -> dict[str, Any]:
    """A state's JSON file, which must hold an object."""
    data = _checked_file(folder, file, limit, checksums)
    try:
        value = json.loads(data.decode("utf-8"))
    except (ValueError, RecursionError) as err:  # UnicodeDecodeError is a ValueError
        raise StateFileError(f"{folder}: unreadable {file}: {err}") from None
    if not isinstance(value, dict):
        raise StateFileError(f"{folder}: {file} holds a {type(value).__name__}, not an object")
    return value


def _policy_bytes_bound(config: RouterConfig) -> int:
    """The most bytes the policy file of a pool like ``config``'s can take: per model four
    packed symmetric matrices and four vectors of the context's size, a name of at most
    4,096 bytes and its fixed fields, twice over to leave room for the format to grow."""
    d = config.dim + 1
    per_model = 8 * (4 * d * (d + 1) // 2 + 4 * d) + 4096 + 512
    return 2 * (len(config.models) * per_model + 4096)
