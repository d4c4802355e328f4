"""What a GGUF file is, and whether llama.cpp would load it: read with teadist's bounded header
reader (``gguf_header``), which applies llama.cpp's loader rules and catches a truncated download
even without a hash.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from teadist.formats.gguf_header import (
    FILE_TYPES,
    GGML_TYPES,
    GGUF_MAGIC,
    SUPPORTED_VERSIONS,
    GGUFHeader,
    InvalidGGUFError,
    read_header,
)

__all__ = ["GGUF_MAGIC", "SUPPORTED_VERSIONS", "GGUFInfo", "InvalidGGUFError", "looks_like_gguf", "read_info",
           "template_family"]

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


def _quantization(header: GGUFHeader) -> str | None:
    ftype = header.value("general.file_type")
    if type(ftype) is int:
        return FILE_TYPES.get(ftype, f"file_type {ftype}")
    counts = header.elements_by_type
    return GGML_TYPES[max(counts, key=lambda t: counts[t])][0] if counts else None


def read_info(path: Path) -> GGUFInfo:
    """Read metadata and check structure; raise InvalidGGUFError on anything llama.cpp would refuse."""
    header = read_header(path)
    value = header.value
    arch = value("general.architecture")
    arch = arch if isinstance(arch, str) else None

    def arch_key(suffix: str) -> Any:
        return value(f"{arch}.{suffix}") if arch else None

    tokens = header.kv.get("tokenizer.ggml.tokens")
    vocab = tokens.count if tokens is not None and tokens.count is not None else arch_key("vocab_size")
    template = value("tokenizer.chat_template")
    template = template if isinstance(template, str) else None
    name = value("general.name")
    rope = arch_key("rope.freq_base")
    return GGUFInfo(
        path=str(path),
        size=header.size,
        gguf_version=header.version,
        architecture=arch,
        name=name if isinstance(name, str) else None,
        parameters=header.parameters,
        quantization=_quantization(header),
        context_length=_int_or_none(arch_key("context_length")),
        embedding_length=_int_or_none(arch_key("embedding_length")),
        layers=_int_or_none(arch_key("block_count")),
        heads=_int_or_none(arch_key("attention.head_count")),
        kv_heads=_int_or_none(arch_key("attention.head_count_kv")),
        rope_freq_base=float(rope) if isinstance(rope, (int, float)) and not isinstance(rope, bool) else None,
        vocab_size=_int_or_none(vocab),
        chat_template=template is not None,
        chat_template_family=template_family(template),
        tensor_count=header.n_tensors,
        alignment=header.alignment,
        data_offset=header.data_offset,
        split_no=_int_or_none(value("split.no")),
        split_count=_int_or_none(value("split.count")),
    )


def _int_or_none(value: Any) -> int | None:
    """Whole numbers only (a per-layer array, e.g. head_count_kv, reports its first layer)."""
    return value if type(value) is int else None


def looks_like_gguf(path: Path) -> bool:
    try:
        with open(path, "rb") as fh:
            return fh.read(4) == GGUF_MAGIC
    except OSError:
        return False
