"""HTTP routes: thin; the engine does the work and errors go to the exception handler."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Awaitable
from typing import TypeVar

import msgspec
from litestar import Controller, Request, Response, get, post
from litestar.datastructures import State
from litestar.types import ReceiveMessage

from app.api.access import caller, require_model
from app.api.body import read_body
from app.api.encoding import encode_vectors
from app.api.parsing import INLINE_BODY_BYTES, parse_embedding_body
from app.api.ratelimit import RateLimiter
from app.api.request_log import record_of
from app.api.schemas import Embedding, EmbeddingResponse, Model, ModelList, Usage
from app.engine.engine import EmbeddingEngine, ServedModel
from app.errors import ClientDisconnectedError

JSON = "application/json"
# Responses with more numbers than this are serialised off the event loop.
_INLINE_FLOATS = 200_000

T = TypeVar("T")


async def _unless_disconnected(request: Request[object, object, State], work: Awaitable[T]) -> T:
    """Await `work`, cancelling it if the client disconnects first (its queued inputs are
    then dropped before they reach the model). Once the body is read, the ASGI server's
    next message for this request is the disconnect. The work runs in this task (no task
    of its own per request); a watcher cancels this task when the client leaves."""
    task = asyncio.current_task()
    assert task is not None
    left = finished = False

    def watch(watcher: asyncio.Future[ReceiveMessage]) -> None:
        nonlocal left
        if finished or watcher.cancelled() or watcher.exception() is not None:
            return
        if watcher.result().get("type") == "http.disconnect":
            left = True
            task.cancel()

    watcher: asyncio.Future[ReceiveMessage] = asyncio.ensure_future(request.receive())
    watcher.add_done_callback(watch)
    try:
        return await work
    except asyncio.CancelledError:
        if left and task.uncancel() == 0:
            raise ClientDisconnectedError from None
        raise
    finally:
        finished = True
        watcher.cancel()


def provide_engine(state: State) -> EmbeddingEngine:
    engine: EmbeddingEngine = state.engine
    return engine


def provide_limiter(state: State) -> RateLimiter:
    limiter: RateLimiter = state.limiter
    return limiter


def _json(obj: object, status_code: int = 200) -> Response[bytes]:
    return Response(content=msgspec.json.encode(obj), status_code=status_code, media_type=JSON)


def _model(served: ServedModel, created: int) -> Model:
    return Model(id=served.name, created=created, owned_by=served.entry.owned_by)


class OpenAIController(Controller):
    path = "/v1"

    @post("/embeddings", status_code=200)
    async def create_embeddings(self, request: Request[object, object, State]) -> Response[bytes]:
        # The engine and limiter straight from the app's state rather than as dependencies:
        # Litestar resolves several dependencies in a task group of their own, per request.
        engine, limiter = provide_engine(request.app.state), provide_limiter(request.app.state)
        large = (request.content_length or 0) > INLINE_BODY_BYTES
        # Reading and decoding a large body takes a core: forwards leave the gateway one meanwhile.
        with engine.load.working() if large else contextlib.nullcontext():
            body = await parse_embedding_body(await read_body(request))
        assert isinstance(body.model, str)  # parse_embedding_body checked it
        record = record_of(request.scope)
        if record is not None:
            record.model = body.model
        key = caller(request)
        require_model(key, body.model)
        permit = await limiter.admit(key, body.model)
        if record is not None:
            record.headers = permit.headers  # sent with any response; charge() updates them
        result = await _unless_disconnected(
            request,
            engine.embed(
                body.model,
                body.input,
                instruction=body.instruction,
                dimensions=body.dimensions,
                request_id=record.request_id if record is not None else "-",
            ),
        )
        await limiter.charge(permit, result.prompt_tokens)
        if record is not None:
            record.inputs = len(result.vectors)
            record.tokens = result.prompt_tokens
            record.queue_seconds = result.queue_seconds
            record.compute_seconds = result.compute_seconds
        model, encoding_format = body.model, body.encoding_format

        def render() -> bytes:
            vectors = encode_vectors(result.vectors, encoding_format)
            return msgspec.json.encode(
                EmbeddingResponse(
                    data=[Embedding(index=i, embedding=v) for i, v in enumerate(vectors)],
                    model=model,
                    usage=Usage(prompt_tokens=result.prompt_tokens, total_tokens=result.prompt_tokens),
                )
            )

        # A large float response takes long enough to encode to stall other requests.
        if result.vectors.size > _INLINE_FLOATS:
            with engine.load.working():
                content = await asyncio.to_thread(render)
        else:
            content = render()
        return Response(content=content, status_code=200, media_type=JSON)

    @get("/models")
    async def list_models(
        self, request: Request[object, object, State], state: State, engine: EmbeddingEngine
    ) -> Response[bytes]:
        created: int = state.started_at
        key = caller(request)
        models = [m for m in engine.served_models() if key.may_use(m.name)]
        return _json(ModelList(data=[_model(m, created) for m in models]))

    @get("/models/{model_id:path}")
    async def get_model(
        self, model_id: str, request: Request[object, object, State], state: State, engine: EmbeddingEngine
    ) -> Response[bytes]:
        model_id = model_id.lstrip("/")
        require_model(caller(request), model_id)
        return _json(_model(engine.resolve(model_id), state.started_at))


@get("/health", exclude_from_auth=True)
async def health() -> Response[bytes]:
    return _json({"status": "ok"})


@get("/ready", exclude_from_auth=True)
async def ready(engine: EmbeddingEngine, state: State) -> Response[bytes]:
    # Draining (a shutdown signal came): 503 at once, so balancers stop routing here.
    draining: bool = state.drain.draining
    ok = engine.ready and not draining
    status = "draining" if draining else "ready" if ok else "not ready"
    body = {"status": status, "models": engine.status(), "workers": engine.worker_lanes()}
    return _json(body, 200 if ok else 503)
