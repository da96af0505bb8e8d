"""The prompts equal llm2vec 0.2.3's, string for string.

EXPECTED was generated once from llm2vec 0.2.3's own LLM2Vec.prepare_for_tokenization
(transformers 4.44.2), on a config of each class named as below, for the input
" Represent the query: !@#$%^&*() what is up? " (what _convert_to_str builds for the
instruction "Represent the query:" and the text " what is up? ").
"""

# ruff: noqa: E501  (the expected strings are kept one per line, as generated)
from __future__ import annotations

import pytest

from app.models.llm2vec.prompts import join_instruction, prepare_for_tokenization

LLM2VEC_INPUT = " Represent the query: !@#$%^&*() what is up? "
EXPECTED = [
    ("meta-llama/Meta-Llama-3-8B-Instruct", "llama", "mean", "<|start_header_id|>user<|end_header_id|>\n\nRepresent the query: !@#$%^&*() what is up?<|eot_id|>"),
    ("meta-llama/Meta-Llama-3-8B-Instruct", "llama", "eos_token", "<|start_header_id|>user<|end_header_id|>\n\nRepresent the query: !@#$%^&*() what is up?<|eot_id|>"),
    ("meta-llama/Meta-Llama-3-8B", "llama", "mean", " Represent the query: !@#$%^&*() what is up? "),
    ("meta-llama/Meta-Llama-3-8B", "llama", "eos_token", "Represent the query: !@#$%^&*() what is up?<|end_of_text|>"),
    ("meta-llama/Meta-Llama-3.1-8B-Instruct", "llama", "mean", " Represent the query: !@#$%^&*() what is up? "),
    ("meta-llama/Meta-Llama-3.1-8B-Instruct", "llama", "eos_token", "Represent the query: !@#$%^&*() what is up? </s>"),
    ("mistralai/Mistral-7B-Instruct-v0.2", "mistral", "mean", "[INST] Represent the query: !@#$%^&*() what is up? [/INST]"),
    ("mistralai/Mistral-7B-Instruct-v0.2", "mistral", "eos_token", "[INST] Represent the query: !@#$%^&*() what is up? [/INST] </s>"),
    ("meta-llama/Llama-2-7b-chat-hf", "llama", "mean", "[INST] Represent the query: !@#$%^&*() what is up? [/INST]"),
    ("meta-llama/Llama-2-7b-chat-hf", "llama", "eos_token", "[INST] Represent the query: !@#$%^&*() what is up? [/INST] </s>"),
    ("google/gemma-2-9b-it", "gemma", "mean", "<bos><start_of_turn>user\nRepresent the query: !@#$%^&*() what is up?<end_of_turn>"),
    ("google/gemma-2-9b-it", "gemma", "eos_token", "<bos><start_of_turn>user\nRepresent the query: !@#$%^&*() what is up?<end_of_turn><eos>"),
    ("google/gemma-7b", "gemma", "mean", " Represent the query: !@#$%^&*() what is up? "),
    ("google/gemma-7b", "gemma", "eos_token", "Represent the query: !@#$%^&*() what is up?<eos>"),
    ("Qwen/Qwen2-1.5B-Instruct", "qwen2", "mean", "<|im_start|>user\nRepresent the query: !@#$%^&*() what is up?<|im_end|>"),
    ("Qwen/Qwen2-1.5B-Instruct", "qwen2", "eos_token", "<|im_start|>user\nRepresent the query: !@#$%^&*() what is up?<|im_end|><|endoftext|>"),
    ("Qwen/Qwen2-7B-Instruct", "qwen2", "mean", "<|im_start|>user\nRepresent the query: !@#$%^&*() what is up?<|im_end|>"),
    ("Qwen/Qwen2-7B-Instruct", "qwen2", "eos_token", "<|im_start|>user\nRepresent the query: !@#$%^&*() what is up?<|im_end|><|endoftext|>"),
    ("princeton-nlp/Sheared-LLaMA-1.3B", "llama", "mean", " Represent the query: !@#$%^&*() what is up? "),
    ("princeton-nlp/Sheared-LLaMA-1.3B", "llama", "eos_token", "Represent the query: !@#$%^&*() what is up? </s>"),
]  # fmt: skip


@pytest.mark.parametrize(("name", "model_type", "pooling", "expected"), EXPECTED)
def test_prompt_equals_llm2vec(name: str, model_type: str, pooling: str, expected: str) -> None:
    assert prepare_for_tokenization(LLM2VEC_INPUT, name, model_type, pooling) == expected


@pytest.mark.parametrize("model_type", ["qwen3"])
def test_qwen3_eos_token_is_qwen2s(model_type: str) -> None:
    assert prepare_for_tokenization(" a ", "Qwen/Qwen3-8B", model_type, "eos_token") == "a<|endoftext|>"
    assert prepare_for_tokenization(" a ", "Qwen/Qwen3-8B", model_type, "mean") == " a "


def test_instruction_join_is_llm2vecs_with_our_marker() -> None:
    # llm2vec: f"{instruction.strip()} !@#$%^&*(){text}", or f"!@#$%^&*(){text}" without one.
    assert (
        join_instruction(" Represent the query: ", "!@#$%^&*()", " what is up? ")
        == LLM2VEC_INPUT.strip(" ") + " "
    )
    assert join_instruction("", "<M>", " text ") == "<M> text "
    assert join_instruction("Query:", "<M>", "text") == "Query: <M>text"
