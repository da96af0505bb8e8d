"""LLM2Vec's prompt building, as llm2vec 0.2.3 does it (llm2vec/llm2vec.py).

`LLM2Vec.prepare_for_tokenization` wraps a text by the checkpoint's *original* model name
(`config._name_or_path` of the -mntp checkpoint), and, for `eos_token` pooling, appends the
family's EOS string. `LLM2Vec._convert_to_str` joins the instruction and the text as
`f"{instruction.strip()} !@#$%^&*(){text}"`; we put our own unguessable marker where llm2vec
puts its public separator, so a user text containing it cannot shift the pooled span.

Names are matched exactly, as llm2vec does: for example Llama-3.1 checkpoints
(meta-llama/Meta-Llama-3.1-8B-Instruct) get no wrapper, and were trained without one
(llm2vec's experiments/run_supervised.py uses the same function).
"""

from __future__ import annotations

from collections.abc import Callable

# llm2vec's default doc_max_length: a text over it is cut to about that many tokens, by words.
DOC_MAX_LENGTH = 400

LLAMA3_INSTRUCT = "meta-llama/Meta-Llama-3-8B-Instruct"
INST_MODELS = ("mistralai/Mistral-7B-Instruct-v0.2", "meta-llama/Llama-2-7b-chat-hf")
GEMMA_IT_MODELS = ("google/gemma-2-9b-it",)
QWEN2_INSTRUCT_MODELS = ("Qwen/Qwen2-1.5B-Instruct", "Qwen/Qwen2-7B-Instruct")
LLAMA3_BASE = "meta-llama/Meta-Llama-3-8B"

# The EOS string llm2vec appends for eos_token pooling, by model_type (llm2vec checks the
# config class: Llama and Mistral " </s>", Gemma "<eos>", Qwen2 "<|endoftext|>"). Qwen3
# shares Qwen2's tokenizer and its "<|endoftext|>" (llm2vec 0.2.3 has no Qwen3 class).
EOS_SUFFIX = {
    "llama": " </s>",
    "mistral": " </s>",
    "gemma": "<eos>",
    "qwen2": "<|endoftext|>",
    "qwen3": "<|endoftext|>",
}


def prepare_for_tokenization(text: str, name_or_path: str, model_type: str, pooling: str) -> str:
    """llm2vec 0.2.3's LLM2Vec.prepare_for_tokenization, branch for branch."""
    if name_or_path == LLAMA3_INSTRUCT:
        # llm2vec returns here: no EOS is appended even for eos_token pooling.
        return "<|start_header_id|>user<|end_header_id|>\n\n" + text.strip() + "<|eot_id|>"
    if name_or_path in INST_MODELS:
        text = "[INST] " + text.strip() + " [/INST]"
    if name_or_path in GEMMA_IT_MODELS:
        text = "<bos><start_of_turn>user\n" + text.strip() + "<end_of_turn>"
    if name_or_path in QWEN2_INSTRUCT_MODELS:
        text = "<|im_start|>user\n" + text.strip() + "<|im_end|>"
    if pooling == "eos_token":
        if name_or_path == LLAMA3_BASE:
            text = text.strip() + "<|end_of_text|>"
        elif model_type in EOS_SUFFIX:
            text = text.strip() + EOS_SUFFIX[model_type]
    return text


def join_instruction(instruction: str, marker: str, text: str) -> str:
    """llm2vec's _convert_to_str join, with `marker` in place of its `!@#$%^&*()`."""
    return f"{instruction.strip()} {marker}{text}" if instruction else f"{marker}{text}"


def cut_to_doc_max_length(text: str, count: Callable[[str], int], doc_max_length: int) -> str:
    """llm2vec's _convert_to_str: while the text has more than `doc_max_length` tokens
    (`count`: without special tokens, truncated to max_length), keep the first
    int(words * doc_max_length / tokens) whitespace-separated words, joined by single spaces."""
    tokens = count(text)
    while tokens > doc_max_length:
        words = text.split()
        text = " ".join(words[: int(len(words) * (doc_max_length / tokens))])
        tokens = count(text)
    return text
