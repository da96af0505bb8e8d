"""LLM2Vec embeddings computed without the gateway's loader: transformers' eager attention
with an explicit 4D mask (all zeros = every token sees every token, or a causal one), the
MNTP and supervised adapters merged with peft directly, and the mean over the text's own
tokens taken by hand. Used as the reference where llm2vec itself cannot run (Qwen2, Qwen3)."""

from __future__ import annotations

from functools import cache
from typing import Any

import numpy as np
import torch
from peft import PeftModel
from transformers import AutoModel, AutoTokenizer

from tests.model_factory import TinyCheckpoint


@cache
def _model(weights: str, mntp: str, adapter: str) -> Any:
    model: Any = AutoModel.from_pretrained(weights, attn_implementation="eager", dtype=torch.float32)
    model = PeftModel.from_pretrained(model, mntp).merge_and_unload()
    model = PeftModel.from_pretrained(model, adapter).merge_and_unload()
    return model.eval()


def model(checkpoint: TinyCheckpoint) -> Any:
    return _model(str(checkpoint.weights), str(checkpoint.mntp), str(checkpoint.adapter))


@cache
def tokenizer(checkpoint: TinyCheckpoint) -> Any:
    return AutoTokenizer.from_pretrained(checkpoint.mntp)


def forward(checkpoint: TinyCheckpoint, prompt: str, causal: bool = False, max_length: int = 64) -> Any:
    """The model's output for one unpadded prompt (its first `max_length` tokens, as the
    tokenizer's right truncation keeps), every layer's hidden states included."""
    ids = tokenizer(checkpoint)(prompt, return_tensors="pt")["input_ids"][:, :max_length]
    width = ids.shape[1]
    mask = torch.zeros((1, 1, width, width))
    if causal:
        mask = torch.full((1, 1, width, width), torch.finfo(torch.float32).min).triu(1)
    with torch.no_grad():
        return model(checkpoint)(input_ids=ids, attention_mask=mask, output_hidden_states=True)


def mean_embedding(
    checkpoint: TinyCheckpoint, text: str, instruction: str = "", causal: bool = False, whole: bool = False
) -> np.ndarray:
    """llm2vec's mean pooling, by hand: the prompt is `instruction text` (the tiny checkpoints
    name no model, so no wrapper applies); only the text's own tokens are averaged."""
    prompt = f"{instruction.strip()} {text}" if instruction else text
    states = forward(checkpoint, prompt, causal).last_hidden_state[0]
    n_text = len(tokenizer(checkpoint)(text, add_special_tokens=False)["input_ids"])
    span = states if whole else states[-n_text:]
    return span.mean(dim=0).numpy()


def cosine(a: Any, b: Any) -> float:
    a, b = np.asarray(a, dtype=np.float64), np.asarray(b, dtype=np.float64)
    return float(a @ b / (np.linalg.norm(a) * np.linalg.norm(b)))
