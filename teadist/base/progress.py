"""How the library reports: a small interface the CLI fills in (tqdm, plain lines, or nothing).

The library never prints. Pipelines take a ``Reporter`` and call it; tests and ``--quiet`` use
``NullReporter``.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
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


class AllFiles:
    """One bar for the files of one fetch (the chunks of a manifest, the shards of a release): every
    file's bytes advance it, so its speed and time left are the whole fetch's; beside it, the
    connections in use (``connections``, read at most every half second). Messages go through to
    ``reporter``; the files' own bars are not opened. Thread-safe."""

    NOTE_EVERY = 0.5  # seconds

    def __init__(self, reporter: Reporter, description: str, total: int | None,
                 connections: Callable[[], int] | None = None) -> None:
        self._reporter = reporter
        self._bar = reporter.task(description, total)
        self._connections = connections
        self._lock = threading.Lock()
        self._shown: str | None = None
        self._noted = 0.0
        self._by_file: dict[str, int] = {}

    def info(self, message: str) -> None:
        self._reporter.info(message)

    def warn(self, message: str) -> None:
        self._reporter.warn(message)

    def task(self, description: str, total: int | None) -> ProgressTask:
        return _FilePart(self, description)

    def advance(self, description: str, n: int) -> None:
        with self._lock:
            self._by_file[description] = self._by_file.get(description, 0) + n
            self._bar.advance(n)
            now = time.monotonic()
            if self._connections is not None and now - self._noted >= self.NOTE_EVERY:
                self._noted = now
                self._show(f"{self._connections()} conn")

    def note(self, text: str) -> None:
        """A file's own note (its connections): the bar shows those of every file together."""
        if self._connections is not None:
            with self._lock:
                self._noted = time.monotonic()
                self._show(f"{self._connections()} conn")

    def _show(self, text: str) -> None:
        if text != self._shown:
            self._shown = text
            self._bar.note(text)

    def done(self, description: str, size: int) -> None:
        """File ``description`` is in place (downloaded, copied or found whole): the bar counts
        all of its ``size`` bytes (once, whatever a retry advanced)."""
        with self._lock:
            missing = size - self._by_file.get(description, 0)
            self._by_file[description] = max(size, self._by_file.get(description, 0))
            if missing > 0:
                self._bar.advance(missing)

    def close(self) -> None:
        self._bar.close()


class _FilePart:
    """A file's bar inside ``AllFiles``."""

    def __init__(self, owner: AllFiles, description: str) -> None:
        self._owner, self._description = owner, description

    def advance(self, n: int) -> None:
        self._owner.advance(self._description, n)

    def note(self, text: str) -> None:
        self._owner.note(text)

    def close(self) -> None:
        pass
