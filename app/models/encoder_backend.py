"""Plain transformers encoders (BERT-like) with mean pooling over the attention mask,
as sentence-transformers does for models such as all-MiniLM-L6-v2.

Rows are padded on the right: these models use absolute positions. An instruction, where
one is set, is a text prefix and is pooled with the text (sentence-transformers' prompts).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import numpy.typing as npt

from app.config import ModelSettings
from app.models.protocol import ModelLoadError, TokenizedText
from app.models.tokenization import token_spans, tokenize_truncating
from app.models.torch_runtime import forward_context, pad_batch, resolve_device, resolve_dtype


class EncoderBackend:
    def __init__(self, settings: ModelSettings, path: str) -> None:
        from transformers import AutoModel, AutoTokenizer

        self.device = resolve_device(settings.device)
        revision = settings.revision or None
        self._tokenizer: Any = AutoTokenizer.from_pretrained(path, revision=revision)
        model: Any = AutoModel.from_pretrained(
            path, revision=revision, dtype=resolve_dtype(settings.dtype, self.device)
        )
        self._model = model.to(self.device).eval()
        limit = int(getattr(self._model.config, "max_position_embeddings", settings.max_length))
        if settings.max_length > limit:
            raise ModelLoadError(
                f"{settings.name}: max_length {settings.max_length} is over the model's {limit} positions"
            )
        self.max_length = settings.max_length
        self.dimensions = int(self._model.config.hidden_size)
        self.vocab_size = len(self._tokenizer)
        self._pad_id = int(self._tokenizer.pad_token_id or 0)

    def tokenize(self, texts: Sequence[str], instruction: str) -> list[TokenizedText]:
        prompts = [f"{instruction}{text}" for text in texts] if instruction else list(texts)
        return [
            TokenizedText(input_ids=ids, pooled=len(ids), full_length=n)
            for ids, n in tokenize_truncating(self._tokenizer, prompts, self.max_length)
        ]

    def embed(self, batch: Sequence[TokenizedText]) -> npt.NDArray[np.float32]:
        with forward_context():
            ids, mask, _ = pad_batch(batch, self._pad_id, "right", self.device)
            states = self._model(input_ids=ids, attention_mask=mask).last_hidden_state.float()
            weights = mask.unsqueeze(-1).float()
            pooled = (states * weights).sum(dim=1) / weights.sum(dim=1).clamp(min=1e-9)
            result: npt.NDArray[np.float32] = pooled.cpu().numpy().astype(np.float32, copy=False)
            return result

    def token_spans(self, text: str) -> list[tuple[int, int]]:
        """Where each token of `text` alone lies in it (for on_overflow = "chunk")."""
        return token_spans(self._tokenizer, text)

    def decode_ids(self, ids: Sequence[int]) -> str:
        text: str = self._tokenizer.decode(list(ids), skip_special_tokens=True)
        return text
