"""Device, dtype and padding helpers shared by the torch backends."""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from typing import Literal

import torch

from app.models.protocol import BatchMemoryError, TokenizedText

_DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


def resolve_device(device: str) -> str:
    """The device to serve on, with its kernels chosen for serving. `auto` is CUDA when
    present, else the CPU; `auto:N` (the N-th of several workers) is cuda:N or the CPU."""
    auto, _, index = device.partition(":")
    if auto == "auto":
        resolved = (f"cuda:{index}" if index else "cuda") if torch.cuda.is_available() else "cpu"
    else:
        resolved = device
    if resolved.startswith("cuda"):
        # cuDNN's attention builds an execution plan for each new shape, and a server sees a
        # new (rows, width) almost every batch: measured on an H100 (torch 2.11) at 2 ms of CPU
        # per layer per batch, 65 ms for a one-input forward of a 32-layer model whose GPU
        # work takes 9 ms. The flash and memory-efficient kernels have no such cost.
        torch.backends.cuda.enable_cudnn_sdp(False)
    return resolved


def resolve_dtype(dtype: str, device: str) -> torch.dtype:
    """`auto` is bfloat16 on CUDA and float32 elsewhere."""
    if dtype == "auto":
        return torch.bfloat16 if device.startswith("cuda") else torch.float32
    return _DTYPES[dtype]


def configure_threads(threads: int, cores: int | None = None) -> None:
    """`threads` torch threads; 0 keeps torch's default (one per physical core of the
    machine), but no more than `cores`: a container's CPU quota, which torch does not see."""
    if threads > 0:
        torch.set_num_threads(threads)
    elif cores is not None and torch.get_num_threads() > cores:
        torch.set_num_threads(cores)


class ThreadShare:
    """The process's torch threads, fewer while the gateway needs cores of its own.

    Torch's CPU kernels split each operation across their threads and wait at its end for
    the slowest: with as many threads as cores, a core taken by the gateway's tokenizer
    stalls every operation of the forward until the OS gives the thread back (measured on
    2 cores: forwards of one size from 19 ms to 700 ms while a long body was tokenized).
    Leaving that core alone costs the forward a thread's share instead.
    """

    def __init__(self) -> None:
        self.full = torch.get_num_threads()
        self.current = self.full

    def leave(self, spare: int) -> None:
        """Run the next forwards on all threads but `spare` (at least one)."""
        wanted = max(1, self.full - spare)
        if wanted != self.current:
            torch.set_num_threads(wanted)
            self.current = wanted


def pad_batch(
    batch: Sequence[TokenizedText],
    pad_id: int,
    side: Literal["left", "right"],
    device: str,
    width: int | None = None,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """input_ids, attention_mask and position_ids for a padded batch, `width` wide (default:
    its longest row).

    Position ids count real tokens only, so a left-padded row sees the same positions
    as it would alone (llm2vec pads on the left and passes none).
    """
    width = width or max(len(item.input_ids) for item in batch)
    ids = torch.full((len(batch), width), pad_id, dtype=torch.long)
    mask = torch.zeros((len(batch), width), dtype=torch.long)
    for row, item in enumerate(batch):
        n = len(item.input_ids)
        cols = slice(width - n, width) if side == "left" else slice(0, n)
        ids[row, cols] = torch.tensor(item.input_ids, dtype=torch.long)
        mask[row, cols] = 1
    positions = (mask.cumsum(dim=1) - 1).clamp(min=0)
    return ids.to(device), mask.to(device), positions.to(device)


def pooled_mask(batch: Sequence[TokenizedText], width: int, device: str) -> torch.Tensor:
    """1 on the last `pooled` positions of each left-padded row (the text, not the instruction)."""
    mask = torch.zeros((len(batch), width), dtype=torch.float32)
    for row, item in enumerate(batch):
        # An empty text span (e.g. a whitespace-only text) pools the whole input rather than nothing.
        n = min(item.pooled, len(item.input_ids)) or len(item.input_ids)
        mask[row, width - n :] = 1.0
    return mask.to(device)


@contextmanager
def forward_context() -> Iterator[None]:
    """Inference mode, with accelerator out-of-memory turned into BatchMemoryError so the
    engine can split the batch (the engine never imports torch)."""
    try:
        with torch.inference_mode():
            yield
    except torch.cuda.OutOfMemoryError as exc:
        torch.cuda.empty_cache()
        raise BatchMemoryError(str(exc)) from None
