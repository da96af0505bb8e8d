"""`on_overflow = "chunk"`: an input longer than the model's context becomes several windows.

An over-long text is cut at token boundaries into windows that each fit `max_length` once
the model's prompt (instruction, special tokens) is added; each window is tokenized as any
input is, so an LLM2Vec instruction is repeated in every window and left out of its mean.
The windows go to the batcher with everything else. The input's vector is the windows'
vectors averaged with each window's pooled token count as its weight (for mean pooling,
about the mean over all the text's tokens), then cut and normalised as usual. Every window's
tokens count in `usage`. The room for text is `max_length` less an empty text's prompt; a
window that tokenizes longer than its share (a text cut apart can) shrinks the cut.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Protocol

import numpy as np
import numpy.typing as npt

from app.errors import InvalidRequestError
from app.models.protocol import TokenizedText

_ATTEMPTS = 4


class WindowedBackend(Protocol):
    def tokenize(self, texts: Sequence[str], instruction: str) -> list[TokenizedText]: ...
    def token_spans(self, text: str) -> list[tuple[int, int]]: ...


@dataclass(frozen=True)
class ChunkPlan:
    """Which rows of the batch belong to which input, and each row's weight."""

    bounds: list[tuple[int, int]]
    weights: npt.NDArray[np.float64]

    def combine(self, vectors: npt.NDArray[np.float32]) -> npt.NDArray[np.float32]:
        out = np.empty((len(self.bounds), vectors.shape[1]), dtype=np.float32)
        for i, (start, end) in enumerate(self.bounds):
            if end - start == 1:
                out[i] = vectors[start]
            else:
                weights = self.weights[start:end]
                out[i] = (vectors[start:end].astype(np.float64) * weights[:, None]).sum(
                    axis=0
                ) / weights.sum()
        return out


def text_windows(text: str, spans: Sequence[tuple[int, int]], budget: int) -> list[str]:
    """The text cut before every `budget`-th token; the first window starts at the text's start."""
    starts = [0] + [spans[k][0] for k in range(budget, len(spans), budget)]
    return [text[a:b] for a, b in zip(starts, [*starts[1:], len(text)], strict=True)]


def _windows(
    backend: WindowedBackend, text: str, instruction: str, budget: int, max_length: int
) -> list[TokenizedText]:
    """The text's windows, tokenized; a text cut apart can tokenize longer than its pieces
    did together, so the budget shrinks by the excess and the cut is tried again (a few times,
    then what is still over is truncated)."""
    spans = backend.token_spans(text)
    for _ in range(_ATTEMPTS):
        if budget < 1:
            raise InvalidRequestError(
                f"The instruction and special tokens alone fill the model's {max_length} tokens; "
                "no room is left to chunk the input.",
                param="input",
            )
        windows = backend.tokenize(text_windows(text, spans, budget), instruction)
        excess = max(w.full_length for w in windows) - max_length
        if excess <= 0:
            break
        budget -= excess
    return windows


def expand(
    backend: WindowedBackend,
    texts: Sequence[str],
    tokenized: list[TokenizedText],
    instruction: str,
    max_length: int,
) -> tuple[list[TokenizedText], ChunkPlan | None]:
    """The rows to embed (over-long inputs replaced by their windows) and how to put the
    inputs back together; no plan when every input fits."""
    if all(t.full_length <= max_length for t in tokenized):
        return tokenized, None
    rows: list[TokenizedText] = []
    bounds: list[tuple[int, int]] = []
    # What the prompt adds around the text (BOS, instruction, template): an empty text's prompt.
    overhead = backend.tokenize([""], instruction)[0].full_length
    for text, item in zip(texts, tokenized, strict=True):
        start = len(rows)
        if item.full_length <= max_length:
            rows.append(item)
        else:
            rows.extend(_windows(backend, text, instruction, max_length - overhead, max_length))
        bounds.append((start, len(rows)))
    weights = np.array([max(1, t.pooled) for t in rows], dtype=np.float64)
    return rows, ChunkPlan(bounds, weights)


def join_plans(
    parts: Sequence[tuple[int, ChunkPlan | None]], rows: Sequence[TokenizedText]
) -> ChunkPlan | None:
    """One plan for a request tokenized in turns: each part is (rows it added, its plan or
    None where every input of that turn fit); None when no turn chunked anything."""
    if all(plan is None for _, plan in parts):
        return None
    bounds: list[tuple[int, int]] = []
    offset = 0
    for count, plan in parts:
        spans = plan.bounds if plan is not None else [(i, i + 1) for i in range(count)]
        bounds += [(offset + start, offset + end) for start, end in spans]
        offset += count
    weights = np.array([max(1, t.pooled) for t in rows], dtype=np.float64)
    return ChunkPlan(bounds, weights)
