from __future__ import annotations

import pytest

from teadist.base.sizes import format_size, parse_size
from teadist.errors import UsageError


@pytest.mark.parametrize(("text", "expected"), [
    ("1900000000", 1_900_000_000),
    ("512M", 512_000_000),
    ("512MB", 512_000_000),
    ("1.9G", 1_900_000_000),
    ("1GiB", 2**30),
    ("1gib", 2**30),
    ("64KiB", 65536),
    ("100k", 100_000),
    (" 7 ", 7),
    ("0.5MiB", 2**19),
])
def test_parse_size_accepts_units(text: str, expected: int) -> None:
    assert parse_size(text) == expected


@pytest.mark.parametrize("text", ["", "abc", "1.2.3G", "-5", "5 XB", "1e9", "G", "9" * 100,
                                  "\u0661\u0662k", "\uff11\uff12k", "1\u00a0k", "\u00b2"])
def test_parse_size_rejects_with_a_usage_error(text: str) -> None:
    with pytest.raises(UsageError, match="invalid size"):
        parse_size(text)


def test_format_size() -> None:
    assert format_size(None) == "unknown"
    assert format_size(999) == "999 B"
    assert format_size(1_900_000_000) == "1.90 GB"
    assert format_size(3 * 10**12) == "3.00 TB"
