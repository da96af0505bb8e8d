"""Every served family is bidirectional in every layer, with SDPA (what the gateway runs)
equal to eager attention under an explicit all-ones 4D mask; anything else is refused."""

from __future__ import annotations

import json

import pytest
import torch

from app.models.llm2vec import loading
from app.models.protocol import ModelLoadError
from app.models.registry import load_backend
from tests.model import independent
from tests.model.conftest import FAMILIES, entry
from tests.model_factory import TinyCheckpoint, make_mntp_checkpoint

PROMPT = "the cat sat on the mat, and then it slept"


@pytest.mark.parametrize("family", FAMILIES)
def test_every_layer_equals_eager_attention_with_an_all_ones_mask(
    checkpoints: dict[str, TinyCheckpoint], family: str
) -> None:
    checkpoint = checkpoints[family]
    backend = load_backend(entry(checkpoint, family, dtype="float32", device="cpu"))
    model = backend.model._model  # type: ignore[attr-defined]
    assert model.config._attn_implementation == "sdpa"
    assert all(not module.is_causal for module in loading.attention_modules(model))
    ids = independent.tokenizer(checkpoint)(PROMPT, return_tensors="pt")["input_ids"]
    with torch.no_grad():
        ours = model(input_ids=ids, attention_mask=torch.ones_like(ids), output_hidden_states=True)
    want = independent.forward(checkpoint, PROMPT)
    causal = independent.forward(checkpoint, PROMPT, causal=True)
    layers = len(model.layers)
    assert len(ours.hidden_states) == len(want.hidden_states) == layers + 1
    for layer in range(1, layers + 1):
        torch.testing.assert_close(ours.hidden_states[layer], want.hidden_states[layer], atol=1e-4, rtol=1e-4)
        # Each layer's output differs from the causal one's at the first position.
        first, causal_first = ours.hidden_states[layer][0, 0], causal.hidden_states[layer][0, 0]
        assert not torch.allclose(first, causal_first, atol=1e-3)


def test_an_architecture_without_verified_bidirectional_attention_is_refused(
    checkpoints: dict[str, TinyCheckpoint], tmp_path_factory: pytest.TempPathFactory
) -> None:
    checkpoint = make_mntp_checkpoint(tmp_path_factory.mktemp("phi3"), "llama")
    config = json.loads((checkpoint.mntp / "config.json").read_text())
    config |= {"model_type": "phi3", "architectures": ["Phi3ForCausalLM"]}
    (checkpoint.mntp / "config.json").write_text(json.dumps(config))
    with pytest.raises(ModelLoadError, match=r"'phi3' \(Phi3ForCausalLM\).*bidirectional"):
        load_backend(entry(checkpoint, "phi"))


def test_a_model_left_causal_is_refused_at_load(
    checkpoints: dict[str, TinyCheckpoint], monkeypatch: pytest.MonkeyPatch
) -> None:
    # The load-time check catches a transformers release that ignores the settings.
    monkeypatch.setattr(loading, "make_bidirectional", lambda model: None)
    with pytest.raises(ModelLoadError, match="stayed causal"):
        load_backend(entry(checkpoints["qwen3"], "qwen3"))
