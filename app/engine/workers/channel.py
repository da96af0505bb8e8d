"""The binary messages between the gateway and a model worker process.

One message per pipe write, a fixed struct header, then flat arrays: a batch is its token
ids as one int32 array with each row's length and pooled count; vectors come back as raw
float32. Nothing is pickled per input, and decoding a reply is one `np.frombuffer`.

    gateway -> worker   BATCH  id, rows, ids, spare | int32 lengths[rows] pooled[rows] ids[total]
                        STOP
    worker -> gateway   HELLO  pid, dimensions, torch threads | device (utf-8)
                        VECTORS id, rows, dims, seconds | float32 [rows, dims]
                        MEMORY id, seconds                 (out of memory: split and resend)
                        ERROR  id, seconds | message (utf-8)
                        LOAD_FAILED | message (utf-8)
"""

from __future__ import annotations

import struct
from collections.abc import Sequence
from itertools import chain
from typing import NamedTuple

import numpy as np
import numpy.typing as npt

from app.models.protocol import TokenizedText

BATCH, STOP, HELLO, VECTORS, MEMORY, ERROR, LOAD_FAILED = range(1, 8)

_KIND = struct.Struct("<B")
_BATCH = struct.Struct("<BQIIB")  # kind, batch id, rows, total ids, cores to spare
_HELLO = struct.Struct("<BIIH")  # kind, pid, dimensions, torch threads
_VECTORS = struct.Struct("<BQIId")  # kind, batch id, rows, dimensions, seconds
_FAILED = struct.Struct("<BQd")  # kind, batch id, seconds


def kind(message: bytes) -> int:
    value: int = message[0]
    return value


# -- gateway -> worker -----------------------------------------------------------------------


def encode_batch(batch_id: int, rows: Sequence[TokenizedText], spare: int = 0) -> bytes:
    """`spare`: cores the gateway is using for work of its own right now, which the forward
    should leave to it (app.engine.workers.child)."""
    lengths = np.fromiter((len(t.input_ids) for t in rows), dtype=np.int32, count=len(rows))
    pooled = np.fromiter((t.pooled for t in rows), dtype=np.int32, count=len(rows))
    total = int(lengths.sum())
    ids = np.fromiter(chain.from_iterable(t.input_ids for t in rows), dtype=np.int32, count=total)
    header = _BATCH.pack(BATCH, batch_id, len(rows), total, spare)
    return b"".join((header, lengths.tobytes(), pooled.tobytes(), ids.tobytes()))


class BatchMessage(NamedTuple):
    batch_id: int
    rows: list[TokenizedText]
    spare: int


def decode_batch(message: bytes) -> BatchMessage:
    _, batch_id, rows, total, spare = _BATCH.unpack_from(message)
    arrays = np.frombuffer(message, dtype=np.int32, offset=_BATCH.size, count=2 * rows + total)
    lengths, pooled, ids = arrays[:rows], arrays[rows : 2 * rows], arrays[2 * rows :].tolist()
    texts = []
    start = 0
    for n, p in zip(lengths.tolist(), pooled.tolist(), strict=True):
        texts.append(TokenizedText(tuple(ids[start : start + n]), p, n))
        start += n
    return BatchMessage(batch_id, texts, spare)


def encode_stop() -> bytes:
    return _KIND.pack(STOP)


# -- worker -> gateway -----------------------------------------------------------------------


class Hello(NamedTuple):
    pid: int
    dimensions: int
    device: str
    threads: int


def encode_hello(pid: int, dimensions: int, device: str, threads: int) -> bytes:
    return _HELLO.pack(HELLO, pid, dimensions, threads) + device.encode()


def decode_hello(message: bytes) -> Hello:
    _, pid, dimensions, threads = _HELLO.unpack_from(message)
    return Hello(pid, dimensions, message[_HELLO.size :].decode(), threads)


def encode_vectors(batch_id: int, vectors: npt.NDArray[np.float32], seconds: float) -> bytes:
    rows, dims = vectors.shape
    header = _VECTORS.pack(VECTORS, batch_id, rows, dims, seconds)
    return header + np.ascontiguousarray(vectors, dtype=np.float32).tobytes()


def decode_vectors(message: bytes) -> tuple[int, npt.NDArray[np.float32], float]:
    _, batch_id, rows, dims, seconds = _VECTORS.unpack_from(message)
    vectors = np.frombuffer(message, dtype=np.float32, offset=_VECTORS.size, count=rows * dims)
    return batch_id, vectors.reshape(rows, dims), seconds


def encode_failed(kind: int, batch_id: int, seconds: float, message: str = "") -> bytes:
    return _FAILED.pack(kind, batch_id, seconds) + message.encode(errors="replace")


def decode_failed(message: bytes) -> tuple[int, float, str]:
    _, batch_id, seconds = _FAILED.unpack_from(message)
    return batch_id, seconds, message[_FAILED.size :].decode(errors="replace")


def encode_load_failed(message: str) -> bytes:
    return _KIND.pack(LOAD_FAILED) + message.encode(errors="replace")


def decode_load_failed(message: bytes) -> str:
    return message[_KIND.size :].decode(errors="replace")
