"""CPU-heavy work the gateway process has in hand right now: tokenizing a request on a
model's tokenizer thread, reading and decoding a large body, encoding a large response.

While any is under way, the model workers' forwards leave the gateway a core
(app.models.torch_runtime.ThreadShare): torch splits each operation across as many
threads as there are cores and waits for the slowest, so on a small CPU host a core taken
by the gateway stalled every operation of a forward (2 cores, all-MiniLM-L6-v2: a small
request's worst latency while 300-text bodies were tokenized fell from 220 ms to 92 ms).
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Iterator

# How long after its last piece of heavy work the gateway still counts as busy: such work
# comes in runs (one request's body, then its turns of tokenization, the next request's
# body), and a forward started in a gap would stall when the next piece begins.
RECENT_S = 0.5


class GatewayLoad:
    """Counted on the event loop; read by the workers' threads as a hint."""

    def __init__(self) -> None:
        self.busy = 0
        self._ended = float("-inf")

    @contextlib.contextmanager
    def working(self) -> Iterator[None]:
        self.busy += 1
        try:
            yield
        finally:
            self.busy -= 1
            self._ended = time.monotonic()

    def recently_busy(self) -> bool:
        return self.busy > 0 or time.monotonic() - self._ended < RECENT_S
