"""The embedding engine: names -> loaded models, validation, tokenization, batching, pooling.

Usable without HTTP. Per loaded model there is one tokenizer thread and one model thread
(app.engine.batcher): the event loop never runs a tokenizer or a forward pass, a fast
tokenizer is never used from two threads at once, and tokenizing the next requests overlaps
the model's work on the current batch. Requests are refused at once (503) rather than
queued without bound: by count on arrival, by tokens once they are tokenized.
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
from app.engine.batcher import Batcher, Job, overloaded
from app.engine.cache import make_cache, model_identity
from app.engine.chunking import ChunkPlan, expand
from app.engine.observer import EngineObserver, NullObserver
from app.engine.token_inputs import NativeIds, TextInputs, TiktokenIds, TokenInputs, parse_input
from app.errors import (
    ContextLengthExceededError,
    InvalidRequestError,
    ModelNotFoundError,
    OverloadedError,
)
from app.models.protocol import EmbeddingBackend, ModelLoadError, TokenizedText

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
    """One loaded model, its tokenizer thread and its batcher (the model thread)."""

    entry: ModelSettings
    state: ModelState = "loading"
    backend: EmbeddingBackend | None = None
    batcher: Batcher | None = None
    error: str = ""
    # Requests admitted and not yet answered (tokenizing, queued or running).
    pending: int = 0
    tokenizer_thread: ThreadPoolExecutor = field(default_factory=lambda: ThreadPoolExecutor(1))


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
        self._cache = make_cache(settings.cache, observer)
        self._loading: threading.Thread | None = None

    # -- lifecycle ---------------------------------------------------------------------------

    def start(self) -> None:
        """Load and warm up every model in the background; `ready` turns true after."""
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
        engine = self._settings.engine
        for slot in self._slots.values():
            try:
                backend = loader(slot.entry)
                if slot.entry.on_overflow == "chunk" and not hasattr(backend, "token_spans"):
                    raise ModelLoadError(f"{slot.entry.name}: this backend cannot chunk over-long input")
                self._warm_up(backend)
                slot.backend = backend
                slot.batcher = Batcher(
                    slot.entry.name,
                    backend,
                    max_batch_size=engine.max_batch_size,
                    max_batch_tokens=engine.max_batch_tokens,
                    max_queue_tokens=engine.max_queue_tokens,
                    observer=self._observer,
                    max_wait_seconds=engine.max_batch_wait_ms / 1000,
                )
                slot.batcher.start()
                slot.state = "ready"
                logger.info(
                    "model %s ready on %s (%d dimensions)",
                    slot.entry.name,
                    backend.device,
                    backend.dimensions,
                )
            except Exception as exc:
                slot.state = "failed"
                slot.error = f"{type(exc).__name__}: {exc}"
                logger.exception("model %s failed to load", slot.entry.name)

    def _warm_up(self, backend: EmbeddingBackend) -> None:
        """One full-size batch, so the first request pays no first-call costs and a batch
        the configured budget allows but memory does not fails at start, not under load."""
        engine = self._settings.engine
        rows = engine.max_batch_size
        width = min(backend.max_length, max(1, engine.max_batch_tokens // rows))
        sample = backend.tokenize(["warm up " * width], "")[0]
        batch = [TokenizedText(sample.input_ids[:width], min(sample.pooled, width), width)] * rows
        backend.embed(batch)

    def wait_loaded(self, timeout: float | None = None) -> None:
        if self._loading is not None:
            self._loading.join(timeout)

    async def close_cache(self) -> None:
        if self._cache is not None:
            await self._cache.close()

    def stop(self) -> None:
        for slot in self._slots.values():
            slot.tokenizer_thread.shutdown(wait=False, cancel_futures=True)
            if slot.batcher is not None:
                slot.batcher.stop()

    def _state(self, slot: _Slot) -> ModelState:
        if slot.state == "ready" and slot.batcher is not None and not slot.batcher.alive:
            return "failed"
        return slot.state

    @property
    def ready(self) -> bool:
        return all(self._state(slot) == "ready" for slot in self._slots.values())

    def status(self) -> dict[str, str]:
        """Each model's state, with the reason where it failed."""
        result = {}
        for name, slot in self._slots.items():
            state = self._state(slot)
            if state == "failed":
                reason = slot.batcher.failure if slot.batcher and slot.batcher.failure else slot.error
                result[name] = f"failed: {reason}"
            else:
                result[name] = state
        return result

    def queue_depth(self) -> dict[str, tuple[int, int]]:
        """(requests, tokens) queued per loaded model."""
        return {name: slot.batcher.depth for name, slot in self._slots.items() if slot.batcher is not None}

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
        request_id: str = "-",
    ) -> EmbeddingResult:
        """Validate, tokenize (off the loop), queue, await the batcher, then cut and normalise.

        Cancelling the awaiting task (the client went away) drops the request's queued
        inputs before they reach the model.
        """
        served = self.resolve(model)
        slot = self._slots[served.entry.name]
        backend, batcher = slot.backend, slot.batcher
        if backend is None or batcher is None or self._state(slot) != "ready":
            message = "is still loading" if slot.state == "loading" else "is not available"
            raise OverloadedError(
                f"The model `{model}` {message}; please try again later.", headers={"Retry-After": "5"}
            )
        if dimensions is not None and not 1 <= dimensions <= backend.dimensions:
            raise InvalidRequestError(
                f"Invalid value for 'dimensions' = {dimensions}: this model supports from 1 "
                f"to {backend.dimensions} dimensions.",
                param="dimensions",
            )
        if slot.pending >= self._settings.engine.max_queue_requests:
            raise overloaded()
        text = served.instruction if instruction is None else instruction
        loop = asyncio.get_running_loop()
        slot.pending += 1
        try:
            tokenized, plan = await loop.run_in_executor(
                slot.tokenizer_thread, self._prepare, slot.entry, backend, raw_input, text
            )
            jobs: list[Job] = []

            async def compute(rows: list[TokenizedText]) -> npt.NDArray[np.float32]:
                job = Job(rows, backend.dimensions, loop, request_id)
                jobs.append(job)
                batcher.submit(job)
                try:
                    return await job.future
                except asyncio.CancelledError:
                    batcher.cancel(job)
                    raise

            if self._cache is None:
                vectors = await compute(tokenized)
            else:
                identity = model_identity(served.name, served.entry, text)
                vectors = await self._cache.through(
                    served.name, identity, tokenized, backend.dimensions, compute
                )
        finally:
            slot.pending -= 1
        if plan is not None:
            vectors = plan.combine(vectors)
        if dimensions is not None:
            vectors = vectors[:, :dimensions]
        if served.entry.normalize:
            norms = np.linalg.norm(vectors, axis=1, keepdims=True)
            vectors = vectors / np.maximum(norms, 1e-12)
        # Cache hits count as the model's work would: usage and rate limits see every row.
        return EmbeddingResult(
            vectors=np.ascontiguousarray(vectors, dtype=np.float32),
            prompt_tokens=sum(len(t.input_ids) for t in tokenized),
            queue_seconds=jobs[0].queue_seconds if jobs else 0.0,
            compute_seconds=jobs[0].compute_seconds if jobs else 0.0,
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

    def _prepare(
        self,
        entry: ModelSettings,
        backend: EmbeddingBackend,
        raw_input: object,
        instruction: str,
    ) -> tuple[list[TokenizedText], ChunkPlan | None]:
        """On the tokenizer thread: validate `input`, tokenize, count, enforce the limits."""
        inputs = parse_input(raw_input, self._settings.api.max_inputs)
        texts = self._texts(backend, inputs)
        tokenized = backend.tokenize(texts, instruction)
        plan = None
        if entry.on_overflow == "chunk":
            # The backend check at load makes sure it can tell where its tokens lie.
            tokenized, plan = expand(backend, texts, tokenized, instruction, entry.max_length)  # type: ignore[arg-type]
        if entry.on_overflow == "error":
            longest = max(t.full_length for t in tokenized)
            if longest > entry.max_length:
                raise ContextLengthExceededError(entry.max_length, longest)
        requested = sum(len(t.input_ids) for t in tokenized)
        limit = self._settings.api.max_request_tokens
        if requested > limit:
            raise _too_many_tokens(requested, limit)
        return tokenized, plan


def _too_many_tokens(requested: int, limit: int) -> InvalidRequestError:
    return InvalidRequestError(f"Requested {requested} tokens, max {limit} tokens per request", param="input")
