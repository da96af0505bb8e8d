"""Malformed bodies, whatever their bytes: never a 5xx, every 4xx in OpenAI's envelope, and
the server keeps serving. Through a real server on loopback with the real MiniLM model.

The issue's explicit cases (invalid UTF-8 in each field the gateway reads, deep nesting)
have exact expectations; then hypothesis generates bodies (valid ones, then mutated at the
byte level: invalid UTF-8 inserted, bytes replaced, cut, duplicated, deep nesting spliced in)."""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any

import httpx
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from app.api.json_nesting import MAX_JSON_DEPTH
from app.api.parsing import INLINE_BODY_BYTES
from app.config import LimitsSettings
from tests.cheap_forward import cheap_loader
from tests.conftest import MINILM, TEST_KEY, settings_with
from tests.serving import Gateway, run_gateway

AUTH = {"Authorization": f"Bearer {TEST_KEY}", "Content-Type": "application/json"}
MIN_GENERATED = 500

# A raw 0xff; a truncated euro sign; an overlong '/'; a CESU-8 surrogate; latin-1 'é'.
INVALID_UTF8 = [b"\xff", b"\xe2\x82", b"\xc0\xaf", b"\xed\xa0\x80", b"\xe9"]
STRING_FIELDS = ["input", "model", "user", "instruction", "encoding_format"]


@pytest.fixture(scope="module")
def gateway() -> Iterator[Gateway]:
    # A forward pass that costs nothing (what is fuzzed is everything before the model), and
    # no rate limits, so that hundreds of requests in a few seconds meet no rate limit.
    settings = settings_with(limits=LimitsSettings(rpm=0, tpm=0))
    with run_gateway(settings, key=TEST_KEY, loader=cheap_loader) as gw:
        yield gw


@pytest.fixture(scope="module")
def client(gateway: Gateway) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=gateway.v1, headers=AUTH, timeout=60) as c:
        yield c


def _check_envelope(response: httpx.Response) -> dict[str, Any]:
    assert response.status_code < 500, response.text
    assert response.headers["content-type"].startswith("application/json"), response.text
    body: dict[str, Any] = response.json()
    if response.status_code >= 400:
        assert set(body) == {"error"}, body
        error = body["error"]
        assert set(error) == {"message", "type", "param", "code"}, error
        assert isinstance(error["message"], str) and error["message"]
        assert isinstance(error["type"], str) and error["type"]
        assert error["param"] is None or isinstance(error["param"], str)
        assert error["code"] is None or isinstance(error["code"], str)
        return dict(error)
    assert response.status_code == 200
    assert body["object"] == "list" and body["data"]
    return {}


def _still_serves(client: httpx.Client) -> None:
    response = client.post("/embeddings", json={"model": MINILM, "input": ["still", "serving"]})
    assert response.status_code == 200, response.text
    assert len(response.json()["data"]) == 2


def _body_with(field: str, raw: bytes) -> bytes:
    """A valid body whose `field` is a string with `raw` bytes in its middle."""
    values = {"input": "hello", "model": MINILM, "user": "u-1", "instruction": "Retrieve:"}
    values["encoding_format"] = "float"
    values[field] = "@@"
    return json.dumps(values).encode().replace(b"@@", b"ab" + raw + b"cd")


@pytest.mark.parametrize("field", STRING_FIELDS)
@pytest.mark.parametrize("raw", INVALID_UTF8, ids=lambda raw: raw.hex())
def test_invalid_utf8_in_any_field_is_a_400_naming_it(client: httpx.Client, field: str, raw: bytes) -> None:
    response = client.post("/embeddings", content=_body_with(field, raw))
    assert response.status_code == 400, response.text
    error = _check_envelope(response)
    assert error["type"] == "invalid_request_error" and error["code"] is None
    assert "not valid UTF-8 at byte " in error["message"]
    _still_serves(client)


def _nested(depth: int, opener: bytes = b"[", closer: bytes = b"]") -> bytes:
    return opener * depth + b"1" + closer * depth


DEEP_CASES = {
    "input-1000": b'{"model": "%s", "input": %s}' % (MINILM.encode(), _nested(1000)),
    "input-100000": b'{"model": "%s", "input": %s}' % (MINILM.encode(), _nested(100_000)),
    "unknown-field-1000": b'{"model": "%s", "input": "hi", "extra": %s}' % (MINILM.encode(), _nested(1000)),
    "object-1000": b'{"model": "%s", "input": "hi", "extra": %s}'
    % (MINILM.encode(), b'{"a":' * 1000 + b"1" + b"}" * 1000),
    "unclosed-100000": b'{"model": "%s", "input": ' % MINILM.encode() + b"[" * 100_000,
    "just-past-the-limit": b'{"model": "%s", "input": %s}' % (MINILM.encode(), _nested(MAX_JSON_DEPTH)),
}


@pytest.mark.parametrize("body", DEEP_CASES.values(), ids=DEEP_CASES.keys())
def test_deep_nesting_is_a_400(client: httpx.Client, body: bytes) -> None:
    response = client.post("/embeddings", content=body)
    assert response.status_code == 400, response.text
    error = _check_envelope(response)
    assert error["message"].endswith(f"nest more than {MAX_JSON_DEPTH} levels deep.")
    _still_serves(client)


def test_nesting_within_the_limit_and_brackets_in_strings_are_not_refused(client: httpx.Client) -> None:
    # 64 levels in an unknown field, and a text full of brackets, quotes and backslashes.
    extra = _nested(MAX_JSON_DEPTH - 1)
    text = '[[[{{{ \\" "quoted" \\\\' * 40
    body = b'{"model": "%s", "input": %s, "extra": %s}' % (MINILM.encode(), json.dumps(text).encode(), extra)
    response = client.post("/embeddings", content=body)
    assert response.status_code == 200, response.text


# A body over INLINE_BODY_BYTES is decoded on a thread: the same answer, the same errors.
LARGE_CASES = {
    **{f"utf8-{field}": _body_with(field, b"\xff") for field in STRING_FIELDS},
    **{f"utf8-input-{raw.hex()}": _body_with("input", raw) for raw in INVALID_UTF8[1:]},
    **{f"deep-{name}": body for name, body in DEEP_CASES.items() if "100000" not in name},
    "not-json": b'{"model": "%s", "input": "hi",}' % MINILM.encode(),
    "no-input": b'{"model": "%s"}' % MINILM.encode(),
    "bad-dimensions": b'{"model": "%s", "input": "hi", "dimensions": "x"}' % MINILM.encode(),
    "valid": json.dumps({"model": MINILM, "input": ["one", "two"], "dimensions": 8}).encode(),
}


@pytest.mark.parametrize("body", LARGE_CASES.values(), ids=LARGE_CASES.keys())
def test_a_large_body_gets_the_answer_a_small_one_gets(client: httpx.Client, body: bytes) -> None:
    small = client.post("/embeddings", content=body)
    # Trailing whitespace is valid JSON and changes nothing but the size.
    large = client.post("/embeddings", content=body + b" " * INLINE_BODY_BYTES)
    assert (large.status_code, large.json()) == (small.status_code, small.json())
    _check_envelope(large)


# -- generated bodies ----------------------------------------------------------------------

_texts = st.text(min_size=1, max_size=40)
_ids = st.lists(st.integers(min_value=-5, max_value=120_000), min_size=1, max_size=8)
_json_leaf = st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=10)
_json_value = st.recursive(
    _json_leaf,
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=5), inner, max_size=3),
    max_leaves=10,
)
_request = st.fixed_dictionaries(
    {
        "model": st.sampled_from([MINILM, MINILM, "other-model"]) | st.text(max_size=20),
        "input": _texts | st.lists(_texts, min_size=1, max_size=4) | _ids | st.lists(_ids, max_size=3),
    },
    optional={
        "encoding_format": st.sampled_from(["float", "base64", "int8", ""]),
        "dimensions": st.integers(min_value=-2, max_value=400) | st.none(),
        "user": st.text(max_size=10),
        "instruction": st.text(max_size=20),
        "extra": _json_value,
    },
)


@st.composite
def _serialised(draw: st.DrawFn) -> bytes:
    value: dict[str, Any] = draw(_request)
    # Mostly a JSON object; sometimes something else JSON can be.
    chosen: Any = draw(st.sampled_from([value] * 4 + [[value], value.get("input"), None]))
    return json.dumps(chosen, ensure_ascii=draw(st.booleans())).encode()


@st.composite
def _mutated(draw: st.DrawFn) -> bytes:
    body = bytearray(draw(_serialised()))
    for _ in range(draw(st.integers(min_value=1, max_value=3))):
        at = draw(st.integers(min_value=0, max_value=len(body)))
        kind = draw(st.sampled_from(["utf8", "utf8", "byte", "cut", "duplicate", "nest", "delete"]))
        if kind == "utf8":
            body[at:at] = draw(st.sampled_from(INVALID_UTF8))
        elif kind == "byte":
            body[at : at + 1] = bytes([draw(st.integers(min_value=0, max_value=255))])
        elif kind == "cut":
            del body[at:]
        elif kind == "duplicate":
            body[at:at] = body[at : at + draw(st.integers(min_value=1, max_value=20))]
        elif kind == "delete":
            del body[at : at + draw(st.integers(min_value=1, max_value=5))]
        else:
            # Where a value starts, so a parser would descend into it.
            starts = [i + 1 for i, byte in enumerate(body) if byte in b":[,"] or [0]
            at = draw(st.sampled_from(starts))
            depth = draw(st.sampled_from([MAX_JSON_DEPTH - 2, MAX_JSON_DEPTH + 1, 1000, 5000]))
            opener, closer = draw(st.sampled_from([(b"[", b"]"), (b'{"k":', b"}")]))
            closed = draw(st.booleans())
            body[at:at] = opener * depth + (b"0" + closer * depth if closed else b"")
    return bytes(body)


def test_generated_bodies_get_no_5xx_and_every_4xx_is_the_envelope(client: httpx.Client) -> None:
    sent: list[int] = []

    @settings(
        max_examples=MIN_GENERATED + 100,
        deadline=None,
        database=None,
        suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
    )
    @given(body=_serialised() | _mutated() | _mutated())
    def check(body: bytes) -> None:
        response = client.post("/embeddings", content=body)
        _check_envelope(response)
        sent.append(response.status_code)

    check()
    assert len(sent) >= MIN_GENERATED
    # Both sides were exercised: some generated bodies were served, most were refused.
    assert 200 in sent and 400 in sent, sorted(set(sent))
    _still_serves(client)
