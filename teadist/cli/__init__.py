"""The command line: the only package that imports typer, prints, or picks exit codes.

``app`` holds the shared options, output and the error → exit code table; the commands live in
``files`` (split, assemble, verify, inspect), ``models`` (the cache and fetch), ``maintain``
(registry, serve, packaging, releases, demo), ``repair`` and ``web`` (the browser assets).
Importing them registers them, in help order.
"""

from teadist.cli import files, maintain, models, repair, web  # noqa: F401  (registers the commands)
from teadist.cli.app import app, main

__all__ = ["app", "main"]
