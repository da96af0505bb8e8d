"""Splits tokenized inputs into padded batches that respect the batch budget."""

from __future__ import annotations

from collections.abc import Sequence


def plan_batches(lengths: Sequence[int], max_batch_size: int, max_batch_tokens: int) -> list[list[int]]:
    """Indices grouped into batches, longest first so each batch pads little.

    A batch's cost is what the model pays for padding: its longest length times its size.
    An input that alone exceeds the token budget runs alone.
    """
    order = sorted(range(len(lengths)), key=lambda i: lengths[i], reverse=True)
    batches: list[list[int]] = []
    current: list[int] = []
    for i in order:
        # Longest first: the batch's width is its first item's length.
        width = lengths[current[0]] if current else lengths[i]
        if current and (len(current) >= max_batch_size or width * (len(current) + 1) > max_batch_tokens):
            batches.append(current)
            current = []
        current.append(i)
    if current:
        batches.append(current)
    return batches
