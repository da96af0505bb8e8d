"""On a CUDA machine: CUDA graphs (app/models/cuda_graphs.py) against eager forwards.

For the 7B-shaped random Llama in bf16 (bench/workload.py) and tiny models of every served
family: the single forward (1 input x 12 words) and a batch of 32, p50 over repeated
calls, with `cuda_graphs` off and on, and the min cosine between the two paths' vectors
(texts of mixed lengths, with and without an instruction; batches the graphs hold and
batches they leave to the eager path). One JSON line per case.

    python -m bench.gpu_graphs [--skip-7b] [--skip-tiny]
"""

from __future__ import annotations

import argparse
import json
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from app.config import ModelSettings
from app.models.llm2vec_backend import LLM2VecBackend
from bench.workload import make_llama_7b_shape, texts
from tests.model_factory import make_mntp_checkpoint

INSTRUCTION = "Given a web search query, retrieve relevant passages that answer the query:"
MIXED = [
    "hello world",
    "x",
    "The quick brown fox jumps over the lazy dog, again and again, in 2024.",
    "a longer text " * 30,
]


def _cosine(a: np.ndarray, b: np.ndarray) -> float:
    a, b = a.astype(np.float64), b.astype(np.float64)
    return float(((a * b).sum(1) / (np.linalg.norm(a, axis=1) * np.linalg.norm(b, axis=1))).min())


def _p50_ms(backend: LLM2VecBackend, batch: list, repeats: int) -> float:
    backend.embed(batch)
    times = []
    for _ in range(repeats):
        began = time.perf_counter()
        backend.embed(batch)
        times.append(time.perf_counter() - began)
    return statistics.median(times) * 1000


def case(label: str, entry: ModelSettings, repeats: int) -> None:
    vectors: dict[bool, dict[str, np.ndarray]] = {}
    timing: dict[bool, tuple[float, float]] = {}
    for graphs in (False, True):
        backend = LLM2VecBackend(ModelSettings(**{**_fields(entry), "cuda_graphs": graphs}), entry.base_model)
        vectors[graphs] = {
            f"{instruction!s:.5}/{n}": backend.embed(backend.tokenize(MIXED[:n], instruction))
            for instruction in ("", INSTRUCTION)
            for n in (1, 3, 4)
        }
        vectors[graphs]["40 rows"] = backend.embed(backend.tokenize(texts(40, 12, seed=3), ""))
        single = backend.tokenize(texts(1, 12, seed=1), "")
        batch = backend.tokenize(texts(32, 12, seed=2), "")
        timing[graphs] = (_p50_ms(backend, single, repeats), _p50_ms(backend, batch, repeats // 4 + 1))
        del backend
        torch.cuda.empty_cache()
    cosine = min(_cosine(vectors[False][k], vectors[True][k]) for k in vectors[False])
    print(
        json.dumps(
            {
                "model": label,
                "dtype": entry.dtype,
                "single_ms_eager": round(timing[False][0], 2),
                "single_ms_graphs": round(timing[True][0], 2),
                "batch32_ms_eager": round(timing[False][1], 2),
                "batch32_ms_graphs": round(timing[True][1], 2),
                "min_cosine_graphs_vs_eager": round(cosine, 6),
            }
        ),
        flush=True,
    )


def _fields(entry: ModelSettings) -> dict[str, object]:
    return {f: getattr(entry, f) for f in entry.__struct_fields__}


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--skip-7b", action="store_true")
    parser.add_argument("--skip-tiny", action="store_true")
    args = parser.parse_args()
    assert torch.cuda.is_available(), "no GPU"
    print(f"device: {torch.cuda.get_device_name()}, torch {torch.__version__}", flush=True)
    work = Path(tempfile.mkdtemp())
    for family in () if args.skip_tiny else ("llama", "mistral", "gemma", "qwen2", "qwen3"):
        tiny = make_mntp_checkpoint(work / family, family, hidden_size=256, layers=4, heads=8)
        for dtype in ("float32", "bfloat16"):
            entry = ModelSettings(
                name=family,
                base_model=str(tiny.mntp),
                adapters=[str(tiny.adapter)],
                max_length=128,
                dtype=dtype,
                device="cuda",
            )
            case(f"tiny {family}", entry, 50)
    if not args.skip_7b:
        model = make_llama_7b_shape(work / "7b")
        entry = ModelSettings(
            name=model.name,
            base_model=model.base_model,
            max_length=model.max_length,
            dtype="bfloat16",
            device="cuda",
        )
        case(model.name, entry, 40)


if __name__ == "__main__":
    main()
