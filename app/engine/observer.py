"""What the engine reports about its own work, for metrics; the engine never imports them.

The HTTP layer passes an implementation (Prometheus, in app.api.metrics) to the engine;
the default does nothing.
"""

from __future__ import annotations

from typing import Protocol


class EngineObserver(Protocol):
    def on_batch(self, model: str, size: int, padded_tokens: int, seconds: float) -> None:
        """One forward pass ran: `size` rows, `padded_tokens` = longest x size, in `seconds`."""
        ...

    def on_queue_depth(self, model: str, requests: int, tokens: int) -> None:
        """The model's queue now holds `requests` requests totalling `tokens` tokens."""
        ...

    def on_cache(self, model: str, hits: int, misses: int) -> None:
        """A request's rows were looked up in the embedding cache."""
        ...

    def on_batching_costs(
        self, model: str, fixed_seconds: float | None, return_seconds: float | None
    ) -> None:
        """What the engine decides a busy worker's next batch by (app.engine.pipelining): a
        forward's fitted fixed cost, and how long an interactive request takes to come back
        after its batch is answered; None while not known."""
        ...


class NullObserver:
    def on_batch(self, model: str, size: int, padded_tokens: int, seconds: float) -> None:
        pass

    def on_queue_depth(self, model: str, requests: int, tokens: int) -> None:
        pass

    def on_cache(self, model: str, hits: int, misses: int) -> None:
        pass

    def on_batching_costs(
        self, model: str, fixed_seconds: float | None, return_seconds: float | None
    ) -> None:
        pass
