"""The embedding engine: names -> loaded models, validation, tokenization, batching, pooling.

Usable without HTTP. Per loaded model there is one tokenizer thread and one model thread:
the event loop never runs a tokenizer or a forward pass, a fast tokenizer is never used
from two threads at once, and the next request's tokenization overlaps the current forward.
"""

from __future__ import annotations

import asyncio
import logging
import threading
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Literal

import numpy as np
import numpy.typing as npt

from app.config import ModelSettings, Settings
from app.engine.batcher import plan_batches
from app.engine.observer import EngineObserver, NullObserver
from app.engine.token_inputs import NativeIds, TextInputs, TiktokenIds, TokenInputs, parse_input
from app.errors import (
    ContextLengthExceededError,
    InvalidRequestError,
    ModelNotFoundError,
    OverloadedError,
)
from app.models.protocol import EmbeddingBackend, TokenizedText

logger = logging.getLogger(__name__)

Loader = Callable[[ModelSettings], EmbeddingBackend]
ModelState = Literal["loading", "ready", "failed"]


@dataclass(frozen=True, slots=True)
class ServedModel:
    """A name clients send: a loaded model plus the instruction that name implies."""

    name: str
    entry: ModelSettings
    instruction: str


@dataclass(frozen=True, slots=True)
class EmbeddingResult:
    vectors: npt.NDArray[np.float32]
    prompt_tokens: int
    # Time from queueing to the first forward pass, and in forward passes.
    queue_seconds: float = 0.0
    compute_seconds: float = 0.0


@dataclass
class _Slot:
    """One loaded model and the two threads that use it."""

    entry: ModelSettings
    state: ModelState = "loading"
    backend: EmbeddingBackend | None = None
    error: str = ""
    tokenizer_thread: ThreadPoolExecutor = field(default_factory=lambda: ThreadPoolExecutor(1))
    model_thread: ThreadPoolExecutor = field(default_factory=lambda: ThreadPoolExecutor(1))


class EmbeddingEngine:
    def __init__(
        self, settings: Settings, loader: Loader | None = None, observer: EngineObserver | None = None
    ) -> None:
        self._settings = settings
        self._loader = loader
        self._observer: EngineObserver = observer or NullObserver()
        self._slots = {entry.name: _Slot(entry) for entry in settings.models}
        self._served: dict[str, ServedModel] = {}
        for entry in settings.models:
            self._served[entry.name] = ServedModel(entry.name, entry, entry.instruction)
            for alias in entry.aliases:
                self._served[alias.name] = ServedModel(alias.name, entry, alias.instruction)
        self._tiktoken: TiktokenIds | None = None
        self._loading: threading.Thread | None = None

    # -- lifecycle ---------------------------------------------------------------------------

    def start(self) -> None:
        """Load every model in the background; `ready` turns true when all are loaded."""
        self._loading = threading.Thread(target=self._load_all, name="model-loader", daemon=True)
        self._loading.start()

    def _load_all(self) -> None:
        from app.models.registry import load_backend
        from app.models.torch_runtime import configure_threads

        configure_threads(self._settings.engine.torch_threads)
        loader = self._loader or load_backend
        token_ids = self._settings.api.token_ids
        if token_ids != "native":
            self._tiktoken = TiktokenIds(token_ids)
        for slot in self._slots.values():
            try:
                slot.backend = loader(slot.entry)
                slot.state = "ready"
                logger.info(
                    "model %s loaded on %s (%d dimensions)",
                    slot.entry.name,
                    slot.backend.device,
                    slot.backend.dimensions,
                )
            except Exception as exc:
                slot.state = "failed"
                slot.error = f"{type(exc).__name__}: {exc}"
                logger.exception("model %s failed to load", slot.entry.name)

    def wait_loaded(self, timeout: float | None = None) -> None:
        if self._loading is not None:
            self._loading.join(timeout)

    def stop(self) -> None:
        for slot in self._slots.values():
            slot.tokenizer_thread.shutdown(wait=False, cancel_futures=True)
            slot.model_thread.shutdown(wait=False, cancel_futures=True)

    @property
    def ready(self) -> bool:
        return all(slot.state == "ready" for slot in self._slots.values())

    def status(self) -> dict[str, str]:
        """Each model's state, with the load error where it failed."""
        return {
            name: slot.state if slot.state != "failed" else f"failed: {slot.error}"
            for name, slot in self._slots.items()
        }

    # -- names -------------------------------------------------------------------------------

    def served_models(self) -> list[ServedModel]:
        return list(self._served.values())

    def resolve(self, name: str) -> ServedModel:
        served = self._served.get(name)
        if served is None:
            raise ModelNotFoundError(name)
        return served

    def dimensions(self, name: str) -> int | None:
        backend = self._slots[self.resolve(name).entry.name].backend
        return backend.dimensions if backend is not None else None

    # -- embedding ---------------------------------------------------------------------------

    async def embed(
        self,
        model: str,
        raw_input: object,
        *,
        instruction: str | None = None,
        dimensions: int | None = None,
    ) -> EmbeddingResult:
        served = self.resolve(model)
        slot = self._slots[served.entry.name]
        backend = slot.backend
        if backend is None:
            message = "is still loading" if slot.state == "loading" else "failed to load"
            raise OverloadedError(
                f"The model `{model}` {message}; please try again later.", headers={"Retry-After": "5"}
            )
        inputs = parse_input(raw_input, self._settings.api.max_inputs)
        if dimensions is not None and not 1 <= dimensions <= backend.dimensions:
            raise InvalidRequestError(
                f"Invalid value for 'dimensions' = {dimensions}: this model supports from 1 "
                f"to {backend.dimensions} dimensions.",
                param="dimensions",
            )
        text = served.instruction if instruction is None else instruction
        loop = asyncio.get_running_loop()
        tokenized = await loop.run_in_executor(
            slot.tokenizer_thread, self._tokenize, slot.entry, backend, inputs, text
        )
        vectors = await loop.run_in_executor(slot.model_thread, self._forward, backend, tokenized)
        if dimensions is not None:
            vectors = vectors[:, :dimensions]
        if served.entry.normalize:
            norms = np.linalg.norm(vectors, axis=1, keepdims=True)
            vectors = vectors / np.maximum(norms, 1e-12)
        return EmbeddingResult(
            vectors=np.ascontiguousarray(vectors, dtype=np.float32),
            prompt_tokens=sum(len(t.input_ids) for t in tokenized),
        )

    def _texts(self, backend: EmbeddingBackend, inputs: TextInputs | TokenInputs) -> list[str]:
        if isinstance(inputs, TextInputs):
            return inputs.texts
        limit = self._settings.api.max_request_tokens
        requested = sum(len(ids) for ids in inputs.ids)
        if requested > limit:
            raise _too_many_tokens(requested, limit)
        decoder = self._tiktoken or NativeIds(backend.vocab_size, backend.decode_ids)
        return [decoder.decode(ids) for ids in inputs.ids]

    def _tokenize(
        self,
        entry: ModelSettings,
        backend: EmbeddingBackend,
        inputs: TextInputs | TokenInputs,
        instruction: str,
    ) -> list[TokenizedText]:
        tokenized = backend.tokenize(self._texts(backend, inputs), instruction)
        if entry.on_overflow == "error":
            longest = max(t.full_length for t in tokenized)
            if longest > entry.max_length:
                raise ContextLengthExceededError(entry.max_length, longest)
        requested = sum(len(t.input_ids) for t in tokenized)
        limit = self._settings.api.max_request_tokens
        if requested > limit:
            raise _too_many_tokens(requested, limit)
        return tokenized

    def _forward(self, backend: EmbeddingBackend, tokenized: list[TokenizedText]) -> npt.NDArray[np.float32]:
        # Identical inputs in one request are computed once.
        unique: dict[TokenizedText, int] = {}
        where = [unique.setdefault(t, len(unique)) for t in tokenized]
        items = list(unique)
        out = np.empty((len(items), backend.dimensions), dtype=np.float32)
        engine = self._settings.engine
        for batch in plan_batches(
            [len(t.input_ids) for t in items], engine.max_batch_size, engine.max_batch_tokens
        ):
            out[batch] = backend.embed([items[i] for i in batch])
        return out[where]


def _too_many_tokens(requested: int, limit: int) -> InvalidRequestError:
    return InvalidRequestError(f"Requested {requested} tokens, max {limit} tokens per request", param="input")
