"""Several digests of the same bytes at once: one thread per digest, each taking the buffers in order.

hashlib releases the GIL on large buffers, so a file's SHA-256 and its block map (two digests of
every byte, in order) run side by side on two cores instead of one after the other. The buffers
are the caller's: each comes back through its ``done`` callback once every digest has taken it,
so the caller keeps a fixed pool and memory stays flat whatever the file size.
"""

from __future__ import annotations

import queue
import threading
from collections.abc import Callable, Sequence

Digest = Callable[[memoryview], object]


class _Item:
    __slots__ = ("done", "left", "lock", "view")

    def __init__(self, view: memoryview, done: Callable[[], None] | None, sinks: int) -> None:
        self.view, self.done, self.left, self.lock = view, done, sinks, threading.Lock()


class ParallelDigests:
    """Feed views to every digest in ``sinks``, each on its own thread, in the order submitted.

    ``submit`` returns at once; ``flush`` waits until every digest has taken everything submitted
    and re-raises the first failure of a digest. Use as a context manager (threads end on exit)."""

    def __init__(self, sinks: Sequence[Digest]) -> None:
        self._queues: list[queue.SimpleQueue[_Item | None]] = [queue.SimpleQueue() for _ in sinks]
        self._error: BaseException | None = None
        self._pending = 0
        self._cond = threading.Condition()
        self._threads = [threading.Thread(target=self._run, args=(sink, q), name="digest", daemon=True)
                         for sink, q in zip(sinks, self._queues, strict=True)]
        for thread in self._threads:
            thread.start()

    def __enter__(self) -> ParallelDigests:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _run(self, sink: Digest, todo: queue.SimpleQueue[_Item | None]) -> None:
        while True:
            item = todo.get()
            if item is None:
                return
            try:
                if self._error is None:
                    sink(item.view)
            except BaseException as exc:  # kept for flush(); the other digests stop taking bytes
                with self._cond:
                    if self._error is None:
                        self._error = exc
            finally:
                with item.lock:
                    item.left -= 1
                    last = item.left == 0
                if last:
                    if item.done is not None:
                        item.done()  # the buffer goes back to its owner, whatever happened
                    with self._cond:
                        self._pending -= 1
                        self._cond.notify_all()

    def submit(self, view: memoryview, done: Callable[[], None] | None = None) -> None:
        """Digest ``view`` after everything submitted before it; ``done()`` once all digests have it."""
        with self._cond:
            if self._error is not None:
                error = self._error
            else:
                error = None
                self._pending += 1
        if error is not None:
            if done is not None:
                done()
            raise error
        item = _Item(view, done, len(self._queues))
        for todo in self._queues:
            todo.put(item)

    def flush(self) -> None:
        """Wait for every digest to take everything submitted; re-raise a digest's failure."""
        with self._cond:
            while self._pending:
                self._cond.wait()
            if self._error is not None:
                raise self._error

    def close(self) -> None:
        for todo in self._queues:
            todo.put(None)
        for thread in self._threads:
            thread.join()
