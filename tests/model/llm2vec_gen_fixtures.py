"""The LLM2Vec-Gen golden fixtures (tests/reference/llm2vec_gen, written by `make golden-gen`)
made usable: copied to a temporary directory with run_config.yml naming the copied base."""

from __future__ import annotations

import json
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any

FIXTURES = Path(__file__).resolve().parents[1] / "reference" / "llm2vec_gen" / "fixtures"
BASE_PLACEHOLDER = "BASE_DIR"
CHECKPOINTS = ("tokens", "lora")


@dataclass(frozen=True)
class GenFixtures:
    root: Path
    vectors: dict[str, Any]

    def checkpoint(self, name: str) -> Path:
        return self.root / name

    def golden(self, name: str) -> dict[str, Any]:
        checkpoint: dict[str, Any] = self.vectors["checkpoints"][name]
        return checkpoint


def materialize(target: Path) -> GenFixtures:
    root = target / "llm2vec-gen"
    shutil.copytree(FIXTURES, root)
    for name in CHECKPOINTS:
        run_config = root / name / "run_config.yml"
        run_config.write_text(
            run_config.read_text(encoding="utf-8").replace(BASE_PLACEHOLDER, str(root / "base")),
            encoding="utf-8",
        )
    vectors = json.loads((root / "vectors.json").read_text(encoding="utf-8"))
    return GenFixtures(root, vectors)
