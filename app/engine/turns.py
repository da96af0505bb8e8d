"""A request's inputs split into turns on the model's tokenizer thread.

Each model has one tokenizer thread (a fast tokenizer is not used from two threads at once),
and its queue is first come, first served. A request that handed it all of its inputs at
once would hold it for as long as they take: seconds for a body of many long texts, during
which a one-word request waits. So a request submits one turn at a time, each about
TURN_CHARS characters of tokenizer work, and waits for it before submitting the next: a
small request arriving meanwhile queues behind at most one turn of each big request.

An input's weight is its length, capped at LONG_INPUT_CHARS: an over-long text is cut
before it is tokenized (app.models.tokenization), so it costs about as much as a text of
a few budgets, however long it is.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence

# About 20 ms of tokenization for all-MiniLM-L6-v2's WordPiece on one core; one over-long
# input (cut to 3 budgets, or at most 2 budgets tokenized twice) is about a turn.
TURN_CHARS = 16_384
LONG_INPUT_CHARS = 16_384
# Token ids are decoded to text first; a token is a few characters.
CHARS_PER_TOKEN_ID = 4


def weight(item: Item) -> int:
    size = len(item) if isinstance(item, str) else CHARS_PER_TOKEN_ID * len(item)
    return min(size, LONG_INPUT_CHARS)


Item = str | list[int]  # a text, or token ids


def turns(items: Sequence[Item], per_turn: int = TURN_CHARS) -> Iterator[list[Item]]:
    """Consecutive runs of `items` weighing about `per_turn` each (at least one item)."""
    turn: list[Item] = []
    load = 0
    for item in items:
        if turn and load + weight(item) > per_turn:
            yield turn
            turn, load = [], 0
        turn.append(item)
        load += weight(item)
    if turn:
        yield turn
