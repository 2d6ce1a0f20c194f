"""Files in Redis, so every gateway process reads what any of them wrote: an OpenAI file
object in a hash, the content in a list of pieces. Uploads and generated files are written
as they come (never whole in memory) and become visible only once complete. A file lives
the store's retention, or the `expires_after` its uploader asked for."""

from __future__ import annotations

import secrets
import time
from collections.abc import AsyncIterable, AsyncIterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import redis.asyncio as aioredis
from redis.typing import EncodableT, FieldT

from core.contract import decode_hash
from core.keys import Keys

PIECE_BYTES = 1024 * 1024
# How long content being written outlives its last piece: what a crashed upload leaves
# behind is gone after this.
PENDING_TTL_S = 3600
# Pieces read from Redis per round trip when a file is read back.
READ_PIECES = 8
INPUT_PURPOSE = "batch"
OUTPUT_PURPOSE = "batch_output"
# File objects loaded from Redis per round trip when a list is read.
LIST_WINDOW = 500
_LUA_DIR = Path(__file__).parent / "lua"


class FileTooLargeError(ValueError):
    def __init__(self, limit: int) -> None:
        super().__init__(f"the file is larger than the limit of {limit} bytes")
        self.limit = limit


class TooManyLinesError(ValueError):
    def __init__(self, limit: int) -> None:
        super().__init__(f"the file has more than {limit} lines (a batch takes at most "
                         f"{limit} requests)")
        self.limit = limit


@dataclass(frozen=True)
class StoredFile:
    id: str
    owner: str
    size: int
    lines: int
    created_at: int
    filename: str
    purpose: str
    expires_at: int | None

    def to_openai(self) -> dict[str, Any]:
        return {"id": self.id, "object": "file", "bytes": self.size,
                "created_at": self.created_at, "filename": self.filename,
                "purpose": self.purpose, "expires_at": self.expires_at,
                "status": "processed", "status_details": None}

    def to_redis(self) -> dict[FieldT, EncodableT]:
        fields: dict[FieldT, EncodableT] = {
            "owner": self.owner, "bytes": str(self.size), "lines": str(self.lines),
            "created_at": str(self.created_at), "filename": self.filename,
            "purpose": self.purpose}
        if self.expires_at is not None:
            fields["expires_at"] = str(self.expires_at)
        return fields

    @classmethod
    def from_redis(cls, file_id: str, raw: Mapping[Any, Any]) -> StoredFile:
        fields = decode_hash(raw)
        expires_at = fields.get("expires_at")
        return cls(id=file_id, owner=fields["owner"], size=int(fields["bytes"]),
                   lines=int(fields["lines"]), created_at=int(fields["created_at"]),
                   filename=fields["filename"], purpose=fields["purpose"],
                   expires_at=None if expires_at is None else int(expires_at))


@dataclass(frozen=True)
class WrittenContent:
    file_id: str
    size: int
    lines: int


@dataclass
class _Count:
    """Bytes and lines of content as it comes, held to the limits."""

    max_bytes: int | None
    max_lines: int | None
    size: int = 0
    line_ends: int = 0
    last: bytes = b"\n"  # the last byte seen: content that does not end a line has one more

    @property
    def lines(self) -> int:
        return self.line_ends + (self.last != b"\n")

    def add(self, piece: bytes) -> None:
        if not piece:
            return
        self.size += len(piece)
        if self.max_bytes is not None and self.size > self.max_bytes:
            raise FileTooLargeError(self.max_bytes)
        self.line_ends += piece.count(b"\n")
        self.last = piece[-1:]
        if self.max_lines is not None and self.lines > self.max_lines:
            raise TooManyLinesError(self.max_lines)


def new_file_id() -> str:
    return f"file-{secrets.token_hex(12)}"


class FileStore:
    def __init__(self, redis: aioredis.Redis, keys: Keys, retention_s: int) -> None:
        self._redis = redis
        self._keys = keys
        self.retention_s = retention_s
        self._extend_ttl = redis.register_script(
            (_LUA_DIR / "extend_ttl.lua").read_text(encoding="utf-8"))

    async def write(self, owner: str, filename: str, purpose: str,
                    content: AsyncIterable[bytes], *, max_bytes: int | None = None,
                    max_lines: int | None = None, expires_after_s: int | None = None,
                    ) -> StoredFile:
        """Store `content` as it comes; past `max_bytes` or `max_lines` nothing is kept and
        `FileTooLargeError` / `TooManyLinesError` is raised. The file lives `expires_after_s`,
        or the store's retention."""
        written = await self.write_content(content, max_bytes=max_bytes, max_lines=max_lines)
        return await self.publish(written, owner, filename, purpose,
                                  expires_after_s=expires_after_s)

    async def write_content(self, content: AsyncIterable[bytes], *,
                            max_bytes: int | None = None, max_lines: int | None = None,
                            ) -> WrittenContent:
        """The first half of `write`: the content stored under a new id, not yet a file (an
        upload learns its form fields only when the body ends). `publish` or `discard` it;
        left alone, it is gone `PENDING_TTL_S` after its last piece."""
        file_id = new_file_id()
        data_key = self._keys.gateway_file_data(file_id)
        count = _Count(max_bytes, max_lines)
        buffer = bytearray()
        try:
            async for piece in content:
                count.add(piece)
                buffer += piece
                if len(buffer) >= PIECE_BYTES:
                    await self._push(data_key, bytes(buffer))
                    buffer.clear()
            if buffer:
                await self._push(data_key, bytes(buffer))
        except BaseException:
            await self._redis.unlink(data_key)
            raise
        return WrittenContent(file_id, count.size, count.lines)

    async def publish(self, written: WrittenContent, owner: str, filename: str, purpose: str,
                      *, expires_after_s: int | None = None) -> StoredFile:
        """Written content made a file of `owner`'s, visible to every gateway process."""
        ttl = self.retention_s if expires_after_s is None else expires_after_s
        now = time.time()
        created_at = int(now)
        stored = StoredFile(id=written.file_id, owner=owner, size=written.size,
                            lines=written.lines, created_at=created_at, filename=filename,
                            purpose=purpose, expires_at=created_at + ttl)
        index = self._keys.gateway_files(owner)
        async with self._redis.pipeline(transaction=True) as pipe:
            pipe.hset(self._keys.gateway_file(stored.id), mapping=stored.to_redis())
            pipe.expire(self._keys.gateway_file(stored.id), ttl)
            pipe.expire(self._keys.gateway_file_data(stored.id), ttl)
            # Ordered by the millisecond: files made in the same second list in order too.
            pipe.zadd(index, {stored.id: int(now * 1000)})
            await self._extend_ttl(keys=[index], args=[ttl], client=pipe)
            await pipe.execute()
        return stored

    async def discard(self, written: WrittenContent) -> None:
        await self._redis.unlink(self._keys.gateway_file_data(written.file_id))

    async def _push(self, data_key: str, piece: bytes) -> None:
        async with self._redis.pipeline(transaction=False) as pipe:
            pipe.rpush(data_key, piece)
            pipe.expire(data_key, PENDING_TTL_S)
            await pipe.execute()

    async def get(self, owner: str, file_id: str) -> StoredFile | None:
        """The file, or None if it does not exist, expired, or belongs to another key."""
        if not _valid_id(file_id):
            return None
        raw = await self._redis.hgetall(self._keys.gateway_file(file_id))
        if not raw:
            return None
        found = StoredFile.from_redis(file_id, raw)
        return found if found.owner == owner else None

    async def page(self, owner: str, *, limit: int, after: str | None = None,
                   purpose: str | None = None, newest_first: bool = True,
                   ) -> tuple[list[StoredFile], bool] | None:
        """Up to `limit` of the key's files that follow `after` (newest or oldest first), and
        whether more follow; None when `after` is not one of them. Files met that have
        expired are dropped from the key's index."""
        index = self._keys.gateway_files(owner)
        start = 0
        if after is not None:
            rank = await self._rank(index, after, newest_first)
            if rank is None:
                return None
            start = rank + 1
        found: list[StoredFile] = []
        gone: list[str] = []
        while len(found) <= limit:
            ids = [_text(value) for value in await self._redis.zrange(
                index, start, start + LIST_WINDOW - 1, desc=newest_first)]
            for file_id, stored in zip(ids, await self._load(ids), strict=True):
                if stored is None:
                    gone.append(file_id)
                elif purpose is None or stored.purpose == purpose:
                    found.append(stored)
            if len(ids) < LIST_WINDOW:
                break
            # From where the window ended, not its width: files added meanwhile shift ranks.
            rank = await self._rank(index, ids[-1], newest_first)
            start = start + len(ids) if rank is None else rank + 1
        if gone:
            await self._redis.zrem(index, *gone)
        return found[:limit], len(found) > limit

    async def _rank(self, index: str, file_id: str, newest_first: bool) -> int | None:
        rank = await (self._redis.zrevrank(index, file_id) if newest_first
                      else self._redis.zrank(index, file_id))
        return rank if isinstance(rank, int) else None

    async def _load(self, ids: list[str]) -> list[StoredFile | None]:
        async with self._redis.pipeline(transaction=False) as pipe:
            for file_id in ids:
                pipe.hgetall(self._keys.gateway_file(file_id))
            replies = await pipe.execute()
        return [StoredFile.from_redis(file_id, raw) if raw else None
                for file_id, raw in zip(ids, replies, strict=True)]

    async def read(self, file_id: str) -> AsyncIterator[bytes]:
        """The content, piece by piece."""
        data_key = self._keys.gateway_file_data(file_id)
        start = 0
        while True:
            pieces = await self._redis.lrange(data_key, start, start + READ_PIECES - 1)
            for piece in pieces:
                yield piece if isinstance(piece, bytes) else piece.encode()
            if len(pieces) < READ_PIECES:
                return
            start += READ_PIECES

    async def lines(self, file_id: str) -> AsyncIterator[bytes]:
        """The content's lines without their line ends (blank lines included)."""
        rest = b""
        async for piece in self.read(file_id):
            parts = (rest + piece).split(b"\n")
            rest = parts.pop()
            for line in parts:
                yield line
        if rest:
            yield rest

    async def delete(self, owner: str, file_id: str) -> bool:
        if await self.get(owner, file_id) is None:
            return False
        async with self._redis.pipeline(transaction=True) as pipe:
            pipe.unlink(self._keys.gateway_file(file_id), self._keys.gateway_file_data(file_id))
            pipe.zrem(self._keys.gateway_files(owner), file_id)
            await pipe.execute()
        return True


def _valid_id(file_id: str) -> bool:
    return bool(file_id) and ":" not in file_id


def _text(value: Any) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)
