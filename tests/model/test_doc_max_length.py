"""llm2vec's doc_max_length: encode() cuts a text of over 400 tokens (counted without special
tokens, truncated to max_length) to fewer words before building the prompt
(`LLM2Vec._convert_to_str`), so with max_length = 512 a 450-token text is not served whole."""

from __future__ import annotations

from pathlib import Path

import pytest

from app.config import ModelSettings
from app.models.llm2vec.loading import inspect_checkpoint
from app.models.llm2vec_backend import LLM2VecTokenizer
from tests.reference.layout import materialize


@pytest.fixture(scope="module")
def sheared_llama(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return materialize("sheared-llama", tmp_path_factory.mktemp("golden") / "sheared-llama") / "mntp"


def text_of(items: int) -> str:
    return " ".join(f"item {i}," for i in range(items))


# (items, words llm2vec 0.2.3's _convert_to_str kept with max_length=512, doc_max_length=400),
# computed once with llm2vec 0.2.3 on this fixture's tokenizer; the texts have 373, 642 and
# 979 tokens. Under 400 tokens nothing is cut.
KEPT = [(60, 120), (100, 127), (150, 126)]


@pytest.mark.parametrize(("items", "kept"), KEPT)
def test_long_text_is_cut_by_words_as_llm2vec_does(sheared_llama: Path, items: int, kept: int) -> None:
    settings = ModelSettings(name="s", base_model=str(sheared_llama), max_length=512)
    tokenizer = LLM2VecTokenizer(settings, inspect_checkpoint(str(sheared_llama), None))
    text = text_of(items)
    [item] = tokenizer.tokenize([text], "")
    cut = " ".join(text.split()[:kept])
    # sheared-llama is named princeton-nlp/Sheared-LLaMA-1.3B: no wrapper, BOS added.
    want = tokenizer._tokenizer(cut, truncation=True, max_length=512)["input_ids"]
    assert item.input_ids == tuple(want)
    assert item.pooled == len(tokenizer._tokenizer(cut, add_special_tokens=False)["input_ids"])


def test_no_cut_where_max_length_is_under_doc_max_length(sheared_llama: Path) -> None:
    settings = ModelSettings(name="s", base_model=str(sheared_llama), max_length=256)
    tokenizer = LLM2VecTokenizer(settings, inspect_checkpoint(str(sheared_llama), None))
    [item] = tokenizer.tokenize([text_of(100)], "")
    assert len(item.input_ids) == 256 and item.full_length > 600
