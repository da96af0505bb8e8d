"""The worker process's main loop: load the model part, then run batches until told to stop
or until the gateway goes away (its end of the pipe closes).

Started with multiprocessing's spawn context (never fork: the gateway may hold torch and
tokenizer threads). Only this module's function runs in the child; it imports the model
libraries there, so the gateway process never needs the weights.
"""

from __future__ import annotations

import logging
import os
import signal
import sys
import time
from multiprocessing.connection import Connection

from app.config import ModelSettings
from app.engine.workers import channel, host
from app.engine.workers.priority import lowest_cpu_priority
from app.models.protocol import BackendLoader, BatchMemoryError

logger = logging.getLogger(__name__)


def worker_main(
    requests: Connection,
    replies: Connection,
    loader: BackendLoader,
    entry: ModelSettings,
    threads: int,
    background: bool = False,
) -> None:
    if background:
        # First, before torch starts its threads: they inherit the policy.
        lowest_cpu_priority()
    # Ctrl-C reaches the whole process group; the gateway stops its workers itself.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    logging.basicConfig(
        level=logging.WARNING, stream=sys.stderr, format="%(levelname)s %(name)s: %(message)s"
    )
    from app.models.torch_runtime import ThreadShare, configure_threads

    configure_threads(threads, host.usable_cores())
    share = ThreadShare()
    try:
        model = loader.load_model(entry)
    except Exception as exc:
        replies.send_bytes(channel.encode_load_failed(f"{type(exc).__name__}: {exc}"))
        return
    replies.send_bytes(channel.encode_hello(os.getpid(), model.dimensions, model.device, share.full))
    while True:
        try:
            message = requests.recv_bytes()
        except (EOFError, OSError):
            return  # the gateway is gone
        if channel.kind(message) == channel.STOP:
            return
        batch_id, rows, spare = channel.decode_batch(message)
        share.leave(spare)
        started = time.perf_counter()
        try:
            vectors = model.embed(rows)
        except BatchMemoryError:
            reply = channel.encode_failed(channel.MEMORY, batch_id, time.perf_counter() - started)
        except Exception as exc:
            reply = channel.encode_failed(
                channel.ERROR, batch_id, time.perf_counter() - started, f"{type(exc).__name__}: {exc}"
            )
        else:
            reply = channel.encode_vectors(batch_id, vectors, time.perf_counter() - started)
        try:
            replies.send_bytes(reply)
        except (BrokenPipeError, OSError):
            return
