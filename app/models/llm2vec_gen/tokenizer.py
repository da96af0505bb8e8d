"""Inputs as llm2vec-gen's `LLM2VecGenModel.encode()` builds them for one text.

encode() tokenizes `text + "".join(special_tokens)` and truncates to max_length; when that
cut into the special tokens (`_add_special_tokens_if_needed`), it writes them over the last
N positions, so a long text loses its end, never the special tokens. The same ids are
built here from the text's own tokens plus the special tokens' ids:

- the user text (instruction included) is tokenized with `split_special_tokens`, so a
  special-token string in it is plain text: it cannot become a special token, and the
  pooled span, always the row's last N positions, cannot move;
- the instruction is prepended as written, as the package README does (`q_instruction + q`);
- whatever the tokenizer's own template adds around a text (a BOS, say; Qwen's adds
  nothing) is kept where encode() would have it.

encode() also pads a batch on the right (the saved tokenizer forgets training's left
padding) and so pools pad positions for every text shorter than the longest; rows built
here are padded on the left with their own position ids by the model part, so each text
gets the vector it gets alone.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from app.config import ModelSettings
from app.models.llm2vec_gen.checkpoint import Layout
from app.models.protocol import ModelLoadError, TokenizedText


def _tokenizer_special_tokens(tokenizer: Any) -> list[str] | None:
    """The special tokens encode() appends: `additional_special_tokens` (transformers 4),
    `extra_special_tokens` when that is a list (transformers 5); None if neither is."""
    for name in ("additional_special_tokens", "extra_special_tokens"):
        value = getattr(tokenizer, name, None)
        if isinstance(value, list) and value:
            return [str(v) for v in value]
    return None


class LLM2VecGenTokenizer:
    """The tokenizer part: no weights, cheap to load in the gateway process."""

    def __init__(self, settings: ModelSettings, layout: Layout) -> None:
        from transformers import AutoTokenizer

        self._tokenizer: Any = AutoTokenizer.from_pretrained(str(layout.directory))
        special = list(layout.special_tokens)
        listed = _tokenizer_special_tokens(self._tokenizer)
        if listed is not None and listed != special:
            raise ModelLoadError(
                f"{settings.name}: the tokenizer's special tokens {listed} differ from "
                f"run_config.yml's {special}"
            )
        ids: list[Any] = [self._tokenizer.convert_tokens_to_ids(token) for token in special]
        if any(not isinstance(i, int) or i == self._tokenizer.unk_token_id for i in ids):
            raise ModelLoadError(f"{settings.name}: the tokenizer lacks some of the special tokens {special}")
        self.special_ids: tuple[int, ...] = tuple(int(i) for i in ids)
        self._special_set = frozenset(self.special_ids)
        self.pooled_tokens = layout.pooled_tokens
        # The tokenizer's own template around a text, found by tokenizing the special tokens alone.
        template = list(self._tokenizer("".join(special))["input_ids"])
        n = len(self.special_ids)
        starts = [i for i in range(len(template) - n + 1) if tuple(template[i : i + n]) == self.special_ids]
        if len(starts) != 1:
            raise ModelLoadError(f"{settings.name}: the special tokens do not tokenize to their own ids")
        self._prefix = tuple(template[: starts[0]])
        self._suffix = tuple(template[starts[0] + n :])
        self._keep_left = getattr(self._tokenizer, "truncation_side", "right") == "left"
        fixed = len(self._prefix) + n + len(self._suffix)
        if settings.max_length <= fixed:
            raise ModelLoadError(
                f"{settings.name}: max_length {settings.max_length} leaves no room for text next to the "
                f"{fixed} tokens every input carries"
            )
        self.max_length = settings.max_length
        self.vocab_size = len(self._tokenizer)
        pad = self._tokenizer.pad_token_id
        self.pad_id = int(pad if pad is not None else self._tokenizer.eos_token_id)

    def _row(self, text_ids: list[int]) -> TokenizedText:
        content = [*text_ids, *self.special_ids]
        full = len(self._prefix) + len(content) + len(self._suffix)
        if full > self.max_length:
            room = self.max_length - len(self._prefix) - len(self._suffix)
            content = content[-room:] if self._keep_left else content[:room]
        row = [*self._prefix, *content, *self._suffix]
        # encode()'s _add_special_tokens_if_needed: the text never holds a special id (it was
        # tokenized with split_special_tokens), so fewer than N means truncation cut them.
        n = len(self.special_ids)
        if sum(1 for i in row if i in self._special_set) < n:
            row[-n:] = self.special_ids
        return TokenizedText(input_ids=tuple(row), pooled=self.pooled_tokens, full_length=full)

    def tokenize(self, texts: Sequence[str], instruction: str) -> list[TokenizedText]:
        prompts = [instruction + text for text in texts] if instruction else list(texts)
        encoded = self._tokenizer(prompts, add_special_tokens=False, split_special_tokens=True)["input_ids"]
        return [self._row(list(ids)) for ids in encoded]

    def decode_ids(self, ids: Sequence[int]) -> str:
        text: str = self._tokenizer.decode(list(ids))
        return text
