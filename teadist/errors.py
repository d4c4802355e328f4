"""One root exception; subclasses where a caller must tell failures apart.

Every error carries a one-line message naming the problem and an optional hint saying what to
do next. ``cli`` is the only place that turns them into output and exit codes.
"""

from __future__ import annotations

EXIT_OK = 0
EXIT_ERROR = 1
EXIT_USAGE = 2
EXIT_INTEGRITY = 3
EXIT_INTERRUPTED = 130


_ESCAPES = {"\n": "\\n", "\r": "\\r", "\t": "\\t"}


def one_line(text: str) -> str:
    """``text`` with every unprintable character (line breaks, tabs, controls, line separators)
    written as its escape, as ``repr`` would: a message made from hostile input stays one line."""
    if text.isprintable():
        return text

    def escaped(char: str) -> str:
        if char.isprintable():
            return char
        code = ord(char)
        return _ESCAPES.get(char) or (f"\\x{code:02x}" if code < 0x100 else
                                      f"\\u{code:04x}" if code < 0x10000 else f"\\U{code:08x}")

    return "".join(map(escaped, text))


class TeadistError(Exception):
    """Base class: a failure with a message for the user."""

    exit_code = EXIT_ERROR

    def __init__(self, message: str, hint: str | None = None) -> None:
        message = one_line(message)
        super().__init__(message)
        self.message = message
        self.hint = None if hint is None else one_line(hint)

    def __str__(self) -> str:
        return self.message


class UsageError(TeadistError):
    """The user asked for something malformed (bad size, bad option combination)."""

    exit_code = EXIT_USAGE


class ManifestError(TeadistError):
    """A manifest (or other content teadist reads: an index, a record) is malformed or unsafe;
    raised before anything is written. Bad content, like bad bytes, is an integrity failure."""

    exit_code = EXIT_INTEGRITY


class NotFoundError(TeadistError):
    """A model, file or remote entry does not exist."""


class IntegrityError(TeadistError):
    """Bytes do not match what a manifest or record promises."""

    exit_code = EXIT_INTEGRITY


class SourceError(TeadistError):
    """A network or remote-source failure (after retries)."""


class OfflineError(TeadistError):
    """Offline mode is on and the request needs the network."""


class DiskSpaceError(TeadistError):
    """Not enough free space at the destination."""


class ReleaseError(TeadistError):
    """A GitHub Release operation failed."""


class FileSystemError(TeadistError):
    """The operating system refused a file operation (permissions, a read-only or full disk…)."""
