"""The gateway's own LLM2Vec implementation on current transformers (no runtime llm2vec).

`prompts` reproduces llm2vec 0.2.3's input handling (per-checkpoint wrappers, the
instruction join), `loading` its model loading (the -mntp checkpoint with its MNTP
adapter merged, then the configured adapters, bidirectional attention in every layer).
"""
