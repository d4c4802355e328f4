"""``teadist demo``: the main job end to end on an embedded default, with no network at all.

In a temporary home it makes a tiny GGUF, splits it, rebuilds it into a temporary TEA model
cache, verifies it and tells what it is, reporting each step.
"""

from __future__ import annotations

import tempfile
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from teadist.progress import Reporter


@dataclass
class DemoResult:
    home: str
    steps: list[str] = field(default_factory=list)
    installed: str = ""
    sha256: str = ""


def run_demo(reporter: Reporter, keep: Path | None = None) -> DemoResult:
    if keep is not None:
        keep.mkdir(parents=True, exist_ok=True)
        return _demo_in(keep, reporter)
    with tempfile.TemporaryDirectory(prefix="teadist-demo-") as tmp:
        return _demo_in(Path(tmp), reporter)


def _demo_in(home: Path, reporter: Reporter) -> DemoResult:
    from teadist.assemble import assemble_chunks
    from teadist.cache import ModelCache
    from teadist.ggufinfo import read_info
    from teadist.split import split_file
    from teadist.tinymodel import make_tiny_model
    from teadist.verify import verify_cached

    result = DemoResult(home=str(home))

    def step(text: str) -> None:
        result.steps.append(text)
        reporter.info(f"[{len(result.steps)}] {text}")

    model = make_tiny_model(home / "work" / "tiny-llama.gguf", n_embd=128, n_layer=4)
    step(f"made a tiny llama GGUF: {model} ({model.stat().st_size} bytes)")
    split = split_file(model, home / "dist", reporter, chunk_size=256 * 1024, name="tiny-llama")
    step(f"split it into {len(split.manifest.chunks)} chunks + {split.manifest_path.name}")
    cache = ModelCache(home / ".cache" / "tea" / "models")
    assembled = assemble_chunks(split.manifest, split.manifest_path.parent, cache.path_for(model.name), reporter,
                                cache=cache, source="demo")
    step(f"assembled and verified {assembled.path} (sha256 {assembled.sha256[:16]}…)")
    report = verify_cached(cache, "tiny-llama", reporter)
    _expect(report.ok, "verification of the installed model failed")
    step("verified the cached copy against teadist's record")
    info = read_info(assembled.path)
    step(f"inspected it: {info.architecture}, {info.parameters:,} parameters, {info.quantization}, "
         f"context {info.context_length}, chat template {info.chat_template_family}")
    result.installed, result.sha256 = str(assembled.path), assembled.sha256
    return result


def _expect(condition: bool, message: str, error: Callable[[str], Exception] | None = None) -> None:
    if not condition:
        from teadist.errors import TeadistError

        raise (error or TeadistError)(message)
