"""What a GGUF file is, read with llama.cpp's own ``gguf`` package, plus a structural check.

The structural check (magic, supported version, every tensor's data inside the file) catches a
truncated download even without a hash.
"""

from __future__ import annotations

import os
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from teadist.errors import IntegrityError, NotFoundError

GGUF_MAGIC = b"GGUF"
SUPPORTED_VERSIONS = (2, 3)

# Markers that identify a chat template's family. Order matters: the first match wins.
_TEMPLATE_FAMILIES = (
    ("<|im_start|>", "chatml"),
    ("<|start_header_id|>", "llama3"),
    ("<start_of_turn>", "gemma"),
    ("<|user|>", "phi3"),
    ("[INST]", "mistral"),
    ("<|User|>", "deepseek"),
    ("<|START_OF_TURN_TOKEN|>", "command-r"),
)


class InvalidGGUFError(IntegrityError):
    """The file is not a structurally valid GGUF (bad magic, version, truncated data)."""


@dataclass
class GGUFInfo:
    path: str
    size: int
    gguf_version: int
    architecture: str | None
    name: str | None
    parameters: int
    quantization: str | None
    context_length: int | None
    embedding_length: int | None
    layers: int | None
    heads: int | None
    kv_heads: int | None
    rope_freq_base: float | None
    vocab_size: int | None
    chat_template: bool
    chat_template_family: str | None
    tensor_count: int
    alignment: int
    data_offset: int
    split_no: int | None
    split_count: int | None

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    def manifest_model(self) -> dict[str, Any]:
        """The ``model`` object of a manifest."""
        return {
            "architecture": self.architecture,
            "parameters": self.parameters,
            "quantization": self.quantization,
            "context_length": self.context_length,
            "chat_template": self.chat_template,
            "chat_template_family": self.chat_template_family,
            "gguf_version": self.gguf_version,
        }


def template_family(template: str | None) -> str | None:
    if not template:
        return None
    for marker, family in _TEMPLATE_FAMILIES:
        if marker in template:
            return family
    return "other"


def _precheck(path: Path) -> int:
    try:
        size = os.path.getsize(path)
        with open(path, "rb") as fh:
            head = fh.read(8)
    except FileNotFoundError:
        raise NotFoundError(f"file not found: {path}") from None
    except IsADirectoryError:
        raise NotFoundError(f"{path} is a folder, not a GGUF file") from None
    if head[:4] != GGUF_MAGIC:
        raise InvalidGGUFError(f"{path}: not a GGUF file (bad magic {head[:4]!r})")
    if len(head) < 8:
        raise InvalidGGUFError(f"{path}: truncated GGUF header ({size} bytes)")
    version = int.from_bytes(head[4:8], "little")
    if version not in SUPPORTED_VERSIONS:
        raise InvalidGGUFError(
            f"{path}: unsupported GGUF version {version} (supported: {', '.join(map(str, SUPPORTED_VERSIONS))})")
    return size


def open_reader(path: Path) -> Any:
    """A ``gguf.GGUFReader`` for ``path``, with every failure turned into InvalidGGUFError."""
    _precheck(path)
    from gguf import GGUFReader  # lazy: pulls in numpy

    try:
        return GGUFReader(path, "r")
    except Exception as exc:  # the reader raises ValueError, IndexError, KeyError... on bad bytes
        raise InvalidGGUFError(f"{path}: malformed or truncated GGUF ({type(exc).__name__}: {exc})"[:300]) from exc


def field_value(reader: Any, key: str) -> Any:
    fld = reader.fields.get(key)
    if fld is None:
        return None
    try:
        return fld.contents()
    except Exception:
        return None


def _quantization(reader: Any) -> str | None:
    from gguf import GGMLQuantizationType, LlamaFileType

    ftype = field_value(reader, "general.file_type")
    if isinstance(ftype, int):
        try:
            return LlamaFileType(ftype).name.removeprefix("MOSTLY_").removeprefix("ALL_")
        except ValueError:
            return f"file_type {ftype}"
    counts: dict[str, int] = {}
    for tensor in reader.tensors:
        name = GGMLQuantizationType(tensor.tensor_type).name
        counts[name] = counts.get(name, 0) + int(tensor.n_elements)
    return max(counts, key=lambda k: counts[k]) if counts else None


def read_info(path: Path) -> GGUFInfo:
    """Read metadata and check structure; raise InvalidGGUFError on any malformation."""
    size = _precheck(path)
    reader = open_reader(path)
    try:
        for tensor in reader.tensors:
            end = int(tensor.data_offset) + int(tensor.n_bytes)
            if end > size:
                raise InvalidGGUFError(
                    f"{path}: tensor {tensor.name!r} ends at byte {end}, past the end of the file "
                    f"({size} bytes): truncated download?")
        arch = field_value(reader, "general.architecture")
        arch = arch if isinstance(arch, str) else None

        def arch_key(suffix: str) -> Any:
            return field_value(reader, f"{arch}.{suffix}") if arch else None

        tokens = reader.fields.get("tokenizer.ggml.tokens")
        vocab = len(tokens.data) if tokens is not None else arch_key("vocab_size")
        template = field_value(reader, "tokenizer.chat_template")
        template = template if isinstance(template, str) else None
        name = field_value(reader, "general.name")
        rope = arch_key("rope.freq_base")
        return GGUFInfo(
            path=str(path),
            size=size,
            gguf_version=int(field_value(reader, "GGUF.version")),
            architecture=arch,
            name=name if isinstance(name, str) else None,
            parameters=sum(int(t.n_elements) for t in reader.tensors),
            quantization=_quantization(reader),
            context_length=_int_or_none(arch_key("context_length")),
            embedding_length=_int_or_none(arch_key("embedding_length")),
            layers=_int_or_none(arch_key("block_count")),
            heads=_int_or_none(arch_key("attention.head_count")),
            kv_heads=_int_or_none(arch_key("attention.head_count_kv")),
            rope_freq_base=float(rope) if isinstance(rope, (int, float)) else None,
            vocab_size=_int_or_none(vocab),
            chat_template=template is not None,
            chat_template_family=template_family(template),
            tensor_count=len(reader.tensors),
            alignment=int(reader.alignment),
            data_offset=int(reader.data_offset),
            split_no=_int_or_none(field_value(reader, "split.no")),
            split_count=_int_or_none(field_value(reader, "split.count")),
        )
    except InvalidGGUFError:
        raise
    except Exception as exc:
        raise InvalidGGUFError(f"{path}: malformed GGUF metadata ({type(exc).__name__}: {exc})"[:300]) from exc


def _int_or_none(value: Any) -> int | None:
    if isinstance(value, bool):
        return None
    if isinstance(value, int):
        return value
    if isinstance(value, list) and value and isinstance(value[0], int):
        return value[0]  # per-layer arrays (e.g. head_count_kv): report the first layer
    return None


def looks_like_gguf(path: Path) -> bool:
    try:
        with open(path, "rb") as fh:
            return fh.read(4) == GGUF_MAGIC
    except OSError:
        return False
