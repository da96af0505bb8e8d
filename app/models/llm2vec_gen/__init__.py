"""LLM2Vec-Gen models (McGill-NLP's generative embeddings, llm2vec-gen 0.1.3), served without
the llm2vec-gen package, whose pins (torch 2.6, transformers 4.56, flash-attn) cannot share
a runtime with the gateway.

The decoder stays causal. Every input gets the checkpoint's special ("compression") tokens
appended; the embedding is the mean, over the last N of them (`encoding_mode =
last_N_tokens`), of their final hidden states passed through `reconstruction_mlp` (when the
checkpoint has one) and then `alignment_mlp`.

- `checkpoint`: the saved layout (run_config.yml, encoder_decoder_config.json, encoder/,
  the projection files), read safely: a safe YAML loader, projections only as plain tensors;
- `tokenizer`: inputs as the package's `encode()` builds them for one text (the tokenizer
  part, no weights);
- `model`: the base model with the encoder adapter merged, and the projections (the model
  part);
- `backend`: the two as one `EmbeddingBackend`.
"""
