"""Loading an LLM2Vec checkpoint as llm2vec 0.2.3's `LLM2Vec.from_pretrained` does.

A published `-mntp` checkpoint holds config.json, the tokenizer and the MNTP LoRA adapter
(adapter_config.json), not the weights: transformers' peft integration, on which llm2vec
relies, loads the weights from the adapter's `base_model_name_or_path`, and llm2vec then
merges the MNTP adapter found in the checkpoint itself. After it, each adapter of the model
entry (supervised or unsup-simcse) is merged in order. `config._name_or_path` is taken from
the checkpoint's config.json (hub: the base model's id), as llm2vec does: it selects the
prompt wrapper.

Attention is made bidirectional in every layer by `make_bidirectional`, then checked on
the loaded model (`check_bidirectional`): a model whose first position does not see the
last token is refused rather than served causal.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from typing import Any

import torch

from app.models.llm2vec.prompts import DOC_MAX_LENGTH
from app.models.protocol import ModelLoadError

# Decoder families whose stock transformers classes are verified bidirectional with the
# settings below (tests/model/test_bidirectional.py), in every attention layer.
SUPPORTED_MODEL_TYPES = ("llama", "mistral", "gemma", "qwen2", "qwen3")


@dataclass(frozen=True)
class Checkpoint:
    """What llm2vec reads from a checkpoint before loading weights."""

    path: str
    revision: str | None
    # config._name_or_path as llm2vec sets it: the key of the prompt wrappers.
    name_or_path: str
    model_type: str
    # Where the weights come from: the adapter's base model, or the checkpoint itself.
    weights: str
    weights_revision: str | None
    # The checkpoint holds an adapter (the MNTP LoRA) that llm2vec merges first.
    has_adapter: bool
    # llm2vec's doc_max_length: from a local llm2vec_config.json, else its default.
    doc_max_length: int = DOC_MAX_LENGTH


def _read_json(path: str, name: str, revision: str | None) -> dict[str, Any] | None:
    """A JSON file of a local directory or hub repo, or None where it has none."""
    if os.path.isdir(path):
        file = os.path.join(path, name)
        if not os.path.isfile(file):
            return None
    else:
        from huggingface_hub import hf_hub_download
        from huggingface_hub.errors import EntryNotFoundError

        try:
            file = hf_hub_download(path, name, revision=revision)
        except EntryNotFoundError:
            return None
    with open(file, encoding="utf-8") as handle:
        data: dict[str, Any] = json.load(handle)
        return data


def _doc_max_length(path: str, adapters: list[str]) -> int:
    """llm2vec reads llm2vec_config.json from its adapter (else the base) where that is a
    local directory; the gateway's first adapter is llm2vec's peft_model_name_or_path."""
    where = adapters[0] if adapters else path
    file = os.path.join(where, "llm2vec_config.json")
    if not os.path.isfile(file):
        return DOC_MAX_LENGTH
    with open(file, encoding="utf-8") as handle:
        return int(json.load(handle).get("doc_max_length", DOC_MAX_LENGTH))


def inspect_checkpoint(path: str, revision: str | None, adapters: list[str] | None = None) -> Checkpoint:
    config = _read_json(path, "config.json", revision)
    if config is None:
        raise ModelLoadError(f"{path}: no config.json (not a transformers model checkpoint)")
    model_type = str(config.get("model_type", ""))
    if model_type not in SUPPORTED_MODEL_TYPES:
        architectures = ", ".join(config.get("architectures") or [])
        raise ModelLoadError(
            f"{path}: architecture {model_type or 'unknown'!r} ({architectures}) "
            "cannot be served with verified bidirectional attention "
            f"(supported: {', '.join(SUPPORTED_MODEL_TYPES)})"
        )
    adapter = _read_json(path, "adapter_config.json", revision)
    weights, weights_revision = path, revision
    if adapter is not None:
        weights = str(adapter["base_model_name_or_path"])
        weights_revision = adapter.get("revision")
    # llm2vec: a local checkpoint's config.json names the model (PretrainedConfig.from_dict
    # leaves "" without the key); from the hub, transformers names it after the weights' repo.
    name = str(config.get("_name_or_path", "")) if os.path.isdir(path) else weights
    return Checkpoint(
        path=path,
        revision=revision,
        name_or_path=name,
        model_type=model_type,
        weights=weights,
        weights_revision=weights_revision,
        has_adapter=adapter is not None,
        doc_max_length=_doc_max_length(path, adapters or []),
    )


def load_model(
    checkpoint: Checkpoint,
    adapters: list[str],
    revision: str | None,
    dtype: torch.dtype,
    attn_implementation: str,
) -> Any:
    """The checkpoint's model with its MNTP adapter, then `adapters`, merged; bidirectional."""
    from peft import PeftModel
    from transformers import AutoModel

    model: Any = AutoModel.from_pretrained(
        checkpoint.weights,
        revision=checkpoint.weights_revision,
        dtype=dtype,
        attn_implementation=attn_implementation,
    )
    if model.config.model_type != checkpoint.model_type:
        raise ModelLoadError(
            f"{checkpoint.path}: weights from {checkpoint.weights} are {model.config.model_type!r}, "
            f"the checkpoint says {checkpoint.model_type!r}"
        )
    if checkpoint.has_adapter:
        model = PeftModel.from_pretrained(model, checkpoint.path, revision=checkpoint.revision)
        model = model.merge_and_unload()
    for adapter in adapters:
        model = PeftModel.from_pretrained(model, adapter, revision=revision).merge_and_unload()
    model.config._name_or_path = checkpoint.name_or_path
    make_bidirectional(model)
    return model.eval()


def attention_modules(model: Any) -> list[Any]:
    """Every decoder layer's self-attention module."""
    return [layer.self_attn for layer in model.layers]


def make_bidirectional(model: Any) -> None:
    """No causal mask anywhere. config.is_causal=False makes transformers (>= 5.2) build a
    padding-only mask for every layer: verified on 5.24 with eager and SDPA attention, with
    and without padding, against eager attention with an explicit 4D padding mask
    (tests/model/test_bidirectional.py). is_causal=False on each attention module alone is
    not enough (the mask builder stays causal), but it stops SDPA and flash kernels from
    applying their own causal flag when the mask is skipped (no padding)."""
    model.config.is_causal = False
    if hasattr(model.config, "use_bidirectional_attention"):
        model.config.use_bidirectional_attention = True
    for module in attention_modules(model):
        module.is_causal = False


def check_bidirectional(model: Any, device: str) -> None:
    """Refuse a model whose first position does not see a change at the last one.

    Read at the first layer's attention output, before the residual stream: there a causal
    model gives bitwise-equal rows, while a bidirectional one differs by the attention paid
    to the last token (which a bf16 final hidden state might round away)."""
    ids = torch.tensor([[3, 4, 5, 6], [3, 4, 5, 7]], device=device)
    seen: list[torch.Tensor] = []

    def keep(module: Any, args: Any, output: Any) -> None:
        seen.append((output[0] if isinstance(output, tuple) else output)[:, 0].float())

    hook = attention_modules(model)[0].register_forward_hook(keep)
    try:
        with torch.inference_mode():
            model(input_ids=ids, attention_mask=torch.ones_like(ids))
    finally:
        hook.remove()
    if torch.equal(seen[0][0], seen[0][1]):
        raise ModelLoadError(
            f"{model.config._name_or_path or model.config.model_type}: attention stayed causal after "
            "enabling bidirectional attention; refusing to serve it"
        )
