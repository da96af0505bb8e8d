"""How many padded tokens the next forward pass may take: the whole budget, except while
interactive requests are about and bulk work is queued: then forwards are kept short, so an
interactive request never waits long behind a forward of bulk rows. (Interactive requests
alone still share full batches: splitting those would only make half of them wait.)

The model's speed is learnt from completed batches as seconds per padded token. A forward
also has a fixed cost, so a small batch looks slower per token than a large one; the
estimate is therefore updated only from batches that filled at least half the cap they
were planned under. From those, cap = target / (seconds per token) converges to the cap at
which fixed cost + per-token cost x cap = target. A pure object: time is passed in.
"""

from __future__ import annotations

# How long after the last interactive-sized request forwards stay short.
INTERACTIVE_WINDOW_S = 2.0
# Weight of the newest batch in the running estimate.
SMOOTHING = 0.3
# Never plan below this (a cap under one input's length runs that input alone anyway).
MIN_CAP = 64


class ForwardPace:
    def __init__(self, max_batch_tokens: int, target_seconds: float) -> None:
        self.max_batch_tokens = max_batch_tokens
        self.target = target_seconds
        self.seconds_per_token: float | None = None
        self._interactive_until = float("-inf")

    def timed_cap(self) -> int:
        """The padded tokens a forward may take to last about `target` seconds."""
        if self.target <= 0 or self.seconds_per_token is None:
            return self.max_batch_tokens
        cap = round(self.target / self.seconds_per_token)
        return max(MIN_CAP, min(self.max_batch_tokens, cap))

    def is_bulk(self, tokens: int) -> bool:
        """A request of `tokens` needs more than one short forward."""
        return tokens > self.timed_cap()

    def cap(self, now: float, bulk_queued: bool) -> int:
        """The padded-token budget of the batch planned now."""
        return self.timed_cap() if bulk_queued and self.interactive(now) else self.max_batch_tokens

    def interactive_seen(self, now: float) -> bool:
        """An interactive-sized request was queued within the last INTERACTIVE_WINDOW_S."""
        return now < self._interactive_until

    def interactive(self, now: float) -> bool:
        """Forwards are being kept shorter than the full budget would make them (a model
        fast enough to run the whole budget within the target is never held back)."""
        return self.interactive_seen(now) and self.timed_cap() < self.max_batch_tokens

    def request(self, tokens: int, now: float) -> None:
        """A request of `tokens` was queued: one that a short forward serves whole (within
        the timed cap) is interactive, and keeps forwards short for a while."""
        if self.target > 0 and not self.is_bulk(tokens):
            self._interactive_until = now + INTERACTIVE_WINDOW_S

    def completed(self, padded_tokens: int, seconds: float, planned_cap: int) -> None:
        """A forward of `padded_tokens` took `seconds`; it was planned under `planned_cap`
        (0: not planned from the model's own workers' queue, so not counted)."""
        if planned_cap <= 0 or padded_tokens <= 0 or seconds <= 0 or 2 * padded_tokens < planned_cap:
            return
        rate = seconds / padded_tokens
        if self.seconds_per_token is None:
            self.seconds_per_token = rate
        else:
            self.seconds_per_token += SMOOTHING * (rate - self.seconds_per_token)
