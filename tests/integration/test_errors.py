"""Every error a client can cause: OpenAI's envelope, the right status and code, and the
server keeps serving afterwards."""

from __future__ import annotations

import json
import logging
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import httpx
import msgspec
import pytest
import tiktoken

from app.config import ApiSettings, ServerSettings
from tests.conftest import MINILM, TEST_KEY, settings_with
from tests.fake_backend import FakeLoader
from tests.serving import Gateway, run_gateway

MAX_BODY = 200_000
MAX_REQUEST_TOKENS = 1000
STRICT = "minilm-strict"  # max_length 16, on_overflow = "error"
BROKEN = "broken"  # its forward pass always raises
SECRET_DETAIL = "device-side assert at /opt/weights/secret"


@pytest.fixture(scope="module")
def gateway(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Gateway]:
    base = settings_with().models[0]
    settings = settings_with(
        server=ServerSettings(max_body_bytes=MAX_BODY),
        api=ApiSettings(max_request_tokens=MAX_REQUEST_TOKENS),
        models=[
            base,
            msgspec.structs.replace(base, name=STRICT, max_length=16, on_overflow="error"),
            msgspec.structs.replace(base, name=BROKEN),
        ],
    )
    loader = FakeLoader(str(tmp_path_factory.mktemp("controls")))
    with run_gateway(settings, key=TEST_KEY, loader=loader) as gw:
        # From now on its forward pass fails, as after a CUDA fault.
        loader.controls(BROKEN).set("fail", SECRET_DETAIL)
        yield gw


AUTH = {"Authorization": f"Bearer {TEST_KEY}"}
LONG_TEXT = " ".join(["word"] * 40)
CL100K = tiktoken.get_encoding("cl100k_base")


@dataclass(frozen=True)
class Case:
    id: str
    status: int
    message: str  # exact
    code: str | None = None
    param: str | None = None
    method: str = "POST"
    path: str = "/v1/embeddings"
    body: Any = None  # JSON-encoded unless bytes
    headers: dict[str, str] | None = None
    error_type: str = "invalid_request_error"


def _emb(**fields: Any) -> dict[str, Any]:
    return {"model": MINILM, "input": "hello"} | fields


def _bad_input(why: str) -> str:
    return f"'$.input' is invalid: {why}. Please check the API reference: https://platform.openai.com/docs/api-reference."


NO_KEY = (
    "You didn't provide an API key. You need to provide your API key in an Authorization header "
    "using Bearer auth (i.e. Authorization: Bearer YOUR_KEY)."
)
NOT_JSON = (
    "We could not parse the JSON body of your request. (HINT: This likely means you aren't using "
    "your HTTP library correctly. The OpenAI API expects a JSON payload, but what was sent was "
    "not valid JSON.)"
)
NOT_FOUND = "The model `{}` does not exist or you do not have access to it."
SHAPES = "expected a string, an array of strings, or an array of token arrays"
TOKEN_ARRAYS = "each token array must be a non-empty array of integers"
TOKEN_RANGE = "Invalid token id {} in '$.input': token ids must be between 0 and 100276."
DIMENSIONS = "Invalid value for 'dimensions' = {}: this model supports from 1 to 384 dimensions."

CASES = [
    Case("no-key", 401, NO_KEY, headers={}, body=_emb()),
    Case(
        "wrong-key",
        401,
        "Incorrect API key provided. Ask the gateway's operator for a valid key.",
        "invalid_api_key",
        headers={"Authorization": "Bearer sk-wrong"},
        body=_emb(),
    ),
    Case("not-bearer", 401, NO_KEY, headers={"Authorization": f"Basic {TEST_KEY}"}, body=_emb()),
    Case("unknown-route", 404, "Invalid URL (GET /v1/nothing-here)", method="GET", path="/v1/nothing-here"),
    Case("wrong-method", 405, "Invalid method for URL (GET /v1/embeddings)", method="GET"),
    Case("body-too-large", 413, "The request body is too large.", body=_emb(input="x" * (MAX_BODY + 10))),
    Case("not-json", 400, NOT_JSON, body=b"{not json"),
    Case("not-an-object", 400, "Invalid request: Expected `object`, got `array`", body=[1, 2]),
    Case("missing-model", 400, "you must provide a model parameter", param="model", body={"input": "hi"}),
    Case("missing-input", 400, "'input' is a required property", param="input", body={"model": MINILM}),
    Case(
        "model-not-a-string",
        400,
        "Invalid request: Expected `str`, got `int` - at `$.model`",
        param="model",
        body=_emb(model=7),
    ),
    Case(
        "unknown-model",
        404,
        NOT_FOUND.format("text-embedding-3-small"),
        "model_not_found",
        "model",
        body=_emb(model="text-embedding-3-small"),
    ),
    Case(
        "unknown-model-get",
        404,
        NOT_FOUND.format("nope"),
        "model_not_found",
        "model",
        method="GET",
        path="/v1/models/nope",
    ),
    Case(
        "empty-string", 400, _bad_input("it must not be an empty string"), param="input", body=_emb(input="")
    ),
    Case(
        "empty-array",
        400,
        _bad_input("the array must contain at least 1 item"),
        param="input",
        body=_emb(input=[]),
    ),
    Case(
        "too-many-inputs",
        400,
        _bad_input("the array must contain at most 2048 items, not 2049"),
        param="input",
        body=_emb(input=["a"] * 2049),
    ),
    Case(
        "empty-string-in-array",
        400,
        _bad_input("it must not contain an empty string"),
        param="input",
        body=_emb(input=["a", ""]),
    ),
    Case("mixed-array", 400, _bad_input(SHAPES), param="input", body=_emb(input=["a", 1])),
    Case("input-object", 400, _bad_input(SHAPES), param="input", body=_emb(input={"text": "a"})),
    Case("empty-token-array", 400, _bad_input(TOKEN_ARRAYS), param="input", body=_emb(input=[[1, 2], []])),
    Case(
        "token-id-too-large", 400, TOKEN_RANGE.format(200000), param="input", body=_emb(input=[[1, 200_000]])
    ),
    Case("token-id-in-gap", 400, TOKEN_RANGE.format(100261), param="input", body=_emb(input=[100_261])),
    Case("token-id-negative", 400, TOKEN_RANGE.format(-1), param="input", body=_emb(input=[5, -1])),
    Case("token-id-bool", 400, _bad_input(TOKEN_ARRAYS), param="input", body=_emb(input=[[True, 5]])),
    Case("token-id-float", 400, _bad_input(SHAPES), param="input", body=_emb(input=[1.5, 2])),
    Case(
        "bad-encoding-format",
        400,
        "'int8' is not one of ['float', 'base64'] - 'encoding_format'",
        param="encoding_format",
        body=_emb(encoding_format="int8"),
    ),
    Case("dimensions-zero", 400, DIMENSIONS.format(0), param="dimensions", body=_emb(dimensions=0)),
    Case("dimensions-too-large", 400, DIMENSIONS.format(385), param="dimensions", body=_emb(dimensions=385)),
    Case(
        "dimensions-not-int",
        400,
        "Invalid request: Expected `int | null`, got `str` - at `$.dimensions`",
        param="dimensions",
        body=_emb(dimensions="64"),
    ),
    Case(
        "instruction-not-string",
        400,
        "Invalid request: Expected `str | null`, got `int` - at `$.instruction`",
        param="instruction",
        body=_emb(instruction=3),
    ),
    Case(
        "context-length-exceeded",
        400,
        "This model's maximum context length is 16 tokens, however you requested 42 tokens "
        "(42 in your prompt; 0 for the completion). Please reduce your prompt; or completion length.",
        "context_length_exceeded",
        "input",
        body=_emb(model=STRICT, input=["short", LONG_TEXT]),
    ),
    Case(
        "request-tokens-over-limit-text",
        400,
        "Requested 1260 tokens, max 1000 tokens per request",
        param="input",
        body=_emb(input=[LONG_TEXT] * 30),
    ),
    Case(
        "request-tokens-over-limit-ids",
        400,
        "Requested 1200 tokens, max 1000 tokens per request",
        param="input",
        body=_emb(input=[CL100K.encode(LONG_TEXT)] * 30),
    ),
    Case(
        "internal-error",
        500,
        "The server had an error while processing your request. Sorry about that!",
        body=_emb(model=BROKEN),
        error_type="server_error",
    ),
]

ERROR_SCHEMA_KEYS = {"message", "type", "param", "code"}


def _send(gateway: Gateway, case: Case) -> httpx.Response:
    headers = AUTH if case.headers is None else case.headers
    content = case.body if isinstance(case.body, bytes) else None
    return httpx.request(
        case.method,
        gateway.url + case.path,
        headers={"Content-Type": "application/json", **headers},
        content=content
        if content is not None
        else (json.dumps(case.body) if case.body is not None else None),
        timeout=60,
    )


def _still_serves(gateway: Gateway) -> None:
    ok = httpx.post(
        f"{gateway.v1}/embeddings", headers=AUTH, json=_emb(input=["still", "serving"]), timeout=60
    )
    assert ok.status_code == 200, ok.text
    assert len(ok.json()["data"]) == 2


@pytest.mark.parametrize("case", CASES, ids=[c.id for c in CASES])
def test_error_envelope(gateway: Gateway, case: Case, caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.INFO):
        response = _send(gateway, case)
    assert response.status_code == case.status, response.text
    assert response.headers["content-type"].startswith("application/json")
    body = response.json()
    assert set(body) == {"error"}
    error = body["error"]
    assert set(error) == ERROR_SCHEMA_KEYS
    assert error == {
        "message": case.message,
        "type": case.error_type,
        "param": case.param,
        "code": case.code,
    }
    assert SECRET_DETAIL not in response.text and "Traceback" not in response.text
    if case.status == 500:
        # The details are in the log, with the request id the client can quote.
        failure = [r for r in caplog.records if r.exc_info and SECRET_DETAIL in str(r.exc_info[1])]
        assert failure, "the 500's cause was not logged"
        request_id = response.headers["x-request-id"]
        assert len(request_id) >= 16 and request_id in failure[0].getMessage()
    _still_serves(gateway)


def test_context_length_message_is_openais(gateway: Gateway) -> None:
    response = _send(gateway, Case("ctx", 400, "", body=_emb(model=STRICT, input=LONG_TEXT)))
    message = response.json()["error"]["message"]
    assert message.startswith(
        "This model's maximum context length is 16 tokens, however you requested 42 tokens"
    )


def test_truncation_is_the_default(gateway: Gateway) -> None:
    response = httpx.post(
        f"{gateway.v1}/embeddings", headers=AUTH, json=_emb(input=" ".join(["word"] * 400)), timeout=60
    )
    assert response.status_code == 200
    assert response.json()["usage"]["prompt_tokens"] == 256  # MiniLM's max_length in the default config


def test_unknown_fields_and_user_are_accepted(gateway: Gateway) -> None:
    response = httpx.post(
        f"{gateway.v1}/embeddings",
        headers=AUTH,
        json=_emb(user="u-1", some_future_field={"x": 1}),
        timeout=60,
    )
    assert response.status_code == 200, response.text
