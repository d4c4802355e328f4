"""Whether a model fits this machine's memory: weights plus KV cache at a context length."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from teadist.base.progress import Reporter
from teadist.errors import UsageError

if TYPE_CHECKING:
    from teadist.formats.gguf_info import GGUFInfo


@dataclass(frozen=True)
class MemoryReport:
    weights: int
    kv_cache: int | None
    context: int | None
    total: int
    machine: int | None
    verdict: str | None


MAX_CONTEXT = 2**24


def memory_report(info: GGUFInfo, context: int | None = None) -> MemoryReport:
    """The memory ``info``'s model needs (weights + KV cache at ``context``, default its own) against
    this machine's."""
    from teadist.pipelines.fit import machine_memory, memory_needed, verdict

    if context is not None and (isinstance(context, bool) or not isinstance(context, int)
                                or not 1 <= context <= MAX_CONTEXT):
        raise UsageError(f"context must be between 1 and {MAX_CONTEXT} tokens, not {context!r:.40}")
    need = memory_needed(info, context)
    machine = machine_memory()
    return MemoryReport(need.weights, need.kv_cache, need.context, need.total, machine, verdict(need.total, machine))



def warn_if_too_big(path: Path, reporter: Reporter) -> None:
    """A warning when the model needs more memory than the machine has (weights + KV cache at its
    own context length; what it needs at 4096 tokens is said too)."""
    from teadist.base.sizes import format_size
    from teadist.errors import TeadistError
    from teadist.formats.gguf_info import looks_like_gguf, read_info
    from teadist.pipelines.fit import machine_memory, memory_needed

    memory = machine_memory()
    if memory is None or not looks_like_gguf(path):
        return
    try:
        info = read_info(path)
    except TeadistError:
        return  # kept shards and other layouts: the fetch itself verified the bytes
    need = memory_needed(info)
    if need.total > memory:
        small = memory_needed(info, min(4096, need.context or 4096))
        reporter.warn(f"{path.name} needs {format_size(need.total)} of memory at its full context "
                      f"({need.context} tokens); this machine has {format_size(memory)} (at 4096 tokens it "
                      f"needs {format_size(small.total)})")
