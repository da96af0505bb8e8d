"""OpenAI's Batch API for /v1/embeddings, through the real openai SDK against a real gateway."""

from __future__ import annotations

import base64
import io
import json
import time
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import msgspec
import numpy as np
import openai
import pytest

from app.config import ApiKey, AuthSettings, BatchSettings
from tests.conftest import MINILM, TEST_KEY, settings_with
from tests.serving import Gateway, run_gateway

OTHER_KEY = "sk-other-key-0123456789"
_NONE = openai.types.BatchRequestCounts(total=0, completed=0, failed=0)
_NO_USAGE = openai.types.BatchUsage(
    input_tokens=0,
    output_tokens=0,
    total_tokens=0,
    input_tokens_details={"cached_tokens": 0},
    output_tokens_details={"reasoning_tokens": 0},
)


def batch_settings(tmp: Path, **changes: Any) -> BatchSettings:
    return BatchSettings(db_path=str(tmp / "batches.sqlite3"), files_dir=str(tmp / "files"), **changes)


@pytest.fixture(scope="module")
def gateway(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Gateway]:
    tmp = tmp_path_factory.mktemp("batch")
    auth = AuthSettings(keys=[ApiKey(name="main", key=TEST_KEY), ApiKey(name="other", key=OTHER_KEY)])
    settings = settings_with(auth=auth, batch=batch_settings(tmp, chunk_inputs=8, max_file_lines=500))
    with run_gateway(settings, key=TEST_KEY) as running:
        yield running


def client(gateway: Gateway, key: str = TEST_KEY) -> openai.OpenAI:
    return openai.OpenAI(base_url=gateway.v1, api_key=key, max_retries=0)


def request_line(custom_id: str, body: dict[str, Any], url: str = "/v1/embeddings") -> str:
    return json.dumps({"custom_id": custom_id, "method": "POST", "url": url, "body": body})


def upload(sdk: openai.OpenAI, lines: list[str]) -> str:
    data = ("\n".join(lines) + "\n").encode()
    return sdk.files.create(file=("requests.jsonl", io.BytesIO(data)), purpose="batch").id


def wait_done(sdk: openai.OpenAI, batch_id: str, timeout: float = 120) -> openai.types.Batch:
    deadline = time.monotonic() + timeout
    while True:
        batch = sdk.batches.retrieve(batch_id)
        if batch.status in ("completed", "failed", "cancelled", "expired"):
            return batch
        assert time.monotonic() < deadline, f"batch still {batch.status}"
        time.sleep(0.1)


def read_lines(sdk: openai.OpenAI, file_id: str | None) -> list[dict[str, Any]]:
    if file_id is None:
        return []
    return [json.loads(line) for line in sdk.files.content(file_id).text.splitlines() if line]


def test_batch_job_end_to_end(gateway: Gateway) -> None:
    sdk = client(gateway)
    texts = [f"document number {i} about {'cats' if i % 2 else 'markets'}" for i in range(30)]
    lines = [request_line(f"doc-{i}", {"model": MINILM, "input": t}) for i, t in enumerate(texts)]
    lines.append(request_line("pair", {"model": MINILM, "input": texts[:2], "encoding_format": "base64"}))
    lines.append(request_line("short", {"model": MINILM, "input": texts[0], "dimensions": 8}))
    bad = {
        "not-json": "{this is not json",
        "unknown-model": request_line("unknown-model", {"model": "no-such-model", "input": "x"}),
        "empty-input": request_line("empty-input", {"model": MINILM, "input": ""}),
        "wrong-url": request_line("wrong-url", {"model": MINILM, "input": "x"}, url="/v1/chat/completions"),
        "duplicate": request_line("doc-3", {"model": MINILM, "input": "again"}),
    }
    file = sdk.files.retrieve(upload(sdk, lines[:10] + list(bad.values()) + lines[10:]))
    assert (file.purpose, file.object, file.filename) == ("batch", "file", "requests.jsonl")
    before = _batches_by_lane(gateway)
    created = sdk.batches.create(
        input_file_id=file.id, endpoint="/v1/embeddings", completion_window="24h", metadata={"run": "t1"}
    )
    assert created.status == "validating" and created.metadata == {"run": "t1"}
    batch = wait_done(sdk, created.id)
    assert batch.status == "completed", batch
    assert batch.request_counts is not None
    total = len(lines) + len(bad)
    assert (batch.request_counts.total, batch.request_counts.completed, batch.request_counts.failed) == (
        total,
        len(lines),
        len(bad),
    )
    assert batch.in_progress_at and batch.finalizing_at and batch.completed_at
    outputs, errors = read_lines(sdk, batch.output_file_id), read_lines(sdk, batch.error_file_id)
    out_ids = Counter(o["custom_id"] for o in outputs)
    assert out_ids == Counter([f"doc-{i}" for i in range(30)] + ["pair", "short"])
    by_id = {o["custom_id"]: o for o in outputs}
    # The job ran on the background worker alone; an interactive request on the model's worker.
    during = _batches_by_lane(gateway)
    assert during["background"] > before["background"] and during["interactive"] == before["interactive"]
    # The vectors are the interactive endpoint's.
    online = sdk.embeddings.create(model=MINILM, input=texts[:3], encoding_format="float")
    after = _batches_by_lane(gateway)
    assert after == {"interactive": during["interactive"] + 1, "background": during["background"]}
    for i in range(3):
        response = by_id[f"doc-{i}"]["response"]
        assert response["status_code"] == 200 and response["request_id"]
        np.testing.assert_allclose(
            response["body"]["data"][0]["embedding"], online.data[i].embedding, atol=1e-5
        )
        assert response["body"]["usage"]["prompt_tokens"] > 0
    pair = by_id["pair"]["response"]["body"]["data"]
    decoded = np.frombuffer(base64.b64decode(pair[1]["embedding"]), dtype="<f4")
    np.testing.assert_allclose(decoded, online.data[1].embedding, atol=1e-5)
    assert len(by_id["short"]["response"]["body"]["data"][0]["embedding"]) == 8
    assert batch.usage is not None
    assert batch.usage.input_tokens == sum(o["response"]["body"]["usage"]["prompt_tokens"] for o in outputs)
    # Each bad line fails alone, in the error file, with its custom_id where it has one.
    assert sorted(str(e["custom_id"]) for e in errors) == sorted(
        ["None", "unknown-model", "empty-input", "wrong-url", "doc-3"]
    )
    by_error = {e["custom_id"]: e for e in errors}
    assert by_error[None]["error"]["code"] == "invalid_json"
    assert by_error["unknown-model"]["response"]["status_code"] == 404
    assert by_error["unknown-model"]["response"]["body"]["error"]["code"] == "model_not_found"
    assert by_error["empty-input"]["response"]["status_code"] == 400
    assert by_error["wrong-url"]["error"]["code"] == "invalid_url"
    assert by_error["doc-3"]["error"]["code"] == "duplicate_custom_id"
    assert {e["id"] for e in errors + outputs}.__len__() == total
    output_file = sdk.files.retrieve(batch.output_file_id or "")
    assert output_file.purpose == "batch_output"


def _batches_by_lane(gateway: Gateway) -> dict[str, int]:
    """Forward passes run so far by the model's workers and by its background worker."""
    counts = {"interactive": 0, "background": 0}
    for worker in gateway.engine.workers(MINILM):
        counts[str(worker["lane"])] += int(worker["batches"])  # type: ignore[call-overload]
    return counts


def test_cancel_stops_the_job_and_keeps_what_was_done(gateway: Gateway) -> None:
    sdk = client(gateway)
    lines = [
        request_line(f"c-{i}", {"model": MINILM, "input": [f"text {i} {j} " * 20 for j in range(8)]})
        for i in range(300)
    ]
    batch = sdk.batches.create(
        input_file_id=upload(sdk, lines), endpoint="/v1/embeddings", completion_window="24h"
    )
    deadline = time.monotonic() + 60
    while (sdk.batches.retrieve(batch.id).request_counts or _NONE).completed < 2:
        assert time.monotonic() < deadline
        time.sleep(0.02)
    cancelling = sdk.batches.cancel(batch.id)
    assert cancelling.status in ("cancelling", "cancelled")
    done = wait_done(sdk, batch.id)
    assert done.status == "cancelled" and done.cancelled_at and done.cancelling_at
    assert done.request_counts is not None
    outputs = read_lines(sdk, done.output_file_id)
    assert 2 <= len(outputs) == done.request_counts.completed < 300
    assert len({o["custom_id"] for o in outputs}) == len(outputs)
    assert sdk.batches.cancel(batch.id).status == "cancelled"  # again: no change, no error
    with pytest.raises(openai.ConflictError) as refused:
        sdk.batches.cancel(_completed(sdk))
    assert "Cannot cancel a batch with status 'completed'" in refused.value.message


def _completed(sdk: openai.OpenAI) -> str:
    file_id = upload(sdk, [request_line("one", {"model": MINILM, "input": "one"})])
    batch = sdk.batches.create(input_file_id=file_id, endpoint="/v1/embeddings", completion_window="24h")
    assert wait_done(sdk, batch.id).status == "completed"
    return batch.id


def test_list_pagination_as_openai(gateway: Gateway) -> None:
    sdk = client(gateway)
    file_id = upload(sdk, [request_line("one", {"model": MINILM, "input": "one"})])
    made = [
        sdk.batches.create(input_file_id=file_id, endpoint="/v1/embeddings", completion_window="24h").id
        for _ in range(5)
    ]
    first = sdk.batches.list(limit=2)
    assert [b.id for b in first.data] == made[::-1][:2] and first.has_more
    listed = [b.id for b in sdk.batches.list(limit=2)]  # the SDK follows `after` while has_more
    assert listed[:5] == made[::-1]
    assert len(listed) == len(set(listed))
    raw = httpx.get(f"{gateway.v1}/batches", params={"limit": 2}, headers=gateway.headers()).json()
    assert raw["object"] == "list" and raw["first_id"] == made[-1] and raw["last_id"] == made[-2]
    files = [f.id for f in sdk.files.list(limit=1, purpose="batch")]
    assert file_id in files and len(files) == len(set(files))
    for batch_id in made:
        wait_done(sdk, batch_id)


def test_a_key_sees_only_its_own(gateway: Gateway) -> None:
    mine, theirs = client(gateway), client(gateway, OTHER_KEY)
    file_id = upload(mine, [request_line("one", {"model": MINILM, "input": "one"})])
    batch = mine.batches.create(input_file_id=file_id, endpoint="/v1/embeddings", completion_window="24h")
    for call in (
        lambda: theirs.files.retrieve(file_id),
        lambda: theirs.files.content(file_id),
        lambda: theirs.files.delete(file_id),
        lambda: theirs.batches.retrieve(batch.id),
        lambda: theirs.batches.cancel(batch.id),
        lambda: theirs.batches.create(
            input_file_id=file_id, endpoint="/v1/embeddings", completion_window="24h"
        ),
    ):
        with pytest.raises(openai.NotFoundError):
            call()
    assert batch.id not in [b.id for b in theirs.batches.list()]
    assert file_id not in [f.id for f in theirs.files.list()]
    assert wait_done(mine, batch.id).status == "completed"
    assert mine.files.delete(file_id).deleted
    with pytest.raises(openai.NotFoundError):
        mine.files.retrieve(file_id)


def _error(response: httpx.Response) -> dict[str, Any]:
    body = response.json()
    assert set(body) == {"error"} and set(body["error"]) == {"message", "type", "param", "code"}
    error: dict[str, Any] = body["error"]
    return error


@pytest.mark.parametrize(
    ("files", "data", "status", "param"),
    [
        ({"file": ("a.jsonl", b'{"a": 1}\n')}, {"purpose": "fine-tune"}, 400, "purpose"),
        ({"file": ("a.jsonl", b'{"a": 1}\n')}, {}, 400, "purpose"),
        (None, {"purpose": "batch"}, 400, "file"),
        ({"file": ("a.jsonl", b"\n\n")}, {"purpose": "batch"}, 400, "file"),
        ({"file": ("a.jsonl", b"{}\n" * 501)}, {"purpose": "batch"}, 400, "file"),
    ],
    ids=["wrong-purpose", "no-purpose", "no-file", "empty", "too-many-lines"],
)
def test_upload_refusals(
    gateway: Gateway, files: dict[str, Any] | None, data: dict[str, str], status: int, param: str
) -> None:
    response = httpx.post(
        f"{gateway.v1}/files", files=files or {"x": ("", b"")}, data=data, headers=gateway.headers()
    )
    assert response.status_code == status
    assert _error(response)["param"] == param


def test_upload_size_limit_and_other_refusals(tmp_path: Path) -> None:
    settings = settings_with(batch=batch_settings(tmp_path, max_file_bytes=1000))
    with run_gateway(settings, key=TEST_KEY) as small:
        big = request_line("x", {"model": MINILM, "input": "y" * 2000}).encode()
        response = httpx.post(
            f"{small.v1}/files",
            files={"file": ("a.jsonl", big)},
            data={"purpose": "batch"},
            headers=small.headers(),
        )
        assert response.status_code == 400 and _error(response)["code"] == "file_too_large"
        assert not any((tmp_path / "files").iterdir())  # the partial upload is gone
        response = httpx.post(f"{small.v1}/files", content=b"plain", headers=small.headers())
        assert response.status_code == 400
        sdk = client(small)
        file_id = upload(sdk, [request_line("a", {"model": MINILM, "input": "a"})])
        for body, status, param in [
            (
                {"input_file_id": file_id, "endpoint": "/v1/chat/completions", "completion_window": "24h"},
                400,
                "endpoint",
            ),
            (
                {"input_file_id": file_id, "endpoint": "/v1/embeddings", "completion_window": "1h"},
                400,
                "completion_window",
            ),
            (
                {"input_file_id": "file-nope", "endpoint": "/v1/embeddings", "completion_window": "24h"},
                404,
                "id",
            ),
            ({"endpoint": "/v1/embeddings", "completion_window": "24h"}, 400, "input_file_id"),
        ]:
            response = httpx.post(f"{small.v1}/batches", json=body, headers=small.headers())
            assert response.status_code == status, response.text
            assert _error(response)["param"] == param
        for path in ("/files/file-nope", "/files/file-nope/content", "/batches/batch_nope"):
            response = httpx.get(f"{small.v1}{path}", headers=small.headers())
            assert response.status_code == 404 and _error(response)["type"] == "invalid_request_error"
        assert (
            httpx.get(f"{small.v1}/batches", params={"limit": 0}, headers=small.headers()).status_code == 400
        )
        assert httpx.get(f"{small.v1}/files", headers={}).status_code == 401


def test_batch_tokens_count_against_the_keys_tpm(tmp_path: Path) -> None:
    """The job's tokens are charged to its key: once they use up the window, the key's
    interactive requests get 429 and the job waits for the next window instead of failing."""
    auth = AuthSettings(keys=[ApiKey(name="tight", key=TEST_KEY, tpm=60)])
    limits = msgspec.structs.replace(settings_with().limits, window_seconds=8)
    settings = settings_with(auth=auth, limits=limits, batch=batch_settings(tmp_path, chunk_inputs=2))
    with run_gateway(settings, key=TEST_KEY) as small:
        sdk = client(small)
        lines = [
            request_line(f"t{i}", {"model": MINILM, "input": f"sentence number {i} of the job"})
            for i in range(12)
        ]
        batch = sdk.batches.create(
            input_file_id=upload(sdk, lines), endpoint="/v1/embeddings", completion_window="24h"
        )
        deadline = time.monotonic() + 30
        while (sdk.batches.retrieve(batch.id).usage or _NO_USAGE).input_tokens < 60:
            assert time.monotonic() < deadline
            time.sleep(0.05)
        with pytest.raises(openai.RateLimitError):
            sdk.embeddings.create(model=MINILM, input="an interactive request")
        done = wait_done(sdk, batch.id)
        assert done.status == "completed" and done.request_counts is not None
        assert (done.request_counts.completed, done.request_counts.failed) == (12, 0)
        assert done.usage is not None and done.usage.input_tokens > 60  # more than one window
