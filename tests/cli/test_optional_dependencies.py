"""What needs an extra says which one: onnx (``mixllm[encoders]``) builds the int8 encoder and
converts all-mpnet-base-v2, and is not installed with mixllm itself."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

import pytest

from mixllm.encoders import fetch as encoder_fetch
from mixllm.encoders import model_files
from mixllm.errors import ModelFileError


@pytest.fixture
def without_onnx(monkeypatch: pytest.MonkeyPatch) -> None:
    """As if onnx were not installed: importing it fails and no spec is found."""
    find_spec = importlib.util.find_spec
    monkeypatch.setitem(sys.modules, "onnx", None)
    monkeypatch.setattr(
        importlib.util,
        "find_spec",
        lambda name, *a: None if name == "onnx" else find_spec(name, *a),
    )


@pytest.mark.usefixtures("without_onnx")
def test_the_int8_build_names_the_extra(tmp_path: Path) -> None:
    with pytest.raises(ModelFileError, match=r"mixllm\[encoders\]"):
        model_files.int8_model_path(model_files.shipped_model(), tmp_path)
    assert list(tmp_path.iterdir()) == []


@pytest.mark.usefixtures("without_onnx")
def test_the_encoder_fetch_names_the_extra_before_downloading(tmp_path: Path) -> None:
    said: list[str] = []
    target = tmp_path / "mpnet"
    # Nothing listens on this port: a download attempt would fail with another message.
    with pytest.raises(ModelFileError, match=r"mixllm\[encoders\]"):
        encoder_fetch.fetch_encoder(
            "all-mpnet-base-v2", target, index_url="http://127.0.0.1:9/simple", progress=said.append
        )
    assert not any(message.startswith("downloading") for message in said)
    assert not target.exists()
