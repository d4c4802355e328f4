"""The rebuild recipe of a ``gguf`` manifest: the original as pieces (a range of a shard, a run of
zeros, a small literal), checked against the manifest and replayed into sinks."""

from __future__ import annotations

import base64
from collections.abc import Callable
from typing import Any, BinaryIO

from teadist.errors import IntegrityError, ManifestError
from teadist.formats.gguf_layout import GGUFLayout, ShardPlan
from teadist.formats.manifest import Manifest

MAX_LITERAL_BYTES = 8 * 1024 * 1024
MAX_PIECE = 2**50
COPY_BLOCK = 8 * 1024 * 1024
# -- the rebuild recipe -------------------------------------------------------------------------
Piece = dict[str, Any]


def make_recipe(layout: GGUFLayout, original: BinaryIO, shards: list[ShardPlan]) -> list[Piece]:
    pieces: list[Piece] = []

    def literal(start: int, end: int) -> None:
        if end <= start:
            return
        original.seek(start)
        data = original.read(end - start)
        if data.count(0) == len(data):
            if pieces and "zeros" in pieces[-1]:
                pieces[-1]["zeros"] += len(data)
            else:
                pieces.append({"zeros": len(data)})
        else:
            pieces.append({"literal": base64.b64encode(data).decode()})

    literal(0, layout.kv_start)
    if layout.kv_end > layout.kv_start:
        pieces.append({"shard": 0, "offset": 24, "length": layout.kv_end - layout.kv_start})
    literal(layout.kv_end, layout.data_offset)  # tensor infos (original offsets) + padding
    pos = layout.data_offset
    for index, shard in enumerate(shards):
        for tensor, at in zip(shard.tensors, shard.data_positions, strict=True):
            literal(pos, tensor.data_offset)
            if tensor.n_bytes:
                pieces.append({"shard": index, "offset": at, "length": tensor.n_bytes})
            pos = tensor.data_offset + tensor.n_bytes
    literal(pos, layout.size)
    return pieces


def piece_length(piece: Piece) -> int:
    if "zeros" in piece:
        return int(piece["zeros"])
    if "literal" in piece:
        return len(base64.b64decode(piece["literal"]))
    return int(piece["length"])


def check_recipe(manifest: Manifest) -> list[Piece]:
    """The rebuild pieces of a ``gguf`` manifest, checked against its shards and file size."""
    rebuild = manifest.rebuild or {}
    pieces = rebuild.get("pieces")
    if not isinstance(pieces, list) or not pieces:
        raise ManifestError("manifest field rebuild.pieces: missing")
    total = 0
    literal_bytes = 0
    last_end = [0] * len(manifest.chunks)
    for i, piece in enumerate(pieces):
        if not isinstance(piece, dict):
            raise ManifestError(f"manifest field rebuild.pieces[{i}]: not an object")
        keys = set(piece)
        try:
            if keys == {"zeros"} and type(piece["zeros"]) is int and 0 < piece["zeros"] <= MAX_PIECE:
                total += piece["zeros"]
            elif keys == {"literal"} and isinstance(piece["literal"], str):
                if len(piece["literal"]) > 2 * MAX_LITERAL_BYTES:
                    raise ValueError("literal longer than the manifest may carry")
                n = len(base64.b64decode(piece["literal"], validate=True))
                literal_bytes += n
                total += n
            elif keys == {"shard", "offset", "length"} and all(type(piece[k]) is int for k in keys):
                shard, offset, length = piece["shard"], piece["offset"], piece["length"]
                if not 0 <= shard < len(manifest.chunks) or offset < last_end[shard] or length <= 0 \
                        or offset + length > manifest.chunks[shard].size:
                    raise ValueError("range outside its shard or out of order")
                last_end[shard] = offset + length
                total += length
            else:
                raise ValueError("not a zeros, literal or shard piece (whole numbers only)")
        except (ValueError, TypeError) as exc:
            raise ManifestError(f"manifest field rebuild.pieces[{i}]: {exc}") from None
    if literal_bytes > MAX_LITERAL_BYTES:
        raise ManifestError(f"manifest field rebuild.pieces: {literal_bytes} literal bytes "
                            f"(at most {MAX_LITERAL_BYTES})")
    if total != manifest.file.size:
        raise ManifestError(f"manifest field rebuild.pieces: add up to {total} bytes, "
                            f"file.size is {manifest.file.size}")
    return pieces


def replay(pieces: list[Piece], open_shard: Callable[[int], BinaryIO], sinks: list[Callable[[bytes], Any]]) -> None:
    """Feed the original's bytes, piece by piece, to ``sinks``."""
    for piece in pieces:
        if "zeros" in piece:
            left = int(piece["zeros"])
            while left:
                n = min(left, COPY_BLOCK)
                block = bytes(n)
                for sink in sinks:
                    sink(block)
                left -= n
        elif "literal" in piece:
            data = base64.b64decode(piece["literal"])
            for sink in sinks:
                sink(data)
        else:
            fh = open_shard(int(piece["shard"]))
            fh.seek(int(piece["offset"]))
            left = int(piece["length"])
            while left:
                block = fh.read(min(left, COPY_BLOCK))
                if not block:
                    raise IntegrityError(f"shard {int(piece['shard']) + 1} ended early")
                for sink in sinks:
                    sink(block)
                left -= len(block)

