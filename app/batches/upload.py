"""A multipart upload (`file` and `purpose`, what `client.files.create` sends) streamed to disk.

The body is parsed as it arrives and the file part goes straight to a temporary file, so a
200 MB upload never sits in memory; the size and line limits are checked as it streams and
the upload is refused (and the partial file removed) the moment one is passed.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import IO

from multipart import MultipartError, MultipartSegment, PushMultipartParser, parse_options_header

from app.errors import InvalidRequestError

_MAX_FIELD_BYTES = 1024
# Room for the multipart framing and the small fields around the file's own bytes.
_MULTIPART_SLACK = 64 * 1024


@dataclass
class Upload:
    filename: str
    purpose: str
    bytes: int
    lines: int


class _LineCounter:
    """Counts non-blank lines across chunk boundaries."""

    def __init__(self) -> None:
        self.lines = 0
        self._current_blank = True

    def feed(self, chunk: bytes) -> None:
        parts = chunk.split(b"\n")
        for i, part in enumerate(parts):
            if part.strip():
                self._current_blank = False
            if i < len(parts) - 1:  # a newline ends the current line
                self.lines += not self._current_blank
                self._current_blank = True

    def finish(self) -> int:
        return self.lines + (not self._current_blank)


async def receive_upload(
    content_type: str, body: AsyncIterator[bytes], target: Path, *, max_bytes: int, max_lines: int
) -> Upload:
    """Parse the multipart body into `target` (the file part) and the form fields."""
    kind, options = parse_options_header(content_type)
    boundary = options.get("boundary")
    if kind != "multipart/form-data" or not boundary:
        raise InvalidRequestError("Expected a multipart/form-data body with `file` and `purpose` fields.")
    fields: dict[str, bytes] = {}
    filename: str | None = None
    size = received = 0
    counter = _LineCounter()
    out: IO[bytes] | None = None
    part: MultipartSegment | None = None
    try:
        with PushMultipartParser(boundary, max_header_count=16, max_segment_count=8) as parser:
            async for chunk in body:
                received += len(chunk)
                if received > max_bytes + _MULTIPART_SLACK:
                    raise _too_large(max_bytes)
                for event in parser.parse(chunk):
                    if isinstance(event, MultipartSegment):
                        part = event
                        if part.name == "file" and part.filename is not None:
                            filename = part.filename or "upload.jsonl"
                            out = target.open("wb")
                        else:
                            fields[part.name or ""] = b""
                    elif event is None:
                        part = None
                    elif part is not None and part.name == "file" and out is not None:
                        size += len(event)
                        if size > max_bytes:
                            raise _too_large(max_bytes)
                        counter.feed(event)
                        if counter.lines > max_lines:
                            raise _too_many_lines(max_lines)
                        await asyncio.to_thread(out.write, event)
                    elif part is not None:
                        name = part.name or ""
                        fields[name] += event
                        if len(fields[name]) > _MAX_FIELD_BYTES:
                            raise InvalidRequestError(f"The field `{name}` is too long.", param=name)
            if out is not None:
                await asyncio.to_thread(_sync_close, out)
    except MultipartError as exc:
        _discard(out, target)
        raise InvalidRequestError(f"The multipart body could not be parsed: {exc}") from None
    except BaseException:
        _discard(out, target)
        raise
    lines = counter.finish()
    try:
        purpose = fields.get("purpose", b"").decode("utf-8", "replace")
        if filename is None:
            raise InvalidRequestError("'file' is a required property", param="file")
        if not purpose:
            raise InvalidRequestError("'purpose' is a required property", param="purpose")
        if purpose != "batch":
            raise InvalidRequestError(
                f"Invalid value for purpose: '{purpose}'. Only 'batch' files are stored here.",
                param="purpose",
            )
        if lines > max_lines:
            raise _too_many_lines(max_lines)
        if lines == 0:
            raise InvalidRequestError("The file is empty: expected JSONL batch requests.", param="file")
    except BaseException:
        _discard(None, target)
        raise
    return Upload(filename=filename, purpose=purpose, bytes=size, lines=lines)


def _too_large(max_bytes: int) -> InvalidRequestError:
    return InvalidRequestError(
        f"File is too large: the limit for a batch input file is {max_bytes} bytes.",
        param="file",
        code="file_too_large",
    )


def _too_many_lines(max_lines: int) -> InvalidRequestError:
    return InvalidRequestError(
        f"The file has more than {max_lines} lines, the limit for a batch input file.",
        param="file",
        code="too_many_lines",
    )


def _sync_close(out: IO[bytes]) -> None:
    out.flush()
    os.fsync(out.fileno())
    out.close()


def _discard(out: IO[bytes] | None, target: Path) -> None:
    if out is not None:
        out.close()
    with contextlib.suppress(FileNotFoundError):
        target.unlink()
