"""teadist: fetch, split, assemble and publish GGUF models for TEA, verified end to end."""

__version__ = "0.1.0"
