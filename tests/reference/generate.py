"""Regenerate the golden fixtures: tiny LLM2Vec checkpoints and llm2vec 0.2.3's own vectors.

Run with `make golden` (its own venv with tests/reference/requirements.txt); the output is
deterministic (fixed seeds, one torch thread), so rerunning rewrites identical files.
Never imports app/: this is the reference side the gateway is compared against.
"""

from __future__ import annotations

import json
import shutil
import tempfile
from pathlib import Path
from typing import Any

import numpy as np
import torch
from llm2vec import LLM2Vec

from tests.reference.checkpoints import CHECKPOINTS, Checkpoint, write_checkpoint
from tests.reference.layout import CASES, VECTORS, materialize
from tests.reference.layout import CHECKPOINTS as CHECKPOINTS_DIR

MAX_LENGTH = 64
# One checkpoint with a shorter limit, so a loader must take max_length from each entry.
MAX_LENGTHS = {"sheared-llama": 32}
POOLINGS = ("mean", "weighted_mean", "eos_token", "last_token", "bos_token")
# Instructions LLM2Vec was trained with; a checkpoint uses one, by its position.
INSTRUCTIONS = (
    "Given a web search query, retrieve relevant passages that answer the query:",
    "Retrieve duplicate questions from StackOverflow forum",
)
# Mixed lengths: one token to past max_length, alone and after an instruction. No text holds
# llm2vec's separator (its encode() mis-pools it; the gateway's own tests cover that).
TEXTS = (
    "x",
    "hello world",
    "What is the capital of France?",
    "Ünïcödé text with emoji 🚀 and    spaces ",
    # kept whole alone, cut after an instruction (for most tokenizers)
    "The train leaves at 10:45 from platform 7 and arrives at 13:20, later than planned.",
    # far past max_length: truncated with or without an instruction
    "Machine learning models learn patterns from data; large language models learn from text. "
    "Mountains, rivers, forests and lakes make this region a favourite place for hikers, and "
    "the children played football in the park until it was too dark to see the ball. "
    "Rain is expected tomorrow morning, followed by sunshine in the afternoon and a clear night.",
)
SEPARATOR = "!@#$%^&*()"


def _load(mntp: Path, supervised: Path, pooling: str, max_length: int) -> LLM2Vec:
    """As LLM2Vec's README loads a published model: the -mntp base (its adapter merged by
    llm2vec) plus the supervised adapter, bidirectional."""
    return LLM2Vec.from_pretrained(
        str(mntp),
        peft_model_name_or_path=str(supervised),
        enable_bidirectional=True,
        pooling_mode=pooling,
        max_length=max_length,
        torch_dtype=torch.float32,
    )


def _encode_alone(model: LLM2Vec, instruction: str, texts: tuple[str, ...]) -> np.ndarray:
    """Each text in a batch of its own, so llm2vec's left padding (with no position ids) never applies."""
    rows = []
    for text in texts:
        vector = model.encode([[instruction, text]], batch_size=1, show_progress_bar=False, device="cpu")
        if vector.shape[0] != 1:
            raise RuntimeError(f"llm2vec returned {vector.shape[0]} rows for one text")
        rows.append(vector[0].to(torch.float32).numpy())
    result = np.stack(rows).astype(np.float32)
    if not np.isfinite(result).all():
        raise RuntimeError("llm2vec returned non-finite values")
    return result


def _poolings(model: LLM2Vec) -> list[str]:
    """bos_token needs a tokenizer that starts every input with BOS."""
    bos = model.tokenizer.bos_token_id
    starts_with_bos = bos is not None and model.tokenizer("a")["input_ids"][:1] == [bos]
    return [p for p in POOLINGS if p != "bos_token" or starts_with_bos]


def _cases_for(checkpoint: Checkpoint, index: int, local: Path) -> list[dict[str, Any]]:
    mntp, supervised = local / "mntp", local / "supervised"
    max_length = MAX_LENGTHS.get(checkpoint.key, MAX_LENGTH)
    probe = _load(mntp, supervised, "mean", max_length)
    if probe.model.config._name_or_path != checkpoint.name_or_path:
        raise RuntimeError(f"{checkpoint.key}: llm2vec sees {probe.model.config._name_or_path!r}")
    cases = []
    for pooling in _poolings(probe):
        model = _load(mntp, supervised, pooling, max_length)
        for instruction in ("", INSTRUCTIONS[index % len(INSTRUCTIONS)]):
            case_id = f"{checkpoint.key}-{pooling}-{'instruction' if instruction else 'plain'}"
            vectors = _encode_alone(model, instruction, TEXTS)
            np.save(VECTORS / f"{case_id}.npy", vectors, allow_pickle=False)
            cases.append(
                {
                    "id": case_id,
                    "checkpoint": checkpoint.key,
                    "family": checkpoint.family,
                    "name_or_path": checkpoint.name_or_path,
                    "wrapper": checkpoint.wrapper,
                    "pooling": pooling,
                    "max_length": max_length,
                    "instruction": instruction,
                    "texts": list(TEXTS),
                    "vectors": f"vectors/{case_id}.npy",
                    # How many tokens llm2vec ran per text (the prompt it built, after truncation).
                    "prompt_tokens": [_prompt_tokens(model, instruction, t) for t in TEXTS],
                }
            )
    return cases


def _prompt_tokens(model: LLM2Vec, instruction: str, text: str) -> int:
    prompt = model.prepare_for_tokenization(model._convert_to_str(instruction, text))
    features = model.tokenize([prompt])
    return int(features["attention_mask"].sum())


def main() -> None:
    if len(set(TEXTS)) != len(TEXTS) or any(SEPARATOR in t for t in TEXTS):
        raise SystemExit("golden texts must be distinct and free of llm2vec's separator")
    torch.set_num_threads(1)
    torch.use_deterministic_algorithms(True)
    for directory in (CHECKPOINTS_DIR, VECTORS):
        if directory.exists():
            shutil.rmtree(directory)
        directory.mkdir(parents=True)
    cases: list[dict[str, Any]] = []
    with tempfile.TemporaryDirectory() as scratch:
        for index, checkpoint in enumerate(CHECKPOINTS):
            write_checkpoint(checkpoint, CHECKPOINTS_DIR / checkpoint.key)
            # Encode from a copy made exactly as the gateway's tests make theirs.
            local = materialize(checkpoint.key, Path(scratch) / checkpoint.key)
            cases.extend(_cases_for(checkpoint, index, local))
            print(f"{checkpoint.key}: {checkpoint.name_or_path}")
    document = {
        "reference": {
            "llm2vec": "0.2.3",
            "transformers": __import__("transformers").__version__,
            "peft": __import__("peft").__version__,
            "tokenizers": __import__("tokenizers").__version__,
            "torch": torch.__version__,
            "call": "LLM2Vec.from_pretrained(mntp, peft_model_name_or_path=supervised, "
            "enable_bidirectional=True, pooling_mode=..., max_length=..., torch_dtype=float32)"
            ".encode([[instruction, text]], batch_size=1)",
        },
        "cases": cases,
    }
    CASES.write_text(json.dumps(document, indent=2, ensure_ascii=False) + "\n")
    print(f"{len(cases)} cases written to {CASES.parent}")


if __name__ == "__main__":
    main()
