"""Cutting an over-long text before tokenizing it gives the tokenizer's own truncation of
the whole text, token for token: a property checked on random and adversarial texts with
the real all-MiniLM-L6-v2 tokenizer (WordPiece) and the tiny LLM2Vec models' byte-level BPE."""

from __future__ import annotations

import random
from functools import cache
from pathlib import Path
from typing import Any

import pytest
from transformers import AutoTokenizer

from app.models.registry import resolve_path
from app.models.tokenization import char_budget, tokenize_truncating
from tests.model_factory import make_tokenizer

# Pieces texts are built from: words, long words, punctuation, digits, accents (composed
# and combining), CJK, emoji, and characters that make no token at all (whitespace runs,
# control characters, zero-width and combining marks), which the cut must survive.
WORDS = ["the", "quick", "brown", "fox", "tokenization", "LLM2Vec", "embeddings", "über", "naïve"]
PIECES = [
    lambda r: r.choice(WORDS),
    lambda r: "".join(r.choice("abcdefghij") for _ in range(r.randint(20, 300))),  # one long word
    lambda r: r.choice(",.;:!?-()[]{}'\"/\\@#$%^&*"),
    lambda r: str(r.randint(0, 10**9)),
    lambda r: "e\u0301" * r.randint(1, 5),
    lambda r: "\u0301" * r.randint(1, 400),
    lambda r: r.choice(["日本語", "中文", "한국어"]),
    lambda r: r.choice(["🚀", "👩‍👩‍👧", "🇫🇷"]),
    lambda r: " " * r.randint(1, 600),
    lambda r: "\n\t\r" * r.randint(1, 50),
    lambda r: "\x00\x01\u200b" * r.randint(1, 100),
]


def random_text(r: random.Random, chars: int) -> str:
    out: list[str] = []
    size = 0
    while size < chars:
        piece = r.choice(PIECES)(r)
        out.append(piece + (" " if r.random() < 0.7 else ""))
        size += len(out[-1])
    return "".join(out)


@cache
def _tokenizers() -> dict[str, Any]:
    bpe_dir = Path(__import__("tempfile").mkdtemp(prefix="tiny-bpe-"))
    return {
        "minilm": AutoTokenizer.from_pretrained(resolve_path("bundled:all-MiniLM-L6-v2")),
        "tiny-llm2vec-bpe": AutoTokenizer.from_pretrained(make_tokenizer(bpe_dir)),
    }


def reference(
    tokenizer: Any, texts: list[str], max_length: int, special: bool
) -> list[tuple[list[int], int]]:
    """Today's truncation: the whole text tokenized, then the tokenizer's own truncation."""
    full = tokenizer(texts, add_special_tokens=special)["input_ids"]
    cut = tokenizer(texts, add_special_tokens=special, truncation=True, max_length=max_length)["input_ids"]
    return [(ids, len(whole)) for ids, whole in zip(cut, full, strict=True)]


def check(tokenizer: Any, texts: list[str], max_length: int, special: bool = True) -> None:
    got = tokenize_truncating(tokenizer, texts, max_length, add_special_tokens=special)
    for text, found, (ids, length) in zip(
        texts, got, reference(tokenizer, texts, max_length, special), strict=True
    ):
        assert list(found.ids) == ids, f"{len(text)} chars: {text[:200]!r}"
        if found.exact:
            assert found.length == length
        else:  # the text was cut: its length is a lower bound that still says "too long"
            assert max_length < found.length <= length


@pytest.mark.parametrize("name", ["minilm", "tiny-llm2vec-bpe"])
@pytest.mark.parametrize("seed", range(12))
def test_pre_cut_truncation_equals_whole_text_truncation(name: str, seed: int) -> None:
    tokenizer = _tokenizers()[name]
    r = random.Random(seed)
    max_length = r.choice([4, 8, 16, 64, 256])
    budget = char_budget(tokenizer, max_length)
    # Around and far past the budget, so every path runs: whole, cut once, cut after growing.
    sizes = [r.randint(1, budget), r.randint(budget, 5 * budget), r.randint(5 * budget, 20 * budget)]
    texts = [random_text(r, size) for size in sizes for _ in range(2)]
    check(tokenizer, texts, max_length)
    check(tokenizer, texts, max_length, special=False)  # LLM2Vec's pooled span is tokenized so


@pytest.mark.parametrize("name", ["minilm", "tiny-llm2vec-bpe"])
@pytest.mark.parametrize(
    "text",
    [
        " " * 100_000 + "late words " * 500,  # no token until far past any budget
        "\u0301" * 50_000 + "marks then words " * 300,
        "\x00" * 30_000 + "x",  # too few tokens in the whole text: not over-long at all
        "a" * 200_000,  # one enormous word
        "word " * 40_000,  # 200,000 characters of ordinary text
        ("tokenization " * 40 + "\n\n") * 300,
    ],
    ids=["spaces", "combining", "controls", "one-word", "plain", "paragraphs"],
)
def test_adversarial_texts(name: str, text: str) -> None:
    check(_tokenizers()[name], [text, "short one", text[: len(text) // 3]], 16)


def test_a_long_text_is_not_tokenized_whole() -> None:
    """The point of it: only about three budgets of a long text reach the tokenizer."""
    tokenizer = _tokenizers()["minilm"]
    seen: list[int] = []

    class Counting:
        is_fast = True

        def get_vocab(self) -> dict[str, int]:
            return tokenizer.get_vocab()  # type: ignore[no-any-return]

        def __call__(self, texts: list[str], **kwargs: Any) -> Any:
            seen.append(sum(len(t) for t in texts))
            return tokenizer(texts, **kwargs)

    text = "word " * 3_000_000  # 15 MB
    [found] = tokenize_truncating(Counting(), [text], 256)
    assert list(found.ids) == tokenizer(text[:100_000], truncation=True, max_length=256)["input_ids"]
    assert sum(seen) <= 3 * char_budget(tokenizer, 256)
