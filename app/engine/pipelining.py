"""Whether a worker gets its next batch while it runs, or the queue holds it for the clients
of the batch in the worker.

With many clients in lock-step, requests queue while a batch runs. Sent on into the worker's
pipe (app.engine.workers.process), the n queued start the moment the m in flight are done,
and the two groups keep alternating: two forwards, 2a + (n + m) b, for n + m requests (a: a
forward's fixed cost, b: its cost per row). Held until the m are back, both run in one
forward, and from then on the worker idles while all n + m come back, (n + m) r (r: the time
one request takes to come back): a + (n + m)(b + r). Holding pays iff (n + m) r <= a, and
only if the wait for the m fits in the longest a batch may wait for company.

Measured: an H200 with CUDA graphs (a = 7.8 ms) served 32 lock-step clients at 0.82 of the
batched limit with every such batch sent on, 0.87 with none; the stand-in on two cores
(bench/standin.py; a = 19 ms, r = 0.54 ms) serves them about 9% faster sending on, since 16
returning clients take 8.7 ms there, more than the 5 ms a batch waits by default; a heavier
stand-in (a = 40 ms, 20 ms batch wait) serves them 7 to 16% faster holding (bench/README.md).
"""

from __future__ import annotations

from dataclasses import dataclass

# The newest sample's weight in the average return time (about the last ten batches count).
RETURN_WEIGHT = 0.2
# A batch's clients count as back within this long at most: a lull is not a round trip.
MAX_RETURN_SECONDS = 0.25


def merging_pays(
    fixed: float | None, per_request: float | None, queued: int, coming: int, max_wait: float
) -> bool:
    """Whether `queued` requests are better held for the `coming` clients of the lane's batch
    in flight (or just answered) and run with them in one forward: `fixed` is a forward's
    fixed cost, `per_request` how long one request takes to come back (ReturnTime), and the
    wait must fit in `max_wait`, the longest a batch waits for company. Unknown costs: no."""
    if fixed is None or per_request is None or coming <= 0:
        return False
    return per_request * coming <= max_wait and per_request * (queued + coming) <= fixed


@dataclass
class ReturnTime:
    """How soon a lane's requests come back after its batches are answered: the time until as
    many new requests as a batch served have arrived (its clients coming back, or others),
    over their number; a moving average, None until seen."""

    per_request: float | None = None
    # The newest batch answered: when, how many requests it served, how many have come since.
    _answered_at: float = 0.0
    _answered: int = 0
    _arrived: int = 0

    @property
    def coming(self) -> int:
        """Requests still to come for the newest batch answered to be made up."""
        return self._answered - self._arrived

    def answered(self, now: float, requests: int) -> None:
        """A batch serving `requests` requests was answered at `now`."""
        if self.coming > 0:  # the one before: not all back yet, so at least this long
            self._sample(now - self._answered_at)
        self._answered_at, self._answered, self._arrived = now, requests, 0

    def arrival(self, now: float) -> None:
        """A new request came at `now`."""
        if self.coming > 0:
            self._arrived += 1
            if self.coming == 0:
                self._sample(now - self._answered_at)

    def _sample(self, seconds: float) -> None:
        sample = min(seconds, MAX_RETURN_SECONDS) / self._answered
        old = self.per_request
        self.per_request = sample if old is None else old + RETURN_WEIGHT * (sample - old)
