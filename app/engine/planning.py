"""Which queued inputs go into the next forward pass: pure functions, tested on their own."""

from __future__ import annotations

from collections.abc import Hashable, Mapping, Sequence

# Look-ahead: how many of the oldest queued inputs the planner considers for one batch.
# Enough to group lengths well; bounded so planning stays cheap however long the queue is.
WINDOW_PER_ROW = 8


def first_input(
    lengths: Sequence[int],
    owners: Sequence[Hashable],
    idle: Mapping[Hashable, float],
    max_idle: float,
    max_batch_size: int,
    max_batch_tokens: int,
) -> int:
    """Index of the input that seeds the next batch (queued inputs, oldest first).

    Request-level fairness: requests whose queued inputs all fit in one batch go first, in
    arrival order; then the others, least queued tokens first. So a one-text request goes
    into the very next forward pass however many rows a bigger request queued before it,
    and requests of equal size keep their arrival order. Starvation is bounded: a request
    none of whose inputs has gone into a forward for `max_idle` seconds goes first (the
    longest idle of them). `owners[i]` is the request of input i; `idle[owner]` is how long
    since that request last had an input taken (or was queued).
    """
    if not lengths:
        return 0
    starved = max(idle, key=idle.__getitem__, default=None)
    if starved is not None and idle[starved] >= max_idle:
        return owners.index(starved)
    work: dict[Hashable, int] = {}
    count: dict[Hashable, int] = {}
    first: dict[Hashable, int] = {}
    for i, (owner, length) in enumerate(zip(owners, lengths, strict=True)):
        work[owner] = work.get(owner, 0) + length
        count[owner] = count.get(owner, 0) + 1
        first.setdefault(owner, i)

    def queued(owner: Hashable) -> int:
        fits = work[owner] <= max_batch_tokens and count[owner] <= max_batch_size
        return 0 if fits else work[owner]

    # min() keeps the first of equal keys, and `first` lists requests in arrival order.
    return first[min(first, key=queued)]


def select_batch(
    lengths: Sequence[int],
    max_batch_size: int,
    max_batch_tokens: int,
    first: int = 0,
    max_padding: float | None = None,
) -> list[int]:
    """Indices into `lengths` (queued inputs, oldest first) for the next forward pass.

    Input `first` (by default the oldest; see `first_input`) always goes in. The batch then
    grows with the queued inputs nearest to it in length among the oldest, taking whichever
    adds the least padding, while its padded cost (longest x count) stays within
    `max_batch_tokens` and its size within `max_batch_size`. An input over the budget on
    its own runs alone. With `max_padding` (the padded tokens that cost as much as a
    forward's fixed cost: app.engine.forward_cost), no row of the batch is padded by more
    than that: an input much shorter than the others costs less in a forward of its own,
    and the others do not wait for one much longer. (Per row, not summed over the batch:
    32 queries a few tokens apart still share one forward, as they should; the fixed cost
    the cost model sees is only the forward's, not the batch's trip through the gateway.)
    """
    if not lengths:
        return []
    n = min(len(lengths), max(max_batch_size * WINDOW_PER_ROW, 64))
    window = list(range(n)) if first < n else [*range(n), first]
    order = sorted(window, key=lengths.__getitem__)  # stable: equal lengths keep arrival order
    lo = hi = order.index(first)
    width = lengths[first]
    chosen = [first]
    while len(chosen) < max_batch_size:
        left = order[lo - 1] if lo > 0 else None
        right = order[hi + 1] if hi + 1 < len(order) else None
        count = len(chosen) + 1
        # Padding each choice adds: a shorter input pads itself up to the width; a longer
        # one pads every row already chosen up to its own length.
        left_waste = width - lengths[left] if left is not None and width * count <= max_batch_tokens else None
        right_waste = (
            (lengths[right] - width) * len(chosen)
            if right is not None and lengths[right] * count <= max_batch_tokens
            else None
        )
        if max_padding is not None:  # the longest row minus the shortest, were it added
            shortest = lengths[order[lo]]
            if left is not None and width - lengths[left] > max_padding:
                left_waste = None
            if right is not None and lengths[right] - shortest > max_padding:
                right_waste = None
        if left_waste is None and right_waste is None:
            break
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
