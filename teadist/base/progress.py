"""How the library reports: a small interface the CLI fills in (tqdm, plain lines, or nothing).

The library never prints. Pipelines take a ``Reporter`` and call it; tests and ``--quiet`` use
``NullReporter``.
"""

from __future__ import annotations

from typing import Protocol


class ProgressTask(Protocol):
    def advance(self, n: int) -> None: ...

    def note(self, text: str) -> None:
        """A short status beside the bar (e.g. the connections in use)."""

    def close(self) -> None: ...


class Reporter(Protocol):
    def info(self, message: str) -> None:
        """A step or a decision worth telling the user (stderr in the CLI)."""

    def warn(self, message: str) -> None:
        """Something went wrong but was handled (a fallback, a retry)."""

    def task(self, description: str, total: int | None) -> ProgressTask:
        """Start a progress bar for ``total`` units (bytes)."""
        ...


class NullTask:
    """A progress task that shows nothing."""

    def advance(self, n: int) -> None:
        pass

    def note(self, text: str) -> None:
        pass

    def close(self) -> None:
        pass


class NullReporter:
    """Reports nothing; collects messages so tests can look at them."""

    def __init__(self) -> None:
        self.messages: list[str] = []

    def info(self, message: str) -> None:
        self.messages.append(message)

    def warn(self, message: str) -> None:
        self.messages.append("warning: " + message)

    def task(self, description: str, total: int | None) -> ProgressTask:
        return NullTask()
