#!/usr/bin/env python3
"""Write a deterministic, valid llama-architecture GGUF with random weights (byte-fallback vocab).

    python scripts/make_tiny_model.py tiny.gguf --seed 1 --embd 128 --layers 4 [--printable]

Same arguments, same bytes. Small enough for tests, big enough to split into several shards;
llama.cpp and wllama load it and generate (--printable keeps greedy output to printable ASCII).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from teadist.formats.tinymodel import make_tiny_model


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("out", type=Path)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--embd", type=int, default=64)
    parser.add_argument("--layers", type=int, default=2)
    parser.add_argument("--ctx", type=int, default=256)
    parser.add_argument("--printable", action="store_true", help="greedy output stays printable ASCII")
    args = parser.parse_args()
    path = make_tiny_model(args.out, seed=args.seed, n_embd=args.embd, n_layer=args.layers, n_ctx=args.ctx,
                           printable_only=args.printable)
    print(f"{path} ({path.stat().st_size} bytes)")


if __name__ == "__main__":
    main()
