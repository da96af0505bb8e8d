"""A request's inputs split into turns of about TURN_CHARS characters of tokenizer work."""

from __future__ import annotations

from app.engine.turns import CHARS_PER_TOKEN_ID, LONG_INPUT_CHARS, Item, turns, weight


def test_turns_keep_order_and_bound_the_work_of_each() -> None:
    items: list[Item] = ["a" * 300] * 10 + [[1] * 50] + ["b" * 10_000_000] + ["c"] * 3
    split = list(turns(items, per_turn=1_000))
    assert [item for turn in split for item in turn] == items  # every input, in order
    assert all(turn for turn in split)
    # Each turn weighs at most per_turn, unless it is one input (never split).
    assert all(sum(weight(i) for i in turn) <= 1_000 or len(turn) == 1 for turn in split)
    assert [len(turn) for turn in split] == [3, 3, 3, 2, 1, 3]


def test_an_input_weighs_its_length_capped_as_the_tokenizer_cuts_it() -> None:
    assert weight("x" * 100) == 100
    assert weight("x" * 10_000_000) == LONG_INPUT_CHARS
    assert weight([7] * 10) == 10 * CHARS_PER_TOKEN_ID
