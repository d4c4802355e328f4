"""The API's edge: arguments checked as callers pass them, and an OSError from below turned into a
FileSystemError naming the file."""

from __future__ import annotations

import functools
import os
from collections.abc import Callable
from typing import ParamSpec, TypeVar

from teadist.errors import FileSystemError, UsageError

P = ParamSpec("P")
R = TypeVar("R")


def boundary(func: Callable[P, R]) -> Callable[P, R]:
    """An OSError from below leaves the API as a FileSystemError naming the file, never bare."""

    @functools.wraps(func)
    def wrapper(*args: P.args, **kwargs: P.kwargs) -> R:
        try:
            return func(*args, **kwargs)
        except OSError as exc:
            where = f": {exc.filename}" if exc.filename else ""
            raise FileSystemError(f"{exc.strerror or exc}{where}",
                                  hint="check the file's permissions and the disk it is on") from exc

    return wrapper


def text_arg(value: object, what: str, paths: bool = True) -> str:
    """A str argument (or, where ``paths``, an os.PathLike); anything else is a UsageError."""
    if paths and isinstance(value, os.PathLike):
        value = os.fspath(value)
    if not isinstance(value, str):
        raise UsageError(f"{what} must be a {'str or path' if paths else 'str'}, not {type(value).__name__}")
    if not value.strip():
        raise UsageError(f"{what} is empty", hint=f"name the {what}")
    return value


def size_arg(value: object, what: str) -> int | None:
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int):
        raise UsageError(f"{what} must be a whole number of bytes, not {type(value).__name__} {value!r:.40}",
                         hint="teadist.base.sizes.parse_size('1.9G') turns text into bytes")
    return value
