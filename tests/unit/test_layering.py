"""The HTTP layer and the engine never import torch or transformers: only backends do."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def test_importing_the_app_loads_no_model_library() -> None:
    code = (
        "import sys; import app.server, app.api.routes, app.engine.engine, app.cli; "
        "heavy = [m for m in ('torch', 'transformers', 'llm2vec', 'peft') if m in sys.modules]; "
        "print(heavy)"
    )
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "[]"


def test_engine_does_not_import_litestar() -> None:
    code = "import sys; import app.engine.engine; print('litestar' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert out.stdout.strip() == "False", out.stderr
