"""The embedding engine: names -> loaded models, validation, tokenization, batching, pooling.

Usable without HTTP. Per loaded model there is one tokenizer thread in this process, one
queue (app.engine.batcher) and one or more model workers (app.engine.workers), by default
processes that own the weights: the event loop never runs a tokenizer or a forward pass, a
fast tokenizer is never used from two threads at once, and tokenizing the next requests
overlaps the model's work on the current batch. Requests are refused at once (503) rather
than queued without bound: by count on arrival, by tokens once they are tokenized.
"""

from __future__ import annotations

import asyncio
import logging
import threading
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Literal

import numpy as np
import numpy.typing as npt

from app.config import ModelSettings, Settings
from app.engine.batcher import Batcher, Job, Priority, overloaded
from app.engine.cache import make_cache, model_identity
from app.engine.chunking import ChunkPlan, expand, join_plans
from app.engine.gateway_load import GatewayLoad
from app.engine.observer import EngineObserver, NullObserver
from app.engine.token_inputs import NativeIds, TextInputs, TiktokenIds, TokenInputs, parse_input
from app.engine.turns import CHARS_PER_TOKEN_ID, Item, turns
from app.engine.workers.pool import ModelPool
from app.errors import (
    ContextLengthExceededError,
    InvalidRequestError,
    ModelNotFoundError,
    OverloadedError,
)
from app.models.protocol import BackendLoader, EmbeddingTokenizer, ModelLoadError, TokenizedText

logger = logging.getLogger(__name__)

__all__ = ["BackendLoader", "EmbeddingEngine", "EmbeddingResult", "ServedModel"]

ModelState = Literal["loading", "ready", "degraded", "not serving", "failed"]
SERVING: tuple[ModelState, ...] = ("ready", "degraded")


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
    """One loaded model: its tokenizer part and thread, its queue and its workers."""

    entry: ModelSettings
    state: ModelState = "loading"
    tokenizer: EmbeddingTokenizer | None = None
    pool: ModelPool | None = None
    error: str = ""
    # Requests admitted and not yet answered (tokenizing, queued or running).
    pending: int = 0
    tokenizer_thread: ThreadPoolExecutor = field(default_factory=lambda: ThreadPoolExecutor(1))
    # Held while the tokenizer is in use: by its thread, or by the event loop for a small
    # request when the thread is idle (a fast tokenizer is never used from two threads).
    tokenizer_lock: threading.Lock = field(default_factory=threading.Lock)


class EmbeddingEngine:
    def __init__(
        self,
        settings: Settings,
        loader: BackendLoader | None = None,
        observer: EngineObserver | None = None,
    ) -> None:
        """`loader` loads each entry's two parts (default: the registry, as configured);
        tests and the benchmark pass their own. Worker processes receive it pickled."""
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
        # The gateway's CPU-heavy work in hand (here and in the HTTP layer), which forwards leave a core to.
        self.load = GatewayLoad()

    # -- lifecycle ---------------------------------------------------------------------------

    def start(self) -> None:
        """Load and warm up every model in the background; `ready` turns true after."""
        self._loading = threading.Thread(target=self._load_all, name="model-loader", daemon=True)
        self._loading.start()

    def _background_threads(self) -> int | None:
        """The background worker's torch threads, or None where there is none: Batch API
        jobs off, `batch.worker = "shared"`, or thread workers (a thread cannot be preempted)."""
        batch, engine = self._settings.batch, self._settings.engine
        if batch.enabled and batch.worker != "shared" and engine.workers == "process":
            return batch.worker_threads
        return None

    def _load_all(self) -> None:
        from app.engine.workers.host import usable_cores
        from app.models.registry import RegistryLoader
        from app.models.torch_runtime import configure_threads

        engine = self._settings.engine
        if engine.workers == "thread":
            configure_threads(engine.torch_threads, usable_cores())
        loader = self._loader or RegistryLoader()
        token_ids = self._settings.api.token_ids
        if token_ids != "native":
            self._tiktoken = TiktokenIds(token_ids)
        for slot in self._slots.values():
            try:
                tokenizer = loader.load_tokenizer(slot.entry)
                if slot.entry.on_overflow == "chunk" and not hasattr(tokenizer, "token_spans"):
                    raise ModelLoadError(f"{slot.entry.name}: this backend cannot chunk over-long input")
                batcher = Batcher(
                    slot.entry.name,
                    max_batch_size=engine.max_batch_size,
                    max_batch_tokens=engine.max_batch_tokens,
                    max_queue_tokens=engine.max_queue_tokens,
                    observer=self._observer,
                    max_wait_seconds=engine.max_batch_wait_ms / 1000,
                    max_batch_seconds=engine.max_batch_ms / 1000,
                    max_unserved_seconds=engine.max_unserved_ms / 1000,
                    load=self.load,
                )
                pool = ModelPool(
                    slot.entry,
                    batcher,
                    loader,
                    kind=engine.workers,
                    threads=engine.torch_threads,
                    warmup=self._warm_up_batch(tokenizer),
                    background_threads=self._background_threads(),
                    background_on_cpu_only=self._settings.batch.worker == "auto",
                )
                pool.start()
                slot.tokenizer, slot.pool = tokenizer, pool
                slot.state = "ready"
                logger.info(
                    "model %s ready on %s (%d dimensions, %s workers)",
                    slot.entry.name,
                    ", ".join(pool.devices),
                    pool.dimensions,
                    engine.workers,
                )
            except Exception as exc:
                slot.state = "failed"
                slot.error = f"{type(exc).__name__}: {exc}"
                logger.exception("model %s failed to load", slot.entry.name)

    def _warm_up_batch(self, tokenizer: EmbeddingTokenizer) -> list[TokenizedText]:
        """One full-size batch, so the first request pays no first-call costs and a batch
        the configured budget allows but memory does not fails at start, not under load."""
        engine = self._settings.engine
        rows = engine.max_batch_size
        width = min(tokenizer.max_length, max(1, engine.max_batch_tokens // rows))
        sample = tokenizer.tokenize(["warm up " * width], "")[0]
        return [TokenizedText(sample.input_ids[:width], min(sample.pooled, width), width)] * rows

    def wait_loaded(self, timeout: float | None = None) -> None:
        if self._loading is not None:
            self._loading.join(timeout)

    async def close_cache(self) -> None:
        if self._cache is not None:
            await self._cache.close()

    def stop(self) -> None:
        for slot in self._slots.values():
            slot.tokenizer_thread.shutdown(wait=False, cancel_futures=True)
            if slot.pool is not None:
                slot.pool.stop()

    def _state(self, slot: _Slot) -> tuple[ModelState, str]:
        if slot.state == "ready" and slot.pool is not None:
            state, reason = slot.pool.state()
            return state, reason  # type: ignore[return-value]
        return slot.state, slot.error

    @property
    def ready(self) -> bool:
        """Every model is served by at least one worker."""
        return all(self._state(slot)[0] in SERVING for slot in self._slots.values())

    def status(self) -> dict[str, str]:
        """Each model's state, with the reason where it is not fully serving."""
        result = {}
        for name, slot in self._slots.items():
            state, reason = self._state(slot)
            result[name] = f"{state}: {reason}" if reason else state
        return result

    def queue_depth(self) -> dict[str, tuple[int, int]]:
        """(requests, tokens) queued per loaded model."""
        return {name: slot.pool.batcher.depth for name, slot in self._slots.items() if slot.pool is not None}

    def workers(self, model: str) -> list[dict[str, object]]:
        """Each worker of a loaded model: index, lane ("interactive", or "background": the
        worker that runs only Batch API jobs), device, pid, serving, batches run and in flight."""
        pool = self._slots[self.resolve(model).entry.name].pool
        if pool is None:
            return []
        return [
            {
                "index": w.index,
                "lane": w.lane,
                "device": w.device,
                "pid": w.pid,
                "serving": w.serving,
                "batches": w.batches,
                "in_flight": w.in_flight,
            }
            for w in pool.all_workers
        ]

    def worker_lanes(self) -> dict[str, list[dict[str, object]]]:
        """Per loaded model, each worker's lane, device and whether it serves (for /ready)."""
        shown = ("lane", "device", "serving")
        return {
            name: [{key: worker[key] for key in shown} for worker in self.workers(name)]
            for name, slot in self._slots.items()
            if slot.pool is not None
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
        pool = self._slots[self.resolve(name).entry.name].pool
        return pool.dimensions if pool is not None else None

    # -- embedding ---------------------------------------------------------------------------

    async def embed(
        self,
        model: str,
        raw_input: object,
        *,
        instruction: str | None = None,
        dimensions: int | None = None,
        request_id: str = "-",
        priority: Priority = "interactive",
    ) -> EmbeddingResult:
        """Validate, tokenize (on the tokenizer thread, or in place for a query-sized request),
        queue, await the batcher, then cut and normalise.

        Cancelling the awaiting task (the client went away) drops the request's queued
        inputs before they reach the model. `priority="background"` (Batch API jobs) queues
        the inputs in the background lane, below every interactive request.
        """
        served = self.resolve(model)
        slot = self._slots[served.entry.name]
        tokenizer, pool = slot.tokenizer, slot.pool
        # A model restarting its only worker still queues: the queue is served when it is back.
        if tokenizer is None or pool is None or self._state(slot)[0] not in (*SERVING, "not serving"):
            message = "is still loading" if slot.state == "loading" else "is not available"
            raise OverloadedError(
                f"The model `{model}` {message}; please try again later.", headers={"Retry-After": "5"}
            )
        batcher, model_dimensions = pool.batcher, pool.dimensions
        if dimensions is not None and not 1 <= dimensions <= model_dimensions:
            raise InvalidRequestError(
                f"Invalid value for 'dimensions' = {dimensions}: this model supports from 1 "
                f"to {model_dimensions} dimensions.",
                param="dimensions",
            )
        if slot.pending >= self._settings.engine.max_queue_requests:
            raise overloaded()
        text = served.instruction if instruction is None else instruction
        loop = asyncio.get_running_loop()
        slot.pending += 1
        try:
            tokenized, plan = await self._tokenize_in_turns(slot, tokenizer, raw_input, text)
            jobs: list[Job] = []

            async def compute(rows: list[TokenizedText]) -> npt.NDArray[np.float32]:
                job = Job(rows, model_dimensions, loop, request_id, priority)
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
                    served.name, identity, tokenized, model_dimensions, compute
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

    async def _tokenize_in_turns(
        self, slot: _Slot, tokenizer: EmbeddingTokenizer, raw_input: object, instruction: str
    ) -> tuple[list[TokenizedText], ChunkPlan | None]:
        """Validate `input`, tokenize, count, enforce the limits: on the model's tokenizer
        thread, one turn of inputs at a time (app.engine.turns), so no request holds the
        thread from the others for long; the limits are checked after every turn. With
        `on_overflow = "chunk"`, the rows are the windows and the plan puts them together."""
        if is_small(raw_input) and slot.tokenizer_lock.acquire(blocking=False):
            # A query-sized request while the tokenizer is idle: tokenized right here, which
            # costs less than the two trips to the tokenizer thread and back.
            try:
                return self._tokenize_all(slot.entry, tokenizer, raw_input, instruction)
            finally:
                slot.tokenizer_lock.release()
        loop = asyncio.get_running_loop()
        with self.load.working():  # the tokenizer thread keeps a core busy meanwhile
            items = _items(await loop.run_in_executor(slot.tokenizer_thread, self._parse, raw_input))
            tokenized: list[TokenizedText] = []
            plans: list[tuple[int, ChunkPlan | None]] = []
            for turn in turns(items):
                rows, plan = await loop.run_in_executor(
                    slot.tokenizer_thread, self._locked_turn, slot, tokenizer, turn, instruction
                )
                plans.append((len(rows), plan))
                tokenized += rows
                self._check_tokens(tokenized)
        return tokenized, join_plans(plans, tokenized)

    def _tokenize_all(
        self, entry: ModelSettings, tokenizer: EmbeddingTokenizer, raw_input: object, instruction: str
    ) -> tuple[list[TokenizedText], ChunkPlan | None]:
        """`_tokenize_in_turns` in one go, for a small request."""
        items = _items(self._parse(raw_input))
        rows, plan = self._tokenize_turn(entry, tokenizer, items, instruction)
        self._check_tokens(rows)
        return rows, join_plans([(len(rows), plan)], rows)

    def _locked_turn(
        self, slot: _Slot, tokenizer: EmbeddingTokenizer, items: list[Item], instruction: str
    ) -> tuple[list[TokenizedText], ChunkPlan | None]:
        with slot.tokenizer_lock:
            return self._tokenize_turn(slot.entry, tokenizer, items, instruction)

    def _parse(self, raw_input: object) -> TextInputs | TokenInputs:
        inputs = parse_input(raw_input, self._settings.api.max_inputs)
        if isinstance(inputs, TextInputs):
            for text in inputs.texts:
                _check_input_chars(len(text), self._settings.api.max_input_chars)
        else:
            limit = self._settings.api.max_request_tokens
            requested = sum(len(ids) for ids in inputs.ids)
            if requested > limit:
                raise _too_many_tokens(requested, limit)
        return inputs

    def _tokenize_turn(
        self,
        entry: ModelSettings,
        tokenizer: EmbeddingTokenizer,
        items: list[Item],
        instruction: str,
    ) -> tuple[list[TokenizedText], ChunkPlan | None]:
        texts: list[str] = []
        for item in items:
            if isinstance(item, str):
                texts.append(item)
            else:
                decoder = self._tiktoken or NativeIds(tokenizer.vocab_size, tokenizer.decode_ids)
                texts.append(decoder.decode(item))
                _check_input_chars(len(texts[-1]), self._settings.api.max_input_chars)
        tokenized = tokenizer.tokenize(texts, instruction)
        plan = None
        if entry.on_overflow == "chunk":
            # The check at load makes sure the tokenizer can tell where its tokens lie.
            tokenized, plan = expand(tokenizer, texts, tokenized, instruction, entry.max_length)  # type: ignore[arg-type]
        if entry.on_overflow == "error":
            longest = max(tokenized, key=lambda t: t.full_length)
            if longest.full_length > entry.max_length:
                raise ContextLengthExceededError(
                    entry.max_length, longest.full_length, exact=longest.full_length_exact
                )
        return tokenized, plan

    def _check_tokens(self, tokenized: list[TokenizedText]) -> None:
        requested = sum(len(t.input_ids) for t in tokenized)
        limit = self._settings.api.max_request_tokens
        if requested > limit:
            raise _too_many_tokens(requested, limit)


# A request this small (characters, or token ids counted as CHARS_PER_TOKEN_ID each) is
# tokenized on the event loop when the tokenizer is idle: tens of microseconds.
INLINE_CHARS = 2_000
INLINE_INPUTS = 16


def is_small(raw_input: object) -> bool:
    """Whether `raw_input` (as decoded from JSON, not yet validated) is query-sized."""
    if isinstance(raw_input, str):
        return len(raw_input) <= INLINE_CHARS
    if not isinstance(raw_input, list) or len(raw_input) > INLINE_INPUTS:
        return False
    size = 0
    for item in raw_input:
        if isinstance(item, str):
            size += len(item)
        elif isinstance(item, list):
            size += CHARS_PER_TOKEN_ID * len(item)
        else:
            size += CHARS_PER_TOKEN_ID
    return size <= INLINE_CHARS


def _items(inputs: TextInputs | TokenInputs) -> list[Item]:
    return [*inputs.texts] if isinstance(inputs, TextInputs) else [*inputs.ids]


def _check_input_chars(chars: int, limit: int) -> None:
    if chars > limit:
        raise InvalidRequestError(
            f"Invalid 'input': an input of {chars} characters is longer than the {limit} characters "
            "this server accepts per input.",
            param="input",
        )


def _too_many_tokens(requested: int, limit: int) -> InvalidRequestError:
    return InvalidRequestError(f"Requested {requested} tokens, max {limit} tokens per request", param="input")
