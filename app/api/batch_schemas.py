"""OpenAI's file and batch objects (openai.types.FileObject, Batch) as msgspec Structs."""

from __future__ import annotations

import json
from typing import Any, Literal

import msgspec

from app.batches.store import BatchRecord, FileRecord


class BatchCreateRequest(msgspec.Struct, kw_only=True):
    input_file_id: str | msgspec.UnsetType = msgspec.UNSET
    endpoint: str | msgspec.UnsetType = msgspec.UNSET
    completion_window: str | msgspec.UnsetType = msgspec.UNSET
    metadata: dict[str, str] | None = None


class FileObject(msgspec.Struct, kw_only=True, frozen=True):
    id: str
    bytes: int
    created_at: int
    filename: str
    purpose: str
    status: str = "processed"
    expires_at: int | None = None
    status_details: str | None = None
    object: Literal["file"] = "file"


class FileDeleted(msgspec.Struct, kw_only=True, frozen=True):
    id: str
    deleted: bool
    object: Literal["file"] = "file"


class RequestCounts(msgspec.Struct, kw_only=True, frozen=True):
    total: int
    completed: int
    failed: int


class InputTokensDetails(msgspec.Struct, kw_only=True, frozen=True):
    cached_tokens: int = 0


class OutputTokensDetails(msgspec.Struct, kw_only=True, frozen=True):
    reasoning_tokens: int = 0


class BatchUsage(msgspec.Struct, kw_only=True, frozen=True):
    input_tokens: int
    output_tokens: int
    total_tokens: int
    input_tokens_details: InputTokensDetails = InputTokensDetails()
    output_tokens_details: OutputTokensDetails = OutputTokensDetails()


class BatchObject(msgspec.Struct, kw_only=True, frozen=True):
    id: str
    endpoint: str
    input_file_id: str
    completion_window: str
    status: str
    created_at: int
    request_counts: RequestCounts
    usage: BatchUsage
    output_file_id: str | None = None
    error_file_id: str | None = None
    errors: Any = None
    metadata: dict[str, str] | None = None
    in_progress_at: int | None = None
    expires_at: int | None = None
    finalizing_at: int | None = None
    completed_at: int | None = None
    failed_at: int | None = None
    expired_at: int | None = None
    cancelling_at: int | None = None
    cancelled_at: int | None = None
    object: Literal["batch"] = "batch"


class Page(msgspec.Struct, kw_only=True, frozen=True):
    """OpenAI's cursor page: the SDK asks for `after=<last_id>` while `has_more`."""

    data: list[Any]
    has_more: bool
    first_id: str | None
    last_id: str | None
    object: Literal["list"] = "list"


def file_object(record: FileRecord) -> FileObject:
    return FileObject(
        id=record.id,
        bytes=record.bytes,
        created_at=record.created_at,
        filename=record.filename,
        purpose=record.purpose,
    )


def batch_object(record: BatchRecord) -> BatchObject:
    return BatchObject(
        id=record.id,
        endpoint=record.endpoint,
        input_file_id=record.input_file_id,
        completion_window=record.completion_window,
        status=record.status,
        created_at=record.created_at,
        request_counts=RequestCounts(total=record.total, completed=record.completed, failed=record.failed),
        usage=BatchUsage(input_tokens=record.tokens, output_tokens=0, total_tokens=record.tokens),
        output_file_id=record.output_file_id,
        error_file_id=record.error_file_id,
        errors=json.loads(record.errors) if record.errors else None,
        metadata=json.loads(record.metadata) if record.metadata else None,
        in_progress_at=record.in_progress_at,
        expires_at=record.expires_at,
        finalizing_at=record.finalizing_at,
        completed_at=record.completed_at,
        failed_at=record.failed_at,
        expired_at=record.expired_at,
        cancelling_at=record.cancelling_at,
        cancelled_at=record.cancelled_at,
    )


def page(items: list[Any], has_more: bool) -> Page:
    return Page(
        data=items,
        has_more=has_more,
        first_id=items[0].id if items else None,
        last_id=items[-1].id if items else None,
    )
