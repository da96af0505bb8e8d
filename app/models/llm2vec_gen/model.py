"""The model part: the base model with the encoder adapter merged, and the projections.

Loaded as llm2vec-gen's `EncoderDecoderModel.from_pretrained` loads the encoder: AutoModel
of run_config.yml's base model, embeddings resized to the checkpoint's tokenizer, then the
peft adapter under encoder/ (TRAINABLE_TOKENS, or LoRA plus trainable tokens), here merged
into the weights for serving. The decoder is causal and stays so. Only the embedding is
computed: the package's decoder (for generation) is never loaded.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from typing import Any

import numpy as np
import numpy.typing as npt

from app.config import ModelSettings
from app.models.llm2vec_gen.checkpoint import ENCODER_DIR, Layout
from app.models.llm2vec_gen.projection import Projection, chain, load_projection
from app.models.protocol import ModelLoadError, TokenizedText
from app.models.torch_runtime import forward_context, pad_batch, pooled_mask, resolve_device, resolve_dtype

logger = logging.getLogger(__name__)


class LLM2VecGenEncoder:
    """Thread-confined to the model thread, as the EmbeddingBackend protocol says."""

    def __init__(self, settings: ModelSettings, layout: Layout, vocab_size: int, pad_id: int) -> None:
        from peft import PeftModel
        from transformers import AutoModel

        # The projections first: a refused file fails the load before the weights are read.
        projections = [load_projection(path) for path in layout.projections]
        self.device = resolve_device(settings.device)
        dtype = resolve_dtype(settings.dtype, self.device)
        try:
            base: Any = AutoModel.from_pretrained(layout.base_model, dtype=dtype)
        except OSError as exc:
            raise ModelLoadError(f"{settings.name}: base model {layout.base_model!r}: {exc}") from None
        if getattr(base.config, "is_encoder_decoder", False):
            raise ModelLoadError(f"{settings.name}: {type(base).__name__} is not a decoder-only model")
        # New rows, if any, are the special tokens, which the adapter overwrites: no random init.
        base.resize_token_embeddings(vocab_size, mean_resizing=False)
        model = PeftModel.from_pretrained(base, str(layout.directory), subfolder=ENCODER_DIR)
        self._model = model.merge_and_unload().to(self.device).eval()
        self.dimensions = chain(projections, int(self._model.config.hidden_size))
        self._projections: list[Projection] = [p.to(self.device) for p in projections]
        self._pad_id = pad_id
        logger.info(
            "llm2vec-gen %s: %s adapter merged, projections %s, mean of the last %d tokens",
            settings.name,
            "LoRA + trainable tokens" if layout.use_peft_for_encoder else "trainable tokens",
            [p.name for p in projections] or "none",
            layout.pooled_tokens,
        )

    def embed(self, batch: Sequence[TokenizedText]) -> npt.NDArray[np.float32]:
        with forward_context():
            # Left padding with position ids counting real tokens: every row ends at the
            # last column and sees the positions it would alone.
            ids, mask, positions = pad_batch(batch, self._pad_id, "left", self.device)
            out = self._model(input_ids=ids, attention_mask=mask, position_ids=positions, use_cache=False)
            n = max(item.pooled for item in batch)
            states = out.last_hidden_state[:, -n:].float()
            for projection in self._projections:
                states = projection(states)
            weights = pooled_mask(batch, ids.shape[1], self.device)[:, -n:]
            pooled = (states * weights.unsqueeze(-1)).sum(dim=1) / weights.sum(dim=1, keepdim=True)
            result: npt.NDArray[np.float32] = pooled.cpu().numpy().astype(np.float32, copy=False)
            return result
