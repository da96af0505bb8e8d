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
    code: str | None = None
    param: str | None = None
    method: str = "POST"
    path: str = "/v1/embeddings"
    body: Any = None  # JSON-encoded unless bytes
    headers: dict[str, str] | None = None
    error_type: str = "invalid_request_error"


def _emb(**fields: Any) -> dict[str, Any]:
    return {"model": MINILM, "input": "hello"} | fields


CASES = [
    Case("no-key", 401, headers={}, body=_emb()),
    Case("wrong-key", 401, "invalid_api_key", headers={"Authorization": "Bearer sk-wrong"}, body=_emb()),
    Case("not-bearer", 401, headers={"Authorization": f"Basic {TEST_KEY}"}, body=_emb()),
    Case("unknown-route", 404, method="GET", path="/v1/nothing-here"),
    Case("wrong-method", 405, method="GET"),
    Case("body-too-large", 413, body=_emb(input="x" * (MAX_BODY + 10))),
    Case("not-json", 400, body=b"{not json"),
    Case("not-an-object", 400, body=[1, 2]),
    Case("missing-model", 400, param="model", body={"input": "hi"}),
    Case("missing-input", 400, param="input", body={"model": MINILM}),
    Case("model-not-a-string", 400, param="model", body=_emb(model=7)),
    Case("unknown-model", 404, "model_not_found", "model", body=_emb(model="text-embedding-3-small")),
    Case("unknown-model-get", 404, "model_not_found", "model", method="GET", path="/v1/models/nope"),
    Case("empty-string", 400, param="input", body=_emb(input="")),
    Case("empty-array", 400, param="input", body=_emb(input=[])),
    Case("too-many-inputs", 400, param="input", body=_emb(input=["a"] * 2049)),
    Case("empty-string-in-array", 400, param="input", body=_emb(input=["a", ""])),
    Case("mixed-array", 400, param="input", body=_emb(input=["a", 1])),
    Case("input-object", 400, param="input", body=_emb(input={"text": "a"})),
    Case("empty-token-array", 400, param="input", body=_emb(input=[[1, 2], []])),
    Case("token-id-too-large", 400, param="input", body=_emb(input=[[1, 200_000]])),
    Case("token-id-in-gap", 400, param="input", body=_emb(input=[100_261])),
    Case("token-id-negative", 400, param="input", body=_emb(input=[5, -1])),
    Case("token-id-bool", 400, param="input", body=_emb(input=[[True, 5]])),
    Case("token-id-float", 400, param="input", body=_emb(input=[1.5, 2])),
    Case("bad-encoding-format", 400, param="encoding_format", body=_emb(encoding_format="int8")),
    Case("dimensions-zero", 400, param="dimensions", body=_emb(dimensions=0)),
    Case("dimensions-too-large", 400, param="dimensions", body=_emb(dimensions=385)),
    Case("dimensions-not-int", 400, param="dimensions", body=_emb(dimensions="64")),
    Case("instruction-not-string", 400, param="instruction", body=_emb(instruction=3)),
    Case(
        "context-length-exceeded",
        400,
        "context_length_exceeded",
        "input",
        body=_emb(model=STRICT, input=["short", LONG_TEXT]),
    ),
    Case(
        "request-tokens-over-limit-text",
        400,
        param="input",
        body=_emb(input=[LONG_TEXT] * 30),
    ),
    Case(
        "request-tokens-over-limit-ids",
        400,
        param="input",
        body=_emb(input=[CL100K.encode(LONG_TEXT)] * 30),
    ),
    Case("internal-error", 500, body=_emb(model=BROKEN), error_type="server_error"),
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
    assert isinstance(error["message"], str) and error["message"]
    assert error["type"] == case.error_type
    assert error["code"] == case.code
    if case.param is not None:
        assert error["param"] == case.param
    assert SECRET_DETAIL not in response.text and "Traceback" not in response.text
    if case.status == 500:
        # The details are in the log, with the request id the client can quote.
        failure = [r for r in caplog.records if r.exc_info and SECRET_DETAIL in str(r.exc_info[1])]
        assert failure, "the 500's cause was not logged"
        request_id = response.headers["x-request-id"]
        assert len(request_id) >= 16 and request_id in failure[0].getMessage()
    _still_serves(gateway)


def test_context_length_message_is_openais(gateway: Gateway) -> None:
    response = _send(gateway, Case("ctx", 400, body=_emb(model=STRICT, input=LONG_TEXT)))
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
