"""What a forward pass costs, fitted to the model's recent forwards: a fixed cost plus a
cost per padded token (seconds = fixed + per_token x rows x width).

The planner uses the ratio: `fixed / per_token` padded tokens cost as much as a forward
of their own, so a row whose padding would cost more than that is better left for a
forward of its own (app.engine.planning.select_batch). On a CPU (all-MiniLM-L6-v2, 2
cores: about 4.7 ms + 0.11 ms per padded token) that is about 40 tokens, so a one-word
query no longer rides in a forward padded to a 256-token document's length and waits for
it; on a GPU, where small forwards cost nearly the same whatever their size, the ratio is
large and nothing changes. Until the forwards seen vary enough in size to fit a line,
nothing is held apart either. A pure object: the caller passes each forward's size and time.
"""

from __future__ import annotations

# Weight left to older forwards at each new one (about the last 20 count).
FORGET = 0.95
# Forwards seen before the fit is trusted.
MIN_FORWARDS = 4
# The sizes seen must spread this much (their standard deviation over their mean) for a
# line through them to mean anything.
MIN_SPREAD = 0.25
# Never hold apart rows whose padding costs less than this many tokens (a noisy fit near a
# zero fixed cost would otherwise batch only equal lengths).
MIN_ALLOWANCE = 8.0


class ForwardCost:
    def __init__(self) -> None:
        self._n = self._x = self._y = self._xx = self._xy = 0.0
        self.forwards = 0
        # A forward's fixed cost from the newest fit, kept while the sizes seen stop varying
        # (steady traffic in batches of one size): the model's fixed cost has not changed.
        self.fixed_seconds: float | None = None

    def observe(self, padded_tokens: int, seconds: float) -> None:
        """One forward of `padded_tokens` took `seconds`."""
        if padded_tokens <= 0 or seconds <= 0:
            return
        x, y = float(padded_tokens), seconds
        self._n = FORGET * self._n + 1
        self._x = FORGET * self._x + x
        self._y = FORGET * self._y + y
        self._xx = FORGET * self._xx + x * x
        self._xy = FORGET * self._xy + x * y
        self.forwards += 1
        fitted = self.fit()
        if fitted is not None:
            self.fixed_seconds = fitted[0]

    def fit(self) -> tuple[float, float] | None:
        """(fixed seconds, seconds per padded token), or None while the forwards seen cannot tell."""
        if self.forwards < MIN_FORWARDS:
            return None
        mean_x, mean_y = self._x / self._n, self._y / self._n
        variance = self._xx / self._n - mean_x * mean_x
        if variance <= (MIN_SPREAD * mean_x) ** 2:
            return None
        per_token = (self._xy / self._n - mean_x * mean_y) / variance
        if per_token <= 0:
            return None
        return max(0.0, mean_y - per_token * mean_x), per_token

    def padding_allowance(self) -> float | None:
        """Padded tokens that cost as much as a forward's fixed cost; None: no limit."""
        fitted = self.fit()
        if fitted is None:
            return None
        fixed, per_token = fitted
        return max(MIN_ALLOWANCE, fixed / per_token)
