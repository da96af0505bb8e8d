"""OpenAI's embeddings and models objects as msgspec Structs (the HTTP boundary)."""

from __future__ import annotations

from typing import Any, Literal

import msgspec


class EmbeddingRequest(msgspec.Struct, kw_only=True):
    """Unknown fields are ignored, as OpenAI's servers tolerate SDK extras.

    `input` is typed loosely (msgspec refuses a union of several array types) and is
    validated by the engine with OpenAI's messages.
    """

    input: Any = msgspec.UNSET
    model: str | msgspec.UnsetType = msgspec.UNSET
    encoding_format: str = "float"
    dimensions: int | None = None
    user: str | None = None
    # What `extra_body={"instruction": ...}` sends: overrides the model's instruction.
    instruction: str | None = None


class Embedding(msgspec.Struct, kw_only=True, frozen=True):
    index: int
    embedding: list[float] | str
    object: Literal["embedding"] = "embedding"


class Usage(msgspec.Struct, kw_only=True, frozen=True):
    prompt_tokens: int
    total_tokens: int


class EmbeddingResponse(msgspec.Struct, kw_only=True, frozen=True):
    data: list[Embedding]
    model: str
    usage: Usage
    object: Literal["list"] = "list"


class Model(msgspec.Struct, kw_only=True, frozen=True):
    id: str
    created: int
    owned_by: str
    object: Literal["model"] = "model"


class ModelList(msgspec.Struct, kw_only=True, frozen=True):
    data: list[Model]
    object: Literal["list"] = "list"


class ErrorBody(msgspec.Struct, kw_only=True, frozen=True):
    message: str
    type: str
    param: str | None
    code: str | None


class ErrorResponse(msgspec.Struct, kw_only=True, frozen=True):
    error: ErrorBody
