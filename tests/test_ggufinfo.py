from __future__ import annotations

import json
import sys
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


# -- crafted headers (issue 10, defect 10): bounded memory/time, llama.cpp's refusals ------------
def _inspect_measured(path: Path) -> tuple[int, str, float, int]:
    """Run `teadist inspect` in a child process: (exit code, stderr, CPU seconds, peak RSS in MB)."""
    import subprocess

    from tests.conftest import TEADIST_BIN

    code = ("import resource, subprocess, sys; p = subprocess.run(sys.argv[1:], capture_output=True, text=True); "
            "u = resource.getrusage(resource.RUSAGE_CHILDREN); "
            "print(p.returncode, u.ru_utime + u.ru_stime, u.ru_maxrss); sys.stderr.write(p.stderr)")
    proc = subprocess.run([sys.executable, "-c", code, str(TEADIST_BIN), "inspect", str(path)],
                          capture_output=True, text=True, timeout=300)
    rc, cpu, rss_kb = proc.stdout.split()
    return int(rc), proc.stderr, float(cpu), int(rss_kb) // 1024


def test_huge_string_array_is_read_in_bounded_memory(tmp_path: Path) -> None:
    from tests.ggufcraft import Crafted, Tensor, kv_str, kv_string_array

    crafted = Crafted(kvs=[kv_str("general.architecture", "llama"), kv_string_array("tokenizer.ggml.tokens", 250_000)],
                      tensors=[Tensor("a", (8,), 0)], data=bytes(32))
    path = crafted.write(tmp_path / "strings.gguf")  # 2 MB: 250,000 empty strings
    code, err, cpu, rss = _inspect_measured(path)
    assert code == 0, err
    assert cpu < 4.0 and rss < 120, f"peak RSS {rss} MB for a {path.stat().st_size} byte file"


def test_many_zero_size_tensors_are_read_in_bounded_time_and_memory(tmp_path: Path) -> None:
    from tests.ggufcraft import Crafted, Tensor, kv_str

    crafted = Crafted(kvs=[kv_str("general.architecture", "llama")],
                      tensors=[Tensor(f"t{i}", (0,), 0) for i in range(100_000)])
    path = crafted.write(tmp_path / "zeros.gguf")  # 3.8 MB
    code, err, cpu, rss = _inspect_measured(path)
    assert code == 0, err
    assert rss < 150 and cpu < 4.0, f"peak RSS {rss} MB, {cpu:.1f} s CPU"


def _crafted_cases() -> dict[str, object]:
    from tests.ggufcraft import Crafted, Tensor, good_two_tensors, kv_str, kv_u32

    def change(**kw: object) -> Crafted:
        crafted = good_two_tensors()
        for key, value in kw.items():
            setattr(crafted, key, value)
        return crafted

    return {
        "overlapping tensors": change(tensors=[Tensor("a", (8,), 0), Tensor("b", (8,), 0)]),
        "offset wraps past 2**64": change(tensors=[Tensor("a", (8,), 0), Tensor("b", (8,), 2**64 - 32)]),
        "misaligned offset": change(tensors=[Tensor("a", (8,), 0), Tensor("b", (8,), 33)], data=bytes(80)),
        "gap between tensors": change(tensors=[Tensor("a", (8,), 0), Tensor("b", (8,), 64)], data=bytes(96)),
        "data outside the file": change(data=bytes(40)),
        "duplicate tensor name": change(tensors=[Tensor("a", (8,), 0), Tensor("a", (8,), 32)]),
        "duplicate key": change(kvs=[kv_str("general.architecture", "llama"), kv_str("general.architecture", "x")]),
        "negative dimension": change(tensors=[Tensor("a", (-8,), 0), Tensor("b", (8,), 32)]),
        "five dimensions": change(tensors=[Tensor("a", (8, 1, 1, 1, 1), 0), Tensor("b", (8,), 32)]),
        "unknown tensor type": change(tensors=[Tensor("a", (8,), 0, ggml_type=4), Tensor("b", (8,), 32)]),
        "row not a multiple of the block": change(tensors=[Tensor("a", (8,), 0, ggml_type=2), Tensor("b", (8,), 32)]),
        "alignment not a power of two": change(kvs=[kv_u32("general.alignment", 48)]),
        "tensor count larger than the file": change(n_tensors=10**12),
        "key count larger than the file": change(n_kv=2**62),
        "name of 64 bytes": change(tensors=[Tensor("n" * 64, (8,), 0), Tensor("b", (8,), 32)]),
    }


@pytest.mark.parametrize("case", list(_crafted_cases()))
def test_headers_llama_cpp_refuses_are_refused(case: str, tmp_path: Path, cli: Callable[..., Result]) -> None:
    crafted = _crafted_cases()[case]
    path = crafted.write(tmp_path / "crafted.gguf")  # type: ignore[attr-defined]
    result = cli("inspect", path)
    assert result.code == 3, (case, result.out, result.err)
    assert result.err.startswith("error: ") and "crafted.gguf" in result.err and "Traceback" not in result.err
    shards = cli("split", path, "--format", "gguf", "--out", tmp_path / "out")
    assert shards.code == 3, (case, shards.err)
    chunks = cli("split", path, "--out", tmp_path / "out")  # and never published as plain bytes either
    assert chunks.code == 3, (case, chunks.err)
    assert not (tmp_path / "out").exists() or not list((tmp_path / "out").iterdir())


def test_a_good_crafted_header_is_accepted(tmp_path: Path, cli: Callable[..., Result]) -> None:
    from tests.ggufcraft import good_two_tensors

    path = good_two_tensors().write(tmp_path / "good.gguf")
    result = cli("inspect", path, "--json")
    assert result.code == 0, result.err
    assert json.loads(result.out)["tensor_count"] == 2


def test_q8_1_blocks_are_36_bytes_as_in_ggml(tmp_path: Path, cli: Callable[..., Result]) -> None:
    """Review finding 12: ggml's block_q8_1 is two halves and 32 quants (36 bytes); gguf-py 0.19's
    table still says 40 (the old float layout). A Q8_1 tensor of 32 weights fills 36 bytes."""
    from tests.ggufcraft import Crafted, Tensor, kv_str

    crafted = Crafted(kvs=[kv_str("general.architecture", "llama")], tensors=[Tensor("q", (32,), 0, ggml_type=9)],
                      data=bytes(36))
    result = cli("inspect", crafted.write(tmp_path / "q81.gguf"), "--json")
    assert result.code == 0, result.err


def test_every_ggml_type_size_matches_gguf_py_but_q8_1() -> None:
    from gguf import GGML_QUANT_SIZES

    from teadist.formats.gguf_header import GGML_TYPES

    for qtype, (block, type_size) in GGML_QUANT_SIZES.items():
        if int(qtype) in GGML_TYPES:
            expected = (32, 36) if int(qtype) == 9 else (block, type_size)
            assert GGML_TYPES[int(qtype)][1:] == expected, qtype


@pytest.mark.parametrize("key", [b"general.a\x00b", b"general.\xff\xfe", b"\x1b[31mred"], ids=["nul", "utf8", "esc"])
def test_keys_with_nul_invalid_utf8_or_control_characters_are_refused(key: bytes, tmp_path: Path,
                                                                      cli: Callable[..., Result]) -> None:
    """Review finding 12: a key is a name: NUL, invalid UTF-8 or control characters are refused."""
    import struct

    from tests.ggufcraft import STRING, good_two_tensors, gstr

    crafted = good_two_tensors()
    crafted.kvs.append(gstr(key) + struct.pack("<I", STRING) + gstr("v"))
    result = cli("inspect", crafted.write(tmp_path / "k.gguf"))
    assert result.code == 3 and "key" in result.err and "Traceback" not in result.err, result.err
    assert "\x1b" not in result.err and "\x00" not in result.err


def test_inspect_of_a_fifo_does_not_hang(tmp_path: Path, console: Callable[..., Result]) -> None:
    """Review finding 13: opening a FIFO for reading waits for a writer forever."""
    import os

    fifo = tmp_path / "model.gguf"
    os.mkfifo(fifo)
    result = console("inspect", fifo, timeout=30)
    assert result.code != 0 and "Traceback" not in result.err and len(result.err.splitlines()) <= 2, result.err


def test_nan_and_infinite_metadata_still_give_valid_json(tmp_path: Path, cli: Callable[..., Result]) -> None:
    """Review finding 13: JSON has no NaN; `inspect --json` must stay strict JSON."""
    import struct

    from tests.ggufcraft import F32, good_two_tensors, gstr

    crafted = good_two_tensors()
    crafted.kvs.append(gstr("llama.rope.freq_base") + struct.pack("<If", F32, float("nan")))
    crafted.kvs.append(gstr("llama.context_length") + struct.pack("<If", F32, float("inf")))
    result = cli("inspect", crafted.write(tmp_path / "nan.gguf"), "--json")
    assert result.code == 0, result.err

    def refuse(name: str) -> None:
        raise AssertionError(f"{name} in --json output")

    json.loads(result.out, parse_constant=refuse)


def test_split_refuses_more_shards_than_llama_cpp_can_count_before_writing(tmp_path: Path,
                                                                           cli: Callable[..., Result]) -> None:
    """Review finding 14: split.count is a u16 — 70,000 tensors at --shard-size 1 would need
    70,000 shards. One line up front, nothing written (it was a struct.error traceback)."""
    from tests.ggufcraft import Crafted, Tensor, kv_str

    crafted = Crafted(kvs=[kv_str("general.architecture", "llama")],
                      tensors=[Tensor(f"t{i}", (0,), 0) for i in range(70_000)])
    path = crafted.write(tmp_path / "many.gguf")
    result = cli("split", path, "--format", "gguf", "--shard-size", "1", "--out", tmp_path / "out")
    assert result.code == 2, result.err[-2000:]
    assert "shards" in result.err and "Traceback" not in result.err and len(result.err.splitlines()) <= 2
    assert not (tmp_path / "out").exists() or list((tmp_path / "out").iterdir()) == []


def test_a_huge_key_is_refused_before_it_is_read(tmp_path: Path, cli: Callable[..., Result]) -> None:
    """Review finding 12: a key is a short name; a 16 MiB one is refused from its length field,
    not copied into memory first (llama.cpp only bounds strings at 1 GiB)."""
    import struct

    from tests.ggufcraft import STRING, good_two_tensors, gstr

    crafted = good_two_tensors()
    crafted.kvs.append(gstr(b"k" * (16 << 20)) + struct.pack("<I", STRING) + gstr("v"))
    result = cli("inspect", crafted.write(tmp_path / "bigkey.gguf"))
    assert result.code == 3 and "key" in result.err and "bytes" in result.err, result.err
