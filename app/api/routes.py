"""HTTP routes: thin; the engine does the work and errors go to the exception handler."""

from __future__ import annotations

import msgspec
from litestar import Controller, Request, Response, get, post
from litestar.datastructures import State

from app.api.access import caller, require_model
from app.api.encoding import encode_vectors
from app.api.parsing import parse_embedding_request
from app.api.ratelimit import RateLimiter
from app.api.request_log import record_of
from app.api.schemas import Embedding, EmbeddingResponse, Model, ModelList, Usage
from app.engine.engine import EmbeddingEngine, ServedModel

JSON = "application/json"


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
    async def create_embeddings(
        self, request: Request[object, object, State], engine: EmbeddingEngine, limiter: RateLimiter
    ) -> Response[bytes]:
        body = parse_embedding_request(await request.body())
        assert isinstance(body.model, str)  # parse_embedding_request checked it
        record = record_of(request.scope)
        if record is not None:
            record.model = body.model
        key = caller(request)
        require_model(key, body.model)
        permit = await limiter.admit(key, body.model)
        if record is not None:
            record.headers = permit.headers  # sent with any response; charge() updates them
        result = await engine.embed(
            body.model, body.input, instruction=body.instruction, dimensions=body.dimensions
        )
        await limiter.charge(permit, result.prompt_tokens)
        if record is not None:
            record.inputs = len(result.vectors)
            record.tokens = result.prompt_tokens
            record.queue_seconds = result.queue_seconds
            record.compute_seconds = result.compute_seconds
        vectors = encode_vectors(result.vectors, body.encoding_format)
        return _json(
            EmbeddingResponse(
                data=[Embedding(index=i, embedding=v) for i, v in enumerate(vectors)],
                model=body.model,
                usage=Usage(prompt_tokens=result.prompt_tokens, total_tokens=result.prompt_tokens),
            )
        )

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
async def ready(engine: EmbeddingEngine) -> Response[bytes]:
    status = "ready" if engine.ready else "not ready"
    return _json({"status": status, "models": engine.status()}, 200 if engine.ready else 503)
