"""Where a request body is decoded: a small one on the event loop (no thread hop), a large
one on a worker thread, so that decoding it never holds the loop from other requests."""

from __future__ import annotations

import asyncio
import threading

import msgspec
import pytest

from app.api import parsing
from app.api.parsing import INLINE_BODY_BYTES, parse_embedding_body


@pytest.mark.parametrize(("padding", "on_loop"), [(0, True), (INLINE_BODY_BYTES, False)])
def test_only_a_large_body_is_decoded_off_the_event_loop(
    monkeypatch: pytest.MonkeyPatch, padding: int, on_loop: bool
) -> None:
    threads: list[int] = []
    real = parsing.parse_embedding_request

    def recording(body: bytes) -> parsing.EmbeddingRequest:
        threads.append(threading.get_ident())
        return real(body)

    monkeypatch.setattr(parsing, "parse_embedding_request", recording)
    body = msgspec.json.encode({"model": "m", "input": "hi"}) + b" " * padding

    async def decode() -> tuple[parsing.EmbeddingRequest, int]:
        return await parse_embedding_body(body), threading.get_ident()

    request, loop_thread = asyncio.run(decode())
    assert (request.model, request.input) == ("m", "hi")
    assert (threads == [loop_thread]) is on_loop and len(threads) == 1
