"""The gateway: OpenAI's Files, Batches, chat, responses and embeddings APIs over mpq jobs,
so any OpenAI client can use mpq by changing its `base_url`."""
