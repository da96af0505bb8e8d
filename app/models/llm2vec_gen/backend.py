"""An LLM2Vec-Gen checkpoint as one EmbeddingBackend: the tokenizer part and the model part."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import numpy.typing as npt

from app.config import ModelSettings
from app.models.llm2vec_gen.checkpoint import Layout, locate, read_layout
from app.models.llm2vec_gen.model import LLM2VecGenEncoder
from app.models.llm2vec_gen.tokenizer import LLM2VecGenTokenizer
from app.models.protocol import TokenizedText


def load_tokenizer_part(settings: ModelSettings, path: str) -> tuple[Layout, LLM2VecGenTokenizer]:
    layout = read_layout(locate(path))
    return layout, LLM2VecGenTokenizer(settings, layout)


class LLM2VecGenBackend:
    def __init__(self, settings: ModelSettings, path: str) -> None:
        layout, self.tokenizer = load_tokenizer_part(settings, path)
        self.model = LLM2VecGenEncoder(settings, layout, self.tokenizer.vocab_size, self.tokenizer.pad_id)
        self.dimensions = self.model.dimensions
        self.device = self.model.device
        self.max_length = self.tokenizer.max_length
        self.vocab_size = self.tokenizer.vocab_size

    def tokenize(self, texts: Sequence[str], instruction: str) -> list[TokenizedText]:
        return self.tokenizer.tokenize(texts, instruction)

    def embed(self, batch: Sequence[TokenizedText]) -> npt.NDArray[np.float32]:
        return self.model.embed(batch)

    def decode_ids(self, ids: Sequence[int]) -> str:
        return self.tokenizer.decode_ids(ids)
