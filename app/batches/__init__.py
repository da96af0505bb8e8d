"""OpenAI's Batch API for /v1/embeddings: uploaded files, batch jobs kept in SQLite, and the
background runner that embeds their lines through the engine below interactive requests."""
