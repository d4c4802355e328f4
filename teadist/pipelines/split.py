"""Cut a file into byte-range chunks under the GitHub/browser 2 GiB limit, with a manifest.

One pass over the input: each chunk's SHA-256 and the whole file's, and the file's block map
(``base.blocks``), are computed while the chunk is written. Chunks whose offsets fall on block
boundaries (a chunk size that is a multiple of the block size) also get their own block maps,
slices of the file's; other chunk sizes would need a fourth hash of every byte, and a chunk is
covered by the file's map anyway. Each chunk goes to a temp name and is
renamed; the manifest is written last, so its presence means the split is complete. A re-run keeps
chunks that are already right (size and hash of the matching input range) and rewrites the rest.
"""

from __future__ import annotations

import hashlib
import os
import re
import stat
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, replace
from pathlib import Path
from urllib.parse import quote

from teadist.base.blocks import BLOCK_SIZE, BlockHasher, BlockMap
from teadist.base.fsutil import (
    MAX_MODEL_NAME_BYTES,
    WriteSink,
    atomic_write,
    ensure_free_space,
    is_disk_full,
    is_plain_file,
    plain_filename_problem,
    remove_quietly,
)
from teadist.base.hashing import PipelinedCopier, TruncatedInput, hash_range
from teadist.base.progress import Reporter
from teadist.errors import IntegrityError, NotFoundError, TeadistError, UsageError
from teadist.formats.manifest import ChunkRecord, FileRecord, Manifest, manifest_filename, write_manifest

DEFAULT_CHUNK_SIZE = 1_900_000_000
GITHUB_ASSET_LIMIT = 2**31  # uploads of exactly 2 GiB fail; anything at or above is refused
MAX_CHUNKS = 10_000  # the manifest schema's bound


@dataclass
class SplitResult:
    manifest: Manifest
    manifest_path: Path
    written: int
    reused: int


def check_chunk_size(chunk_size: int) -> None:
    if chunk_size <= 0:
        raise UsageError(f"chunk size must be positive, got {chunk_size}")
    if chunk_size >= GITHUB_ASSET_LIMIT:
        raise UsageError(
            f"chunk size {chunk_size} is not below 2 GiB ({GITHUB_ASSET_LIMIT} bytes): GitHub Releases "
            "and browsers refuse such files",
            hint=f"use at most 1.9G (the default, {DEFAULT_CHUNK_SIZE} bytes)",
        )


def chunk_names(file_name: str, count: int) -> list[str]:
    """``<file>.part-00001-of-00003``: never llama.cpp's ``-00001-of-00003.gguf`` shard pattern."""
    return [f"{file_name}.part-{i:05d}-of-{count:05d}" for i in range(1, count + 1)]


def default_model_name(file_name: str) -> str:
    stem = file_name.removesuffix(".gguf")
    name = re.sub(r"[^A-Za-z0-9._+-]+", "-", stem).strip("-._+") or "model"
    return name[:128]


def describe_model(path: Path, reporter: Reporter) -> dict[str, object] | None:
    """The manifest's ``model`` object when ``path`` is a GGUF, None for other files. A file that
    says it is a GGUF but that llama.cpp would refuse is refused here (InvalidGGUFError, exit 3):
    it must not be published or sharded as if it were a model."""
    from teadist.formats.gguf_info import looks_like_gguf, read_info

    if not looks_like_gguf(path):
        return None
    return read_info(path).manifest_model()


def require_input_file(src: Path) -> None:
    """``src`` is a regular file (a folder, FIFO or device where the model belongs is named as such)."""
    try:
        mode = src.stat().st_mode
    except FileNotFoundError:
        raise NotFoundError(f"input file not found: {src}") from None
    except OSError as exc:
        raise UsageError(f"cannot read the input {src} ({exc.strerror})") from None
    if stat.S_ISDIR(mode):
        raise UsageError(f"the input {src} is a folder; give the model file itself")
    if not stat.S_ISREG(mode):
        raise UsageError(f"the input {src} is not a regular file (a FIFO or device is not a model)")


def ensure_out_dir(out_dir: Path) -> None:
    """Create the output folder; one usage line when a file already sits at its name."""
    if out_dir.exists() and not out_dir.is_dir():
        raise UsageError(f"--out {out_dir} is a file, not a folder", hint="name a folder for the chunks")
    out_dir.mkdir(parents=True, exist_ok=True)


def usable_input_name(src: Path, longest: str | None = None) -> str:
    """The input's file name, if a manifest can carry it (and ``longest``, the longest name derived
    from it): a usage error otherwise, before anything is written."""
    for name in (src.name, longest or src.name):
        problem = plain_filename_problem(name)
        if problem is None and not _is_utf8(name):
            problem = "is not valid UTF-8 (a manifest can only carry UTF-8 names)"
        if problem is None and name.startswith("."):
            problem = "starts with '.'"
        if problem is None and len(name.encode("utf-8", "surrogatepass")) > MAX_MODEL_NAME_BYTES:
            problem = f"is longer than {MAX_MODEL_NAME_BYTES} bytes"
        if problem is not None:
            raise UsageError(f"input file name {name[:80]!r} {problem}", hint="rename the file first")
    return src.name


def _is_utf8(text: str) -> bool:
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:  # undecodable bytes of a file name, kept as surrogates
        return False
    return True


def _remove_stale_temps(out_dir: Path, names: list[str]) -> None:
    for name in names:
        for stale in out_dir.glob(f".{glob_escape(name)}.*.part"):
            remove_quietly(stale)


def glob_escape(text: str) -> str:
    return re.sub(r"([*?\[])", r"[\1]", text)


def split_file(
    src: Path,
    out_dir: Path,
    reporter: Reporter,
    chunk_size: int = DEFAULT_CHUNK_SIZE,
    name: str | None = None,
    base_url: str | None = None,
    expect_sha256: str | None = None,
) -> SplitResult:
    """Split ``src`` into chunks in ``out_dir`` and write its manifest last. With ``expect_sha256``
    (what a fetch verified) the input is held to it: bytes that changed since are never described
    by a manifest (IntegrityError, the manifest is not written)."""
    check_chunk_size(chunk_size)
    require_input_file(src)
    file_name = usable_input_name(src)
    size = src.stat().st_size
    count = max(1, -(-size // chunk_size))
    if count > MAX_CHUNKS:
        raise UsageError(f"a chunk size of {chunk_size} bytes would make {count} chunks (at most {MAX_CHUNKS})",
                         hint="choose a larger --chunk-size")
    names = chunk_names(file_name, count)
    usable_input_name(src, longest=names[-1])
    model = describe_model(src, reporter)  # before anything is written: a broken GGUF is refused
    ensure_out_dir(out_dir)
    manifest_path = out_dir / manifest_filename(file_name)
    if manifest_path.resolve() == src.resolve() or any((out_dir / n).resolve() == src.resolve() for n in names):
        raise UsageError("the output folder would overwrite the input file; choose another --out")
    # Before the first byte: room for every chunk not already there at its size (one kept as it is
    # costs nothing; one rewritten needs its full length while the old one still sits there).
    missing = sum(min(chunk_size, size - i * chunk_size) for i, n in enumerate(names)
                  if not (is_plain_file(out_dir / n)
                          and (out_dir / n).stat().st_size == min(chunk_size, size - i * chunk_size)))
    ensure_free_space(out_dir, missing, f"{count} chunks of {file_name}")
    # Chunks are about to change: a manifest left from an earlier run must not vouch for them.
    remove_quietly(manifest_path)
    _remove_stale_temps(out_dir, names)

    whole = hashlib.sha256()
    whole_blocks = BlockHasher(BLOCK_SIZE)
    chunks: list[ChunkRecord] = []
    written = reused = 0
    task = reporter.task(f"split {file_name}", size)
    try:
        with (open(src, "rb", buffering=0) as fin, PipelinedCopier(n_sinks=4) as copier,
              ThreadPoolExecutor(max_workers=1) as checker):
            for index, chunk_name in enumerate(names):
                offset = index * chunk_size
                length = min(chunk_size, size - offset)
                dest = out_dir / chunk_name
                digest = hashlib.sha256()
                whole_fed = False
                if dest.is_file() and dest.stat().st_size == length:
                    # Hash the existing chunk while reading the input range: keep it if they agree.
                    existing = checker.submit(hash_range, dest)
                    copier.copy_file_range(fin.fileno(), offset, length, [whole.update, digest.update, whole_blocks],
                                           task.advance)
                    whole_fed = True
                    if existing.result()[0] == digest.hexdigest():
                        reused += 1
                    else:
                        digest = hashlib.sha256()
                        with atomic_write(dest) as fout:
                            copier.copy_file_range(fin.fileno(), offset, length, [digest.update, WriteSink(fout)])
                        written += 1
                if not whole_fed:
                    ensure_free_space(out_dir, length, f"chunk {chunk_name}")
                    with atomic_write(dest) as fout:
                        copier.copy_file_range(fin.fileno(), offset, length,
                                               [whole.update, digest.update, whole_blocks, WriteSink(fout)],
                                               task.advance)
                    written += 1
                chunk_url = (base_url.rstrip("/") + "/" + quote(chunk_name)) if base_url else None
                chunks.append(ChunkRecord(chunk_name, length, digest.hexdigest(), offset,
                                          (chunk_url,) if chunk_url else ()))
            if os.fstat(fin.fileno()).st_size != size:
                raise TeadistError(f"{src} changed size while it was being split; run split again")
    except TruncatedInput as exc:
        raise TeadistError(f"{src} shrank while it was being split (read {exc.copied} bytes short); "
                           "run split again") from None
    except OSError as exc:
        if is_disk_full(exc):
            raise TeadistError(f"disk full while writing chunks to {out_dir}",
                               hint="free some space or choose another --out") from None
        raise
    finally:
        task.close()

    if expect_sha256 is not None and whole.hexdigest() != expect_sha256:
        raise IntegrityError(f"{src} hashes to sha256 {whole.hexdigest()[:16]}…, not the {expect_sha256[:16]}… "
                             "it was verified as when fetched: it changed since",
                             hint="remove it from the cache (teadist rm) and fetch it again")
    file_blocks = whole_blocks.finish()
    if chunk_size % BLOCK_SIZE == 0:
        per_chunk = chunk_size // BLOCK_SIZE
        chunks = [replace(c, blocks=BlockMap(BLOCK_SIZE, file_blocks.hashes[i * per_chunk:(i + 1) * per_chunk]))
                  for i, c in enumerate(chunks)]
    manifest = Manifest(
        name=name or default_model_name(file_name),
        file=FileRecord(file_name, size, whole.hexdigest(), file_blocks),
        format="bytes",
        chunks=chunks,
        model=model,
    )
    write_manifest(manifest, manifest_path)
    return SplitResult(manifest, manifest_path, written, reused)

