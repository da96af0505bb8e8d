from __future__ import annotations

import pytest
import tiktoken

from app.engine.token_inputs import NativeIds, TextInputs, TiktokenIds, TokenInputs, parse_input
from app.errors import InvalidRequestError


@pytest.mark.parametrize(
    ("raw", "expected"),
    [
        ("hi", TextInputs(["hi"])),
        (["a", "b"], TextInputs(["a", "b"])),
        ([1, 2, 3], TokenInputs([[1, 2, 3]])),
        ([[1], [2, 3]], TokenInputs([[1], [2, 3]])),
    ],
)
def test_the_four_openai_shapes(raw: object, expected: object) -> None:
    assert parse_input(raw, 2048) == expected


@pytest.mark.parametrize(
    "raw",
    ["", [], [""], ["a", 1], [[1], []], [[1, "a"]], [True], [1.0], None, 5, {"a": 1}, [["a"]], [[[1]]]],
)
def test_invalid_shapes_are_400_on_input(raw: object) -> None:
    with pytest.raises(InvalidRequestError) as info:
        parse_input(raw, 2048)
    assert info.value.param == "input" and info.value.status_code == 400
    assert info.value.message.startswith("'$.input' is invalid")


def test_item_limit() -> None:
    assert parse_input(["a"] * 3, 3) == TextInputs(["a"] * 3)
    with pytest.raises(InvalidRequestError):
        parse_input(["a"] * 4, 3)


def test_cl100k_ids_decode_to_the_text() -> None:
    decoder = TiktokenIds("cl100k_base")
    text = "Hello, world! Ünïcödé 🚀"
    assert decoder.decode(tiktoken.get_encoding("cl100k_base").encode(text)) == text


@pytest.mark.parametrize("bad", [100_256, 100_261, 100_277, -1, 2**63])
def test_cl100k_invalid_ids_are_400(bad: int) -> None:
    with pytest.raises(InvalidRequestError) as info:
        TiktokenIds("cl100k_base").decode([15339, bad])
    assert str(bad) in info.value.message


def test_split_utf8_sequence_is_replaced_not_an_error() -> None:
    ids = tiktoken.get_encoding("cl100k_base").encode("🚀")
    assert len(ids) > 1
    assert "\ufffd" in TiktokenIds("cl100k_base").decode(ids[:1])


def test_native_ids_are_range_checked() -> None:
    decoder = NativeIds(10, lambda ids: " ".join(map(str, ids)))
    assert decoder.decode([0, 9]) == "0 9"
    with pytest.raises(InvalidRequestError):
        decoder.decode([10])
