"""LLM2Vec models: a decoder LLM with bidirectional attention, LoRA adapters merged.

Loading goes through llm2vec itself (its bidirectional classes and its prompt handling);
serving does not use `LLM2Vec.encode()`, which moves the model every batch, shows progress
bars and tokenizes text by text. Instead it tokenizes a whole batch at once and pools with
the instruction left out, exactly as encode() does, but without llm2vec's in-band
separator: a user text containing `!@#$%^&*()` cannot shift the pooled span.
"""

from __future__ import annotations

import logging
import secrets
from collections.abc import Sequence
from typing import Any

import numpy as np
import numpy.typing as npt
import torch

from app.config import ModelSettings
from app.models.protocol import ModelLoadError, TokenizedText
from app.models.tokenization import token_spans, tokenize_truncating
from app.models.torch_runtime import forward_context, pad_batch, pooled_mask, resolve_device, resolve_dtype

logger = logging.getLogger(__name__)

# llm2vec 0.2.3 ships bidirectional classes for these; its Qwen2 class stays causal.
SUPPORTED_CONFIGS = {"LlamaConfig", "MistralConfig", "GemmaConfig"}


def _check_architecture(base_model: str) -> None:
    from transformers import AutoConfig

    config_name = type(AutoConfig.from_pretrained(base_model)).__name__
    if config_name == "Qwen2Config":
        raise ModelLoadError(
            f"{base_model}: llm2vec 0.2.3's Qwen2 model keeps causal attention, so its embeddings "
            "would silently differ from LLM2Vec's; Qwen2 models are refused"
        )
    if config_name not in SUPPORTED_CONFIGS:
        raise ModelLoadError(
            f"{base_model}: {config_name} has no bidirectional LLM2Vec class "
            f"(supported: {', '.join(sorted(SUPPORTED_CONFIGS))})"
        )


class LLM2VecBackend:
    """Serves one LLM2Vec model; thread-confined as the EmbeddingBackend protocol says."""

    def __init__(self, settings: ModelSettings, path: str) -> None:
        from llm2vec import LLM2Vec
        from peft import PeftModel

        _check_architecture(path)
        self.device = resolve_device(settings.device)
        dtype = resolve_dtype(settings.dtype, self.device)
        l2v = LLM2Vec.from_pretrained(
            path,
            enable_bidirectional=True,
            pooling_mode=settings.pooling,
            max_length=settings.max_length,
            torch_dtype=dtype,
        )
        model: Any = l2v.model
        for adapter in settings.adapters:
            model = PeftModel.from_pretrained(model, adapter).merge_and_unload()
        self._model = model.to(self.device).eval()
        self._l2v = l2v
        self._tokenizer = l2v.tokenizer
        self._pooling = settings.pooling
        self.max_length = settings.max_length
        self.dimensions = int(self._model.config.hidden_size)
        self.vocab_size = len(self._tokenizer)
        self._pad_id = int(self._tokenizer.pad_token_id)
        # Marks where the text starts inside the prompt llm2vec builds; unguessable, so
        # no input can contain it (llm2vec's own marker is a fixed, public string).
        self._mark = f"\x00{secrets.token_hex(16)}\x00"
        if self._pooling == "bos_token":
            bos = self._tokenizer.bos_token_id
            first = self._tokenizer("a")["input_ids"][:1]
            if bos is None or first != [bos]:
                raise ModelLoadError(
                    f"{settings.base_model}: bos_token pooling needs a tokenizer that starts every "
                    "input with a BOS token, and this one does not"
                )

    def _prompt(self, text: str, instruction: str) -> tuple[str, str]:
        """(full prompt, pooled part), built as LLM2Vec.encode() builds them."""
        joined = f"{instruction.strip()} {self._mark}{text}" if instruction else f"{self._mark}{text}"
        prepared: str = self._l2v.prepare_for_tokenization(joined)
        before, _, after = prepared.partition(self._mark)
        return before + after, after

    def tokenize(self, texts: Sequence[str], instruction: str) -> list[TokenizedText]:
        prompts = [self._prompt(text, instruction) for text in texts]
        kept = tokenize_truncating(self._tokenizer, [p[0] for p in prompts], self.max_length)
        pooled = self._tokenizer(
            [p[1] for p in prompts], add_special_tokens=False, truncation=True, max_length=self.max_length
        )["input_ids"]
        return [
            TokenizedText(input_ids=ids, pooled=len(span), full_length=n)
            for (ids, n), span in zip(kept, pooled, strict=True)
        ]

    def embed(self, batch: Sequence[TokenizedText]) -> npt.NDArray[np.float32]:
        with forward_context():
            ids, mask, positions = pad_batch(batch, self._pad_id, "left", self.device)
            hidden = self._model(input_ids=ids, attention_mask=mask, position_ids=positions, use_cache=False)
            states = hidden.last_hidden_state.float()
            if self._pooling in ("eos_token", "last_token"):
                pooled = states[:, -1]
            elif self._pooling == "bos_token":
                first = mask.shape[1] - mask.sum(dim=1)
                pooled = states[torch.arange(len(batch), device=states.device), first]
            else:
                weights = pooled_mask(batch, ids.shape[1], self.device)
                if self._pooling == "weighted_mean":
                    # llm2vec weighs the k-th pooled token by k.
                    weights = weights * (weights.cumsum(dim=1))
                weights = weights / weights.sum(dim=1, keepdim=True)
                pooled = (states * weights.unsqueeze(-1)).sum(dim=1)
            result: npt.NDArray[np.float32] = pooled.cpu().numpy().astype(np.float32, copy=False)
            return result

    def token_spans(self, text: str) -> list[tuple[int, int]]:
        """Where each token of `text` alone lies in it (for on_overflow = "chunk")."""
        return token_spans(self._tokenizer, text)

    def decode_ids(self, ids: Sequence[int]) -> str:
        text: str = self._tokenizer.decode(list(ids))
        return text
