"""The command line: the only module that imports typer, prints, or picks exit codes.

Results go to stdout (plain text, or JSON with ``--json``); messages and progress go to stderr.
Exit codes: 0 ok, 1 error, 2 usage, 3 integrity failure, 130 interrupted.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Annotated, Any, Optional

import typer

from teadist import __version__
from teadist.base.progress import NullTask, ProgressTask, Reporter
from teadist.errors import (
    EXIT_ERROR,
    EXIT_INTERRUPTED,
    TeadistError,
)
from teadist.settings import Settings, mask_secrets, resolve_settings

app = typer.Typer(
    name="teadist",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
    rich_markup_mode=None,
    context_settings={"help_option_names": ["-h", "--help"]},
)

_state: dict[str, bool] = {"debug": False}

# -- options shared by commands ----------------------------------------------------------------
QuietOpt = Annotated[bool, typer.Option("--quiet", "-q", help="No progress bars or messages.")]
JsonOpt = Annotated[bool, typer.Option("--json", help="Print a JSON result on stdout.")]
CacheDirOpt = Annotated[
    Optional[Path],  # noqa: UP045 - typer needs Optional at runtime on 3.11
    typer.Option("--cache-dir", help="Model cache folder [env: TEA_MODELS_DIR; default ~/.cache/tea/models]."),
]


# -- output ------------------------------------------------------------------------------------
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
            print(mask_secrets(message), file=sys.stderr)

    def warn(self, message: str) -> None:
        print("warning: " + mask_secrets(message), file=sys.stderr)

    def task(self, description: str, total: int | None) -> ProgressTask:
        return _TqdmTask(description, total) if self.bars else NullTask()


def _reporter(quiet: bool, as_json: bool = False) -> Reporter:
    return CliReporter(quiet=quiet, bars=not as_json)


def _emit_json(data: Any) -> None:
    echo(json.dumps(data, indent=2, default=str))


def echo(text: object = "", err: bool = False) -> None:
    """A line of output (stdout, or stderr with ``err``), secrets masked."""
    print(mask_secrets(str(text)), file=sys.stderr if err else sys.stdout)


def _settings(cache_dir: Path | None = None, offline: bool | None = None) -> Settings:
    return resolve_settings(cache_dir=cache_dir, offline=offline, debug=_state["debug"])


def _cache(settings: Settings) -> Any:
    from teadist.cache.store import ModelCache

    return ModelCache(settings.models_dir)


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
    _state["debug"] = debug



# -- errors → exit codes ------------------------------------------------------------------------
def _print_error(message: str, hint: str | None) -> None:
    print("error: " + mask_secrets(message), file=sys.stderr)
    if hint:
        print("hint: " + mask_secrets(hint), file=sys.stderr)


def _print_traceback() -> None:
    """The current exception's traceback, secrets masked (never Python's own unmasked printing)."""
    import traceback

    print(mask_secrets(traceback.format_exc()), end="", file=sys.stderr)


def main(argv: list[str] | None = None) -> None:
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
        _print_error(exc.message, exc.hint)
        sys.exit(exc.exit_code)
    except BrokenPipeError:
        sys.exit(EXIT_ERROR)
    except OSError as exc:
        if _state["debug"]:
            _print_traceback()
        _print_error(f"{exc.strerror or exc}" + (f": {exc.filename}" if exc.filename else ""),
                     None if _state["debug"] else "run with --debug for details")
        sys.exit(EXIT_ERROR)
    except Exception as exc:
        # Click's own usage errors (typer vendors click, so match by shape, not by class).
        show, code = getattr(exc, "show", None), getattr(exc, "exit_code", None)
        if callable(show) and isinstance(code, int):
            show()
            sys.exit(code)
        _print_traceback()  # a bug: shown whole (masked), never turned into a user error
        sys.exit(EXIT_ERROR)
    sys.exit(rv if isinstance(rv, int) else 0)
