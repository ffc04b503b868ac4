"""The core's tokenizer (`mixllm._core.Tokenizer`) against the Hugging Face `tokenizers`
package, the reference it replaces: the same ids for the shared datasets' prompts and for any
Unicode text, with and without the encoders' truncation, for MiniLM's and mpnet's
``tokenizer.json``. Bad files and bad texts are refused with errors that name them."""

from __future__ import annotations

import functools
import json
import subprocess
import sys
import threading
from pathlib import Path

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from gil_probe import python_runs_during
from mixllm import Embedder, data
from mixllm._core import InputTypeError, InvalidInputError, Tokenizer
from mixllm.encoders import model_files
from mixllm.encoders.tokenizer import load_tokenizer
from mixllm.errors import ModelFileError

tokenizers = pytest.importorskip("tokenizers")

SHARED = Path(__file__).resolve().parents[3] / "shared" / "data"


def _mpnet_tokenizer() -> Path | None:
    """all-mpnet-base-v2's tokenizer.json where `mixllm encoder fetch` has put it."""
    from mixllm.encoders.fetch import fetched_encoder

    try:
        return fetched_encoder("all-mpnet-base-v2") / "tokenizer.json"
    except ModelFileError:
        return None


@pytest.fixture(
    scope="module",
    params=["all-MiniLM-L6-v2", "all-mpnet-base-v2"],
)
def tokenizer_file(request: pytest.FixtureRequest) -> Path:
    if request.param == "all-MiniLM-L6-v2":
        return model_files.shipped_model().tokenizer
    path = _mpnet_tokenizer()
    if path is None:
        pytest.skip("all-mpnet-base-v2 is not fetched here: mixllm encoder fetch all-mpnet-base-v2")
    return path


@pytest.fixture(scope="module")
def shared_prompts() -> list[str]:
    """Every prompt of the three shared datasets."""
    if not SHARED.is_dir():
        pytest.skip(f"the shared datasets are not at {SHARED}")
    prompts = list(data.load_routerbench_csv(SHARED / "routerbench_subset_routerdc").prompts)
    for name in ("alpacaeval_routing", "zeroeval_math_routing"):
        with (SHARED / name / "routing.jsonl").open(encoding="utf-8") as handle:
            prompts += [json.loads(line)["query"] for line in handle if line.strip()]
    return prompts


@functools.cache
def core_tokenizer(path: Path, max_tokens: int | None, truncation: str) -> Tokenizer:
    return Tokenizer(path, max_tokens=max_tokens, truncation=truncation)  # type: ignore[arg-type]


@functools.cache
def reference(path: Path, max_tokens: int | None = None, truncation: str = "head") -> object:
    """The `tokenizers` package's tokenizer configured as the encoders configure the core's."""
    tokenizer = tokenizers.Tokenizer.from_file(str(path))
    tokenizer.no_padding()
    if max_tokens is None:
        tokenizer.no_truncation()
    else:
        tokenizer.enable_truncation(
            max_tokens, direction="left" if truncation == "tail" else "right"
        )
    return tokenizer


def reference_ids(tokenizer: object, texts: list[str], special: bool = True) -> list[list[int]]:
    encodings = tokenizer.encode_batch(texts, add_special_tokens=special)  # type: ignore[attr-defined]
    return [list(e.ids) for e in encodings]


def test_ids_equal_the_reference_on_the_shared_prompts(
    tokenizer_file: Path, shared_prompts: list[str]
) -> None:
    core = Tokenizer(tokenizer_file)
    expected = reference(tokenizer_file)
    assert core.encode_batch(shared_prompts) == reference_ids(expected, shared_prompts)
    plain = reference_ids(expected, shared_prompts, special=False)
    assert core.count(shared_prompts).tolist() == [len(ids) for ids in plain]


@pytest.mark.parametrize("truncation", ["head", "tail"])
def test_truncated_ids_equal_the_reference_on_the_shared_prompts(
    tokenizer_file: Path, shared_prompts: list[str], truncation: str
) -> None:
    core = Tokenizer(tokenizer_file, max_tokens=256, truncation=truncation)  # type: ignore[arg-type]
    expected = reference(tokenizer_file, 256, truncation)
    got = core.encode_batch(shared_prompts)
    assert got == reference_ids(expected, shared_prompts)
    assert max(len(ids) for ids in got) == 256  # some prompts are longer: the window binds


unicode_text = st.text(
    alphabet=st.characters(blacklist_categories=("Cs",)), min_size=0, max_size=300
)


@settings(
    max_examples=300, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(texts=st.lists(unicode_text, min_size=1, max_size=4), window=st.sampled_from([None, 3, 17]))
def test_ids_equal_the_reference_on_any_unicode_text(
    tokenizer_file: Path, texts: list[str], window: int | None
) -> None:
    for truncation in ("head", "tail"):
        core = core_tokenizer(tokenizer_file, window, truncation)
        expected = reference(tokenizer_file, window, truncation)
        assert core.encode_batch(texts) == reference_ids(expected, texts)
        assert core.encode_batch(texts, add_special_tokens=False) == reference_ids(
            expected, texts, special=False
        )


def test_threads_share_one_tokenizer(shared_prompts: list[str]) -> None:
    core = Tokenizer(model_files.shipped_model().tokenizer, max_tokens=64)
    texts = shared_prompts[:400]
    expected = core.encode_batch(texts)
    results: list[list[list[int]]] = []

    def work() -> None:
        results.append(core.encode_batch(texts))

    threads = [threading.Thread(target=work) for _ in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert results == [expected] * 4


@pytest.mark.parametrize(
    ("content", "complaint"),
    [
        (None, "No such file"),
        (b"", "not a valid tokenizer.json"),
        (b"{not json", "not a valid tokenizer.json"),
        (b'{"model": {"type": "WordPiece"}}', "not a valid tokenizer.json"),
    ],
)
def test_a_bad_tokenizer_file_is_a_model_file_error_naming_it(
    tmp_path: Path, content: bytes | None, complaint: str
) -> None:
    path = tmp_path / "tokenizer.json"
    if content is not None:
        path.write_bytes(content)
    with pytest.raises(ModelFileError, match=complaint) as caught:
        load_tokenizer(path)
    assert str(path) in str(caught.value)


def test_the_embedder_names_a_bad_tokenizer_file(tmp_path: Path) -> None:
    shipped = model_files.shipped_model()
    (tmp_path / "model.onnx").symlink_to(shipped.model)
    (tmp_path / "tokenizer.json").write_text('{"version": "1.0"}')
    with pytest.raises(ModelFileError, match=r"cannot read tokenizer .*tokenizer\.json"):
        Embedder(tmp_path)


def test_bad_texts_are_refused_naming_them() -> None:
    core = Tokenizer(model_files.shipped_model().tokenizer)
    with pytest.raises(InputTypeError, match="not a single string"):
        core.encode_batch("a text")
    with pytest.raises(InputTypeError, match=r"texts\[1\] is int"):
        core.count(["fine", 3])  # type: ignore[list-item]
    with pytest.raises(InvalidInputError, match=r"texts\[0\] is not valid Unicode"):
        core.encode_batch(["\ud800"])
    with pytest.raises(InvalidInputError, match="max_tokens must be >= 1"):
        Tokenizer(model_files.shipped_model().tokenizer, max_tokens=0)
    with pytest.raises(InvalidInputError, match="truncation must be"):
        Tokenizer(model_files.shipped_model().tokenizer, max_tokens=8, truncation="middle")  # type: ignore[arg-type]


def test_embedding_and_token_counts_need_no_tokenizers_package() -> None:
    """mixllm runs with the `tokenizers` package unavailable: it is not a dependency."""
    script = (
        "import sys\n"
        "sys.modules['tokenizers'] = None\n"
        "import mixllm\n"
        "from mixllm import data\n"
        "vector = mixllm.Embedder(cache_size=0).embed(['What is the capital of France?'])\n"
        "assert vector.shape == (1, 384), vector.shape\n"
        "print(int(data.count_tokens(['What is the capital of France?'])[0]))\n"
    )
    done = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, timeout=300, check=False
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "7"


def test_counts_are_int64_and_empty_texts_have_none() -> None:
    counts = Tokenizer(model_files.shipped_model().tokenizer).count(["", "hello world"])
    assert counts.dtype == np.int64
    assert counts.tolist() == [0, 2]


def test_encoding_releases_the_gil(shared_prompts: list[str]) -> None:
    """Python keeps running while the core encodes: a thread-held GIL would leave no
    iteration of the loop inside the middle of the call."""
    core = Tokenizer(model_files.shipped_model().tokenizer)
    texts = shared_prompts * 2
    start, end, ticks = python_runs_during(lambda: core.encode_batch(texts))
    third = (end - start) / 3
    assert sum(start + third < t < end - third for t in ticks) > 100
