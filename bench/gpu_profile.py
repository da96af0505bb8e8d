"""Where one small forward pass spends its time on the GPU (torch.profiler, top ops).

python -m bench.gpu_profile PATH_TO_BASE_MODEL
"""

from __future__ import annotations

import sys
import time

import torch

from app.config import ModelSettings
from app.models.registry import load_backend
from bench.workload import texts


def main() -> None:
    backend = load_backend(ModelSettings(name="m", base_model=sys.argv[1], max_length=512, device="cuda"))
    for rows in (1, 32, 64):
        batch = backend.tokenize(texts(rows, 12, seed=rows), "")
        for _ in range(3):
            backend.embed(batch)
        torch.cuda.synchronize()
        began = time.perf_counter()
        for _ in range(10):
            backend.embed(batch)
        print(
            f"rows={rows} tokens/row~{len(batch[0].input_ids)}: {(time.perf_counter() - began) * 100:.2f} ms"
        )
    batch = backend.tokenize(texts(1, 12, seed=5), "")
    with torch.profiler.profile(
        activities=[torch.profiler.ProfilerActivity.CPU, torch.profiler.ProfilerActivity.CUDA]
    ) as prof:
        backend.embed(batch)
    print(prof.key_averages().table(sort_by="cpu_time_total", row_limit=25))


if __name__ == "__main__":
    main()
