"""The Files API through the official `openai` client against a real gateway: uploads
streamed into Redis and read back byte for byte, listing and paging, deletion, the limits
(nothing kept of a refused upload), purposes, `expires_after`, and keys that see only their
own files."""

from __future__ import annotations

import os
import socket
import time
from collections.abc import Iterator
from contextlib import contextmanager
from urllib.parse import urlsplit

import httpx
import openai
import pytest
import redis
from gateway_stack import GatewayStack, create_key, gateway_stack
from polling import wait_until

from emulator.server import EmulatorServer

MAX_BYTES = 4_000_000
MAX_LINES = 1_000
BOUNDARY = "b0undary7c2e"


@pytest.fixture(scope="module")
def gw(redis_url: str, emulator: EmulatorServer,
       tmp_path_factory: pytest.TempPathFactory) -> Iterator[GatewayStack]:
    """One gateway with small limits, so that going past them is cheap."""
    limits = {"gateway_max_file_bytes": MAX_BYTES, "gateway_max_file_lines": MAX_LINES}
    with gateway_stack(redis_url, emulator.url, tmp_path_factory.mktemp("gwfiles"),
                       settings=limits) as stack:
        yield stack


@pytest.fixture
def client(gw: GatewayStack) -> Iterator[openai.OpenAI]:
    """The official client with a key of this test's own, so its list is its own."""
    with gw.openai(key=create_key(gw.stack, "files-test")) as client:
        yield client


def jsonl(lines: int, width: int = 20) -> bytes:
    return b"".join(b'{"custom_id": "r%d", "pad": "%s"}\n' % (i, b"x" * width)
                    for i in range(lines))


@contextmanager
def raw_redis(gw: GatewayStack) -> Iterator[redis.Redis]:
    client = redis.Redis.from_url(gw.stack.settings.redis_url or "")
    try:
        yield client
    finally:
        client.close()


def stored_pieces(gw: GatewayStack) -> set[str]:
    """The file data keys in Redis: what an upload leaves behind."""
    with raw_redis(gw) as client:
        pattern = f"{gw.stack.settings.key_prefix}gw:file:*:data"
        return {key.decode() for key in client.scan_iter(match=pattern, count=1000)}


def ttl_s(gw: GatewayStack, key: str) -> int:
    with raw_redis(gw) as client:
        return int(client.ttl(f"{gw.stack.settings.key_prefix}{key}"))


def form(*parts: tuple[str, str | None, bytes]) -> bytes:
    """A multipart body in the order given: (name, filename, data) per part."""
    out = bytearray()
    for name, filename, data in parts:
        out += f'--{BOUNDARY}\r\nContent-Disposition: form-data; name="{name}"'.encode()
        out += f'; filename="{filename}"'.encode() if filename else b""
        out += b"\r\n\r\n" + data + b"\r\n"
    return bytes(out + f"--{BOUNDARY}--\r\n".encode())


def post_form(gw: GatewayStack, key: str, body: bytes,
              content_type: str = f"multipart/form-data; boundary={BOUNDARY}") -> httpx.Response:
    return httpx.post(f"{gw.base_url}/files", content=body, timeout=30,
                      headers={"Authorization": f"Bearer {key}", "Content-Type": content_type})


def test_upload_retrieve_and_read_back(gw: GatewayStack, client: openai.OpenAI) -> None:
    content = jsonl(3)
    before = int(time.time())
    created = client.files.create(file=("requests.jsonl", content), purpose="batch")
    assert created.id.startswith("file-")
    assert created.object == "file"
    assert (created.bytes, created.filename, created.purpose) == (
        len(content), "requests.jsonl", "batch")
    assert before <= created.created_at <= time.time()
    assert created.expires_at == created.created_at + gw.stack.settings.result_ttl_s
    assert client.files.retrieve(created.id) == created
    assert client.files.content(created.id).read() == content


async def test_the_async_client_uploads_lists_and_reads_back(gw: GatewayStack) -> None:
    content = jsonl(20)
    async with gw.async_openai(key=create_key(gw.stack, "async")) as client:
        created = await client.files.create(file=("a.jsonl", content), purpose="batch")
        assert (await client.files.retrieve(created.id)).bytes == len(content)
        assert (await client.files.content(created.id)).read() == content
        assert [f.id async for f in client.files.list()] == [created.id]
        assert (await client.files.delete(created.id)).deleted


def test_a_multi_megabyte_file_streams_both_ways_byte_for_byte(
        gw: GatewayStack, client: openai.OpenAI) -> None:
    # Several store pieces, CRLF and LF line ends, and bytes that are not ASCII.
    lines = [b'{"custom_id": "%d", "body": "%s \xc3\xa9"}' % (i, os.urandom(1800).hex().encode())
             for i in range(MAX_LINES - 1)]
    content = b"\r\n".join(lines[:10]) + b"\r\n" + b"\n".join(lines[10:])
    assert 3_000_000 < len(content) <= MAX_BYTES
    created = client.files.create(file=("big.jsonl", content), purpose="batch")
    assert created.bytes == len(content)
    reply = httpx.get(f"{gw.base_url}/files/{created.id}/content", timeout=30,
                      headers={"Authorization": f"Bearer {client.api_key}"})
    assert reply.headers["content-length"] == str(len(content))
    assert reply.content == content
    assert client.files.content(created.id).read() == content


def test_an_upload_is_stored_as_it_arrives_and_dropped_if_the_client_leaves(
        gw: GatewayStack, client: openai.OpenAI) -> None:
    pieces = stored_pieces(gw)
    body = form(("purpose", None, b"batch"), ("file", "slow.jsonl", jsonl(100, 30_000)))
    address = urlsplit(gw.base_url)
    with socket.create_connection((address.hostname, address.port)) as sock:
        sock.sendall(f"POST /v1/files HTTP/1.1\r\nHost: {address.netloc}\r\n"
                     f"Authorization: Bearer {client.api_key}\r\n"
                     f"Content-Type: multipart/form-data; boundary={BOUNDARY}\r\n"
                     f"Content-Length: {len(body)}\r\n\r\n".encode())
        sock.sendall(body[:len(body) * 3 // 4])
        # Part of the content is in Redis while the rest of the body has not been sent.
        wait_until(lambda: stored_pieces(gw) - pieces, 10, what="a piece of the upload")
    wait_until(lambda: stored_pieces(gw) == pieces, 10, what="the left upload's pieces to go")
    assert client.files.list().data == []
    assert "Traceback" not in gw.gateways[0].log()


def test_list_is_newest_first_and_pages(gw: GatewayStack, client: openai.OpenAI) -> None:
    ids = [client.files.create(file=(f"f{i}.jsonl", jsonl(1)), purpose="batch").id
           for i in range(5)]
    newest_first = ids[::-1]
    assert [f.id for f in client.files.list()] == newest_first
    assert [f.id for f in client.files.list(order="asc")] == ids
    assert [f.id for f in client.files.list(purpose="batch")] == newest_first
    assert [f.id for f in client.files.list(purpose="batch_output")] == []

    page = client.files.list(limit=2)
    assert [f.id for f in page.data] == newest_first[:2]
    assert page.has_more
    assert [f.id for f in page] == newest_first  # the client follows `after` to the end
    reply = httpx.get(f"{gw.base_url}/files", params={"limit": 2, "after": ids[1]},
                      headers={"Authorization": f"Bearer {client.api_key}"}).json()
    assert reply["object"] == "list"
    assert [f["id"] for f in reply["data"]] == [ids[0]]
    assert (reply["first_id"], reply["last_id"], reply["has_more"]) == (ids[0], ids[0], False)


@pytest.mark.parametrize("params", [{"limit": 0}, {"limit": 10_001}, {"order": "up"}])
def test_list_parameters_out_of_range_get_400(client: openai.OpenAI, params: dict) -> None:
    with pytest.raises(openai.BadRequestError):
        client.files.list(**params)


def test_list_after_an_unknown_file_gets_404(client: openai.OpenAI) -> None:
    with pytest.raises(openai.NotFoundError):
        client.files.list(after="file-unknown")


def test_delete_then_404(client: openai.OpenAI) -> None:
    created = client.files.create(file=("gone.jsonl", jsonl(2)), purpose="batch")
    deleted = client.files.delete(created.id)
    assert (deleted.id, deleted.object, deleted.deleted) == (created.id, "file", True)
    for call in (client.files.retrieve, client.files.content, client.files.delete):
        with pytest.raises(openai.NotFoundError):
            call(created.id)
    assert created.id not in [f.id for f in client.files.list()]


def test_another_keys_file_is_404_on_every_route(gw: GatewayStack,
                                                 client: openai.OpenAI) -> None:
    created = client.files.create(file=("mine.jsonl", jsonl(2)), purpose="batch")
    with gw.openai(key=create_key(gw.stack, "other")) as other:
        for call in (other.files.retrieve, other.files.content, other.files.delete):
            with pytest.raises(openai.NotFoundError) as caught:
                call(created.id)
            assert caught.value.status_code == 404
        assert created.id not in [f.id for f in other.files.list()]
        with pytest.raises(openai.NotFoundError):
            other.files.list(after=created.id)
    assert client.files.retrieve(created.id).id == created.id  # still there for its owner


@pytest.mark.parametrize("size", [MAX_BYTES + 1, 3 * MAX_BYTES],
                         ids=["found-while-streaming", "refused-by-length"])
def test_an_oversized_upload_gets_413_and_nothing_is_kept(gw: GatewayStack,
                                                          client: openai.OpenAI,
                                                          size: int) -> None:
    pieces = stored_pieces(gw)
    with pytest.raises(openai.APIStatusError) as caught:
        client.files.create(file=("big.jsonl", b"x" * size), purpose="batch")
    assert caught.value.status_code == 413
    assert caught.value.code == "file_too_large"
    assert str(MAX_BYTES) in caught.value.message
    assert client.files.list().data == []
    assert stored_pieces(gw) == pieces


def test_too_many_lines_get_400_and_nothing_is_kept(gw: GatewayStack,
                                                    client: openai.OpenAI) -> None:
    pieces = stored_pieces(gw)
    with pytest.raises(openai.BadRequestError) as caught:
        client.files.create(file=("many.jsonl", jsonl(MAX_LINES + 1)), purpose="batch")
    assert caught.value.code == "too_many_lines"
    assert client.files.list().data == []
    assert stored_pieces(gw) == pieces
    # Exactly the limit is fine, with or without a last line end.
    assert client.files.create(file=("max.jsonl", jsonl(MAX_LINES)[:-1]),
                               purpose="batch").bytes == len(jsonl(MAX_LINES)) - 1


@pytest.mark.parametrize("purpose", ["batch_output", "assistants", "fine-tune"])
def test_only_purpose_batch_may_be_uploaded(client: openai.OpenAI, purpose: str) -> None:
    with pytest.raises(openai.BadRequestError) as caught:
        client.files.create(file=("a.jsonl", jsonl(1)), purpose=purpose)  # type: ignore[arg-type]
    assert caught.value.param == "purpose"
    assert "'batch'" in caught.value.message
    assert client.files.list().data == []


def test_fields_after_the_file_are_honoured(gw: GatewayStack, client: openai.OpenAI) -> None:
    key = str(client.api_key)
    content = jsonl(50)
    reply = post_form(gw, key, form(("file", "late.jsonl", content),
                                    ("purpose", None, b"batch"),
                                    ("expires_after[seconds]", None, b"7200"),
                                    ("expires_after[anchor]", None, b"created_at")))
    assert reply.status_code == 200, reply.text
    created = reply.json()
    assert created["expires_at"] == created["created_at"] + 7200
    assert client.files.content(created["id"]).read() == content


def test_a_wrong_purpose_after_the_file_keeps_nothing(gw: GatewayStack,
                                                      client: openai.OpenAI) -> None:
    pieces = stored_pieces(gw)
    reply = post_form(gw, str(client.api_key), form(("file", "late.jsonl", jsonl(50)),
                                                    ("purpose", None, b"assistants")))
    assert reply.status_code == 400
    assert reply.json()["error"]["param"] == "purpose"
    assert stored_pieces(gw) == pieces
    assert client.files.list().data == []


@pytest.mark.parametrize(("body", "content_type", "param"), [
    (form(("purpose", None, b"batch")), None, "file"),
    (form(("file", "a.jsonl", b"{}\n")), None, "purpose"),
    (form(("file", "a.jsonl", b"{}\n"), ("file", "b.jsonl", b"{}\n"),
          ("purpose", None, b"batch")), None, "file"),
    (b'{"purpose": "batch"}', "application/json", None),
    (form(("file", "a.jsonl", b"{}\n"))[:-10], None, None),
    (form(("purpose", None, b"b" * 5000), ("file", "a.jsonl", b"{}\n")), None, "purpose"),
    (form(*[("purpose", None, b"batch")] * 17, ("file", "a.jsonl", b"{}\n")), None, None),
], ids=["no-file", "no-purpose", "two-files", "not-multipart", "truncated", "long-field",
        "many-fields"])
def test_malformed_uploads_get_a_clear_400(gw: GatewayStack, client: openai.OpenAI,
                                           body: bytes, content_type: str | None,
                                           param: str | None) -> None:
    pieces = stored_pieces(gw)
    reply = (post_form(gw, str(client.api_key), body) if content_type is None
             else post_form(gw, str(client.api_key), body, content_type))
    assert reply.status_code == 400, reply.text
    error = reply.json()["error"]
    assert error["param"] == param
    assert error["message"]
    assert stored_pieces(gw) == pieces


def test_expires_after_sets_expires_at_and_the_redis_ttl(gw: GatewayStack,
                                                         client: openai.OpenAI) -> None:
    month = 30 * 24 * 3600  # longer than the stack's retention: the file lives it anyway
    assert gw.stack.settings.result_ttl_s < month
    long = client.files.create(file=("long.jsonl", jsonl(1)), purpose="batch",
                               expires_after={"anchor": "created_at", "seconds": month})
    short = client.files.create(file=("short.jsonl", jsonl(1)), purpose="batch",
                                expires_after={"anchor": "created_at", "seconds": 3600})
    for created, seconds in ((long, month), (short, 3600)):
        assert created.expires_at == created.created_at + seconds
        assert client.files.retrieve(created.id).expires_at == created.expires_at
        for key in (f"gw:file:{created.id}", f"gw:file:{created.id}:data"):
            assert seconds - 10 <= ttl_s(gw, key) <= seconds
    # The key's list outlives its longest-lived file, whatever the order they came in.
    with raw_redis(gw) as raw:
        owner = raw.hget(f"{gw.stack.settings.key_prefix}gw:file:{long.id}", "owner")
    assert owner is not None
    assert ttl_s(gw, f"gw:files:{owner.decode()}") >= month - 10


@pytest.mark.parametrize("seconds", [60, 2_592_001])
def test_expires_after_out_of_bounds_gets_400(client: openai.OpenAI, seconds: int) -> None:
    with pytest.raises(openai.BadRequestError) as caught:
        client.files.create(file=("a.jsonl", jsonl(1)), purpose="batch",
                            expires_after={"anchor": "created_at", "seconds": seconds})
    assert caught.value.param == "expires_after[seconds]"
