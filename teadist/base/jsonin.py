"""JSON as untrusted input: bounded size and nesting, integers only, no duplicate keys.

Python's parser recurses once per nesting level (a deep enough document is a RecursionError),
accepts ``NaN``/``Infinity``, silently keeps the last of two equal keys (another parser may keep
the first: one document, two meanings) and reads ``30.0`` as a float that schema validators take
for an integer. None of that is wanted in a manifest or a record.
"""

from __future__ import annotations

import itertools
import json
import re
from typing import Any

MAX_DEPTH = 32


class JsonInputError(ValueError):
    """The document is not acceptable input; the message says why, in one line."""


# A string, or an unterminated one up to the end: the match never fails, so the engine never
# retries an unterminated string from each later quote (that was quadratic in the input size).
_STRING = re.compile(r'"[^"\\]*(?:\\.[^"\\]*)*"?', re.DOTALL)
MAX_DIGITS = 4300  # Python refuses to read longer integers (sys.get_int_max_str_digits)
_NOT_BRACKET = re.compile(r"[^\[\]{}]+")


def nesting_depth(text: str) -> int:
    """The deepest nesting of arrays/objects, found without recursion (brackets in strings skipped)."""
    brackets = _NOT_BRACKET.sub("", _STRING.sub("", text))
    return max(itertools.accumulate(1 if c in "[{" else -1 for c in brackets), default=0)


def _no_float(text: str) -> Any:
    raise JsonInputError(f"the number {text[:30]} is not an integer (only whole numbers are allowed)")


def _whole(text: str) -> int:
    if len(text.lstrip("-")) > MAX_DIGITS:
        raise JsonInputError(f"the number {text[:20]}… has {len(text)} digits (at most {MAX_DIGITS})")
    return int(text)


def _no_constant(text: str) -> Any:
    raise JsonInputError(f"{text} is not a number JSON allows")


def _no_duplicates(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key, value in pairs:
        if key in out:
            raise JsonInputError(f"the key {key[:40]!r} appears twice in one object")
        out[key] = value
    return out


def loads(raw: bytes, max_depth: int = MAX_DEPTH) -> Any:
    """Parse ``raw`` (UTF-8 JSON) or raise JsonInputError naming the problem."""
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise JsonInputError(f"not UTF-8 text (byte {exc.start})") from None
    if nesting_depth(text) > max_depth:
        raise JsonInputError(f"nested more than {max_depth} levels deep")
    try:
        return json.loads(text, parse_float=_no_float, parse_int=_whole, parse_constant=_no_constant,
                          object_pairs_hook=_no_duplicates)
    except json.JSONDecodeError as exc:
        raise JsonInputError(f"not valid JSON ({exc.msg} at line {exc.lineno} column {exc.colno})") from None
