"""Client-supplied values in log lines: cut to a bound, and escaped in text lines."""

from __future__ import annotations

import pytest

from app.logs import MAX_LOGGED_CHARS, bounded, text_token


@pytest.mark.parametrize(
    ("value", "token"),
    [
        ("all-MiniLM-L6-v2", "all-MiniLM-L6-v2"),
        ("/v1/models/é漢", "/v1/models/é漢"),
        ("", '""'),
        ("a b", '"a b"'),
        ('say "hi"', '"say \\"hi\\""'),
        ("back\\slash", '"back\\\\slash"'),
        ("x\nINFO forged", '"x\\nINFO forged"'),
        ("\r\x00\x1b\x7f\x85", '"\\r\\x00\\x1b\\x7f\\x85"'),
        ("\u2028\u2029\u202e\ufeff\u00a0", '"\\u2028\\u2029\\u202e\\ufeff\\xa0"'),
    ],
)
def test_text_token(value: str, token: str) -> None:
    assert text_token(value) == token


def test_bounded() -> None:
    assert bounded("m" * MAX_LOGGED_CHARS) == "m" * MAX_LOGGED_CHARS
    assert bounded("m" * 10**6) == "m" * MAX_LOGGED_CHARS + "...(1000000 chars)"
