"""teadist: fetch, split, assemble and publish GGUF models for TEA, verified end to end.

The Python API (``teadist.fetch``, ``teadist.model_path``, ``teadist.split``, ``teadist.assemble``,
``teadist.verify``, ``teadist.inspect``) lives in ``teadist.api``; it is imported on first use, so
``import teadist`` stays light.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

__version__ = "0.1.0"

if TYPE_CHECKING:
    from teadist.api import assemble, fetch, inspect, model_path, split, verify
    from teadist.errors import TeadistError

_API = ("assemble", "fetch", "inspect", "model_path", "split", "verify")
__all__ = ["TeadistError", "__version__", "assemble", "fetch", "inspect", "model_path", "split", "verify"]


def __getattr__(name: str) -> Any:
    if name in _API:
        from teadist import api

        return getattr(api, name)
    if name == "TeadistError":
        from teadist.errors import TeadistError

        return TeadistError
    raise AttributeError(f"module 'teadist' has no attribute {name!r}")
