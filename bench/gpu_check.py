"""On a CUDA machine: the gateway's LLM2Vec loader on CUDA against the same model on CPU.

For each model: float32 on CUDA vs float32 on CPU (min cosine, expected >= 0.99999), and
bfloat16 on CUDA (what dtype = "auto" picks) vs float32 on CPU (min cosine), with and
without an instruction, over texts of mixed lengths batched together. Models: the tiny
factory checkpoints of every served family (built offline), plus any -mntp checkpoint
directories given with --checkpoint DIR[:ADAPTER] (e.g. the golden fixtures under
tests/reference/fixtures).

    python -m bench.gpu_check [--checkpoint DIR[:ADAPTER] ...]    (needs a GPU; one line per case)
"""

from __future__ import annotations

import argparse
import tempfile
from pathlib import Path

import numpy as np
import torch

from app.config import ModelSettings
from app.models.llm2vec_backend import LLM2VecBackend
from tests.model_factory import make_mntp_checkpoint

TEXTS = [
    "hello world",
    "The quick brown fox jumps over the lazy dog, again and again, in 2024.",
    "x",
    "a longer text " * 20,
]
INSTRUCTION = "Given a web search query, retrieve relevant passages that answer the query:"
FAMILIES = ("llama", "mistral", "gemma", "qwen2", "qwen3")


def _cosines(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    a, b = a.astype(np.float64), b.astype(np.float64)
    return (a * b).sum(1) / (np.linalg.norm(a, axis=1) * np.linalg.norm(b, axis=1))


def _vectors(label: str, base: str, adapters: list[str], dtype: str, device: str) -> dict[str, np.ndarray]:
    entry = ModelSettings(
        name=label, base_model=base, adapters=adapters, max_length=128, dtype=dtype, device=device
    )
    backend = LLM2VecBackend(entry, base)
    out = {
        instruction: backend.embed(backend.tokenize(TEXTS, instruction)) for instruction in ("", INSTRUCTION)
    }
    del backend
    torch.cuda.empty_cache()
    return out


def check(label: str, base: str, adapters: list[str]) -> None:
    cpu = _vectors(label, base, adapters, "float32", "cpu")
    for dtype in ("float32", "bfloat16"):
        cuda = _vectors(label, base, adapters, dtype, "cuda")
        for instruction in ("", INSTRUCTION):
            cos = _cosines(cuda[instruction], cpu[instruction]).min()
            print(
                f"{label:28s} cuda {dtype:8s} instruction={'yes' if instruction else 'no ':3s} "
                f"min cosine vs cpu float32: {cos:.6f}",
                flush=True,
            )


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument(
        "--checkpoint", action="append", default=[], help="DIR[:ADAPTER] of a -mntp checkpoint"
    )
    args = parser.parse_args()
    assert torch.cuda.is_available(), "no GPU"
    print(f"device: {torch.cuda.get_device_name()}, torch {torch.__version__}")
    work = Path(tempfile.mkdtemp())
    for family in FAMILIES:
        tiny = make_mntp_checkpoint(work / family, family, hidden_size=256, layers=4, heads=8)
        check(f"tiny {family}", str(tiny.mntp), [str(tiny.adapter)])
    for spec in args.checkpoint:
        base, _, adapter = spec.partition(":")
        check(Path(base).name, base, [adapter] if adapter else [])


if __name__ == "__main__":
    main()
