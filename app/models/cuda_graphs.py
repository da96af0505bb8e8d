"""CUDA graphs for small forwards: one captured graph per padded shape (rows x width).

A small forward of a large decoder is bound by the Python that launches its ~1,400
kernels, not by the GPU (bench/RESULTS-gpu.md: 18 ms of launches for 9 ms of GPU work),
and the launches hold the GIL. A captured graph replays all of them in one call. Batches
are padded up to the next captured shape: more rows (each a lone padding token, whose
output is dropped) and more left padding (masked out, so the real rows' hidden states do
not change). Pooling runs inside the graph as a weighted sum whose weights the caller
computes, so every pooling mode is one graph. Shapes beyond the largest bucket run eagerly:
long inputs are bound by the GPU anyway.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Sequence

import numpy as np
import numpy.typing as npt
import torch

from app.models.protocol import TokenizedText
from app.models.torch_runtime import pad_batch

logger = logging.getLogger(__name__)

ROW_BUCKETS = (1, 2, 4, 8, 12, 16, 20, 24, 28, 32)
WIDTH_BUCKETS = (8, 16, 24, 32, 40, 48, 56, 64, 80, 96, 112, 128, 160, 192, 224, 256)
# A graph pays while the forward is bound by launches, not by the GPU: up to this many
# padded tokens. (H100, 8B-shaped Llama in bf16: one row 26.9 -> 9.8 ms; 32 rows of ~17
# tokens padded to 32 x 32, 41.8 -> 39.9 ms; 32 rows of ~80 tokens ran 8% slower from a
# graph, so such batches stay eager.)
MAX_GRAPH_TOKENS = 1024

# weights(batch, width) -> (rows, width) float32 pooling weights for a left-padded batch.
PoolWeights = Callable[[Sequence[TokenizedText], int], torch.Tensor]


def bucket(value: int, buckets: Sequence[int]) -> int | None:
    """The smallest bucket that holds `value`, or None when none does."""
    return next((b for b in buckets if b >= value), None)


def padded_inputs(
    batch: Sequence[TokenizedText], rows: int, width: int, pad_id: int
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """input_ids, the keep mask (1.0 for a token, 0.0 for padding) and position_ids for
    `batch` left-padded to (rows, width). Rows past the batch hold one padding token that
    attends to itself only, so no attention row is empty (an all-masked row computes NaN)."""
    filler = TokenizedText((pad_id,), 1, 1)
    ids, keep, positions = pad_batch([*batch, *[filler] * (rows - len(batch))], pad_id, "left", "cpu", width)
    return ids, keep.float(), positions


def pooled_forward(
    model: torch.nn.Module,
    ids: torch.Tensor,
    keep: torch.Tensor,
    positions: torch.Tensor,
    weights: torch.Tensor,
) -> torch.Tensor:
    """The forward a graph captures: hidden states, then the weighted sum over tokens."""
    dtype = next(model.parameters()).dtype
    # An additive mask over the keys, (rows, 1, 1, width): transformers passes a 4D mask
    # through as it is, with no data-dependent check (which a capture cannot contain).
    mask = ((1.0 - keep) * torch.finfo(dtype).min).to(dtype)[:, None, None, :]
    states = model(
        input_ids=ids, attention_mask=mask, position_ids=positions, use_cache=False
    ).last_hidden_state
    pooled: torch.Tensor = (states.float() * weights.unsqueeze(-1)).sum(dim=1)
    return pooled


class _Graph:
    def __init__(self, rows: int, width: int, hidden: int, device: str, dtype: torch.dtype) -> None:
        self.rows, self.width = rows, width
        self.ids = torch.zeros((rows, width), dtype=torch.long, device=device)
        self.keep = torch.zeros((rows, width), dtype=torch.float32, device=device)
        self.positions = torch.zeros((rows, width), dtype=torch.long, device=device)
        self.weights = torch.zeros((rows, width), dtype=torch.float32, device=device)
        self.output = torch.zeros((rows, hidden), dtype=torch.float32, device=device)
        self.graph = torch.cuda.CUDAGraph()


class GraphedForward:
    """Captured graphs of `model`'s forward plus weighted pooling, one per bucket shape."""

    def __init__(
        self, model: torch.nn.Module, device: str, pad_id: int, max_rows: int, max_width: int
    ) -> None:
        self._model = model
        self._device = device
        self._pad_id = pad_id
        self._dtype = next(model.parameters()).dtype
        self._hidden = int(model.config.hidden_size)  # type: ignore[union-attr, arg-type]
        self._rows = tuple(r for r in ROW_BUCKETS if r <= max_rows) or (1,)
        self._widths = tuple(w for w in WIDTH_BUCKETS if w <= max_width) or (WIDTH_BUCKETS[0],)
        # Only shapes `fits` can pick are captured.
        self._shapes = [(r, w) for r in self._rows for w in self._widths if r * w <= MAX_GRAPH_TOKENS]
        self._graphs: dict[tuple[int, int], _Graph] = {}

    def capture(self) -> None:
        """Capture every bucket, largest first, all sharing one memory pool."""
        began = time.perf_counter()
        pool = torch.cuda.graph_pool_handle()
        shapes = sorted(self._shapes, key=lambda s: -s[0] * s[1])
        for rows, width in shapes:
            graph = _Graph(rows, width, self._hidden, self._device, self._dtype)
            ids, keep, positions = padded_inputs([], rows, width, self._pad_id)
            graph.ids.copy_(ids)
            graph.keep.copy_(keep)
            graph.positions.copy_(positions)
            graph.weights[:, -1] = 1.0
            side = torch.cuda.Stream()  # type: ignore[no-untyped-call]
            side.wait_stream(torch.cuda.current_stream())
            with torch.inference_mode(), torch.cuda.stream(side):
                for _ in range(2):  # lets lazy initialisation happen outside the capture
                    self._pooled(graph)
            torch.cuda.current_stream().wait_stream(side)
            with torch.inference_mode(), torch.cuda.graph(graph.graph, pool=pool):
                graph.output.copy_(self._pooled(graph))
            self._graphs[(rows, width)] = graph
        torch.cuda.synchronize()
        logger.info(
            "captured %d CUDA graphs (rows up to %d, widths up to %d) in %.1f s",
            len(shapes),
            self._rows[-1],
            self._widths[-1],
            time.perf_counter() - began,
        )

    def _pooled(self, graph: _Graph) -> torch.Tensor:
        return pooled_forward(self._model, graph.ids, graph.keep, graph.positions, graph.weights)

    def fits(self, batch: Sequence[TokenizedText]) -> bool:
        """Whether `batch` runs faster from a graph: it fits a small enough bucket."""
        width = max(len(item.input_ids) for item in batch)
        rows, padded_width = bucket(len(batch), self._rows), bucket(width, self._widths)
        if rows is None or padded_width is None:
            return False
        return rows * padded_width <= MAX_GRAPH_TOKENS

    def run(self, batch: Sequence[TokenizedText], weights: PoolWeights) -> npt.NDArray[np.float32]:
        """Pooled vectors of `batch`, which must fit a bucket (see `fits`)."""
        shape = (bucket(len(batch), self._rows), bucket(max(len(t.input_ids) for t in batch), self._widths))
        rows, width = shape
        assert rows is not None and width is not None
        graph = self._graphs[(rows, width)]
        ids, keep, positions = padded_inputs(batch, rows, width, self._pad_id)
        pooling = torch.zeros((rows, width), dtype=torch.float32)
        pooling[: len(batch)] = weights(batch, width)
        graph.ids.copy_(ids, non_blocking=True)
        graph.keep.copy_(keep, non_blocking=True)
        graph.positions.copy_(positions, non_blocking=True)
        graph.weights.copy_(pooling, non_blocking=True)
        graph.graph.replay()
        result: npt.NDArray[np.float32] = (
            graph.output[: len(batch)].cpu().numpy().astype(np.float32, copy=False)
        )
        return result
