"""on_overflow = "chunk" on a tiny LLM2Vec model: the instruction is repeated in every window and
left out of its mean, and the vector is the pooled-token-weighted mean of the windows'."""

from __future__ import annotations

import asyncio
from pathlib import Path

import numpy as np
from transformers import AutoTokenizer

from app.engine.engine import EmbeddingEngine, EmbeddingResult
from tests.conftest import settings_with
from tests.model.conftest import entry
from tests.model_factory import make_mntp_checkpoint

MAX_LENGTH = 40
INSTRUCTION = "Find it:"


def test_windows_repeat_the_instruction_and_average_by_pooled_tokens(tmp_path: Path) -> None:
    model = make_mntp_checkpoint(tmp_path, "llama")
    settings = settings_with(models=[entry(model, "chunked", max_length=MAX_LENGTH, on_overflow="chunk")])
    tokenizer = AutoTokenizer.from_pretrained(model.mntp)
    text = " ".join(f"word{i % 7} and more" for i in range(20))
    spans = tokenizer(text, add_special_tokens=False, return_offsets_mapping=True)["offset_mapping"]
    prompt = tokenizer(f"{INSTRUCTION} {text}")["input_ids"]
    assert len(prompt) > MAX_LENGTH
    # By hand: an empty text's prompt (BOS, the instruction) is the overhead; cut the text every
    # `budget` tokens; while a window's prompt is longer than the model's length, shrink the
    # budget by the excess and cut again.
    budget = MAX_LENGTH - len(tokenizer(f"{INSTRUCTION} ")["input_ids"])
    while True:
        cuts = [0] + [spans[k][0] for k in range(budget, len(spans), budget)]
        windows = [text[a:b] for a, b in zip(cuts, [*cuts[1:], len(text)], strict=True)]
        excess = max(len(tokenizer(f"{INSTRUCTION} {w}")["input_ids"]) for w in windows) - MAX_LENGTH
        if excess <= 0:
            break
        budget -= excess
    assert len(windows) >= 3
    pooled = [len(tokenizer(w, add_special_tokens=False)["input_ids"]) for w in windows]

    engine = EmbeddingEngine(settings)
    engine.start()
    engine.wait_loaded(120)
    assert engine.ready, engine.status()

    async def run() -> tuple[EmbeddingResult, EmbeddingResult]:
        whole = await engine.embed("chunked", text, instruction=INSTRUCTION)
        parts = await engine.embed("chunked", windows, instruction=INSTRUCTION)
        return whole, parts

    try:
        whole, parts = asyncio.run(run())
    finally:
        engine.stop()
    weights = np.array(pooled, dtype=np.float64)[:, None]
    want = (parts.vectors.astype(np.float64) * weights).sum(axis=0) / weights.sum()
    np.testing.assert_allclose(whole.vectors[0], want, rtol=1e-4, atol=1e-5)
    assert whole.prompt_tokens == parts.prompt_tokens  # every window's tokens, instruction included
