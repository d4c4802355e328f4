"""Progress as callers give it: a plain callable ``progress(description, done, total)`` or a
``teadist.base.progress.Reporter``; both become the Reporter the pipelines take."""

from __future__ import annotations

from collections.abc import Callable
from typing import Union

from teadist.base.progress import NullReporter, ProgressTask, Reporter
from teadist.errors import UsageError

ProgressCallback = Callable[[str, int, Union[int, None]], None]  # noqa: UP007 - a runtime alias on 3.11
Progress = Union[Reporter, ProgressCallback, None]  # noqa: UP007


class _CallbackTask:
    def __init__(self, callback: ProgressCallback, description: str, total: int | None) -> None:
        self._callback, self._description, self._total, self._done = callback, description, total, 0
        callback(description, 0, total)

    def advance(self, n: int) -> None:
        self._done += n
        self._callback(self._description, self._done, self._total)

    def note(self, text: str) -> None:
        pass  # the callback carries counts only

    def close(self) -> None:
        pass


class _CallbackReporter(NullReporter):
    """Progress to a plain callable; messages are kept (``messages``), never printed."""

    def __init__(self, callback: ProgressCallback) -> None:
        super().__init__()
        self._callback = callback

    def task(self, description: str, total: int | None) -> ProgressTask:
        return _CallbackTask(self._callback, description, total)


def reporter_for(progress: Progress) -> Reporter:
    if progress is None:
        return NullReporter()
    if hasattr(progress, "task"):
        return progress  # type: ignore[return-value]
    if callable(progress):
        return _CallbackReporter(progress)
    raise UsageError("progress must be a callable progress(description, done, total) or a Reporter")
