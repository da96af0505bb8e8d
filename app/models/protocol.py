"""What the engine needs from a model backend. Backends see token ids, never HTTP.

A backend comes in two parts, so that the weights can live in a worker process while the
gateway process tokenizes: a tokenizer part (no weights, cheap to load) and a model part
(the weights, the forward pass), which needs nothing but the TokenizedText items.
`EmbeddingBackend` is both together, as one object (`CombinedBackend`).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Protocol

import numpy as np
import numpy.typing as npt

if TYPE_CHECKING:
    from app.config import ModelSettings


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


class EmbeddingTokenizer(Protocol):
    """The tokenizer part: used from one tokenizer thread per model."""

    max_length: int
    vocab_size: int

    def tokenize(self, texts: Sequence[str], instruction: str) -> list[TokenizedText]:
        """Tokenize texts (with the instruction where the model uses one), truncating to max_length."""
        ...

    def decode_ids(self, ids: Sequence[int]) -> str:
        """The text for the model's own token ids (for `token_ids = "native"`)."""
        ...


class EmbeddingModel(Protocol):
    """The model part: the weights, used from one thread (a model thread or a worker process)."""

    dimensions: int
    device: str

    def embed(self, batch: Sequence[TokenizedText]) -> npt.NDArray[np.float32]:
        """Run one padded batch; returns (len(batch), dimensions) float32, not normalised."""
        ...


class EmbeddingBackend(EmbeddingTokenizer, EmbeddingModel, Protocol):
    """A loaded model: both parts."""


class BackendLoader(Protocol):
    """Loads the two parts of a model entry. The engine pickles it once into each worker
    process, so an implementation must be a module-level class with picklable fields."""

    def load_tokenizer(self, entry: ModelSettings) -> EmbeddingTokenizer: ...

    def load_model(self, entry: ModelSettings) -> EmbeddingModel: ...


class CombinedBackend:
    """A tokenizer part and a model part as one `EmbeddingBackend`."""

    def __init__(self, tokenizer: EmbeddingTokenizer, model: EmbeddingModel) -> None:
        self.tokenizer = tokenizer
        self.model = model
        self.max_length = tokenizer.max_length
        self.vocab_size = tokenizer.vocab_size
        self.dimensions = model.dimensions
        self.device = model.device

    def tokenize(self, texts: Sequence[str], instruction: str) -> list[TokenizedText]:
        return self.tokenizer.tokenize(texts, instruction)

    def decode_ids(self, ids: Sequence[int]) -> str:
        return self.tokenizer.decode_ids(ids)

    def embed(self, batch: Sequence[TokenizedText]) -> npt.NDArray[np.float32]:
        return self.model.embed(batch)
