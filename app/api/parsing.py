"""The request body -> EmbeddingRequest, with OpenAI's messages for what is wrong."""

from __future__ import annotations

import re

import msgspec

from app.api.encoding import FORMATS
from app.api.schemas import EmbeddingRequest
from app.errors import InvalidRequestError

_PARAM = re.compile(r"at `\$\.([A-Za-z_]+)")
_decoder = msgspec.json.Decoder(EmbeddingRequest)

NOT_JSON = (
    "We could not parse the JSON body of your request. (HINT: This likely means you aren't using "
    "your HTTP library correctly. The OpenAI API expects a JSON payload, but what was sent was not "
    "valid JSON.)"
)


def parse_embedding_request(body: bytes) -> EmbeddingRequest:
    try:
        request = _decoder.decode(body)
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
