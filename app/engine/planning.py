"""Which queued inputs go into the next forward pass: a pure function, tested on its own."""

from __future__ import annotations

from collections.abc import Sequence

# Look-ahead: how many of the oldest queued inputs the planner considers for one batch.
# Enough to group lengths well; bounded so planning stays cheap however long the queue is.
WINDOW_PER_ROW = 8


def select_batch(lengths: Sequence[int], max_batch_size: int, max_batch_tokens: int) -> list[int]:
    """Indices into `lengths` (queued inputs, oldest first) for the next forward pass.

    The oldest input always goes in, so none waits forever. The batch then grows with the
    queued inputs nearest to it in length, taking whichever adds the least padding, while
    its padded cost (longest x count) stays within `max_batch_tokens` and its size within
    `max_batch_size`. An input over the budget on its own runs alone.
    """
    if not lengths:
        return []
    n = min(len(lengths), max(max_batch_size * WINDOW_PER_ROW, 64))
    order = sorted(range(n), key=lengths.__getitem__)  # stable: equal lengths keep arrival order
    lo = hi = order.index(0)
    width = lengths[0]
    chosen = [0]
    while len(chosen) < max_batch_size:
        left = order[lo - 1] if lo > 0 else None
        right = order[hi + 1] if hi + 1 < n else None
        count = len(chosen) + 1
        fits_left = left is not None and width * count <= max_batch_tokens
        fits_right = right is not None and lengths[right] * count <= max_batch_tokens
        if not (fits_left or fits_right):
            break
        # Padding each choice adds: a shorter input pads itself up to the width; a longer
        # one pads every row already chosen up to its own length.
        left_waste = width - lengths[left] if fits_left and left is not None else None
        right_waste = (lengths[right] - width) * len(chosen) if fits_right and right is not None else None
        if left_waste is not None and (right_waste is None or left_waste <= right_waste):
            assert left is not None
            chosen.append(left)
            lo -= 1
        else:
            assert right is not None
            chosen.append(right)
            hi += 1
            width = lengths[right]
    return chosen
