"""The gateway's file store keeps bytes as they were sent, wherever a piece ends."""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator

from core.keys import Keys
from core.redis_client import redis_client
from gateway.file_store import PIECE_BYTES, FileStore


async def test_a_character_cut_between_pieces_reads_back_whole(redis_url: str) -> None:
    keys = Keys(f"mpqtest-{uuid.uuid4().hex[:8]}:")
    client = redis_client(redis_url, decode=False)
    store = FileStore(client, keys, 600)
    # The first piece ends inside 'é' (two bytes in UTF-8); the content is not text at all
    # past it.
    sent = [b"a" * (PIECE_BYTES - 1) + "é".encode()[:1], "é".encode()[1:] + b"\n\xff\x00"]

    async def content() -> AsyncIterator[bytes]:
        for piece in sent:
            yield piece

    try:
        stored = await store.write("key_test", "cut.jsonl", "batch", content())
        assert await client.llen(keys.gateway_file_data(stored.id)) == 2
        read = b"".join([piece async for piece in store.read(stored.id)])
        assert read == b"".join(sent)
        assert stored.size == len(read)
    finally:
        async for key in client.scan_iter(match=keys.pattern()):
            await client.unlink(key)
        await client.aclose()
