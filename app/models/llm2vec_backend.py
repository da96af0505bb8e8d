"""LLM2Vec models: a decoder LLM with bidirectional attention, LoRA adapters merged.

Loading and prompt building are the gateway's own reproduction of llm2vec 0.2.3
(app/models/llm2vec). Serving does not copy `LLM2Vec.encode()`, which moves the model every
batch, shows progress bars and tokenizes text by text: a whole batch is tokenized at once
and pooled with the instruction left out, exactly as encode() does, but without llm2vec's
in-band separator: a user text containing `!@#$%^&*()` cannot shift the pooled span.

Two parts, so the weights can live apart from the tokenizer: `LLM2VecTokenizer` (prompts,
token ids, no weights) and `LLM2VecModel` (the weights; sees only TokenizedText).
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
from app.models.cuda_graphs import GraphedForward
from app.models.llm2vec.loading import Checkpoint, check_bidirectional, inspect_checkpoint, load_model
from app.models.llm2vec.prompts import (
    cut_to_doc_max_length,
    join_instruction,
    prepare_for_tokenization,
)
from app.models.protocol import ModelLoadError, TokenizedText
from app.models.tokenization import token_spans, tokenize_truncating
from app.models.torch_runtime import forward_context, pad_batch, pooled_mask, resolve_device, resolve_dtype

logger = logging.getLogger(__name__)

# The largest batch shape captured as a CUDA graph: query-sized batches, whose forward is
# bound by kernel launches; longer ones are bound by the GPU and run eagerly.
GRAPH_MAX_ROWS, GRAPH_MAX_WIDTH = 32, 256


class LLM2VecTokenizer:
    """Builds llm2vec's prompts and tokenizes them; no weights."""

    def __init__(self, settings: ModelSettings, checkpoint: Checkpoint) -> None:
        from transformers import AutoTokenizer

        self._tokenizer: Any = AutoTokenizer.from_pretrained(checkpoint.path, revision=checkpoint.revision)
        # llm2vec pads with EOS, on the left.
        self._tokenizer.pad_token = self._tokenizer.eos_token
        self._tokenizer.padding_side = "left"
        self._name_or_path = checkpoint.name_or_path
        self._model_type = checkpoint.model_type
        self._pooling = settings.pooling
        self.max_length = settings.max_length
        self._doc_max_length = checkpoint.doc_max_length
        self.vocab_size = len(self._tokenizer)
        self.pad_id = int(self._tokenizer.pad_token_id)
        # Marks where the text starts inside the prompt; unguessable, so no input can
        # contain it (llm2vec's own marker is a fixed, public string).
        self._mark = f"\x00{secrets.token_hex(16)}\x00"
        if self._pooling == "bos_token":
            bos = self._tokenizer.bos_token_id
            first = self._tokenizer("a")["input_ids"][:1]
            if bos is None or first != [bos]:
                raise ModelLoadError(
                    f"{settings.base_model}: bos_token pooling needs a tokenizer that starts every "
                    "input with a BOS token, and this one does not"
                )

    def prompt(self, text: str, instruction: str) -> tuple[str, str]:
        """(full prompt, pooled part), built as LLM2Vec.encode() builds them."""
        joined = join_instruction(instruction, self._mark, text)
        prepared = prepare_for_tokenization(joined, self._name_or_path, self._model_type, self._pooling)
        before, _, after = prepared.partition(self._mark)
        return before + after, after

    def _text_tokens(self, text: str) -> int:
        # The length after truncation, as llm2vec counts it; a huge text is cut first.
        [kept] = tokenize_truncating(self._tokenizer, [text], self.max_length, add_special_tokens=False)
        return len(kept.ids)

    def _cut_long_texts(self, texts: Sequence[str]) -> list[str]:
        """llm2vec cuts a text of over doc_max_length tokens by words before building the
        prompt; only possible where max_length allows that many tokens."""
        result = list(texts)
        if self.max_length <= self._doc_max_length:
            return result
        # Every token covers at least one byte (plus, at most, a word-start marker), so only
        # texts of more bytes than doc_max_length can be over it: short ones skip the count.
        long_rows = [i for i, text in enumerate(texts) if len(text.encode()) + 2 > self._doc_max_length]
        for i in long_rows:
            result[i] = cut_to_doc_max_length(texts[i], self._text_tokens, self._doc_max_length)
        return result

    def tokenize(self, texts: Sequence[str], instruction: str) -> list[TokenizedText]:
        prompts = [self.prompt(text, instruction) for text in self._cut_long_texts(texts)]
        kept = tokenize_truncating(self._tokenizer, [p[0] for p in prompts], self.max_length)
        # llm2vec's embed_mask: the last len(text tokens) positions of each row.
        pooled = tokenize_truncating(
            self._tokenizer, [p[1] for p in prompts], self.max_length, add_special_tokens=False
        )
        return [
            TokenizedText(t.ids, pooled=len(span.ids), full_length=t.length, full_length_exact=t.exact)
            for t, span in zip(kept, pooled, strict=True)
        ]

    def token_spans(self, text: str) -> list[tuple[int, int]]:
        """Where each token of `text` alone lies in it (for on_overflow = "chunk")."""
        return token_spans(self._tokenizer, text)

    def decode_ids(self, ids: Sequence[int]) -> str:
        text: str = self._tokenizer.decode(list(ids))
        return text


class LLM2VecModel:
    """The bidirectional model and llm2vec's pooling over left-padded rows."""

    def __init__(self, settings: ModelSettings, checkpoint: Checkpoint, pad_id: int) -> None:
        self.device = resolve_device(settings.device)
        dtype = resolve_dtype(settings.dtype, self.device)
        model = load_model(checkpoint, list(settings.adapters), settings.revision or None, dtype, "sdpa")
        self._model = model.to(self.device)
        check_bidirectional(self._model, self.device)
        self._pooling = settings.pooling
        self._pad_id = pad_id
        self.dimensions = int(self._model.config.hidden_size)
        self._graphs: GraphedForward | None = None
        if settings.cuda_graphs and self.device.startswith("cuda"):
            self._graphs = GraphedForward(
                self._model, self.device, pad_id, GRAPH_MAX_ROWS, min(GRAPH_MAX_WIDTH, settings.max_length)
            )
            self._graphs.capture()

    def pool_weights(self, batch: Sequence[TokenizedText], width: int) -> torch.Tensor:
        """Each row's weight per token of a left-padded batch `width` wide: every pooling
        mode as one weighted sum, eagerly and in the CUDA graphs (a one-hot row for a token
        mode; llm2vec weighs the k-th pooled token by k for weighted_mean)."""
        if self._pooling in ("eos_token", "last_token"):
            weights = torch.zeros((len(batch), width), dtype=torch.float32)
            weights[:, -1] = 1.0
            return weights
        if self._pooling == "bos_token":
            weights = torch.zeros((len(batch), width), dtype=torch.float32)
            for row, item in enumerate(batch):
                weights[row, width - len(item.input_ids)] = 1.0
            return weights
        weights = pooled_mask(batch, width, "cpu")
        if self._pooling == "weighted_mean":
            weights = weights * weights.cumsum(dim=1)
        return weights / weights.sum(dim=1, keepdim=True)

    def embed(self, batch: Sequence[TokenizedText]) -> npt.NDArray[np.float32]:
        with forward_context():
            if self._graphs is not None and self._graphs.fits(batch):
                return self._graphs.run(batch, self.pool_weights)
            ids, mask, positions = pad_batch(batch, self._pad_id, "left", self.device)
            hidden = self._model(input_ids=ids, attention_mask=mask, position_ids=positions, use_cache=False)
            states = hidden.last_hidden_state.float()
            weights = self.pool_weights(batch, ids.shape[1]).to(self.device)
            pooled = (states * weights.unsqueeze(-1)).sum(dim=1)
            result: npt.NDArray[np.float32] = pooled.cpu().numpy().astype(np.float32, copy=False)
            return result


class LLM2VecBackend:
    """Serves one LLM2Vec model; thread-confined as the EmbeddingBackend protocol says."""

    def __init__(self, settings: ModelSettings, path: str) -> None:
        checkpoint = inspect_checkpoint(path, settings.revision or None, list(settings.adapters))
        self.tokenizer = LLM2VecTokenizer(settings, checkpoint)
        self.model = LLM2VecModel(settings, checkpoint, self.tokenizer.pad_id)
        self.max_length = self.tokenizer.max_length
        self.vocab_size = self.tokenizer.vocab_size
        self.dimensions = self.model.dimensions
        self.device = self.model.device

    def tokenize(self, texts: Sequence[str], instruction: str) -> list[TokenizedText]:
        return self.tokenizer.tokenize(texts, instruction)

    def embed(self, batch: Sequence[TokenizedText]) -> npt.NDArray[np.float32]:
        return self.model.embed(batch)

    def token_spans(self, text: str) -> list[tuple[int, int]]:
        return self.tokenizer.token_spans(text)

    def decode_ids(self, ids: Sequence[int]) -> str:
        return self.tokenizer.decode_ids(ids)
