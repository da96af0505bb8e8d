"""The request body -> EmbeddingRequest, with OpenAI's messages for what is wrong."""

from __future__ import annotations

import asyncio
import re

import msgspec

from app.api.encoding import FORMATS
from app.api.json_nesting import MAX_JSON_DEPTH, nests_deeper_than
from app.api.schemas import EmbeddingRequest
from app.errors import InvalidRequestError

_PARAM = re.compile(r"at `\$\.([A-Za-z_]+)")
_decoder = msgspec.json.Decoder(EmbeddingRequest)

NOT_JSON = (
    "We could not parse the JSON body of your request. (HINT: This likely means you aren't using "
    "your HTTP library correctly. The OpenAI API expects a JSON payload, but what was sent was not "
    "valid JSON.)"
)

TOO_DEEP = (
    f"We could not parse the JSON body of your request: its arrays and objects nest more than "
    f"{MAX_JSON_DEPTH} levels deep."
)


def _not_utf8(body: bytes) -> str:
    """Where the body stops being UTF-8 (msgspec's error gives the offset in a string only)."""
    try:
        body.decode("utf-8")
    except UnicodeDecodeError as exc:
        return f" at byte {exc.start}"
    return ""  # only reached if msgspec and Python ever disagreed on what UTF-8 is


# Bodies larger than this are decoded on a worker thread: a 14 MiB body takes tens of
# milliseconds to check and decode, which on the event loop every other request would wait
# for. Smaller ones (nearly all) are decoded in place, with no thread hop.
INLINE_BODY_BYTES = 1 << 20


async def parse_embedding_body(body: bytes) -> EmbeddingRequest:
    """`parse_embedding_request`, off the event loop for a large body."""
    if len(body) <= INLINE_BODY_BYTES:
        return parse_embedding_request(body)
    return await asyncio.to_thread(parse_embedding_request, body)


def parse_embedding_request(body: bytes) -> EmbeddingRequest:
    if nests_deeper_than(body, MAX_JSON_DEPTH):
        raise InvalidRequestError(TOO_DEEP)
    try:
        request = _decoder.decode(body)
    except UnicodeDecodeError:
        # The strings the gateway reads must be UTF-8 (msgspec skips unknown fields unread).
        raise InvalidRequestError(
            f"We could not parse the JSON body of your request: it is not valid UTF-8{_not_utf8(body)}. "
            "The OpenAI API expects a JSON payload encoded as UTF-8."
        ) from None
    except msgspec.ValidationError as exc:
        found = _PARAM.search(str(exc))
        raise InvalidRequestError(
            f"Invalid request: {exc}", param=found.group(1) if found else None
        ) from None
    except msgspec.DecodeError:
        raise InvalidRequestError(NOT_JSON) from None
    if request.model is msgspec.UNSET:
        raise InvalidRequestError("you must provide a model parameter", param="model")
    if request.input is msgspec.UNSET:
        raise InvalidRequestError("'input' is a required property", param="input")
    if request.encoding_format not in FORMATS:
        raise InvalidRequestError(
            f"'{request.encoding_format}' is not one of ['float', 'base64'] - 'encoding_format'",
            param="encoding_format",
        )
    return request
