"""Golden fixtures for LLM2Vec-Gen, made with the reference package itself (llm2vec-gen 0.1.3).

Run by `make golden-gen` in .venv-reference-gen (requirements.txt beside this file: the
package's own transformers 4.56.2 and peft 0.18.0, llm2vec-gen installed without its
training dependencies). It builds, offline and from fixed seeds:

- `base/`: a tiny random Qwen3ForCausalLM with a Qwen2-class byte-level BPE tokenizer, laid
  out as a hub base model (config, safetensors, tokenizer), its vocabulary padded past the
  tokenizer as Qwen3's is;
- two LLM2Vec-Gen checkpoints, made as the package's scripts/train.py makes them (special
  tokens added, embeddings resized, the encoder adapter, the projections) and saved with
  `EncoderDecoderModel.save_pretrained` plus the tokenizer and `run_config.yml`:
  `tokens/`: the published default, a peft TRAINABLE_TOKENS adapter (use_peft_for_encoder
  false), reconstruction and alignment projections, 6 special tokens, `last_4_tokens`;
  `lora/`: use_peft_for_encoder true (LoRA on every projection plus trainable tokens), the
  alignment projection only (to 48 dimensions), 4 special tokens, `last_4_tokens`;
- `vectors.json`: `LLM2VecGenModel.encode()` of each text ALONE (its correct output), with
  and without the README's instructions and at a short max_length that truncates, plus the
  package's batched encode() of the mixed-length texts together (which pads on the right
  and pools pad positions: kept to document that pitfall), and, for texts that hold
  special-token strings, the package's EncoderDecoderModel.encode() on those texts read as
  plain text (what the gateway must give) beside encode()'s own, shifted, result.

Random adapter weights (LoRA B, trainable tokens) are drawn non-zero so that every part
changes the vectors. Paths are written relative: run_config.yml names the base model
`BASE_DIR`, which the tests replace with the fixture's base directory.
"""

from __future__ import annotations

import json
import shutil
import sys
import tempfile
from pathlib import Path

import torch
from llm2vec_gen import LLM2VecGenModel
from llm2vec_gen.config import CustomTrainingArguments, DataArguments, ModelArguments, RunArguments
from llm2vec_gen.models import EncoderDecoderModel, ProjectionModel, apply_peft
from llm2vec_gen.utils import save_args_to_yaml
from peft import TrainableTokensConfig, get_peft_model
from tokenizers import Tokenizer, models, pre_tokenizers, trainers
from transformers import (
    AutoConfig,
    AutoModel,
    AutoModelForCausalLM,
    AutoTokenizer,
    Qwen2TokenizerFast,
    Qwen3Config,
    Qwen3ForCausalLM,
)

HERE = Path(__file__).resolve().parent
FIXTURES = HERE / "fixtures"
BASE_PLACEHOLDER = "BASE_DIR"

# The package README's retrieval instructions (prepended to the text as is).
QUERY_INSTRUCTION = "Generate a passage that best answers this question: "
DOCUMENT_INSTRUCTION = "Summarize the following passage: "

TEXTS = [
    "hello world",
    "The quick brown fox jumps over the lazy dog, again and again, in 2024.",
    "x",
    "Ünïcödé text with emoji 🚀 and    spaces ",
    "where do polar bears live and what's their habitat",
    "Water boils at 100 degrees Celsius at sea level; the train leaves at 10:45 from platform 7.",
]
# Texts for the short max_length: the long ones lose their end, never the special tokens.
SHORT_MAX_LENGTH = 16
SHORT_TEXTS = [
    "hello world",
    "The quick brown fox jumps over the lazy dog, again and again, in 2024.",
    "Water boils at 100 degrees Celsius at sea level; the train leaves at 10:45 from platform 7.",
]

# User texts holding special-token strings: read as plain text, they must not move the
# pooled span. The package itself reads them as special tokens, and then, once truncation
# cuts its appended ones, finds "enough" special tokens and pools the text's last tokens.
SPECIAL_TEXTS = [
    "what is <question1><question2><question3><question4> for?",
    "<question1><question2><question3><question4><question5><question6> The quick brown fox jumps.",
]

CORPUS = """\
The quick brown fox jumps over the lazy dog, and the dog does not mind at all.
Hello world! How are you today? I am fine, thank you, and I hope you are well too.
Embeddings map every sentence to a vector of numbers; similar texts get similar vectors.
Generate a passage that best answers this question: what is the capital of France?
Summarize the following passage: Paris is the capital of France, Berlin of Germany.
Polar bears live throughout the circumpolar North, and sea ice is their primary habitat.
Disk Cleanup is a built-in Windows tool that frees up hard drive space on a computer.
Water boils at 100 degrees Celsius (212 degrees Fahrenheit) at sea level.
The train leaves at 10:45 from platform 7 and arrives at 13:20, about 2.5 hours later.
Why is the sky blue? Because air scatters short blue wavelengths more than long red ones.
"""

HIDDEN = 64
VOCAB_TRAIN = 400
# Qwen3 pads its embedding past the tokenizer (151936 rows for 151669 tokens); here by 5
# rows, so adding 6 special tokens grows the embedding and adding 4 shrinks it.
VOCAB_PADDING = 5


def make_base(directory: Path) -> None:
    """A tiny Qwen3ForCausalLM and a Qwen2-class tokenizer, as Qwen/Qwen3-* are laid out."""
    bpe = Tokenizer(models.BPE())
    bpe.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    trainer = trainers.BpeTrainer(
        vocab_size=VOCAB_TRAIN,
        min_frequency=1,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    bpe.train_from_iterator(CORPUS.splitlines(), trainer=trainer)
    with tempfile.TemporaryDirectory() as raw:
        bpe.model.save(raw)
        # The Qwen2 tokenizer class (its pre-tokenizer regex, NFC, no BOS), EOS = pad.
        tokenizer = Qwen2TokenizerFast(
            vocab_file=f"{raw}/vocab.json",
            merges_file=f"{raw}/merges.txt",
            unk_token=None,
            bos_token=None,
            eos_token="<|endoftext|>",
            pad_token="<|endoftext|>",
            model_max_length=512,
        )
    tokenizer.save_pretrained(directory)
    torch.manual_seed(0)
    config = Qwen3Config(
        vocab_size=len(tokenizer) + VOCAB_PADDING,
        hidden_size=HIDDEN,
        intermediate_size=2 * HIDDEN,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        head_dim=HIDDEN // 4,
        max_position_embeddings=512,
        initializer_range=0.2,
        tie_word_embeddings=True,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
        bos_token_id=None,
        torch_dtype="float32",
    )
    Qwen3ForCausalLM(config).save_pretrained(directory, safe_serialization=True)


def _randomize_adapter(encoder: torch.nn.Module, seed: int) -> None:
    """Trained-looking adapter weights: every trainable tensor (LoRA A and B, the special
    tokens' embeddings) drawn non-zero, so that the adapter changes the vectors."""
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, param in encoder.named_parameters():
            if param.requires_grad:
                std = 0.2 if "trainable_tokens" in name else 0.08
                param.copy_(torch.randn(param.shape, generator=generator) * std)


def make_checkpoint(
    out: Path,
    base: Path,
    *,
    special_tokens: list[str],
    encoding_mode: str,
    use_peft_for_encoder: bool,
    reconstruction: bool,
    alignment_dim: int,
    seed: int,
) -> None:
    """The checkpoint scripts/train.py would save after training (weights drawn at random)."""
    torch.manual_seed(seed)
    model_args = ModelArguments(
        model_name_or_path=str(base),
        tokenizer_padding_side="left",
        torch_dtype="float32",
        special_tokens=special_tokens,
        special_token_config_name=f"total_{len(special_tokens)}",
        encoding_mode=encoding_mode,
        add_reconstruction_mlp=reconstruction,
        add_alignment_mlp=True,
    )
    training_args = CustomTrainingArguments(
        # relative, as train.py's outputs/<run id>
        output_dir=f"outputs/{out.name}",
        logging_dir=f"outputs/{out.name}/runs",  # not the default, which has the time in it
        use_peft_for_encoder=use_peft_for_encoder,
        encoder_lora_r=8,
        encoder_lora_alpha=16,
        report_to=[],
        use_cpu=True,
    )
    # As train.py: pad with EOS on the left, add the special tokens, resize, wrap in peft.
    tokenizer = AutoTokenizer.from_pretrained(base)
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    tokenizer.padding_side = model_args.tokenizer_padding_side
    config = AutoConfig.from_pretrained(base)
    config.tokenizer_original_num_tokens = len(tokenizer)
    tokenizer.add_special_tokens({"additional_special_tokens": special_tokens})
    config.num_tokens = len(tokenizer)
    config.num_special_tokens = len(special_tokens)
    config.special_tokens = tokenizer.convert_tokens_to_ids(special_tokens)
    config.special_tokens_ids = tokenizer.convert_tokens_to_ids(special_tokens)
    config.torch_dtype = torch.float32
    encoder = AutoModel.from_pretrained(base, config=config, torch_dtype=torch.float32)
    encoder.resize_token_embeddings(len(tokenizer))
    if not use_peft_for_encoder:
        trainable = TrainableTokensConfig(token_indices=config.special_tokens_ids)
        encoder = get_peft_model(encoder, peft_config=trainable)
    else:
        encoder = apply_peft(
            encoder,
            special_tokens_ids=config.special_tokens_ids,
            lora_r=training_args.encoder_lora_r,
            lora_alpha=training_args.encoder_lora_alpha,
            lora_dropout=training_args.encoder_lora_dropout,
        )
    _randomize_adapter(encoder, seed)
    decoder = AutoModelForCausalLM.from_pretrained(base, config=config, torch_dtype=torch.float32)
    for param in decoder.parameters():
        param.requires_grad = False
    reconstruction_mlp = (
        ProjectionModel(input_dim=HIDDEN, output_dim=HIDDEN, dtype=torch.float32) if reconstruction else None
    )
    alignment_mlp = ProjectionModel(input_dim=HIDDEN, output_dim=alignment_dim, dtype=torch.float32)
    model = EncoderDecoderModel(
        encoder_model=encoder,
        decoder_model=decoder,
        encoding_mode=encoding_mode,
        reconstruction_mlp=reconstruction_mlp,
        alignment_mlp=alignment_mlp,
        save_decoder=False,
    )
    out.mkdir(parents=True)
    for args in (RunArguments(), DataArguments(), model_args, training_args):
        save_args_to_yaml(args, str(out), name="run_config.yml")
    model.save_pretrained(str(out), safe_serialization=True)
    tokenizer.save_pretrained(out)


def reference_vectors(checkpoint: Path) -> dict[str, object]:
    """The package's own encode(): each text alone, then all together in one call."""
    model = LLM2VecGenModel.from_pretrained(str(checkpoint))
    model.device = "cpu"
    model.model.to("cpu")
    model.model.eval()

    def alone(texts: list[str], max_length: int = 512) -> list[list[float]]:
        return [model.encode(text, max_length=max_length)[0].tolist() for text in texts]

    specials = model.tokenizer.additional_special_tokens

    def plain(texts: list[str], max_length: int = 512) -> list[list[float]]:
        """The package's EncoderDecoderModel.encode() on the text read as plain text (split
        special tokens) with the special tokens' ids appended after truncation."""
        ids = torch.tensor(model.tokenizer.convert_tokens_to_ids(specials))
        rows = []
        for text in texts:
            text_ids = model.tokenizer(text, add_special_tokens=False, split_special_tokens=True)["input_ids"]
            row = torch.cat([torch.tensor(text_ids[: max_length - len(ids)]), ids]).unsqueeze(0)
            with torch.no_grad():
                states, _ = model.model.encode(query_input_ids=row, query_attention_mask=torch.ones_like(row))
            rows.append(states.mean(dim=1)[0].tolist())
        return rows

    def input_ids(texts: list[str], max_length: int = 512) -> list[list[int]]:
        """The ids encode() runs for each text alone (its tokenization and special-token fix)."""
        ids = torch.LongTensor(model.tokenizer.convert_tokens_to_ids(specials))
        rows = []
        for text in texts:
            batch = model.tokenizer([text + "".join(specials)], truncation=True, max_length=max_length)
            row = torch.LongTensor(batch["input_ids"])
            rows.append(LLM2VecGenModel._add_special_tokens_if_needed(row, ids)[0].tolist())
        return rows

    return {
        "padding_side": model.tokenizer.padding_side,
        "special_tokens": list(specials),
        "single": alone(TEXTS),
        "query": alone([QUERY_INSTRUCTION + t for t in TEXTS]),
        "document": alone([DOCUMENT_INSTRUCTION + t for t in TEXTS]),
        "short": alone(SHORT_TEXTS, SHORT_MAX_LENGTH),
        "batched_by_package": model.encode(TEXTS).tolist(),
        "special_in_text": plain(SPECIAL_TEXTS),
        "special_in_text_short": plain(SPECIAL_TEXTS, SHORT_MAX_LENGTH),
        "special_in_text_short_by_package": alone(SPECIAL_TEXTS, SHORT_MAX_LENGTH),
        "input_ids": input_ids(TEXTS),
        "short_input_ids": input_ids(SHORT_TEXTS, SHORT_MAX_LENGTH),
        # usage as the gateway must count it: every token the model ran, special ones included
        "tokens": [len(model.tokenizer(t + "".join(specials))["input_ids"]) for t in TEXTS],
    }


def _scrub(directory: Path, tmp: str) -> None:
    """Replace the temporary base path (run_config.yml, peft's adapter_config.json) with
    the placeholder, and fail on any other absolute path left in a text file."""
    for path in directory.rglob("*"):
        if path.is_file() and path.suffix in ("", ".json", ".yml", ".txt", ".md", ".jinja"):
            try:
                text = path.read_text(encoding="utf-8")
            except UnicodeDecodeError:
                continue
            scrubbed = text.replace(f"{tmp}/base", BASE_PLACEHOLDER)
            if tmp in scrubbed:
                raise SystemExit(f"{path}: still names {tmp}")
            if scrubbed != text:
                path.write_text(scrubbed, encoding="utf-8")


def main() -> None:
    torch.set_num_threads(1)
    with tempfile.TemporaryDirectory() as tmp_name:
        tmp = Path(tmp_name)
        make_base(tmp / "base")
        specs = {
            "tokens": {
                "special_tokens": [f"<question{i}>" for i in range(1, 7)],
                "encoding_mode": "last_4_tokens",
                "use_peft_for_encoder": False,
                "reconstruction": True,
                "alignment_dim": HIDDEN,
                "seed": 1,
            },
            "lora": {
                "special_tokens": [f"<question{i}>" for i in range(1, 5)],
                "encoding_mode": "last_4_tokens",
                "use_peft_for_encoder": True,
                "reconstruction": False,
                "alignment_dim": 48,
                "seed": 2,
            },
        }
        vectors: dict[str, object] = {
            "generator": "llm2vec-gen 0.1.3, transformers 4.56.2, peft 0.18.0 (tests/reference/llm2vec_gen)",
            "texts": TEXTS,
            "short_texts": SHORT_TEXTS,
            "short_max_length": SHORT_MAX_LENGTH,
            "special_texts": SPECIAL_TEXTS,
            "query_instruction": QUERY_INSTRUCTION,
            "document_instruction": DOCUMENT_INSTRUCTION,
            "checkpoints": {},
        }
        for name, spec in specs.items():
            make_checkpoint(tmp / name, tmp / "base", **spec)  # type: ignore[arg-type]
            vectors["checkpoints"][name] = {  # type: ignore[index]
                "encoding_mode": spec["encoding_mode"],
                "use_peft_for_encoder": spec["use_peft_for_encoder"],
                "reconstruction": spec["reconstruction"],
                **reference_vectors(tmp / name),
            }
        _scrub(tmp, str(tmp))
        if FIXTURES.exists():
            shutil.rmtree(FIXTURES)
        FIXTURES.mkdir()
        for name in ("base", *specs):
            shutil.copytree(tmp / name, FIXTURES / name)
        (FIXTURES / "vectors.json").write_text(json.dumps(vectors, indent=1) + "\n", encoding="utf-8")
    size = sum(p.stat().st_size for p in FIXTURES.rglob("*") if p.is_file())
    print(f"wrote {FIXTURES} ({size / 1e6:.2f} MB)", file=sys.stderr)


if __name__ == "__main__":
    main()
