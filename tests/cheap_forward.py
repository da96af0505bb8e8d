"""MiniLM's real tokenizer and limits with a forward pass that costs nothing, for tests of
what happens before the model (HTTP framing, body parsing) that send hundreds of requests:
the shared test backend (tests.fake_backend) with hash vectors of MiniLM's size."""

from __future__ import annotations

import tempfile

from tests.fake_backend import FakeLoader

cheap_loader = FakeLoader(tempfile.mkdtemp(prefix="cheap-forward-"), cheap_forward=True, dimensions=384)
