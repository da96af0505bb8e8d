"""A batch job survives its server: killed in the middle (SIGKILL, no clean shutdown), the next
server resumes the job where its progress was committed; nothing is lost or written twice."""

from __future__ import annotations

import io
import json
import time
from collections import Counter
from pathlib import Path

import numpy as np
import openai

from tests.conftest import MINILM, TEST_KEY
from tests.processes import GatewayProcess

LINES = 300


def test_killed_server_resumes_the_job_without_loss_or_duplicates(tmp_path: Path) -> None:
    env = {
        "GATEWAY_API_KEY": TEST_KEY,
        "GATEWAY__BATCH__DB_PATH": str(tmp_path / "store" / "batches.sqlite3"),
        "GATEWAY__BATCH__FILES_DIR": str(tmp_path / "store" / "files"),
        "GATEWAY__BATCH__CHUNK_INPUTS": "16",
    }
    texts = [
        f"line {i}: " + "a fairly ordinary sentence about nothing much " * (1 + i % 4) for i in range(LINES)
    ]
    body = "".join(
        json.dumps(
            {
                "custom_id": f"r{i}",
                "method": "POST",
                "url": "/v1/embeddings",
                "body": {"model": MINILM, "input": t},
            }
        )
        + "\n"
        for i, t in enumerate(texts)
    )
    first = GatewayProcess(env, tmp_path / "first.log")
    try:
        first.wait_ready()
        sdk = openai.OpenAI(base_url=f"{first.url}/v1", api_key=TEST_KEY, max_retries=0)
        file_id = sdk.files.create(file=("in.jsonl", io.BytesIO(body.encode())), purpose="batch").id
        batch_id = sdk.batches.create(
            input_file_id=file_id, endpoint="/v1/embeddings", completion_window="24h"
        ).id
        deadline = time.monotonic() + 120
        while True:
            counts = sdk.batches.retrieve(batch_id).request_counts
            if counts is not None and counts.completed >= 40:
                break
            assert time.monotonic() < deadline, "the job made no progress"
            time.sleep(0.02)
        first.process.kill()
        first.process.wait(30)
    finally:
        first.stop()
    assert 40 <= counts.completed < LINES, "the kill did not land in the middle of the job"

    second = GatewayProcess(env, tmp_path / "second.log")
    try:
        second.wait_ready()
        sdk = openai.OpenAI(base_url=f"{second.url}/v1", api_key=TEST_KEY, max_retries=0)
        resumed = sdk.batches.retrieve(batch_id)
        assert resumed.status in ("in_progress", "finalizing", "completed")
        deadline = time.monotonic() + 180
        while resumed.status != "completed":
            assert resumed.status == "in_progress" or resumed.status == "finalizing", resumed.status
            assert time.monotonic() < deadline
            time.sleep(0.1)
            resumed = sdk.batches.retrieve(batch_id)
        assert resumed.request_counts is not None
        assert (resumed.request_counts.completed, resumed.request_counts.failed) == (LINES, 0)
        assert resumed.error_file_id is None
        outputs = [json.loads(x) for x in sdk.files.content(resumed.output_file_id or "").text.splitlines()]
        assert Counter(o["custom_id"] for o in outputs) == Counter(f"r{i}" for i in range(LINES))
        assert all(o["response"]["status_code"] == 200 for o in outputs)
        # Lines on both sides of the kill carry their own text's vector.
        by_id = {o["custom_id"]: o["response"]["body"]["data"][0]["embedding"] for o in outputs}
        probe = [0, counts.completed - 1, counts.completed + 1, LINES - 1]
        online = sdk.embeddings.create(model=MINILM, input=[texts[i] for i in probe], encoding_format="float")
        for i, expected in zip(probe, online.data, strict=True):
            np.testing.assert_allclose(by_id[f"r{i}"], expected.embedding, atol=1e-5)
    finally:
        second.stop()
