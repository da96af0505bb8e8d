"""What the benchmark serves and sends: the two models, and unique texts of known length."""

from __future__ import annotations

import random
from dataclasses import dataclass
from pathlib import Path

WORDS = (  # noqa: SIM905 (a sentence reads better than a list)
    "the quick brown fox jumps over lazy dog river mountain city market train station coffee "
    "water music science report data model search query answer question library morning night "
    "weather cold warm rain sunshine team service version faster error request server latency "
    "apple orange banana flour milk egg recipe children park football meeting manager report "
    "price rose fell year half first page notebook world art understanding region hikers lakes"
).split()


def texts(count: int, words: int, seed: int) -> list[str]:
    """`count` different texts of `words` words each (different, so no request is deduplicated)."""
    rng = random.Random(seed)
    return [f"{i} " + " ".join(rng.choice(WORDS) for _ in range(words - 1)) for i in range(count)]


@dataclass(frozen=True)
class BenchModel:
    name: str
    kind: str  # "encoder" or "llm2vec"
    base_model: str
    max_length: int


MINILM = BenchModel("all-MiniLM-L6-v2", "encoder", "bundled:all-MiniLM-L6-v2", 256)
# Served only by `python -m bench.standin serve` (bench/standin.py), never by a config alone.
STANDIN = BenchModel("standin", "encoder", "standin", 512)


def make_llama_100m(directory: Path) -> BenchModel:
    """A random-weight Llama of about 100M parameters (12 heads of 64, 16 layers), so that
    the model's compute, not the server, dominates; written once and reused."""
    from tests.model_factory import make_llm2vec_model

    base = directory / "base"
    if not (base / "model.safetensors").exists():
        make_llm2vec_model(directory, "llama", with_adapter=False, hidden_size=768, layers=16, heads=12)
    return BenchModel("llama-100m", "llm2vec", str(base), 512)


def config_toml(
    model: BenchModel,
    port: int,
    *,
    torch_threads: int = 1,
    batch_size: int = 32,
    batch_tokens: int = 16384,
    batch_wait_ms: float = 5.0,
    workers: str = "process",
    cuda_graphs: bool = True,
    metrics_port: int | None = None,
) -> str:
    metrics = "" if metrics_port is None else f"\n[metrics]\nenabled = true\nport = {metrics_port}\n"
    return f"""
[server]
host = "127.0.0.1"
port = {port}
log_level = "warning"

[limits]
# Active (its cost is part of every request) but far above what the load generator sends.
rpm = 100000000
tpm = 100000000000

[engine]
max_batch_size = {batch_size}
max_batch_tokens = {batch_tokens}
max_batch_wait_ms = {batch_wait_ms}
torch_threads = {torch_threads}
workers = "{workers}"

[[models]]
name = "{model.name}"
kind = "{model.kind}"
base_model = "{model.base_model}"
max_length = {model.max_length}
cuda_graphs = {"true" if cuda_graphs else "false"}
{metrics}"""


def make_llama_7b_shape(directory: Path) -> BenchModel:
    """Random weights in a Llama-3-8B-like body (hidden 4096, 32 layers, 32 heads, 8 KV heads,
    MLP 14336; the test tokenizer's small vocabulary), bf16, built on the GPU: for the GPU run."""
    import torch
    from transformers import AutoTokenizer, LlamaConfig, LlamaModel

    from tests.model_factory import make_tokenizer

    base = directory / "base"
    if not (base / "config.json").exists():
        make_tokenizer(base)
        tokenizer = AutoTokenizer.from_pretrained(base)
        config = LlamaConfig(
            vocab_size=len(tokenizer),
            hidden_size=4096,
            intermediate_size=14336,
            num_hidden_layers=32,
            num_attention_heads=32,
            num_key_value_heads=8,
            max_position_embeddings=8192,
            rope_theta=500000.0,
            bos_token_id=tokenizer.bos_token_id,
            eos_token_id=tokenizer.eos_token_id,
            dtype="bfloat16",
        )
        torch.manual_seed(0)
        with torch.device("cuda"):
            model = LlamaModel(config).to(torch.bfloat16)
        model.save_pretrained(base, safe_serialization=True)
        del model
        torch.cuda.empty_cache()
    return BenchModel("llama-7b-shape", "llm2vec", str(base), 512)
