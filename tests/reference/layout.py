"""Where the golden fixtures live and how a checkpoint is made loadable (standard library only,
so the reference generator and the gateway's tests share it on either stack).

    fixtures/
      cases.json                       every case: checkpoint, settings, texts, vector file
      vectors/<case>.npy               llm2vec's encode() of each text alone, float32 (texts, dims)
      checkpoints/<key>/base/          config.json, model.safetensors (the "hub" base model)
      checkpoints/<key>/mntp/          config.json, adapter_config.json, adapter_model.safetensors,
                                       tokenizer files: what LLM2Vec.from_pretrained is given
      checkpoints/<key>/supervised/    adapter_config.json, adapter_model.safetensors
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

FIXTURES = Path(__file__).resolve().parent / "fixtures"
CASES = FIXTURES / "cases.json"
CHECKPOINTS = FIXTURES / "checkpoints"
VECTORS = FIXTURES / "vectors"


def materialize(key: str, destination: Path, fixtures: Path = FIXTURES) -> Path:
    """Copy checkpoint `key` to `destination`, its MNTP adapter pointing at the copied base/.

    The stored adapter names its base by hub id, as published ones do; loaders follow
    `base_model_name_or_path`, so the copy gets the absolute path of its own base/.
    Returns `destination` (load `destination/mntp`, then the adapter `destination/supervised`).
    """
    shutil.copytree(fixtures / "checkpoints" / key, destination)
    adapter_config = destination / "mntp" / "adapter_config.json"
    config = json.loads(adapter_config.read_text())
    config["base_model_name_or_path"] = str((destination / "base").resolve())
    adapter_config.write_text(json.dumps(config, indent=2, sort_keys=True) + "\n")
    return destination
