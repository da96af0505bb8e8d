"""OpenAI's Files and Batches routes for /v1/embeddings batch jobs. Thin: the store keeps the
records, the runner does the work. A key sees and touches only its own files and batches:
anyone else's id is answered exactly as an unknown one (404)."""

from __future__ import annotations

import asyncio
from dataclasses import dataclass

import msgspec
from litestar import Controller, Request, Response, delete, get, post
from litestar.datastructures import State
from litestar.response import File

from app.api.access import caller
from app.api.batch_schemas import BatchCreateRequest, FileDeleted, batch_object, file_object, page
from app.batches.lines import EMBEDDINGS
from app.batches.runner import BatchRunner, key_to_json
from app.batches.store import BatchRecord, BatchStore, FileRecord, dumps, new_id, now
from app.batches.upload import receive_upload
from app.config import BatchSettings
from app.errors import ConflictError, InvalidRequestError, NotFoundError

JSON = "application/json"
_WINDOW_SECONDS = {"24h": 24 * 3600}
_CANCELLABLE = ("validating", "in_progress")


@dataclass(frozen=True)
class BatchService:
    store: BatchStore
    runner: BatchRunner
    settings: BatchSettings


def _service(state: State) -> BatchService:
    service: BatchService = state.batches
    return service


def _json(obj: object) -> Response[bytes]:
    return Response(content=msgspec.json.encode(obj), status_code=200, media_type=JSON)


def _limit(raw: int | None, default: int, most: int) -> int:
    limit = default if raw is None else raw
    if not 1 <= limit <= most:
        raise InvalidRequestError(f"limit must be between 1 and {most}.", param="limit")
    return limit


def _no_file(file_id: str) -> NotFoundError:
    return NotFoundError(f"No such File object: {file_id}", param="id")


def _no_batch(batch_id: str) -> NotFoundError:
    return NotFoundError(f"No batch found with id '{batch_id}'.", param="batch_id")


class FilesController(Controller):
    path = "/v1/files"

    # The upload streams to disk and enforces batch.max_file_bytes itself.
    @post("/", status_code=200, request_max_body_size=None)
    async def create_file(self, request: Request[object, object, State], state: State) -> Response[bytes]:
        service = _service(state)
        file_id = new_id("file-")
        target = await asyncio.to_thread(service.store.new_file_path, file_id)
        upload = await receive_upload(
            request.headers.get("content-type", ""),
            request.stream(),
            target,
            max_bytes=service.settings.max_file_bytes,
            max_lines=service.settings.max_file_lines,
        )
        record = FileRecord(
            file_id,
            caller(request).name,
            upload.purpose,
            upload.filename,
            upload.bytes,
            upload.lines,
            now(),
            str(target),
        )
        await asyncio.to_thread(service.store.add_file, record)
        return _json(file_object(record))

    @get("/")
    async def list_files(
        self,
        request: Request[object, object, State],
        state: State,
        purpose: str | None = None,
        after: str | None = None,
        limit: int | None = None,
        order: str = "desc",
    ) -> Response[bytes]:
        if order not in ("asc", "desc"):
            raise InvalidRequestError("order must be 'asc' or 'desc'.", param="order")
        records, more = await asyncio.to_thread(
            _service(state).store.list_files,
            caller(request).name,
            purpose=purpose,
            after=after,
            limit=_limit(limit, 10_000, 10_000),
            ascending=order == "asc",
        )
        return _json(page([file_object(r) for r in records], more))

    @get("/{file_id:str}")
    async def get_file(
        self, file_id: str, request: Request[object, object, State], state: State
    ) -> Response[bytes]:
        return _json(file_object(await self._own(file_id, request, state)))

    @get("/{file_id:str}/content")
    async def file_content(self, file_id: str, request: Request[object, object, State], state: State) -> File:
        record = await self._own(file_id, request, state)
        return File(path=record.path, filename=record.filename, media_type="application/jsonl")

    @delete("/{file_id:str}", status_code=200)
    async def delete_file(
        self, file_id: str, request: Request[object, object, State], state: State
    ) -> Response[bytes]:
        if not await asyncio.to_thread(_service(state).store.delete_file, caller(request).name, file_id):
            raise _no_file(file_id)
        return _json(FileDeleted(id=file_id, deleted=True))

    @staticmethod
    async def _own(file_id: str, request: Request[object, object, State], state: State) -> FileRecord:
        record = await asyncio.to_thread(_service(state).store.get_file, caller(request).name, file_id)
        if record is None:
            raise _no_file(file_id)
        return record


_create_decoder = msgspec.json.Decoder(BatchCreateRequest)


class BatchesController(Controller):
    path = "/v1/batches"

    @post("/", status_code=200)
    async def create_batch(self, request: Request[object, object, State], state: State) -> Response[bytes]:
        service = _service(state)
        body = _parse_create(await request.body())
        assert isinstance(body.input_file_id, str) and isinstance(body.completion_window, str)
        key = caller(request)
        source = await asyncio.to_thread(service.store.get_file, key.name, body.input_file_id)
        if source is None:
            raise _no_file(body.input_file_id)
        if source.purpose != "batch":
            raise InvalidRequestError(
                f"The file {source.id} has purpose '{source.purpose}'; a batch needs an input file "
                "uploaded with purpose 'batch'.",
                param="input_file_id",
            )
        created = now()
        record = BatchRecord(
            id=new_id("batch_"),
            owner=key.name,
            key=key_to_json(key),
            input_file_id=source.id,
            endpoint=EMBEDDINGS,
            completion_window=body.completion_window,
            status="validating",
            created_at=created,
            expires_at=created + _WINDOW_SECONDS[body.completion_window],
            metadata=dumps(body.metadata) if body.metadata else None,
            total=source.lines,
        )
        await asyncio.to_thread(service.store.add_batch, record)
        service.runner.notify()
        return _json(batch_object(record))

    @get("/")
    async def list_batches(
        self,
        request: Request[object, object, State],
        state: State,
        after: str | None = None,
        limit: int | None = None,
    ) -> Response[bytes]:
        records, more = await asyncio.to_thread(
            _service(state).store.list_batches,
            caller(request).name,
            after=after,
            limit=_limit(limit, 20, 100),
        )
        return _json(page([batch_object(r) for r in records], more))

    @get("/{batch_id:str}")
    async def get_batch(
        self, batch_id: str, request: Request[object, object, State], state: State
    ) -> Response[bytes]:
        record = await asyncio.to_thread(_service(state).store.get_batch, batch_id, caller(request).name)
        if record is None:
            raise _no_batch(batch_id)
        return _json(batch_object(record))

    @post("/{batch_id:str}/cancel", status_code=200)
    async def cancel_batch(
        self, batch_id: str, request: Request[object, object, State], state: State
    ) -> Response[bytes]:
        service = _service(state)
        owner = caller(request).name
        record = await asyncio.to_thread(service.store.get_batch, batch_id, owner)
        if record is None:
            raise _no_batch(batch_id)
        moved = await asyncio.to_thread(
            service.store.update_batch,
            batch_id,
            only_from=_CANCELLABLE,
            status="cancelling",
            cancelling_at=now(),
        )
        if not moved:
            fresh = await asyncio.to_thread(service.store.get_batch, batch_id, owner)
            status = fresh.status if fresh is not None else record.status
            if status not in ("cancelling", "cancelled"):
                raise ConflictError(f"Cannot cancel a batch with status '{status}'.")
        service.runner.notify(cancelled=batch_id)
        fresh = await asyncio.to_thread(service.store.get_batch, batch_id, owner)
        return _json(batch_object(fresh or record))


def _parse_create(raw: bytes) -> BatchCreateRequest:
    try:
        body = _create_decoder.decode(raw)
    except msgspec.ValidationError as exc:
        raise InvalidRequestError(f"Invalid request: {exc}") from None
    except msgspec.DecodeError:
        raise InvalidRequestError("We could not parse the JSON body of your request.") from None
    for name in ("input_file_id", "endpoint", "completion_window"):
        if getattr(body, name) is msgspec.UNSET:
            raise InvalidRequestError(f"Missing required parameter: '{name}'.", param=name)
    if body.endpoint != EMBEDDINGS:
        raise InvalidRequestError(
            f"Invalid value for endpoint: '{body.endpoint}'. Batches run {EMBEDDINGS} only.",
            param="endpoint",
        )
    if body.completion_window not in _WINDOW_SECONDS:
        raise InvalidRequestError(
            f"Invalid value for completion_window: '{body.completion_window}'. Supported values are: '24h'.",
            param="completion_window",
        )
    metadata = body.metadata or {}
    if len(metadata) > 16 or any(len(k) > 64 or len(v) > 512 for k, v in metadata.items()):
        raise InvalidRequestError(
            "metadata: at most 16 pairs, keys up to 64 and values up to 512 characters.", param="metadata"
        )
    return body
