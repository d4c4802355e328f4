"""Does it fit? The memory a model needs to run, this machine's memory, and a verdict.

A model needs its weights (the GGUF's tensor data, about the file's size) plus the KV cache,
which grows with the context: 2 (K and V) × layers × context × KV heads × head size × 2 bytes
(f16, llama.cpp's default cache type), head size being the embedding length over the heads.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Literal

from teadist.formats.gguf_info import GGUFInfo

Verdict = Literal["fits", "tight", "too-big"]
TIGHT_SHARE = 0.75  # more than this share of the machine's memory leaves too little for everything else
KV_BYTES = 2  # f16


@dataclass(frozen=True)
class MemoryNeed:
    weights: int
    kv_cache: int | None  # None: the header lacks what it takes to work it out
    context: int | None

    @property
    def total(self) -> int:
        return self.weights + (self.kv_cache or 0)


def kv_cache_bytes(info: GGUFInfo, context: int) -> int | None:
    if not (info.layers and info.heads and info.embedding_length):
        return None
    kv_heads = info.kv_heads or info.heads
    head_size = info.embedding_length // info.heads
    return 2 * info.layers * context * kv_heads * head_size * KV_BYTES


def memory_needed(info: GGUFInfo, context: int | None = None) -> MemoryNeed:
    """Weights plus the KV cache at ``context`` tokens (default: the model's own context length)."""
    context = context if context is not None else info.context_length
    weights = max(0, info.size - info.data_offset)
    kv = kv_cache_bytes(info, context) if context else None
    return MemoryNeed(weights, kv, context)


def machine_memory() -> int | None:
    """This machine's physical memory in bytes (None where the system does not say)."""
    try:
        return int(os.sysconf("SC_PAGE_SIZE")) * int(os.sysconf("SC_PHYS_PAGES"))
    except (ValueError, OSError, AttributeError):
        return None


def verdict(needed: int | None, memory: int | None) -> Verdict | None:
    if needed is None or memory is None:
        return None
    if needed <= memory * TIGHT_SHARE:
        return "fits"
    return "tight" if needed <= memory else "too-big"
