"""Batched tokenization that both truncates and reports what was cut."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any


def tokenize_truncating(
    tokenizer: Any, prompts: Sequence[str], max_length: int
) -> list[tuple[tuple[int, ...], int]]:
    """(ids truncated to max_length, length before truncation) for each prompt.

    One untruncated pass counts every prompt; only the rare over-long ones are tokenized
    again with the tokenizer's own truncation, which keeps special tokens such as [SEP].
    """
    full = tokenizer(list(prompts))["input_ids"]
    long_rows = [i for i, ids in enumerate(full) if len(ids) > max_length]
    cut: dict[int, list[int]] = {}
    if long_rows:
        again = tokenizer([prompts[i] for i in long_rows], truncation=True, max_length=max_length)
        cut = dict(zip(long_rows, again["input_ids"], strict=True))
    return [(tuple(cut.get(i, ids)), len(ids)) for i, ids in enumerate(full)]


def token_spans(tokenizer: Any, text: str) -> list[tuple[int, int]]:
    """(start, end) character offsets of each of the text's tokens, special tokens left out."""
    offsets = tokenizer(text, add_special_tokens=False, return_offsets_mapping=True)["offset_mapping"]
    return [(int(start), int(end)) for start, end in offsets]
