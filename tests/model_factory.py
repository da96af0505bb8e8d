"""Tiny random-weight LLM2Vec-compatible models, built offline for tests.

`make_tokenizer` trains a small byte-level BPE tokenizer on a built-in corpus, so any text
tokenizes without `<unk>`; `make_llm2vec_model` writes a base model directory (config,
safetensors weights, tokenizer) and, optionally, a LoRA adapter directory whose weights
really change the model's outputs; `make_mntp_checkpoint` lays one out as McGill-NLP
publishes LLM2Vec models (a -mntp directory with the MNTP LoRA, weights elsewhere).
Families: Llama, Mistral, Gemma, Qwen2, Qwen3 (transformers' own classes).
"""

from __future__ import annotations

import functools
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import torch
from peft import LoraConfig, get_peft_model
from tokenizers import (  # type: ignore[import-untyped]
    Tokenizer,
    decoders,
    models,
    pre_tokenizers,
    processors,
    trainers,
)
from transformers import (
    AutoTokenizer,
    GemmaConfig,
    GemmaModel,
    LlamaConfig,
    LlamaModel,
    MistralConfig,
    MistralModel,
    PretrainedConfig,
    PreTrainedModel,
    PreTrainedTokenizerFast,
    Qwen2Config,
    Qwen2Model,
    Qwen3Config,
    Qwen3Model,
)

Family = Literal["llama", "mistral", "gemma", "qwen2", "qwen3"]
# Appended to, never reordered: the index seeds each family's weights.
FAMILIES: tuple[Family, ...] = ("llama", "mistral", "gemma", "qwen2", "qwen3")

BOS = "<s>"
EOS = "</s>"
UNK = "<unk>"
MAX_POSITIONS = 512
HEADS = 4
VOCAB_SIZE = 640
LORA_TARGETS = ("q_proj", "k_proj", "v_proj", "o_proj")

# The tokenizer's training text: fixed, so every build yields the same vocabulary and merges.
CORPUS = """\
The quick brown fox jumps over the lazy dog, and the dog does not mind at all.
A second text is here: it talks about the weather, which was cold on Monday, 3 March 2024.
Hello world! How are you today? I am fine, thank you, and I hope you are well too.
Embeddings map every sentence to a vector of numbers; similar texts get similar vectors.
Represent the query for retrieving supporting documents: what is the capital of France?
Paris is the capital of France, and Berlin is the capital of Germany.
The train leaves at 10:45 from platform 7 and arrives at 13:20, about 2.5 hours later.
She bought 12 apples, 6 oranges and 3 bananas for $4.99 at the market on Main Street.
In 1969, two astronauts walked on the Moon while millions watched on television.
Water boils at 100 degrees Celsius (212 degrees Fahrenheit) at sea level.
"Do you know the way to the station?" asked the traveller; "Yes, turn left," said the boy.
Our team shipped version 2.0 of the service last week, with faster search and fewer errors.
Please read the instructions carefully before you start the exam - you have 90 minutes.
The library opens at 9 am, closes at 6 pm, and is closed on Sundays and public holidays.
Machine learning models learn patterns from data; large language models learn from text.
A good cup of coffee needs fresh beans, clean water, and a little patience.
Cats sleep for about 16 hours a day, but my cat seems to sleep for 20!
The meeting was moved from Tuesday to Thursday because the manager was ill.
He wrote his phone number, 555-0134, on a small piece of paper and gave it to her.
Rain is expected tomorrow morning, followed by sunshine in the afternoon and a clear night.
Why is the sky blue? Because air scatters short blue wavelengths more than long red ones.
Add 2 cups of flour, 1 egg, and 250 ml of milk; then stir until the batter is smooth.
The children played football in the park until it was too dark to see the ball.
Our server answered 1,024 requests per second with a median latency of 8 ms.
Summary: the report is long, the data are new, and the results look very promising.
Mountains, rivers, forests and lakes make this region a favourite place for hikers.
Don't forget to save your work often; computers crash when you least expect it.
The price rose by 7% in 2023, then fell by 3% in the first half of the next year.
Find the answer to question 4 on page 87, and write it down in your notebook.
Music, art and science are all ways of understanding the world around us.
"""


@dataclass(frozen=True)
class TinyModel:
    """Where one tiny model was written: base model dir, LoRA adapter dir (or None), family."""

    base: Path
    adapter: Path | None
    family: str


@dataclass(frozen=True)
class TinyCheckpoint:
    """A published-style LLM2Vec model: `mntp` holds config, tokenizer and the MNTP LoRA
    (whose base_model_name_or_path is `weights`), `adapter` the supervised LoRA."""

    mntp: Path
    weights: Path
    adapter: Path
    family: str


@functools.cache
def _trained_tokenizer_json(with_bos: bool) -> str:
    """The trained tokenizer as JSON (training runs once per process and variant)."""
    special = [UNK, BOS, EOS] if with_bos else [UNK, EOS]
    tokenizer = Tokenizer(models.BPE(unk_token=UNK))
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
    if with_bos:
        tokenizer.post_processor = processors.TemplateProcessing(
            single=f"{BOS}:0 $A:0",
            pair=f"{BOS}:0 $A:0 {BOS}:1 $B:1",
            special_tokens=[(BOS, tokenizer.token_to_id(BOS))],
        )
    text: str = tokenizer.to_str()
    return text


def make_tokenizer(directory: Path, *, with_bos: bool = True) -> Path:
    """Write a byte-level BPE tokenizer to `directory` and return it.

    With `with_bos`, `<s>` exists and is prepended when special tokens are added (as Llama's
    tokenizer does); without it there is no BOS token and no post-processor. `</s>` is EOS,
    and there is no pad token (LLM2Vec pads with EOS).
    """
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    wrapped = PreTrainedTokenizerFast(
        tokenizer_object=Tokenizer.from_str(_trained_tokenizer_json(with_bos)),
        bos_token=BOS if with_bos else None,
        eos_token=EOS,
        unk_token=UNK,
        model_input_names=["input_ids", "attention_mask"],
        model_max_length=MAX_POSITIONS,
        clean_up_tokenization_spaces=False,
    )
    wrapped.save_pretrained(directory)
    return directory


def _config(
    family: str, vocab_size: int, hidden_size: int, layers: int, ids: dict[str, Any], heads: int = HEADS
) -> PretrainedConfig:
    """A small config of `family`; weights drawn with a wide init so outputs vary clearly."""
    common: dict[str, Any] = {
        "vocab_size": vocab_size,
        "hidden_size": hidden_size,
        "intermediate_size": 2 * hidden_size,
        "num_hidden_layers": layers,
        "num_attention_heads": heads,
        "num_key_value_heads": max(1, heads // 2),
        "max_position_embeddings": MAX_POSITIONS,
        "initializer_range": 0.2,
        "tie_word_embeddings": False,
        **ids,
    }
    if family == "llama":
        return LlamaConfig(**common)
    if family == "mistral":
        return MistralConfig(**common, sliding_window=None)
    if family == "gemma":
        # GemmaConfig defaults head_dim to 256 rather than hidden_size // heads, and warns
        # unless hidden_activation is given.
        return GemmaConfig(**common, head_dim=hidden_size // heads, hidden_activation="gelu_pytorch_tanh")
    if family == "qwen3":
        return Qwen3Config(**common, head_dim=hidden_size // heads, use_sliding_window=False)
    return Qwen2Config(**common, use_sliding_window=False)


_MODEL_CLASSES: dict[str, type[PreTrainedModel]] = {
    "llama": LlamaModel,
    "mistral": MistralModel,
    "gemma": GemmaModel,
    "qwen2": Qwen2Model,
    "qwen3": Qwen3Model,
}


def make_llm2vec_model(
    directory: Path,
    family: str,
    *,
    seed: int = 0,
    with_adapter: bool = True,
    hidden_size: int = 64,
    layers: int = 2,
    heads: int = HEADS,
) -> TinyModel:
    """Write a tiny `family` model to `directory/base` (and a LoRA to `directory/adapter`).

    The base directory holds config, safetensors weights and tokenizer, as a hub checkpoint
    of the base (not CausalLM) class does; weights depend only on `seed` and `family`. The adapter
    targets the attention projections with non-zero B, so it changes the embeddings.
    """
    if family not in _MODEL_CLASSES:
        raise ValueError(f"unknown family {family!r} (expected one of {', '.join(FAMILIES)})")
    if hidden_size % heads:
        raise ValueError(f"hidden_size must be a multiple of {heads}, got {hidden_size}")
    directory = Path(directory)
    base_dir = make_tokenizer(directory / "base")
    # The tokenizer as the model will load it: AutoTokenizer picks its class by config.json's
    # model_type, and Qwen2's adds <|endoftext|> (as pad) after the trained vocabulary. The
    # embeddings must cover that id too (llm2vec appends it for eos_token pooling).
    _config(family, 1, hidden_size, layers, {}, heads).save_pretrained(base_dir)
    tokenizer = AutoTokenizer.from_pretrained(base_dir)
    ids = {
        "bos_token_id": tokenizer.bos_token_id,
        "eos_token_id": tokenizer.eos_token_id,
        "pad_token_id": tokenizer.pad_token_id,
    }
    config = _config(family, len(tokenizer), hidden_size, layers, ids, heads)
    with torch.random.fork_rng(devices=[]):
        # The family is mixed in: Llama and Mistral build identical modules, so one seed
        # alone would give them identical weights.
        torch.manual_seed(seed * len(FAMILIES) + FAMILIES.index(family))
        model = _MODEL_CLASSES[family](config).eval()
        model.save_pretrained(base_dir, safe_serialization=True)
        if not with_adapter:
            return TinyModel(base=base_dir, adapter=None, family=family)
        lora = LoraConfig(
            r=8,
            lora_alpha=16,
            lora_dropout=0.0,
            target_modules=list(LORA_TARGETS),
            init_lora_weights=False,
        )
        # get_peft_model records this as the adapter's base_model_name_or_path.
        model.name_or_path = str(base_dir)
        adapter_dir = directory / "adapter"
        get_peft_model(model, lora).save_pretrained(str(adapter_dir))
    return TinyModel(base=base_dir, adapter=adapter_dir, family=family)


def _lora(model: PreTrainedModel, directory: Path, seed: int) -> None:
    lora = LoraConfig(
        r=4, lora_alpha=8, lora_dropout=0.0, target_modules=list(LORA_TARGETS), init_lora_weights=False
    )
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        get_peft_model(model, lora).save_pretrained(str(directory))


def make_mntp_checkpoint(
    directory: Path, family: str, *, name_or_path: str = "", seed: int = 0, **sizes: Any
) -> TinyCheckpoint:
    """A tiny `-mntp` checkpoint laid out as McGill-NLP publishes them: the directory holds
    config.json (naming the original model in `_name_or_path`, which picks llm2vec's prompt
    wrapper), the tokenizer and the MNTP LoRA adapter, but no weights: those come from the
    adapter's base model. A supervised LoRA goes to `directory/adapter`."""
    directory = Path(directory)
    tiny = make_llm2vec_model(directory, family, seed=seed, with_adapter=True, **sizes)
    mntp = directory / "mntp"
    mntp.mkdir(parents=True, exist_ok=True)
    for file in tiny.base.iterdir():
        if file.suffix != ".safetensors":
            (mntp / file.name).write_bytes(file.read_bytes())
    config = json.loads((mntp / "config.json").read_text())
    config["_name_or_path"] = name_or_path
    (mntp / "config.json").write_text(json.dumps(config, indent=2))
    model = _MODEL_CLASSES[family].from_pretrained(tiny.base)
    model.name_or_path = str(tiny.base)
    _lora(model, mntp, seed=1000 + seed)
    assert tiny.adapter is not None
    return TinyCheckpoint(mntp=mntp, weights=tiny.base, adapter=tiny.adapter, family=family)
