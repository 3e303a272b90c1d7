"""The files API against the real gateway and PostgreSQL: OpenAI's shapes (the official SDK parses them),
the byte cap, the per-tenant quota, cursor pages, and another tenant's file answered like a missing one."""

from __future__ import annotations

import asyncio
import os
import socket
import tempfile

import httpx
import openai
import psutil
import pytest

from tests.helpers import TenantKey, eventually

LINE = b'{"messages": [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "hello"}]}\n'


def _sdk(url: str, tenant: TenantKey) -> openai.AsyncOpenAI:
    return openai.AsyncOpenAI(base_url=url + "/v1", api_key=tenant.secret, max_retries=0)


async def test_upload_list_retrieve_content_delete_with_the_sdk(platform, tenant):
    async with _sdk(platform.url, tenant) as sdk:
        created = await sdk.files.create(file=("train.jsonl", LINE * 3), purpose="fine-tune")
        assert created.id.startswith("file-") and created.object == "file"
        assert (created.bytes, created.filename, created.purpose, created.status) == (len(LINE) * 3, "train.jsonl",
                                                                                      "fine-tune", "processed")
        assert created.expires_at is None and created.created_at > 0
        batch = await sdk.files.create(file=("in.jsonl", b"{}\n"), purpose="batch",
                                       extra_body={"expires_after": {"anchor": "created_at", "seconds": 3600}})
        assert batch.expires_at == batch.created_at + 3600
        assert (await sdk.files.retrieve(created.id)).model_dump() == created.model_dump()
        assert (await sdk.files.content(created.id)).content == LINE * 3
        listed = [f.id async for f in sdk.files.list()]
        assert listed == sorted([created.id, batch.id])
        assert [f.id async for f in sdk.files.list(purpose="batch")] == [batch.id]
        deleted = await sdk.files.delete(created.id)
        assert (deleted.id, deleted.deleted) == (created.id, True)
        with pytest.raises(openai.NotFoundError):
            await sdk.files.retrieve(created.id)
        with pytest.raises(openai.NotFoundError):
            await sdk.files.content(created.id)


async def test_pages_follow_the_after_cursor(platform, tenant):
    async with _sdk(platform.url, tenant) as sdk:
        made = sorted([(await sdk.files.create(file=(f"f{i}.jsonl", LINE), purpose="fine-tune")).id for i in range(5)])
        first = await sdk.files.list(limit=2)
        assert [f.id for f in first.data] == made[:2] and first.has_more
        assert [f.id async for f in sdk.files.list(limit=2)] == made  # the SDK follows `after` to the end


async def test_another_tenants_file_is_answered_like_a_missing_one(platform, tenant, other_tenant):
    async with _sdk(platform.url, tenant) as mine:
        file = await mine.files.create(file=("t.jsonl", LINE), purpose="fine-tune")
    async with httpx.AsyncClient(base_url=platform.url, headers=other_tenant.headers) as theirs:
        missing = "file-" + "x" * 20
        for method, path in (("GET", "/v1/files/{}"), ("GET", "/v1/files/{}/content"), ("DELETE", "/v1/files/{}")):
            answers = [await theirs.request(method, path.format(i)) for i in (file.id, missing)]
            assert [a.status_code for a in answers] == [404, 404]
            assert answers[0].json() == httpx.Response(404, text=answers[1].text.replace(missing, file.id)).json()
        assert (await theirs.get("/v1/files")).json()["data"] == []
    async with _sdk(platform.url, tenant) as mine:
        assert (await mine.files.retrieve(file.id)).id == file.id  # untouched


async def test_bad_uploads_are_refused(platform, tenant):
    async with httpx.AsyncClient(base_url=platform.url, headers=tenant.headers) as http:
        no_purpose = await http.post("/v1/files", files={"file": ("a.jsonl", LINE)})
        wrong = await http.post("/v1/files", files={"file": ("a.jsonl", LINE)}, data={"purpose": "fine-tune-results"})
        no_file = await http.post("/v1/files", data={"purpose": "batch"}, files={"other": ("a", b"x")})
        not_multipart = await http.post("/v1/files", json={"purpose": "batch"})
        expiry = await http.post("/v1/files", files={"file": ("a.jsonl", LINE)},
                                 data={"purpose": "batch", "expires_after[anchor]": "created_at",
                                       "expires_after[seconds]": "5"})
    assert (no_purpose.status_code, no_purpose.json()["error"]["param"]) == (400, "purpose")
    assert (wrong.status_code, wrong.json()["error"]["param"]) == (400, "purpose")
    assert (no_file.status_code, no_file.json()["error"]["param"]) == (400, "file")
    assert not_multipart.status_code == 415
    assert (expiry.status_code, expiry.json()["error"]["param"]) == (400, "expires_after[seconds]")


async def test_the_byte_cap_and_the_tenant_quota(start_gateway, tenant):
    gateway = await start_gateway(MAX_FILE_BYTES="2048", TENANT_MAX_FILES="2", TENANT_MAX_FILE_BYTES="4096")
    async with httpx.AsyncClient(base_url=gateway.url, headers=tenant.headers) as http:
        big = await http.post("/v1/files", files={"file": ("big.jsonl", b"x" * 3000)}, data={"purpose": "batch"})
        huge = await http.post("/v1/files", files={"file": ("huge.jsonl", b"x" * 200_000)}, data={"purpose": "batch"})
        assert big.status_code == 413 and huge.status_code == 413, (big.text, huge.text)
        ok = [await http.post("/v1/files", files={"file": (f"{i}.jsonl", b"x" * 1500)}, data={"purpose": "batch"})
              for i in range(2)]
        assert [a.status_code for a in ok] == [200, 200]
        full = await http.post("/v1/files", files={"file": ("3.jsonl", b"x")}, data={"purpose": "batch"})
        assert (full.status_code, full.json()["error"]["code"]) == (409, "storage_quota_exceeded")
        assert (await http.delete(f"/v1/files/{ok[0].json()['id']}")).status_code == 200
        again = await http.post("/v1/files", files={"file": ("3.jsonl", b"x")}, data={"purpose": "batch"})
        assert again.status_code == 200, again.text  # deleting gave the room back


async def test_the_janitor_deletes_expired_files_and_gives_their_room_back(platform, tenant, db):
    """Past expires_at a file is hidden at once and, at the next sweep of the gateway's janitor, deleted:
    row, blob and the room it took in the tenant's quota; one an open fine-tuning job reads waits for
    the job to end (deleting it would fail the job)."""
    from lorafleet.files.janitor import ExpiredFiles
    from lorafleet.gateway.janitor import RetentionJanitor

    services = platform.app.state.services
    expiring = {"expires_after": {"anchor": "created_at", "seconds": 3600}}
    async with _sdk(platform.url, tenant) as sdk:
        gone = await sdk.files.create(file=("a.jsonl", LINE * 2), purpose="batch", extra_body=expiring)
        in_use = await sdk.files.create(file=("t.jsonl", LINE * 10), purpose="fine-tune", extra_body=expiring)
        kept = await sdk.files.create(file=("k.jsonl", LINE), purpose="batch", extra_body=expiring)
        job = await sdk.fine_tuning.jobs.create(model="stub-model", training_file=in_use.id)
    blob_keys = {r["id"]: r["blob_key"] for r in await db.fetch("SELECT id, blob_key FROM files WHERE tenant_id = $1",
                                                                 tenant.tenant_id)}
    store = services.files._blobs
    assert all(store.path(key).exists() for key in blob_keys.values())
    usage = lambda: db.fetchrow(queries_storage, tenant.tenant_id)  # noqa: E731
    assert tuple(await usage()) == (len(LINE) * 13, 3)
    await db.execute("UPDATE files SET expires_at = now() - interval '1 second' WHERE id = ANY($1)", [gone.id, in_use.id])
    janitor = RetentionJanitor(db, expired_files=ExpiredFiles(services.files, batch=1))  # one per transaction
    await janitor.sweep()
    assert not store.path(blob_keys[gone.id]).exists()
    assert store.path(blob_keys[in_use.id]).exists() and store.path(blob_keys[kept.id]).exists()
    assert tuple(await usage()) == (len(LINE) * 11, 2)
    statuses = dict(await db.fetch("SELECT id, status FROM files WHERE tenant_id = $1", tenant.tenant_id))
    assert statuses == {gone.id: "deleted", in_use.id: "processed", kept.id: "processed"}
    async with _sdk(platform.url, tenant) as sdk:
        await sdk.fine_tuning.jobs.cancel(job.id)
        assert [f.id async for f in sdk.files.list()] == [kept.id]  # expired ones are hidden either way
    assert await janitor._expired_files.sweep() == 1  # the job ended: its file goes too
    assert not store.path(blob_keys[in_use.id]).exists()
    assert tuple(await usage()) == (len(LINE), 1)
    assert await janitor._expired_files.sweep() == 0


queries_storage = "SELECT bytes, objects FROM tenant_storage WHERE tenant_id = $1 AND kind = 'files'"


# ---- downloads (issue 28, finding 8) --------------------------------------------------------------

BIG = 12 * 1024 * 1024  # more than the kernel buffers between a stalled client and the server (~4 MB)


async def _stalled_reader(url: str, path: str, secret: str) -> tuple[socket.socket, bytes]:
    """A client that sends its request, reads the first bytes of the answer and then reads no more (its
    receive buffer made as small as the kernel allows, so the server's sends soon wait on it)."""
    loop = asyncio.get_running_loop()
    host, port = url.removeprefix("http://").split(":")
    sock = socket.socket()
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    sock.setblocking(False)
    await loop.sock_connect(sock, (host, int(port)))
    await loop.sock_sendall(sock, f"GET {path} HTTP/1.1\r\nHost: {host}\r\nAuthorization: Bearer {secret}\r\n\r\n"
                            .encode())
    first = await asyncio.wait_for(loop.sock_recv(sock, 1024), 10)
    return sock, first


async def _drain(sock: socket.socket, timeout: float = 20.0) -> int:
    """Everything the server still sends, until it closes the connection; the bytes received."""
    loop = asyncio.get_running_loop()
    total = 0
    with sock:
        while True:
            try:
                piece = await asyncio.wait_for(loop.sock_recv(sock, 1 << 20), timeout)
            except ConnectionResetError:
                return total
            if not piece:
                return total
            total += len(piece)


async def test_downloads_stream_without_copies_within_their_bounds_and_a_stalled_reader_is_cut(
        start_gateway, tenant, other_tenant, tmp_path, monkeypatch):
    """Readers that stop reading hold no copy of the file and no more than the download bounds: past the
    tenant's bound a 429 with Retry-After, past the gateway's a 503; a reader that takes nothing for the
    stall timeout is cut, and its slot serves the next download."""
    gateway = await start_gateway(TENANT_MAX_DOWNLOADS="2", MAX_DOWNLOADS="3", DOWNLOAD_STALL_SECONDS="1.5")
    content = os.urandom(BIG)
    async with _sdk(gateway.url, tenant) as mine, _sdk(gateway.url, other_tenant) as theirs:
        my_file = await mine.files.create(file=("big.jsonl", content), purpose="batch")
        their_file = await theirs.files.create(file=("big.jsonl", content), purpose="batch")
    temporary = tmp_path / "tmp"
    temporary.mkdir()
    monkeypatch.setattr(tempfile, "tempdir", str(temporary))  # where the gateway would copy a download
    path = "/v1/files/{}/content"
    readers: list[tuple[socket.socket, bytes]] = []
    try:
        readers += [await _stalled_reader(gateway.url, path.format(my_file.id), tenant.secret) for _ in range(2)]
        readers.append(await _stalled_reader(gateway.url, path.format(their_file.id), other_tenant.secret))
        assert all(first.startswith(b"HTTP/1.1 200") for _, first in readers), [first[:40] for _, first in readers]
        async with httpx.AsyncClient(base_url=gateway.url, timeout=10) as http:
            over_tenant = await http.get(path.format(my_file.id), headers=tenant.headers)
            over_gateway = await http.get(path.format(their_file.id), headers=other_tenant.headers)
        assert (over_tenant.status_code, over_tenant.json()["error"]["code"]) == (429, "rate_limit_exceeded")
        assert (over_gateway.status_code, over_gateway.json()["error"]["code"]) == (503, "download_capacity_exhausted")
        assert int(over_tenant.headers["retry-after"]) > 0 and int(over_gateway.headers["retry-after"]) > 0
        assert list(temporary.iterdir()) == [], "a download copied the file to a temporary folder"
        assert gateway.services.downloads.count == 3

        # The stalled readers are cut: their slots come back, the server keeps no socket of theirs (nor the bytes
        # they did not take), and a reader that resumes gets what was sent, then the end of the stream.
        await eventually(lambda: asyncio.sleep(0, gateway.services.downloads.count), lambda held: held == 0,
                         timeout=15, what="the stalled downloads to be cut")
        clients = {sock.getsockname()[1] for sock, _ in readers}
        server = int(gateway.url.rsplit(":", 1)[1])

        async def server_sockets() -> list:  # this process is the gateway: its sockets to the stalled readers
            return [c for c in psutil.Process().net_connections("tcp")
                    if c.raddr and c.raddr.port in clients and c.laddr.port == server]

        await eventually(server_sockets, lambda found: found == [], timeout=5,
                         what="the server to drop the stalled connections")
        received = [await _drain(sock) for sock, _ in readers]
        assert all(total < BIG for total in received), received
        async with _sdk(gateway.url, tenant) as mine:
            assert (await mine.files.content(my_file.id)).content == content  # a reader that reads gets it all
    finally:
        for sock, _ in readers:
            sock.close()  # a failure must not leave the gateway waiting on them at shutdown


async def _stalled_uploader(url: str, secret: str) -> socket.socket:
    """A client that starts a 1 MB multipart upload, sends its first kilobyte and then nothing."""
    loop = asyncio.get_running_loop()
    host, port = url.removeprefix("http://").split(":")
    boundary = "b0undary"
    head = (f'--{boundary}\r\nContent-Disposition: form-data; name="purpose"\r\n\r\nbatch\r\n'
            f'--{boundary}\r\nContent-Disposition: form-data; name="file"; filename="f.jsonl"\r\n\r\n').encode()
    sock = socket.socket()
    sock.setblocking(False)
    await loop.sock_connect(sock, (host, int(port)))
    await loop.sock_sendall(sock, (f"POST /v1/files HTTP/1.1\r\nHost: {host}\r\nAuthorization: Bearer {secret}\r\n"
                                   f"Content-Type: multipart/form-data; boundary={boundary}\r\n"
                                   f"Content-Length: 1000000\r\n\r\n").encode() + head + b"x" * 1000)
    return sock


async def test_uploads_are_bounded_per_tenant_and_a_stalled_one_is_answered_408(start_gateway, tenant, tmp_path,
                                                                                 monkeypatch):
    """An upload holds a temporary file until it is whole: a tenant has a bounded number in progress (429 with
    Retry-After beyond), and one whose client stops sending is answered 408 and its partial file deleted."""
    gateway = await start_gateway(TENANT_MAX_UPLOADS="2", UPLOAD_STALL_SECONDS="1.5")
    temporary = tmp_path / "tmp"
    temporary.mkdir()
    monkeypatch.setattr(tempfile, "tempdir", str(temporary))  # where uploads stream to
    uploaders: list[socket.socket] = []
    try:
        uploaders += [await _stalled_uploader(gateway.url, tenant.secret) for _ in range(2)]
        await eventually(lambda: asyncio.sleep(0, gateway.services.uploads.count), lambda held: held == 2,
                         what="both uploads in progress")
        async with httpx.AsyncClient(base_url=gateway.url, headers=tenant.headers, timeout=10) as http:
            refused = await http.post("/v1/files", files={"file": ("a.jsonl", LINE)}, data={"purpose": "batch"})
        assert (refused.status_code, refused.json()["error"]["code"]) == (429, "rate_limit_exceeded")
        assert int(refused.headers["retry-after"]) > 0
        loop = asyncio.get_running_loop()
        answers = [await asyncio.wait_for(loop.sock_recv(sock, 4096), 15) for sock in uploaders]
        assert all(answer.startswith(b"HTTP/1.1 408") for answer in answers), answers
        assert gateway.services.uploads.count == 0 and list(temporary.iterdir()) == []
        async with _sdk(gateway.url, tenant) as sdk:  # their slots serve the next uploads
            assert (await sdk.files.create(file=("b.jsonl", LINE), purpose="batch")).bytes == len(LINE)
    finally:
        for sock in uploaders:
            sock.close()
