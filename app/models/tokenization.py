"""Batched tokenization that truncates to max_length, reports what was cut, and never
tokenizes much more of an over-long text than truncation keeps.

Truncation keeps a text's first tokens, so tokenizing all of a 14 MiB text to keep 256 of
its tokens is waste (seconds of CPU, gigabytes of memory). A text longer than a character
budget is therefore cut first: the budget is (max_length + margin) x the longest token
string in the vocabulary, so the cut keeps more than max_length tokens whenever the text's
characters make tokens at all. The tokenizer's own truncation then runs on two cuts, the
budget and twice it: the kept tokens are taken only when both cuts keep the same tokens and
the longer one overflows, i.e. the kept tokens do not depend on where the text was cut.
Otherwise (a cut that leaves too few tokens: long runs of whitespace, control characters or
combining marks, which make no tokens) the budget grows fourfold and the check repeats, up
to the whole text. The result is the tokenizer's truncation of the whole text, token for
token (tests/unit/test_truncation.py checks it on random and adversarial texts); only the
count of tokens before truncation is then a lower bound (`exact` False) instead of exact.
"""

from __future__ import annotations

import weakref
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

# Tokens past max_length that the budget keeps room for (special tokens, a cut word).
MARGIN_TOKENS = 16
# Pre-cutting costs 3 budgets of tokenization, and an over-long text tokenized whole costs
# two passes (count, then truncate): from 2 budgets on, cutting is cheaper.
_PRE_CUT_FROM_BUDGETS = 2

_longest_token: weakref.WeakKeyDictionary[Any, int] = weakref.WeakKeyDictionary()


@dataclass(frozen=True, slots=True)
class Truncation:
    ids: tuple[int, ...]  # the tokenizer's truncation to max_length
    length: int  # tokens before truncation: exact, or a lower bound over max_length
    exact: bool = True


def longest_token_chars(tokenizer: Any) -> int:
    """The most characters one vocabulary entry spells (an upper bound of the text
    characters a token covers, byte-level and "##" spellings being longer, not shorter)."""
    found = _longest_token.get(tokenizer)
    if found is None:
        found = max((len(token) for token in tokenizer.get_vocab()), default=1)
        _longest_token[tokenizer] = found
    return found


def char_budget(tokenizer: Any, max_length: int) -> int:
    return (max_length + MARGIN_TOKENS) * max(1, longest_token_chars(tokenizer))


def tokenize_truncating(
    tokenizer: Any, prompts: Sequence[str], max_length: int, *, add_special_tokens: bool = True
) -> list[Truncation]:
    """The tokenizer's truncation to max_length of each prompt, and its length before."""
    if not getattr(tokenizer, "is_fast", False):  # the cut check needs a fast tokenizer's overflow
        return _whole(tokenizer, list(prompts), max_length, add_special_tokens)
    budget = char_budget(tokenizer, max_length)
    results: list[Truncation | None] = [None] * len(prompts)
    pending = list(range(len(prompts)))
    while pending:
        # Texts the pre-cut would not save much on are tokenized whole.
        whole = [i for i in pending if len(prompts[i]) <= _PRE_CUT_FROM_BUDGETS * budget]
        texts = [prompts[i] for i in whole]
        for i, found in zip(whole, _whole(tokenizer, texts, max_length, add_special_tokens), strict=True):
            results[i] = found
        cut = [i for i in pending if results[i] is None]
        texts = [prompts[i] for i in cut]
        for i, maybe in zip(
            cut, _cuts(tokenizer, texts, budget, max_length, add_special_tokens), strict=True
        ):
            results[i] = maybe
        pending = [i for i in cut if results[i] is None]
        budget *= 4
    return [found for found in results if found is not None]


def _whole(tokenizer: Any, prompts: list[str], max_length: int, add_special_tokens: bool) -> list[Truncation]:
    """One untruncated pass counts every prompt; only the over-long ones are tokenized
    again with the tokenizer's own truncation, which keeps special tokens such as [SEP]."""
    if not prompts:
        return []
    full = tokenizer(prompts, add_special_tokens=add_special_tokens)["input_ids"]
    long_rows = [i for i, ids in enumerate(full) if len(ids) > max_length]
    cut: dict[int, list[int]] = {}
    if long_rows:
        again = tokenizer(
            [prompts[i] for i in long_rows],
            add_special_tokens=add_special_tokens,
            truncation=True,
            max_length=max_length,
        )
        cut = dict(zip(long_rows, again["input_ids"], strict=True))
    return [Truncation(tuple(cut.get(i, ids)), len(ids)) for i, ids in enumerate(full)]


def _cuts(
    tokenizer: Any, prompts: list[str], budget: int, max_length: int, add_special_tokens: bool
) -> list[Truncation | None]:
    """Truncations of prompts cut at `budget` characters, where they do not depend on the
    cut; None where they might (then a larger budget is tried)."""
    if not prompts:
        return []
    texts = [p[:budget] for p in prompts] + [p[: 2 * budget] for p in prompts]
    encoded = tokenizer(
        texts,
        add_special_tokens=add_special_tokens,
        truncation=True,
        max_length=max_length,
        return_overflowing_tokens=True,
    )
    first: dict[int, list[int]] = {}
    windows = [0] * len(texts)
    for ids, sample in zip(encoded["input_ids"], encoded["overflow_to_sample_mapping"], strict=True):
        windows[sample] += 1
        first.setdefault(sample, ids)
    n = len(prompts)
    results: list[Truncation | None] = []
    for i in range(n):
        head, longer = first[i], first[n + i]
        # The longer cut overflows max_length, so the whole text does; both cuts keep the
        # same tokens, so the text past the first cut does not change them.
        stable = windows[n + i] > 1 and head == longer
        results.append(Truncation(tuple(longer), max_length + 1, exact=False) if stable else None)
    return results


def token_spans(tokenizer: Any, text: str) -> list[tuple[int, int]]:
    """(start, end) character offsets of each of the text's tokens, special tokens left out."""
    offsets = tokenizer(text, add_special_tokens=False, return_offsets_mapping=True)["offset_mapping"]
    return [(int(start), int(end)) for start, end in offsets]
