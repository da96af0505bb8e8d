"""Tiny random-weight checkpoints laid out as McGill-NLP's published LLM2Vec ones.

A published LLM2Vec model is three things on the hub:
- the base LLM (e.g. meta-llama/Meta-Llama-3-8B-Instruct): config.json + weights;
- `...-mntp`: config.json (the base's, whose `_name_or_path` names the base), the MNTP LoRA
  adapter (adapter_config.json, adapter_model.safetensors) whose `base_model_name_or_path`
  is the base's hub id, and the tokenizer. llm2vec loads it with transformers' peft
  integration (which fetches the base weights) and merges the adapter;
- `...-supervised` (or `-unsup-simcse`): a second LoRA adapter, applied on top.

Here the three are written under one directory per checkpoint (base/, mntp/, supervised/),
with the hub ids kept as they are published; a loader resolves the MNTP adapter's
`base_model_name_or_path` to the local base/ (tests/reference/layout.py). llm2vec picks its prompt
wrapper by `config._name_or_path`, which it copies from mntp/config.json, so each
checkpoint is named as a published base whose wrapper it should trigger.

This module runs on the reference stack (transformers 4.44); it imports nothing from app/.
"""

from __future__ import annotations

import json
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from peft import LoraConfig, get_peft_model
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers
from transformers import (
    GemmaConfig,
    GemmaModel,
    LlamaConfig,
    LlamaModel,
    MistralConfig,
    MistralModel,
    PretrainedConfig,
    PreTrainedModel,
    PreTrainedTokenizerFast,
)

HIDDEN = 32
LAYERS = 2
HEADS = 4
KV_HEADS = 2
VOCAB_SIZE = 512
MAX_POSITIONS = 256
# llm2vec's MNTP and supervised adapters target every linear layer of the decoder.
LORA_TARGETS = ["down_proj", "gate_proj", "k_proj", "o_proj", "q_proj", "up_proj", "v_proj"]


@dataclass(frozen=True)
class TokenizerStyle:
    """The special tokens of one tokenizer family (the wrappers and pooling modes use them)."""

    bos: str | None
    eos: str
    extra: tuple[str, ...] = ()
    pad: str | None = None


LLAMA2 = TokenizerStyle(bos="<s>", eos="</s>")
LLAMA3 = TokenizerStyle(
    bos="<|begin_of_text|>",
    eos="<|end_of_text|>",
    extra=("<|start_header_id|>", "<|end_header_id|>", "<|eot_id|>"),
)
GEMMA = TokenizerStyle(bos="<bos>", eos="<eos>", pad="<pad>", extra=("<start_of_turn>", "<end_of_turn>"))
# Qwen2's tokenizer adds no BOS.
QWEN2 = TokenizerStyle(bos=None, eos="<|endoftext|>", extra=("<|im_start|>", "<|im_end|>"))


@dataclass(frozen=True)
class Checkpoint:
    """One tiny LLM2Vec checkpoint: directory key, architecture, published name, tokenizer."""

    key: str
    family: str  # llama | mistral | gemma
    name_or_path: str  # what llm2vec's prepare_for_tokenization matches on
    tokenizer: TokenizerStyle
    seed: int
    wrapper: str  # which llm2vec prompt handling it triggers (documentation only)


CHECKPOINTS = (
    Checkpoint(
        "llama-3-instruct",
        "llama",
        "meta-llama/Meta-Llama-3-8B-Instruct",
        LLAMA3,
        1,
        "Llama-3 Instruct header: <|start_header_id|>user<|end_header_id|>\\n\\n{text}<|eot_id|>",
    ),
    Checkpoint(
        "llama-3",
        "llama",
        "meta-llama/Meta-Llama-3-8B",
        LLAMA3,
        2,
        "none, but eos_token pooling appends <|end_of_text|>",
    ),
    Checkpoint("llama-2-chat", "llama", "meta-llama/Llama-2-7b-chat-hf", LLAMA2, 3, "[INST] {text} [/INST]"),
    Checkpoint(
        "mistral-instruct",
        "mistral",
        "mistralai/Mistral-7B-Instruct-v0.2",
        LLAMA2,
        4,
        "[INST] {text} [/INST]",
    ),
    Checkpoint(
        "gemma-it",
        "gemma",
        "google/gemma-2-9b-it",
        GEMMA,
        5,
        "<bos><start_of_turn>user\\n{text}<end_of_turn>; eos_token pooling appends <eos>",
    ),
    # llm2vec matches the Qwen2 wrapper by name alone; a Llama-architecture checkpoint under
    # that name runs it bidirectionally (llm2vec's own Qwen2 class stays causal).
    Checkpoint(
        "qwen2-instruct-named",
        "llama",
        "Qwen/Qwen2-7B-Instruct",
        QWEN2,
        6,
        "<|im_start|>user\\n{text}<|im_end|>; no BOS",
    ),
    Checkpoint(
        "sheared-llama",
        "llama",
        "princeton-nlp/Sheared-LLaMA-1.3B",
        LLAMA2,
        7,
        "none (eos_token pooling appends ' </s>')",
    ),
)

# The tokenizers' training text: fixed, so every build yields the same vocabulary and merges.
CORPUS = """\
The quick brown fox jumps over the lazy dog, and the dog does not mind at all.
Embeddings map every sentence to a vector of numbers; similar texts get similar vectors.
Given a web search query, retrieve relevant passages that answer the query.
Retrieve duplicate questions from StackOverflow forum. Classify the sentiment of a review.
Paris is the capital of France, and Berlin is the capital of Germany.
The train leaves at 10:45 from platform 7 and arrives at 13:20, about 2.5 hours later.
She bought 12 apples, 6 oranges and 3 bananas for $4.99 at the market on Main Street.
Water boils at 100 degrees Celsius (212 degrees Fahrenheit) at sea level.
"Do you know the way to the station?" asked the traveller; "Yes, turn left," said the boy.
Machine learning models learn patterns from data; large language models learn from text.
Rain is expected tomorrow morning, followed by sunshine in the afternoon and a clear night.
Why is the sky blue? Because air scatters short blue wavelengths more than long red ones.
The children played football in the park until it was too dark to see the ball.
Our server answered 1,024 requests per second with a median latency of 8 ms.
Mountains, rivers, forests and lakes make this region a favourite place for hikers.
The price rose by 7% in 2023, then fell by 3% in the first half of the next year.
user assistant system instruction: represent this sentence for searching relevant passages
"""


def _tokenizer(style: TokenizerStyle) -> PreTrainedTokenizerFast:
    """A byte-level BPE tokenizer with `style`'s special tokens, trained on CORPUS."""
    special = [t for t in (style.bos, style.eos, style.pad, *style.extra) if t is not None]
    tokenizer = Tokenizer(models.BPE())
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tokenizer.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=VOCAB_SIZE,
        min_frequency=1,
        special_tokens=special,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tokenizer.train_from_iterator(CORPUS.splitlines(), trainer=trainer)
    if style.bos is not None:
        # Prepends BOS as Llama's and Gemma's tokenizers do.
        tokenizer.post_processor = processors.TemplateProcessing(
            single=f"{style.bos}:0 $A:0",
            pair=f"{style.bos}:0 $A:0 {style.bos}:1 $B:1",
            special_tokens=[(style.bos, tokenizer.token_to_id(style.bos))],
        )
    return PreTrainedTokenizerFast(
        tokenizer_object=tokenizer,
        bos_token=style.bos,
        eos_token=style.eos,
        pad_token=style.pad,
        additional_special_tokens=list(style.extra),
        model_input_names=["input_ids", "attention_mask"],
        model_max_length=MAX_POSITIONS,
        clean_up_tokenization_spaces=False,
    )


def _config(family: str, tokenizer: PreTrainedTokenizerFast) -> PretrainedConfig:
    common: dict[str, Any] = {
        "vocab_size": len(tokenizer),
        "hidden_size": HIDDEN,
        "intermediate_size": 2 * HIDDEN,
        "num_hidden_layers": LAYERS,
        "num_attention_heads": HEADS,
        "num_key_value_heads": KV_HEADS,
        "max_position_embeddings": MAX_POSITIONS,
        # A wide init, so that attention patterns (and so bidirectionality) change outputs clearly.
        "initializer_range": 0.2,
        "tie_word_embeddings": False,
        "bos_token_id": tokenizer.bos_token_id,
        "eos_token_id": tokenizer.eos_token_id,
        "pad_token_id": tokenizer.pad_token_id,
        "torch_dtype": "float32",
    }
    if family == "llama":
        return LlamaConfig(**common)
    if family == "mistral":
        return MistralConfig(**common, sliding_window=None)
    # GemmaConfig's head_dim defaults to 256, not hidden_size // heads.
    return GemmaConfig(**common, head_dim=HIDDEN // HEADS, hidden_activation="gelu_pytorch_tanh")


_MODEL_CLASSES: dict[str, type[PreTrainedModel]] = {
    "llama": LlamaModel,
    "mistral": MistralModel,
    "gemma": GemmaModel,
}


def _write_json(path: Path, data: dict[str, Any]) -> None:
    path.write_text(json.dumps(data, indent=2, sort_keys=True) + "\n")


def _save_lora(checkpoint: Checkpoint, base: Path, directory: Path, seed: int, base_name: str) -> None:
    """A LoRA adapter with random non-zero A and B (so merging it changes the outputs)."""
    model = _MODEL_CLASSES[checkpoint.family].from_pretrained(str(base)).eval()
    torch.manual_seed(seed)
    lora = LoraConfig(
        r=8, lora_alpha=16, lora_dropout=0.0, target_modules=list(LORA_TARGETS), init_lora_weights=False
    )
    peft_model = get_peft_model(model, lora)
    peft_model.save_pretrained(str(directory))
    # peft's model card template: nothing a loader reads.
    (directory / "README.md").unlink()
    # peft writes target_modules from a set (order varies run to run) and the local path it
    # was given: keep the file stable and name the base as the hub does.
    config_path = directory / "adapter_config.json"
    config = json.loads(config_path.read_text())
    config["target_modules"] = sorted(config["target_modules"])
    config["base_model_name_or_path"] = base_name
    _write_json(config_path, config)


def write_checkpoint(checkpoint: Checkpoint, directory: Path) -> None:
    """Write base/, mntp/ and supervised/ for `checkpoint` under `directory` (replaced)."""
    if directory.exists():
        shutil.rmtree(directory)
    base, mntp, supervised = directory / "base", directory / "mntp", directory / "supervised"
    tokenizer = _tokenizer(checkpoint.tokenizer)
    config = _config(checkpoint.family, tokenizer)
    torch.manual_seed(checkpoint.seed)
    model = _MODEL_CLASSES[checkpoint.family](config).eval()
    model.save_pretrained(str(base), safe_serialization=True)
    # The published configs carry the base's hub id; llm2vec's wrappers match on it.
    config_dict = json.loads((base / "config.json").read_text())
    config_dict["_name_or_path"] = checkpoint.name_or_path
    config_dict.pop("transformers_version", None)
    _write_json(base / "config.json", config_dict)

    _save_lora(checkpoint, base, mntp, checkpoint.seed * 1000 + 1, checkpoint.name_or_path)
    _write_json(mntp / "config.json", config_dict)
    tokenizer.save_pretrained(str(mntp))
    _save_lora(
        checkpoint, base, supervised, checkpoint.seed * 1000 + 2, f"McGill-NLP/LLM2Vec-{checkpoint.key}-mntp"
    )
