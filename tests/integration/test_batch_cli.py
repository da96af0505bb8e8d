"""`python -m app batch`: a real run, a run killed midway and resumed, the vectors beside the JSONL."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq

from tests.conftest import MINILM
from tests.processes import ROOT

LINES = 200


def _env() -> dict[str, str]:
    clean = {k: v for k, v in os.environ.items() if not k.startswith("GATEWAY")}
    return {**clean, "GATEWAY__BATCH__CHUNK_INPUTS": "8"}


def _command(source: Path, output: Path, *extra: str) -> list[str]:
    return [sys.executable, "-m", "app", "batch", str(source), "-o", str(output), *extra]


def _write_input(path: Path, bad: bool = False) -> list[str]:
    texts = [f"sentence {i} " + "about the weather and the sea " * (1 + i % 3) for i in range(LINES)]
    lines = [
        json.dumps(
            {
                "custom_id": f"r{i}",
                "method": "POST",
                "url": "/v1/embeddings",
                "body": {"model": MINILM, "input": t},
            }
        )
        for i, t in enumerate(texts)
    ]
    if bad:
        lines.insert(
            5,
            json.dumps(
                {"custom_id": "bad", "method": "POST", "url": "/v1/embeddings", "body": {"model": MINILM}}
            ),
        )
    path.write_text("\n".join(lines) + "\n")
    return texts


def _vectors(output: Path) -> dict[str, list[float]]:
    result: dict[str, list[float]] = {}
    for line in output.read_text().splitlines():
        item = json.loads(line)
        assert item["custom_id"] not in result, "a custom_id written twice"
        result[item["custom_id"]] = item["response"]["body"]["data"][0]["embedding"]
    return result


def test_run_killed_midway_then_resumed_equals_one_whole_run(tmp_path: Path) -> None:
    source = tmp_path / "in.jsonl"
    _write_input(source)
    whole = tmp_path / "whole.jsonl"
    done = subprocess.run(
        _command(source, whole), cwd=ROOT, env=_env(), capture_output=True, text=True, timeout=300
    )
    assert done.returncode == 0, done.stderr
    assert f"{LINES}/{LINES} lines" in done.stderr and "tokens/s" in done.stderr and "ETA" in done.stderr

    resumed = tmp_path / "resumed.jsonl"
    with (tmp_path / "killed.log").open("w") as log:
        process = subprocess.Popen(_command(source, resumed), cwd=ROOT, env=_env(), stdout=log, stderr=log)
        try:
            deadline = time.monotonic() + 240
            while not resumed.exists() or resumed.read_text().count("\n") < 40:
                assert process.poll() is None, (tmp_path / "killed.log").read_text()
                assert time.monotonic() < deadline
                time.sleep(0.01)
        finally:
            process.kill()
            process.wait(30)
    first_part = resumed.read_text().count("\n")
    assert 40 <= first_part < LINES
    again = subprocess.run(
        _command(source, resumed, "--npy", str(tmp_path / "v.npy"), "--parquet", str(tmp_path / "v.parquet")),
        cwd=ROOT,
        env=_env(),
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert again.returncode == 0, again.stderr
    assert f"already in {resumed}" in again.stderr
    expected, got = _vectors(whole), _vectors(resumed)
    assert sorted(got) == sorted(f"r{i}" for i in range(LINES))  # each once: _vectors checks
    for custom_id, vector in expected.items():
        np.testing.assert_allclose(got[custom_id], vector, atol=1e-5)
    order = list(got)
    matrix = np.load(tmp_path / "v.npy")
    assert matrix.shape == (LINES, 384) and matrix.dtype == np.float32
    np.testing.assert_allclose(matrix, np.array([got[c] for c in order], dtype=np.float32), atol=1e-7)
    table = pq.read_table(tmp_path / "v.parquet").to_pydict()
    assert table["custom_id"] == order and set(table["index"]) == {0}
    np.testing.assert_allclose(np.array(table["embedding"]), matrix, atol=1e-7)


def test_a_failed_line_exits_non_zero_and_is_retried_by_the_next_run(tmp_path: Path) -> None:
    source = tmp_path / "in.jsonl"
    _write_input(source, bad=True)
    output = tmp_path / "out.jsonl"
    first = subprocess.run(
        _command(source, output), cwd=ROOT, env=_env(), capture_output=True, text=True, timeout=300
    )
    assert first.returncode == 1, first.stderr
    errors = [json.loads(x) for x in (tmp_path / "out.errors.jsonl").read_text().splitlines()]
    assert [e["custom_id"] for e in errors] == ["bad"]
    assert errors[0]["response"]["status_code"] == 400
    assert len(output.read_text().splitlines()) == LINES
    # The next run skips every line already done and tries only the failed one again.
    second = subprocess.run(
        _command(source, output), cwd=ROOT, env=_env(), capture_output=True, text=True, timeout=300
    )
    assert second.returncode == 1
    assert f"0 lines done this run ({LINES} already in" in second.stderr
    assert len(output.read_text().splitlines()) == LINES
