"""On a CUDA machine: the gateway's LLM2Vec backend against llm2vec's own encode(), in float32
and in bfloat16 (what dtype = "auto" picks on CUDA), with and without an instruction.

    python -m bench.gpu_check        (needs a GPU; prints one line per case)
"""

from __future__ import annotations

import tempfile
from pathlib import Path

import numpy as np
import torch
from llm2vec import LLM2Vec

from app.config import ModelSettings
from app.models.registry import load_backend
from tests.model_factory import make_llm2vec_model

TEXTS = [
    "hello world",
    "The quick brown fox jumps over the lazy dog, again and again, in 2024.",
    "x",
    "a longer text " * 20,
]
INSTRUCTION = "Given a web search query, retrieve relevant passages that answer the query:"


def _cosines(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    a, b = a.astype(np.float64), b.astype(np.float64)
    return (a * b).sum(1) / (np.linalg.norm(a, axis=1) * np.linalg.norm(b, axis=1))


def main() -> None:
    assert torch.cuda.is_available(), "no GPU"
    print(f"device: {torch.cuda.get_device_name()}, torch {torch.__version__}")
    work = Path(tempfile.mkdtemp())
    for family in ("llama", "mistral", "gemma"):
        tiny = make_llm2vec_model(work / family, family, hidden_size=256, layers=4, heads=8)
        reference32: np.ndarray | None = None
        for dtype, torch_dtype in (("float32", torch.float32), ("auto", torch.bfloat16)):
            entry = ModelSettings(
                name=family,
                base_model=str(tiny.base),
                adapters=[str(tiny.adapter)],
                max_length=128,
                dtype=dtype,
                device="cuda",
            )
            backend = load_backend(entry)
            model = backend._model  # type: ignore[attr-defined]
            l2v = LLM2Vec.from_pretrained(
                str(tiny.base),
                peft_model_name_or_path=str(tiny.adapter),
                merge_peft=True,
                pooling_mode="mean",
                max_length=128,
                torch_dtype=torch_dtype,
            )
            for instruction in ("", INSTRUCTION):
                ours = backend.embed(backend.tokenize(TEXTS, instruction))
                pairs = [[instruction, t] for t in TEXTS] if instruction else TEXTS
                theirs = l2v.encode(pairs, batch_size=8, show_progress_bar=False, device="cuda")
                theirs = theirs.float().cpu().numpy()
                cos = _cosines(ours, theirs)
                line = (
                    f"{family:8s} dtype={dtype:8s} ({next(model.parameters()).dtype}, "
                    f"attn={model.config._attn_implementation}, on {next(model.parameters()).device}) "
                    f"instruction={'yes' if instruction else 'no ':3s} "
                    f"min cosine vs llm2vec encode: {cos.min():.6f}"
                )
                if dtype == "float32" and not instruction:
                    reference32 = ours
                elif not instruction and reference32 is not None:
                    line += f"; vs float32: {_cosines(ours, reference32).min():.6f}"
                print(line, flush=True)
            del backend, l2v
            torch.cuda.empty_cache()


if __name__ == "__main__":
    main()
