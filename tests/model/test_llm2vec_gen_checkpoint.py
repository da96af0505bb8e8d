"""Reading LLM2Vec-Gen checkpoints safely: run_config.yml's python tags are never
constructed, projection pickles that need more than tensors are refused, and a checkpoint
the gateway cannot serve faithfully is refused at load with a message naming the problem."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import pytest
import torch
import yaml

from app.config import ConfigError, load_settings
from app.models.llm2vec_gen.checkpoint import read_layout, read_run_config
from app.models.llm2vec_gen.projection import load_projection
from app.models.protocol import ModelLoadError
from app.models.registry import load_backend
from tests.model.llm2vec_gen_fixtures import GenFixtures, materialize
from tests.model.test_llm2vec_gen import gen_entry


@pytest.fixture(scope="module")
def gen(tmp_path_factory: pytest.TempPathFactory) -> GenFixtures:
    return materialize(tmp_path_factory.mktemp("gen-checkpoint"))


@pytest.fixture
def checkpoint(gen: GenFixtures, tmp_path: Path) -> Path:
    """A private copy of the `tokens` checkpoint (both projections), free to damage."""
    target = tmp_path / "tokens"
    shutil.copytree(gen.checkpoint("tokens"), target)
    return target


def _append(path: Path, line: str) -> None:
    path.write_text(path.read_text(encoding="utf-8") + line + "\n", encoding="utf-8")


def test_python_tags_in_run_config_are_read_as_data_never_run(checkpoint: Path, tmp_path: Path) -> None:
    marker = tmp_path / "yaml-ran"
    run_config = checkpoint / "run_config.yml"
    _append(run_config, f'callbacks: !!python/object/apply:os.system ["touch {marker}"]')
    _append(run_config, "hub_strategy: !!python/name:os.system ''")
    _append(run_config, "eval_strategy: !!python/object/apply:transformers.IntervalStrategy [steps]")
    config = read_run_config(checkpoint / "run_config.yml")
    assert config["callbacks"] == f"touch {marker}"
    assert config["eval_strategy"] == "steps"
    assert not marker.exists()
    # The same file under a plain unsafe loader would have run the command; PyYAML's
    # own SafeLoader still refuses the tag (our handler did not leak into it).
    with pytest.raises(yaml.constructor.ConstructorError):
        yaml.safe_load((checkpoint / "run_config.yml").read_text(encoding="utf-8"))
    # And the checkpoint still serves.
    assert read_layout(checkpoint).pooled_tokens == 4


def test_a_python_tag_where_a_setting_is_needed_is_refused_cleanly(checkpoint: Path, tmp_path: Path) -> None:
    marker = tmp_path / "yaml-ran"
    (checkpoint / "encoder_decoder_config.json").unlink()
    text = (checkpoint / "run_config.yml").read_text(encoding="utf-8")
    payload = f'encoding_mode: !!python/object/apply:os.system ["touch {marker}"]'
    (checkpoint / "run_config.yml").write_text(text.replace("encoding_mode: last_4_tokens", payload))
    with pytest.raises(ModelLoadError, match="not last_N_tokens"):
        read_layout(checkpoint)
    assert not marker.exists()


def test_yaml_that_is_not_plain_data_is_refused(checkpoint: Path) -> None:
    _append(checkpoint / "run_config.yml", "odd: !custom_tag value")
    with pytest.raises(ModelLoadError, match="plain YAML"):
        read_layout(checkpoint)


class _Payload:
    """Unpickling this calls os.system: what a malicious projection file would carry."""

    def __init__(self, command: str) -> None:
        self.command = command

    def __reduce__(self) -> tuple[object, tuple[str]]:
        return (os.system, (self.command,))


def test_a_projection_pickle_that_runs_code_is_refused(
    gen: GenFixtures, checkpoint: Path, tmp_path: Path
) -> None:
    marker = tmp_path / "pickle-ran"
    good = torch.load(checkpoint / "alignment_mlp", weights_only=True)
    evil = {"state_dict": good["state_dict"], "config": _Payload(f"touch {marker}")}
    torch.save(evil, checkpoint / "alignment_mlp")
    assert b"system" in (checkpoint / "alignment_mlp").read_bytes()  # the payload is really there
    with pytest.raises(ModelLoadError, match="refused"):
        load_projection(checkpoint / "alignment_mlp")
    with pytest.raises(ModelLoadError, match="refused"):
        load_backend(gen_entry(gen, "tokens", "evil", base_model=str(checkpoint)))
    assert not marker.exists()


@pytest.mark.parametrize(
    ("config", "message"),
    [
        ({"size": 4}, "not supported"),
        ({"pooling_mode": "mean_linear"}, "not supported"),
    ],
)
def test_projection_shapes_the_package_never_trains_are_refused(
    checkpoint: Path, config: dict[str, object], message: str
) -> None:
    saved = torch.load(checkpoint / "reconstruction_mlp", weights_only=True)
    torch.save({**saved, "config": {**saved["config"], **config}}, checkpoint / "reconstruction_mlp")
    with pytest.raises(ModelLoadError, match=message):
        load_projection(checkpoint / "reconstruction_mlp")


def test_projections_that_do_not_chain_are_refused(gen: GenFixtures, checkpoint: Path) -> None:
    saved = torch.load(checkpoint / "reconstruction_mlp", weights_only=True)
    state = {"projection.weight": torch.zeros(32, 64), "projection.bias": torch.zeros(32)}
    torch.save({**saved, "state_dict": state}, checkpoint / "reconstruction_mlp")
    with pytest.raises(ModelLoadError, match="alignment_mlp: takes 64 dimensions, but receives 32"):
        load_backend(gen_entry(gen, "tokens", "bad", base_model=str(checkpoint)))


def test_encoding_mode_beyond_the_special_tokens_is_refused(checkpoint: Path) -> None:
    (checkpoint / "encoder_decoder_config.json").write_text('{"encoding_mode": "last_7_tokens"}')
    with pytest.raises(ModelLoadError, match="pools 7 tokens, but the checkpoint has 6 special tokens"):
        read_layout(checkpoint)


def test_encoder_decoder_config_overrides_run_config(checkpoint: Path) -> None:
    (checkpoint / "encoder_decoder_config.json").write_text('{"encoding_mode": "last_2_tokens"}')
    assert read_layout(checkpoint).pooled_tokens == 2


def test_a_pickled_adapter_is_not_loaded(checkpoint: Path) -> None:
    adapter = checkpoint / "encoder" / "adapter_model.safetensors"
    adapter.rename(adapter.with_name("adapter_model.bin"))
    with pytest.raises(ModelLoadError, match=r"adapter_model\.safetensors"):
        read_layout(checkpoint)


def test_a_directory_without_run_config_is_refused(tmp_path: Path) -> None:
    with pytest.raises(ModelLoadError, match="not an LLM2Vec-Gen checkpoint"):
        read_layout(tmp_path)


def test_max_length_must_leave_room_for_text(gen: GenFixtures) -> None:
    with pytest.raises(ModelLoadError, match="max_length 6 leaves no room"):
        load_backend(gen_entry(gen, "tokens", "tight", max_length=6))


def test_config_refuses_adapters_or_pooling_for_llm2vec_gen(tmp_path: Path) -> None:
    path = tmp_path / "gen.toml"
    path.write_text('[[models]]\nname = "g"\nkind = "llm2vec-gen"\nbase_model = "x"\npooling = "eos_token"\n')
    with pytest.raises(ConfigError, match="llm2vec-gen models take no adapters"):
        load_settings(path)
    path.write_text('[[models]]\nname = "g"\nkind = "llm2vec-gen"\nbase_model = "x"\n')
    assert load_settings(path).models[0].kind == "llm2vec-gen"


def test_an_unknown_checkpoint_is_refused_offline(gen: GenFixtures) -> None:
    # HF_HUB_OFFLINE (tests/conftest.py): a hub id not in the cache is a clear load error.
    with pytest.raises(ModelLoadError, match="not a local directory, and not on the hub or in its cache"):
        load_backend(gen_entry(gen, "tokens", "missing", base_model="McGill-NLP/LLM2Vec-Gen-No-Such-Model"))


def test_a_missing_base_model_is_refused(gen: GenFixtures, checkpoint: Path, tmp_path: Path) -> None:
    run_config = checkpoint / "run_config.yml"
    text = run_config.read_text(encoding="utf-8").replace(str(gen.root / "base"), str(tmp_path / "gone"))
    run_config.write_text(text, encoding="utf-8")
    with pytest.raises(ModelLoadError, match="base model"):
        load_backend(gen_entry(gen, "tokens", "no-base", base_model=str(checkpoint)))
