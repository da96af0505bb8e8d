"""The byte scan that refuses deeply nested JSON agrees with the real depth of any document,
brackets, quotes and backslashes inside strings included."""

from __future__ import annotations

import json
from typing import Any

import msgspec
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from app.api import json_nesting
from app.api.json_nesting import MAX_JSON_DEPTH, nests_deeper_than

# Texts made mostly of what could fool a scan: brackets, quotes and backslashes.
_tricky_text = st.text(alphabet=st.sampled_from('[]{}"\\ a\n/u'), max_size=12)
_leaf = st.none() | st.integers() | _tricky_text
_values = st.recursive(
    _leaf,
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(_tricky_text, inner, max_size=3),
    max_leaves=40,
)


def _depth(value: Any) -> int:
    if isinstance(value, list):
        return 1 + max(map(_depth, value), default=0)
    if isinstance(value, dict):
        return 1 + max(map(_depth, value.values()), default=0)
    return 0


def _wrapped(value: Any, levels: int) -> Any:
    for i in range(levels):
        value = [value] if i % 2 else {"k[": value}
    return value


@settings(max_examples=300, deadline=None)
@given(value=_values, levels=st.integers(min_value=0, max_value=12), limit=st.integers(0, 16))
def test_agrees_with_the_real_depth(value: Any, levels: int, limit: int) -> None:
    value = _wrapped(value, levels)
    body = json.dumps(value, ensure_ascii=False).encode()
    assert nests_deeper_than(body, limit) == (_depth(value) > limit)


@pytest.mark.parametrize("chunk", [1, 3, 64])
def test_depth_carries_across_chunks(monkeypatch: pytest.MonkeyPatch, chunk: int) -> None:
    monkeypatch.setattr(json_nesting, "_CHUNK", chunk)
    deep = b'{"a": "]]]]", "b": ' + b"[" * 20 + b'"\\"[[["' + b"]" * 20 + b"}"
    assert nests_deeper_than(deep, 20) and not nests_deeper_than(deep, 21)


def test_within_the_limit_msgspec_never_recurses_too_far() -> None:
    """The limit is far below what the parser survives; past it, the parser itself fails."""
    ok = b"[" * MAX_JSON_DEPTH + b"]" * MAX_JSON_DEPTH
    assert not nests_deeper_than(ok, MAX_JSON_DEPTH)
    msgspec.json.decode(ok)
    with pytest.raises(RecursionError):
        msgspec.json.decode(b"[" * 100_000 + b"]" * 100_000)
    assert nests_deeper_than(b"[" * 100_000, MAX_JSON_DEPTH)
