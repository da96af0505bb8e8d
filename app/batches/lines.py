"""One batch input line in, one output or error line out, in OpenAI's batch formats.

Input:  {"custom_id": "...", "method": "POST", "url": "/v1/embeddings", "body": {...}}
Output: {"id": "batch_req_...", "custom_id": "...",
         "response": {"status_code": 200, "request_id": "...", "body": {...}}, "error": null}
A request the endpoint refused goes to the error file with its status and OpenAI's error
body as `response`; a line that is not a request at all (not JSON, no custom_id, another
URL) goes there with `response: null` and `error: {"code", "message"}`.
"""

from __future__ import annotations

import asyncio
import logging
import time
import uuid
from dataclasses import dataclass
from typing import IO, Any, Protocol

import msgspec
import numpy as np
import numpy.typing as npt

from app.api.access import require_model
from app.api.encoding import encode_vectors
from app.api.parsing import parse_embedding_request
from app.api.schemas import Embedding, EmbeddingResponse, ErrorBody, ErrorResponse, Usage
from app.auth.keys import KeyIdentity
from app.engine.batcher import Priority
from app.errors import GatewayError, InternalServerError, OverloadedError

logger = logging.getLogger(__name__)

EMBEDDINGS = "/v1/embeddings"


class EmbedResult(Protocol):
    @property
    def vectors(self) -> npt.NDArray[np.float32]: ...
    @property
    def prompt_tokens(self) -> int: ...


class Embedder(Protocol):
    """What the runner needs of the engine (app.engine.engine.EmbeddingEngine)."""

    async def embed(
        self,
        model: str,
        raw_input: object,
        *,
        instruction: str | None = None,
        dimensions: int | None = None,
        request_id: str = "-",
        priority: Priority = "interactive",
    ) -> EmbedResult: ...


class _Line(msgspec.Struct, kw_only=True):
    custom_id: Any = None
    method: Any = None
    url: Any = None
    body: Any = None


_line_decoder = msgspec.json.Decoder(_Line)


@dataclass
class ParsedLine:
    custom_id: str | None
    body: bytes | None  # the request body, re-encoded, for the endpoint's own parser
    problem: tuple[str, str] | None  # (code, message) when the line is no request
    inputs: int = 1  # how many inputs it asks for, to size chunks


def parse_line(raw: bytes) -> ParsedLine:
    try:
        line = _line_decoder.decode(raw)
    except (msgspec.DecodeError, msgspec.ValidationError):
        return ParsedLine(None, None, ("invalid_json", "This line is not a JSON object."))
    custom_id = line.custom_id if isinstance(line.custom_id, str) and line.custom_id else None
    if custom_id is None:
        return ParsedLine(None, None, ("missing_custom_id", "Each line needs a non-empty string custom_id."))
    if line.method != "POST":
        return ParsedLine(custom_id, None, ("invalid_method", "The method must be POST."))
    if line.url != EMBEDDINGS:
        return ParsedLine(
            custom_id, None, ("invalid_url", f"The url must be {EMBEDDINGS}, the batch's endpoint.")
        )
    if not isinstance(line.body, dict):
        return ParsedLine(custom_id, None, ("invalid_body", "The body must be a JSON object."))
    raw_input = line.body.get("input")
    inputs = len(raw_input) if isinstance(raw_input, list) and raw_input and not _is_int(raw_input[0]) else 1
    return ParsedLine(custom_id, msgspec.json.encode(line.body), None, max(1, inputs))


def read_chunk(src: IO[bytes], max_inputs: int) -> tuple[list[ParsedLine], int]:
    """Lines up to `max_inputs` inputs (at least one line); blank lines are skipped."""
    chunk: list[ParsedLine] = []
    consumed = inputs = 0
    while inputs < max_inputs:
        raw = src.readline()
        if not raw:
            break
        consumed += len(raw)
        if not raw.strip():
            continue
        parsed = parse_line(raw)
        chunk.append(parsed)
        inputs += parsed.inputs
    return chunk, consumed


def _is_int(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


@dataclass
class LineResult:
    line: bytes  # the output line, newline included
    ok: bool
    tokens: int = 0


def problem_line(custom_id: str | None, code: str, message: str) -> LineResult:
    return LineResult(_encode(custom_id, None, {"code": code, "message": message}), ok=False)


# A line the engine refuses as overloaded (or still loading) is tried again for this long.
RETRY_OVERLOADED_SECONDS = 60.0


async def run_line(
    parsed: ParsedLine, key: KeyIdentity, engine: Embedder, priority: Priority = "interactive"
) -> LineResult:
    """Run one request line through the embeddings endpoint's own parsing and the engine;
    a 503 from the engine (overloaded, model loading) is waited out, not written down."""
    deadline = time.monotonic() + RETRY_OVERLOADED_SECONDS
    while True:
        result = await _run_line(parsed, key, engine, priority)
        if result is not None or time.monotonic() > deadline:
            return result or _error_response(
                parsed.custom_id, "-", OverloadedError("The engine stayed busy.")
            )
        await asyncio.sleep(0.5)


async def _run_line(
    parsed: ParsedLine, key: KeyIdentity, engine: Embedder, priority: Priority
) -> LineResult | None:
    if parsed.problem is not None:
        return problem_line(parsed.custom_id, *parsed.problem)
    assert parsed.body is not None
    request_id = "req_" + uuid.uuid4().hex
    try:
        body = parse_embedding_request(parsed.body)
        assert isinstance(body.model, str)
        require_model(key, body.model)
        result = await engine.embed(
            body.model,
            body.input,
            instruction=body.instruction,
            dimensions=body.dimensions,
            request_id=request_id,
            priority=priority,
        )
    except OverloadedError:
        return None
    except GatewayError as exc:
        return _error_response(parsed.custom_id, request_id, exc)
    except Exception:
        logger.exception("batch request %s failed with an unexpected error", request_id)
        return _error_response(parsed.custom_id, request_id, InternalServerError())
    vectors = encode_vectors(result.vectors, body.encoding_format)
    response = EmbeddingResponse(
        data=[Embedding(index=i, embedding=v) for i, v in enumerate(vectors)],
        model=body.model,
        usage=Usage(prompt_tokens=result.prompt_tokens, total_tokens=result.prompt_tokens),
    )
    wrapped = {"status_code": 200, "request_id": request_id, "body": response}
    return LineResult(_encode(parsed.custom_id, wrapped, None), ok=True, tokens=result.prompt_tokens)


def _error_response(custom_id: str | None, request_id: str, exc: GatewayError) -> LineResult:
    body = ErrorResponse(
        error=ErrorBody(message=exc.message, type=exc.error_type, param=exc.param, code=exc.code)
    )
    wrapped = {"status_code": exc.status_code, "request_id": request_id, "body": body}
    return LineResult(_encode(custom_id, wrapped, None), ok=False)


def _encode(custom_id: str | None, response: object, error: object) -> bytes:
    line = {
        "id": "batch_req_" + uuid.uuid4().hex,
        "custom_id": custom_id,
        "response": response,
        "error": error,
    }
    return msgspec.json.encode(line) + b"\n"
