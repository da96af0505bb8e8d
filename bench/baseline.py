"""BASELINE ONLY, not the gateway: the seed-style server this project replaces, kept so the
benchmark can compare against it on the same machine, models and scenarios.

A Flask app whose route calls `SentenceTransformer.encode()` / an LLM2Vec encode once per
request, as the usual recipe does (no batching across requests, no auth, no validation).
llm2vec itself no longer installs beside the gateway's stack, so the LLM2Vec model is the
gateway's own loader, called per request in llm2vec encode()'s batches of 32.
It answers in OpenAI's shape with float lists so the same load generator can check it.

    python -m bench.baseline --kind encoder --base bundled:all-MiniLM-L6-v2 --port 8100
"""

from __future__ import annotations

import argparse
from typing import Any

import numpy as np


def _load(kind: str, base: str, max_length: int) -> Any:
    import torch

    from app.models.registry import resolve_path

    path = resolve_path(base)
    if kind == "encoder":
        from sentence_transformers import SentenceTransformer

        model = SentenceTransformer(path, device="cpu" if not torch.cuda.is_available() else "cuda")
        return lambda texts: model.encode(texts, normalize_embeddings=True)
    from app.config import ModelSettings
    from app.models.llm2vec_backend import LLM2VecBackend

    backend = LLM2VecBackend(ModelSettings(name="baseline", base_model=base, max_length=max_length), path)

    def encode(texts: list[str]) -> Any:
        rows = backend.tokenize(texts, "")
        vectors = np.concatenate([backend.embed(rows[i : i + 32]) for i in range(0, len(rows), 32)])
        return vectors / np.linalg.norm(vectors, axis=1, keepdims=True)

    return encode


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--kind", required=True)
    parser.add_argument("--base", required=True)
    parser.add_argument("--max-length", type=int, default=512)
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args()

    import torch
    from flask import Flask, jsonify, request

    if args.threads > 0:
        torch.set_num_threads(args.threads)
    encode = _load(args.kind, args.base, args.max_length)
    app = Flask("baseline")

    @app.get("/health")
    def health() -> Any:
        return {"status": "ok"}

    @app.post("/v1/embeddings")
    def embeddings() -> Any:
        body = request.get_json()
        texts = body["input"] if isinstance(body["input"], list) else [body["input"]]
        vectors = np.asarray(encode(texts), dtype=np.float32)
        return jsonify(
            {
                "object": "list",
                "data": [
                    {"object": "embedding", "index": i, "embedding": v.tolist()}
                    for i, v in enumerate(vectors)
                ],
                "model": body["model"],
                "usage": {"prompt_tokens": 0, "total_tokens": 0},
            }
        )

    app.run(host="127.0.0.1", port=args.port, threaded=True)


if __name__ == "__main__":
    main()
