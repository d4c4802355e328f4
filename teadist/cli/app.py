"""The command line: the only module that imports typer, prints, or picks exit codes.

Results go to stdout (plain text, or JSON with ``--json``); messages and progress go to stderr.
Exit codes: 0 ok, 1 error, 2 usage, 3 integrity failure, 130 interrupted.
"""

from __future__ import annotations

import json
import os
import re
import sys
from typing import Annotated, Any, Optional

import typer

from teadist import __version__
from teadist.base.progress import NullTask, ProgressTask, Reporter
from teadist.errors import (
    EXIT_ERROR,
    EXIT_INTERRUPTED,
    FileSystemError,
    TeadistError,
)
from teadist.settings import Settings, env_flag, mask_secrets, resolve_settings

app = typer.Typer(
    name="teadist",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
    rich_markup_mode=None,
    context_settings={"help_option_names": ["-h", "--help"]},
)

_state: dict[str, bool] = {"debug": False, "json": False}

# -- options shared by commands ----------------------------------------------------------------
QuietOpt = Annotated[bool, typer.Option("--quiet", "-q", help="No progress bars or messages.")]
JsonOpt = Annotated[bool, typer.Option("--json", help="Print a JSON result on stdout.")]
CacheDirOpt = Annotated[
    Optional[str],  # noqa: UP045 - typer needs Optional at runtime on 3.11; a str, so '' is not taken for "."
    typer.Option("--cache-dir", help="Model cache folder [env: TEA_MODELS_DIR; default ~/.cache/tea/models]."),
]


# -- output ------------------------------------------------------------------------------------
# Controls (C0 but newline and tab, DEL, C1) and the format characters that reorder or hide text
# (bidi overrides/isolates, zero-width marks, separators, BOM). Names and metadata come from files
# and servers: an ESC sequence could drive the terminal, U+202E make one name read as another.
_UNPRINTABLE = re.compile("[\x00-\x08\x0b-\x1f\x7f-\x9f\u061c\u200b-\u200f\u2028-\u202e\u2060-\u2069\ufeff]")


def shown(text: str) -> str:
    """``text`` as it may reach the terminal: secrets masked, unprintable characters escaped."""
    return _UNPRINTABLE.sub(lambda m: f"\\x{ord(m[0]):02x}" if ord(m[0]) < 0x100 else f"\\u{ord(m[0]):04x}",
                            mask_secrets(text))


class _TqdmTask:
    def __init__(self, description: str, total: int | None) -> None:
        from tqdm import tqdm  # lazy: only when a bar is shown

        self._bar = tqdm(total=total, desc=description, unit="B", unit_scale=True, unit_divisor=1024,
                         file=sys.stderr, leave=False, dynamic_ncols=True)

    def advance(self, n: int) -> None:
        self._bar.update(n)

    def note(self, text: str) -> None:
        self._bar.set_postfix_str(text, refresh=False)

    def close(self) -> None:
        self._bar.close()


class CliReporter:
    """Messages on stderr; tqdm bars only on a TTY and not with --quiet or --json."""

    def __init__(self, quiet: bool = False, bars: bool = True) -> None:
        self.quiet = quiet
        self.bars = bars and not quiet and sys.stderr.isatty()

    def info(self, message: str) -> None:
        if not self.quiet:
            print(shown(message), file=sys.stderr)

    def warn(self, message: str) -> None:
        if not self.quiet:
            print("warning: " + shown(message), file=sys.stderr)

    def task(self, description: str, total: int | None) -> ProgressTask:
        return _TqdmTask(description, total) if self.bars else NullTask()


def _reporter(quiet: bool, as_json: bool = False) -> Reporter:
    return CliReporter(quiet=quiet, bars=not as_json)


def _emit_json(data: Any) -> None:
    """Strict JSON on stdout: NaN and infinities (which JSON has no words for) become null."""
    echo(json.dumps(_finite(data), indent=2, default=str, allow_nan=False))


def _finite(data: Any) -> Any:
    import math

    if isinstance(data, float):
        return data if math.isfinite(data) else None
    if isinstance(data, dict):
        return {k: _finite(v) for k, v in data.items()}
    if isinstance(data, (list, tuple)):
        return [_finite(v) for v in data]
    return data


def echo(text: object = "", err: bool = False) -> None:
    """A line of output (stdout, or stderr with ``err``), secrets masked. A result with nowhere to go
    (stdout closed: ``teadist models >&-``) is an error, never a silent exit 0."""
    if not err and sys.stdout is None:
        raise FileSystemError("standard output is closed: the result has nowhere to go",
                              hint="run the command with its output open (redirect it to a file or /dev/null)")
    print(shown(str(text)), file=sys.stderr if err else sys.stdout)


def _settings(cache_dir: str | None = None, offline: bool | None = None) -> Settings:
    return resolve_settings(cache_dir=cache_dir, offline=offline, debug=_state["debug"], strict=True)


# -- global options ----------------------------------------------------------------------------
def _version_callback(value: bool) -> None:
    if value:
        print(f"teadist {__version__}")
        raise typer.Exit()


@app.callback()
def _root(
    debug: Annotated[bool, typer.Option("--debug", help="Show tracebacks on errors.")] = False,
    version: Annotated[bool, typer.Option("--version", callback=_version_callback, is_eager=True,
                                          help="Print the version and exit.")] = False,
) -> None:
    """Fetch, split, assemble, verify and publish GGUF models for TEA.

    \b
    Examples:
      teadist split model.gguf --out dist/        # chunks under 2 GB + manifest
      teadist assemble dist/model.gguf.manifest.json
      teadist verify ~/.cache/tea/models/model.gguf
      teadist inspect model.gguf
    """
    _state["debug"] = _state["debug"] or debug



# -- errors → exit codes ------------------------------------------------------------------------
def _print_error(message: str, hint: str | None, code: int = EXIT_ERROR, kind: str = "error") -> None:
    """One line (and a hint) on stderr; with --json also the one JSON shape every command's errors
    take, on stdout: {"error": {"kind", "message", "hint", "exit_code"}}."""
    if sys.stderr is not None:
        print("error: " + shown(message), file=sys.stderr)
        if hint:
            print("hint: " + shown(hint), file=sys.stderr)
    if _state["json"] and sys.stdout is not None:
        _emit_json({"error": {"kind": kind, "message": message, "hint": hint, "exit_code": code}})


def _error_kind(exc: TeadistError) -> str:
    """``NotFoundError`` → ``not_found``: the nearest class of ``teadist.errors`` as a stable word."""
    import re

    klass = next(k for k in type(exc).__mro__ if k.__module__ == TeadistError.__module__)
    name = klass.__name__.removesuffix("Error") or "Teadist"
    return re.sub(r"(?<!^)(?=[A-Z])", "_", name).lower()


def _print_traceback() -> None:
    """The current exception's traceback, secrets masked (never Python's own unmasked printing)."""
    import traceback

    print(shown(traceback.format_exc()), end="", file=sys.stderr)


def _wants_json(argv: list[str]) -> bool:
    """--json anywhere before a ``--`` (parsed again here: an error can come before typer parses)."""
    return "--json" in (argv[:argv.index("--")] if "--" in argv else argv)


def main(argv: list[str] | None = None) -> None:
    _state["json"] = _wants_json(list(sys.argv[1:] if argv is None else argv))
    try:
        _state["debug"] = env_flag(os.environ, "TEADIST_DEBUG")  # --debug (parsed below) may add to it
    except TeadistError as exc:
        _print_error(exc.message, exc.hint, exc.exit_code, _error_kind(exc))
        sys.exit(exc.exit_code)
    try:
        rv = app(args=argv, prog_name="teadist", standalone_mode=False)
    except typer.Exit as exc:
        sys.exit(exc.exit_code)
    except (KeyboardInterrupt, typer.Abort):
        print("interrupted", file=sys.stderr)
        sys.exit(EXIT_INTERRUPTED)
    except TeadistError as exc:
        if _state["debug"]:
            _print_traceback()
        _print_error(exc.message, exc.hint, exc.exit_code, _error_kind(exc))
        sys.exit(exc.exit_code)
    except BrokenPipeError:
        sys.exit(EXIT_ERROR)
    except OSError as exc:
        if _state["debug"]:
            _print_traceback()
        _print_error(f"{exc.strerror or exc}" + (f": {exc.filename}" if exc.filename else ""),
                     None if _state["debug"] else "run with --debug for details", EXIT_ERROR, "os")
        sys.exit(EXIT_ERROR)
    except Exception as exc:
        # Click's own usage errors (typer vendors click, so match by shape, not by class).
        show, code = getattr(exc, "show", None), getattr(exc, "exit_code", None)
        if callable(show) and isinstance(code, int):
            show()
            if _state["json"]:
                format_message = getattr(exc, "format_message", None)
                text = format_message() if callable(format_message) else str(exc)
                _emit_json({"error": {"kind": "usage", "message": text, "hint": "see --help", "exit_code": code}})
            sys.exit(code)
        _print_traceback()  # a bug: shown whole (masked), never turned into a user error
        sys.exit(EXIT_ERROR)
    sys.exit(rv if isinstance(rv, int) else 0)
