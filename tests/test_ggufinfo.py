from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path

import pytest

from teadist.formats.gguf_info import InvalidGGUFError, read_info, template_family
from tests.helpers import Result


def test_inspect_reads_what_the_model_is(tiny_model: Path, cli: Callable[..., Result]) -> None:
    result = cli("inspect", tiny_model, "--json")
    assert result.code == 0, result.err
    info = json.loads(result.out)
    assert info["architecture"] == "llama"
    assert info["gguf_version"] == 3
    assert info["quantization"] == "F32"
    assert info["context_length"] == 256
    assert info["embedding_length"] == 64
    assert info["layers"] == 2
    assert info["heads"] == 4 and info["kv_heads"] == 4
    assert info["rope_freq_base"] == 10000.0
    assert info["vocab_size"] == 259
    assert info["chat_template"] is True and info["chat_template_family"] == "phi3"
    # parameters: embeddings + output (259*64 each), 2 layers of 4*64*64 + 3*128*64 + 2*64, final norm
    assert info["parameters"] == 2 * 259 * 64 + 2 * (4 * 64 * 64 + 3 * 128 * 64 + 2 * 64) + 64
    text = cli("inspect", tiny_model)
    assert "architecture:     llama" in text.out and "structure:" in text.out


@pytest.mark.parametrize("cut", [1, 100, 5000])
def test_truncated_gguf_is_caught_without_a_hash(tiny_model: Path, tmp_path: Path, cut: int,
                                                 cli: Callable[..., Result]) -> None:
    short = tmp_path / "short.gguf"
    short.write_bytes(tiny_model.read_bytes()[:-cut])
    result = cli("inspect", short)
    assert result.code == 3
    assert result.err.startswith("error: ") and "short.gguf" in result.err
    assert "Traceback" not in result.err


@pytest.mark.parametrize("raw", [b"", b"GGUF", b"GGML\x03\0\0\0", b"GGUF\x09\0\0\0" + b"\0" * 20,
                                 b"GGUF\x03\0\0\0" + b"\xff" * 24])
def test_garbage_is_refused_cleanly(tmp_path: Path, raw: bytes) -> None:
    path = tmp_path / "g.gguf"
    path.write_bytes(raw)
    with pytest.raises(InvalidGGUFError):
        read_info(path)


def test_missing_file_is_exit_1(tmp_path: Path, cli: Callable[..., Result]) -> None:
    result = cli("inspect", tmp_path / "nope.gguf")
    assert result.code == 1 and "not found" in result.err


@pytest.mark.parametrize(("template", "family"), [
    ("<|im_start|>user", "chatml"), ("<|start_header_id|>", "llama3"), ("<start_of_turn>user", "gemma"),
    ("{{'<|user|>\\n' + c + '<|end|>'}}", "phi3"), ("[INST] x [/INST]", "mistral"), ("hello", "other"),
    (None, None),
])
def test_template_family(template: str | None, family: str | None) -> None:
    assert template_family(template) == family
