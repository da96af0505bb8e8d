"""What the engine needs from a model backend. Backends see token ids, never HTTP."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Protocol

import numpy as np
import numpy.typing as npt


class ModelLoadError(Exception):
    """A model that cannot be served (missing files, unsupported architecture...)."""


class BatchMemoryError(Exception):
    """The accelerator ran out of memory on a batch; a smaller batch may fit."""


@dataclass(frozen=True, slots=True)
class TokenizedText:
    """One input as the model will run it."""

    input_ids: tuple[int, ...]
    # How many trailing tokens are pooled: LLM2Vec leaves the instruction out of the mean.
    pooled: int
    # Tokens before truncation to max_length; equals len(input_ids) when nothing was cut.
    full_length: int
    # False where an over-long text was cut before tokenizing (app.models.tokenization):
    # full_length is then only a lower bound, over max_length.
    full_length_exact: bool = True


class EmbeddingBackend(Protocol):
    """A loaded model. Calls come from one tokenizer thread and one model thread per model."""

    dimensions: int
    max_length: int
    vocab_size: int
    device: str

    def tokenize(self, texts: Sequence[str], instruction: str) -> list[TokenizedText]:
        """Tokenize texts (with the instruction where the model uses one), truncating to max_length."""
        ...

    def embed(self, batch: Sequence[TokenizedText]) -> npt.NDArray[np.float32]:
        """Run one padded batch; returns (len(batch), dimensions) float32, not normalised."""
        ...

    def decode_ids(self, ids: Sequence[int]) -> str:
        """The text for the model's own token ids (for `token_ids = "native"`)."""
        ...
