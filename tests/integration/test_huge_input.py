"""Huge inputs: cut before tokenization, counted exactly, refused past api.max_input_chars,
and never holding other requests back until they are done (behaviour here; the latency is
measured by bench/huge_input.py)."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator

import httpx
import msgspec
import numpy as np
import pytest

from app.config import ApiSettings
from tests.conftest import MINILM, TEST_KEY, settings_with
from tests.fake_backend import FakeLoader
from tests.serving import Gateway, run_gateway

STRICT = "minilm-strict"  # on_overflow = "error"
SHORT = "minilm-short"  # max_length 8
MAX_INPUT_CHARS = 15 * 1024 * 1024
AUTH = {"Authorization": f"Bearer {TEST_KEY}"}
HUGE = "Every word of this sentence counts as a token or two. " * 260_000  # 14 MB


@pytest.fixture(scope="module")
def loader(tmp_path_factory: pytest.TempPathFactory) -> FakeLoader:
    """The shared test backend: here for its record of each tokenizer call."""
    return FakeLoader(str(tmp_path_factory.mktemp("controls")))


@pytest.fixture(scope="module")
def gateway(loader: FakeLoader) -> Iterator[Gateway]:
    base = settings_with().models[0]
    settings = settings_with(
        api=ApiSettings(max_input_chars=MAX_INPUT_CHARS),
        models=[
            base,
            msgspec.structs.replace(base, name=STRICT, on_overflow="error"),
            msgspec.structs.replace(base, name=SHORT, max_length=8),
        ],
    )
    with run_gateway(settings, key=TEST_KEY, loader=loader) as gw:
        yield gw


def embed(gw: Gateway, text: str | list[str], model: str = MINILM) -> httpx.Response:
    return httpx.post(f"{gw.v1}/embeddings", headers=AUTH, json={"model": model, "input": text}, timeout=120)


def test_a_huge_input_is_truncated_and_counted_as_its_kept_tokens(gateway: Gateway) -> None:
    assert len(HUGE) > 14_000_000
    huge = embed(gateway, HUGE)
    assert huge.status_code == 200, huge.text
    assert huge.json()["usage"]["prompt_tokens"] == 256  # max_length, as before
    # The same 256 tokens as a text that was never cut: the same vector.
    head = embed(gateway, HUGE[:20_000]).json()
    assert head["usage"]["prompt_tokens"] == 256
    np.testing.assert_allclose(huge.json()["data"][0]["embedding"], head["data"][0]["embedding"], atol=1e-5)


def test_small_requests_are_tokenized_between_the_turns_of_a_big_one(
    gateway: Gateway, loader: FakeLoader
) -> None:
    """2,000 texts of 1,700 characters (a short max_length
    keeps the forward passes cheap) are tokenized in turns: small requests sent meanwhile
    are tokenized between them, not after all of them."""
    controls = loader.controls(SHORT)
    big_inputs = [f"{i} " + HUGE[:1_700] for i in range(2_000)]
    done: list[httpx.Response] = []
    thread = threading.Thread(target=lambda: done.append(embed(gateway, big_inputs, model=SHORT)))
    controls.forget_tokenize_calls()
    thread.start()
    while not controls.tokenize_calls():  # the big request has started tokenizing
        assert thread.is_alive()
        time.sleep(0.001)
    small = [embed(gateway, f"small request {i}", model=SHORT) for i in range(3)]
    thread.join(120)
    assert all(r.status_code == 200 and r.json()["usage"]["prompt_tokens"] < 8 for r in small)
    assert done[0].status_code == 200, done[0].text
    assert done[0].json()["usage"]["prompt_tokens"] == 2_000 * 8
    calls = controls.tokenize_calls()
    assert sum(n for n in calls if n > 1) == 2_000 and len(calls) > 10  # the big one, in turns
    last_big = max(i for i, n in enumerate(calls) if n > 1)
    assert calls.index(1) < last_big, f"the first small request waited for all of the big one: {calls}"


def test_an_input_over_max_input_chars_is_refused(gateway: Gateway) -> None:
    too_long = "x" * (MAX_INPUT_CHARS + 1)
    response = embed(gateway, ["fine", too_long])
    assert response.status_code == 400
    assert response.json() == {
        "error": {
            "message": f"Invalid 'input': an input of {MAX_INPUT_CHARS + 1} characters is longer than the "
            f"{MAX_INPUT_CHARS} characters this server accepts per input.",
            "type": "invalid_request_error",
            "param": "input",
            "code": None,
        }
    }


def test_on_overflow_error_refuses_a_huge_input_without_tokenizing_it(gateway: Gateway) -> None:
    response = embed(gateway, ["short", HUGE], model=STRICT)
    assert response.status_code == 400
    error = response.json()["error"]
    assert (error["code"], error["param"]) == ("context_length_exceeded", "input")
    # Only a lower bound of its length is known: OpenAI's sentence, with "at least".
    assert error["message"] == (
        "This model's maximum context length is 256 tokens, however you requested at least 257 "
        "tokens (at least 257 in your prompt; 0 for the completion). Please reduce your prompt; "
        "or completion length."
    )


def test_a_large_body_counts_as_heavy_work_for_the_forwards_beside_it(
    tmp_path_factory: pytest.TempPathFactory,
) -> None:
    # A body over 1 MiB whose input is one word (the bulk of it an unknown field, skipped by
    # the parser): nothing is tokenized on the tokenizer thread, yet reading and decoding it
    # take a core, so the forward right after it leaves the gateway one (app.engine.gateway_load).
    from app.config import EngineSettings
    from app.engine.gateway_load import RECENT_S

    loader = FakeLoader(str(tmp_path_factory.mktemp("cores")), real=False)
    settings = settings_with(engine=EngineSettings(workers="process", torch_threads=2))
    with run_gateway(settings, key=TEST_KEY, loader=loader) as gw:
        controls = loader.controls(MINILM)
        url = f"{gw.v1}/embeddings"

        def threads_after(body: dict[str, object]) -> int:
            assert httpx.post(url, headers=AUTH, json=body, timeout=60).status_code == 200
            return controls.batches()[-1]["threads"]  # type: ignore[return-value]

        query = {"model": MINILM, "input": "a query"}
        assert threads_after(query) == 2
        assert threads_after({**query, "padding": "x" * (2 << 20)}) == 1
        time.sleep(RECENT_S + 0.1)
        assert threads_after(query) == 2
