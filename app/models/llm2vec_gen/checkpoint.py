"""The layout `EncoderDecoderModel.save_pretrained` writes (llm2vec-gen 0.1.3), read safely.

    run_config.yml               the training arguments, one `key: value` line each (base
                                 model id, special tokens, encoding_mode, use_peft_for_encoder)
    encoder_decoder_config.json  encoding_mode (overrides run_config.yml's) and save_decoder
    encoder/                     a peft adapter for the base model: TRAINABLE_TOKENS (the
                                 default) or LoRA plus trainable tokens
    reconstruction_mlp           optional torch pickle: {"state_dict", "config"} of a Linear
    alignment_mlp                optional, the same
    tokenizer files              the base tokenizer with the special tokens added

run_config.yml may carry python tags (`!!python/object/apply:...`): they are read as plain
data, as the package's own loader does, and never constructed. Projection files are read
with `torch.load(weights_only=True)`, which refuses anything but tensors and plain containers.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from app.models.protocol import ModelLoadError

RUN_CONFIG = "run_config.yml"
ENCODER_DECODER_CONFIG = "encoder_decoder_config.json"
ENCODER_DIR = "encoder"
PROJECTIONS = ("reconstruction_mlp", "alignment_mlp")
# The package's default when neither file names one.
DEFAULT_ENCODING_MODE = "last_10_tokens"
# What a hub download needs (never the decoder/ a checkpoint may also hold).
CHECKPOINT_PATTERNS = [
    RUN_CONFIG,
    ENCODER_DECODER_CONFIG,
    f"{ENCODER_DIR}/*",
    *PROJECTIONS,
    "*.json",
    "*.txt",
    "*.model",
    "*.jinja",
]


class _RunConfigLoader(yaml.SafeLoader):  # type: ignore[misc]
    """SafeLoader that reads python tags as the plain data under them, never as objects.

    A subclass, so the tag handling does not leak into yaml.SafeLoader itself (the package
    registers its handler on SafeLoader globally)."""


def _plain(loader: yaml.SafeLoader, suffix: str, node: yaml.Node) -> Any:
    # As llm2vec-gen's safe_load_config: a tagged scalar is its string, a tagged sequence
    # (python/object/apply's arguments) its first item; a mapping its plain mapping.
    if isinstance(node, yaml.ScalarNode):
        return loader.construct_scalar(node)
    if isinstance(node, yaml.SequenceNode):
        values = loader.construct_sequence(node, deep=True)
        return values[0] if values else None
    if isinstance(node, yaml.MappingNode):
        return loader.construct_mapping(node, deep=True)
    return None


_RunConfigLoader.add_multi_constructor("tag:yaml.org,2002:python/", _plain)


def read_run_config(path: Path) -> dict[str, Any]:
    try:
        data = yaml.load(path.read_text(encoding="utf-8"), Loader=_RunConfigLoader)
    except OSError as exc:
        raise ModelLoadError(f"{path}: {exc.strerror or exc}") from None
    except yaml.YAMLError as exc:
        raise ModelLoadError(f"{path}: not readable as plain YAML ({exc})") from None
    if not isinstance(data, dict):
        raise ModelLoadError(f"{path}: expected a mapping of training arguments")
    return data


@dataclass(frozen=True)
class Layout:
    """What a checkpoint says, without its weights."""

    directory: Path
    base_model: str
    special_tokens: tuple[str, ...]
    # Mean over the last N positions (encoding_mode last_N_tokens).
    pooled_tokens: int
    use_peft_for_encoder: bool
    projections: tuple[Path, ...]  # reconstruction_mlp then alignment_mlp, those present


def _string_list(value: Any) -> tuple[str, ...] | None:
    if isinstance(value, list) and value and all(isinstance(v, str) and v for v in value):
        return tuple(value)
    return None


def read_layout(directory: Path) -> Layout:
    """Read and check a checkpoint directory's configuration (no weights are read)."""
    run_config_path = directory / RUN_CONFIG
    if not run_config_path.is_file():
        raise ModelLoadError(f"{directory}: no {RUN_CONFIG}; not an LLM2Vec-Gen checkpoint")
    run_config = read_run_config(run_config_path)
    base_model = run_config.get("model_name_or_path")
    if not isinstance(base_model, str) or not base_model or base_model == "None":
        raise ModelLoadError(f"{run_config_path}: model_name_or_path must name the base model")
    special_tokens = _string_list(run_config.get("special_tokens"))
    if special_tokens is None:
        raise ModelLoadError(f"{run_config_path}: special_tokens must be a non-empty list of strings")
    if len(set(special_tokens)) != len(special_tokens):
        raise ModelLoadError(f"{run_config_path}: special_tokens repeat a token")
    encoding_mode = run_config.get("encoding_mode", DEFAULT_ENCODING_MODE)
    saved = directory / ENCODER_DECODER_CONFIG
    if saved.is_file():
        try:
            encoding_mode = json.loads(saved.read_text(encoding="utf-8")).get("encoding_mode", encoding_mode)
        except (ValueError, AttributeError) as exc:
            raise ModelLoadError(f"{saved}: not a JSON object ({exc})") from None
    match = re.fullmatch(r"last_(\d+)_tokens", str(encoding_mode))
    if match is None:
        raise ModelLoadError(f"{directory}: encoding_mode {encoding_mode!r} is not last_N_tokens")
    pooled = int(match.group(1))
    if not 1 <= pooled <= len(special_tokens):
        raise ModelLoadError(
            f"{directory}: encoding_mode {encoding_mode} pools {pooled} tokens, but the checkpoint "
            f"has {len(special_tokens)} special tokens"
        )
    if not (directory / ENCODER_DIR / "adapter_config.json").is_file():
        raise ModelLoadError(f"{directory}: no {ENCODER_DIR}/adapter_config.json (the encoder adapter)")
    if not (directory / ENCODER_DIR / "adapter_model.safetensors").is_file():
        # A .bin adapter would be a pickle: only safetensors adapters are loaded.
        raise ModelLoadError(f"{directory}: no {ENCODER_DIR}/adapter_model.safetensors")
    return Layout(
        directory=directory,
        base_model=base_model,
        special_tokens=special_tokens,
        pooled_tokens=pooled,
        use_peft_for_encoder=run_config.get("use_peft_for_encoder") is True,
        projections=tuple(directory / name for name in PROJECTIONS if (directory / name).is_file()),
    )


def locate(name_or_path: str) -> Path:
    """A local checkpoint directory as it is; a hub id downloaded (or found in the cache)."""
    local = Path(name_or_path)
    if local.is_dir():
        return local
    from huggingface_hub import snapshot_download

    try:
        return Path(snapshot_download(name_or_path, allow_patterns=CHECKPOINT_PATTERNS))
    except Exception as exc:
        raise ModelLoadError(
            f"{name_or_path}: not a local directory, and not on the hub or in its cache "
            f"({type(exc).__name__}: {exc})"
        ) from None
