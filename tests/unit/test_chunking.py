"""Window planning for on_overflow = "chunk", with a word-level stand-in tokenizer."""

from __future__ import annotations

import re
from collections.abc import Sequence

import numpy as np

from app.engine.chunking import expand
from app.models.protocol import TokenizedText


class Words:
    """One token per word, a BOS token, and the instruction's words before the text's."""

    def __init__(self) -> None:
        self.calls: list[tuple[list[str], str]] = []

    def tokenize(self, texts: Sequence[str], instruction: str) -> list[TokenizedText]:
        self.calls.append((list(texts), instruction))
        out = []
        for text in texts:
            ids = (0, *(1 for _ in instruction.split()), *(2 for _ in text.split()))
            out.append(TokenizedText(ids[:8], min(len(text.split()), 8), len(ids)))
        return out

    def token_spans(self, text: str) -> list[tuple[int, int]]:
        return [m.span() for m in re.finditer(r"\S+", text)]


def test_windows_repeat_the_instruction_and_fit_the_model() -> None:
    backend = Words()
    text = " ".join(f"w{i}" for i in range(12))
    tokenized = backend.tokenize([text, "short one"], "find it:")
    rows, plan = expand(backend, [text, "short one"], tokenized, "find it:", max_length=8)
    assert plan is not None
    # 8 tokens - BOS - two instruction words = 5 text words per window.
    assert backend.calls[-1] == (["w0 w1 w2 w3 w4 ", "w5 w6 w7 w8 w9 ", "w10 w11"], "find it:")
    assert [len(r.input_ids) for r in rows] == [8, 8, 5, 5]
    assert plan.bounds == [(0, 3), (3, 4)]
    vectors = np.array([[1, 0], [0, 1], [1, 1], [7, 7]], dtype=np.float32)
    combined = plan.combine(vectors)
    np.testing.assert_allclose(combined[0], [(5 + 2) / 12, (5 + 2) / 12])
    np.testing.assert_allclose(combined[1], [7, 7])


def test_no_plan_when_everything_fits() -> None:
    backend = Words()
    tokenized = backend.tokenize(["a b"], "")
    rows, plan = expand(backend, ["a b"], tokenized, "", max_length=8)
    assert plan is None and rows == tokenized
