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


class EncoderTokenizer:
    """The tokenizer part: no weights (the config is read to check max_length)."""

    def __init__(self, settings: ModelSettings, path: str) -> None:
        from transformers import AutoConfig, AutoTokenizer

        revision = settings.revision or None
        self._tokenizer: Any = AutoTokenizer.from_pretrained(path, revision=revision)
        config = AutoConfig.from_pretrained(path, revision=revision)
        limit = int(getattr(config, "max_position_embeddings", settings.max_length))
        if settings.max_length > limit:
            raise ModelLoadError(
                f"{settings.name}: max_length {settings.max_length} is over the model's {limit} positions"
            )
        self.max_length = settings.max_length
        self.vocab_size = len(self._tokenizer)

    def tokenize(self, texts: Sequence[str], instruction: str) -> list[TokenizedText]:
        prompts = [f"{instruction}{text}" for text in texts] if instruction else list(texts)
        return [
            TokenizedText(input_ids=t.ids, pooled=len(t.ids), full_length=t.length, full_length_exact=t.exact)
            for t in tokenize_truncating(self._tokenizer, prompts, self.max_length)
        ]

    def token_spans(self, text: str) -> list[tuple[int, int]]:
        """Where each token of `text` alone lies in it (for on_overflow = "chunk")."""
        return token_spans(self._tokenizer, text)

    def decode_ids(self, ids: Sequence[int]) -> str:
        text: str = self._tokenizer.decode(list(ids), skip_special_tokens=True)
        return text


class EncoderModel:
    """The model part: the weights and the forward pass."""

    def __init__(self, settings: ModelSettings, path: str) -> None:
        from transformers import AutoModel

        self.device = resolve_device(settings.device)
        model: Any = AutoModel.from_pretrained(
            path, revision=settings.revision or None, dtype=resolve_dtype(settings.dtype, self.device)
        )
        self._model = model.to(self.device).eval()
        self.dimensions = int(self._model.config.hidden_size)
        self._pad_id = int(self._model.config.pad_token_id or 0)

    def embed(self, batch: Sequence[TokenizedText]) -> npt.NDArray[np.float32]:
        with forward_context():
            ids, mask, _ = pad_batch(batch, self._pad_id, "right", self.device)
            states = self._model(input_ids=ids, attention_mask=mask).last_hidden_state.float()
            weights = mask.unsqueeze(-1).float()
            pooled = (states * weights).sum(dim=1) / weights.sum(dim=1).clamp(min=1e-9)
            result: npt.NDArray[np.float32] = pooled.cpu().numpy().astype(np.float32, copy=False)
            return result
