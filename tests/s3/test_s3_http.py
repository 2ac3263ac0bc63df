"""The files routes and a whole sync round over real HTTP, with the server's blobs on S3 (moto)."""

from __future__ import annotations

import hashlib
import os
from typing import Any
from urllib.parse import urlsplit

import pytest
import requests

from starkeep_sync import HLCClock, create_data_record, create_sync_engine, shared_object_key
from starkeep_sync.adapters import DjangoObjectStorage, OrmDatabaseAdapter
from starkeep_sync.client import HttpObjectStorage, create_http_sync_transport
from starkeep_sync.core.exceptions import SyncTransportError
from starkeep_sync.device.memory import MemoryDatabaseAdapter, MemoryObjectStorage, MemorySyncStateStore
from starkeep_sync.device.supervisor import sync_until_done
from starkeep_sync.models import Blob
from tests.factories import make_token, make_user
from tests.http_harness import live_transfer_concurrency
from tests.s3.conftest import MotoS3

pytestmark = pytest.mark.django_db(transaction=True)

DRIVE = "apps/starkeep-drive"


def sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def drive_key(data: bytes, category: str = "image") -> str:
    h = sha(data)
    return f"shared/{category}/{h[:2]}/{h}"


class RecordingSession(requests.Session):
    """A session that remembers ``(method, url)`` of every request it sends."""

    def __init__(self) -> None:
        super().__init__()
        self.sent: list[tuple[str, str]] = []

    def request(self, method: str | bytes, url: str | bytes, *args: Any, **kwargs: Any) -> requests.Response:
        self.sent.append((str(method), str(url)))
        return super().request(method, url, *args, **kwargs)

    def hosts(self, method: str) -> list[str]:
        return [urlsplit(url).netloc for m, url in self.sent if m == method]


def netloc(url: str) -> str:
    return urlsplit(url).netloc


@pytest.fixture
def owner_and_token(s3_bucket: str) -> tuple[Any, str]:
    owner = make_user("alice")
    return owner, make_token(owner)


def test_put_get_head_delete_through_the_server(live_server: Any, s3_bucket: str, moto_s3: MotoS3,
                                                owner_and_token: tuple[Any, str]) -> None:
    owner, token = owner_and_token
    session = RecordingSession()
    remote = HttpObjectStorage(f"{live_server.url}/{DRIVE}", auth=token, session=session)
    data = os.urandom(200_000)
    key = drive_key(data)
    object_key = f"starkeep/{owner.pk}/{key}"

    assert remote.has(key) is False
    assert remote.open(key) is None
    remote.put(key, data, "image/jpeg")
    assert moto_s3.object_keys(s3_bucket) == [object_key]
    meta = moto_s3.client.head_object(Bucket=s3_bucket, Key=object_key)
    assert (meta["ContentType"], meta["ContentLength"]) == ("image/jpeg", len(data))

    assert remote.has(key) is True
    head = requests.head(f"{live_server.url}/{DRIVE}/files/{key}", headers={"Authorization": f"Bearer {token}"},
                         timeout=30)
    assert head.status_code == 200
    assert head.headers["Content-Type"] == "image/jpeg"
    assert head.headers["Content-Length"] == str(len(data))

    got = remote.get(key)
    assert got is not None and (got.data, got.content_type) == (data, "image/jpeg")
    # Every byte went through the Django server, never straight to S3.
    assert {netloc(url) for _, url in session.sent} == {netloc(live_server.url)}

    remote.delete(key)
    assert remote.has(key) is False
    assert moto_s3.object_keys(s3_bucket) == []
    remote.delete(key)  # absent is not an error


def test_the_server_refuses_bytes_that_do_not_match_their_key(live_server: Any, s3_bucket: str, moto_s3: MotoS3,
                                                              owner_and_token: tuple[Any, str]) -> None:
    _, token = owner_and_token
    remote = HttpObjectStorage(f"{live_server.url}/{DRIVE}", auth=token)
    with pytest.raises(SyncTransportError):
        remote.put(drive_key(b"what the key promises"), b"something else", "image/jpeg")
    assert moto_s3.object_keys(s3_bucket) == []


def test_presigned_upload_and_download_go_straight_to_s3(live_server: Any, s3_bucket: str, moto_s3: MotoS3,
                                                         owner_and_token: tuple[Any, str]) -> None:
    owner, token = owner_and_token
    session = RecordingSession()
    remote = HttpObjectStorage(f"{live_server.url}/{DRIVE}", auth=token, session=session, use_presign=True)
    data = os.urandom(300_000)
    key = drive_key(data)
    object_key = f"starkeep/{owner.pk}/{key}"
    server, s3 = netloc(live_server.url), netloc(moto_s3.endpoint_url)

    remote.put(key, data, "image/png")
    # POST presign and POST confirm to the server; the bytes' PUT to moto, on loopback.
    assert session.hosts("POST") == [server, server]
    assert session.hosts("PUT") == [s3]
    assert netloc(moto_s3.endpoint_url).startswith("127.0.0.1:")
    meta = moto_s3.client.head_object(Bucket=s3_bucket, Key=object_key)
    assert (meta["ContentType"], meta["ContentLength"]) == ("image/png", len(data))
    # confirm recorded the blob, with the Content-Type the uploader announced.
    row = Blob.objects.get(owner=owner, key=key)
    assert (row.sha256, row.size_bytes, row.content_type) == (sha(data), len(data), "image/png")

    session.sent.clear()
    got = remote.get(key)
    assert got is not None and got.data == data and got.content_type == "image/png"
    assert session.hosts("GET") == [server, s3]  # the presign route, then the bytes from S3
    assert remote.has(key)

    # The server's own GET route agrees (Content-Type kept for bytes that never passed through it).
    plain = HttpObjectStorage(f"{live_server.url}/{DRIVE}", auth=token).get(key)
    assert plain is not None and (plain.data, plain.content_type) == (data, "image/png")

    # Absent: the presign route answers 404, so open() gives None.
    assert remote.open(drive_key(b"never uploaded")) is None


def test_a_presigned_upload_that_does_not_match_its_key_is_removed_at_confirm(
        live_server: Any, s3_bucket: str, moto_s3: MotoS3, owner_and_token: tuple[Any, str]) -> None:
    _, token = owner_and_token
    remote = HttpObjectStorage(f"{live_server.url}/{DRIVE}", auth=token, use_presign=True)
    key = drive_key(b"what the key promises")
    with pytest.raises(SyncTransportError):
        remote.put(key, b"something else", "image/jpeg")
    assert moto_s3.object_keys(s3_bucket) == []
    assert remote.has(key) is False


def test_health_reports_the_s3_storage(live_server: Any, s3_bucket: str) -> None:
    response = requests.get(f"{live_server.url}/{DRIVE}/health", timeout=30)
    assert response.status_code == 200
    assert response.json() == {"status": "ok", "db": True, "storage": True}


def device_engine(live_server_url: str, token: str, node_id: str, *, use_presign: bool) -> tuple[Any, Any, Any]:
    """A memory-adapter device talking to the server: (engine, its database, its blob storage)."""
    base = f"{live_server_url}/{DRIVE}"
    database, storage = MemoryDatabaseAdapter(), MemoryObjectStorage()
    clock = HLCClock(node_id)
    engine = create_sync_engine(
        local_database=database, local_storage=storage,
        remote_storage=HttpObjectStorage(base, auth=token, use_presign=use_presign),
        transport=create_http_sync_transport(base_url=base, auth=token),
        clock=clock, sync_state=MemorySyncStateStore(), transfer_concurrency=live_transfer_concurrency(),
    )
    return engine, database, storage


@pytest.mark.parametrize("use_presign", [False, True], ids=["through-server", "presigned"])
def test_a_sync_round_moves_records_and_blobs_via_s3(live_server: Any, s3_bucket: str, moto_s3: MotoS3,
                                                     owner_and_token: tuple[Any, str], use_presign: bool) -> None:
    owner, token = owner_and_token
    phone, phone_db, phone_blobs = device_engine(live_server.url, token, "phone", use_presign=use_presign)
    blobs: dict[str, bytes] = {}
    for n, mime in enumerate(["image/jpeg", "image/png", "video/mp4"]):
        data = os.urandom(50_000 + n * 70_000)
        digest = sha(data)
        key = shared_object_key(mime, digest)
        phone_blobs.put(key, data, mime)
        record = create_data_record(phone.clock, type=mime, origin_app_id="tests", content_hash=digest,
                                    object_storage_key=key, size_bytes=len(data), mime_type=mime,
                                    original_filename=f"{n}.bin")
        phone_db.put(record)
        blobs[record.id] = data

    pushed = sync_until_done(phone)
    assert sum(r.shipped for r in pushed) == 3
    assert not any(r.errors for r in pushed)
    assert sum(r.pushed_bytes for r in pushed) == sum(len(d) for d in blobs.values())

    # On the server: the records in its database, the bytes in the bucket under the owner's prefix.
    server_records = {r.id: r for r in OrmDatabaseAdapter(owner).all()}
    assert set(server_records) == set(blobs)
    assert moto_s3.object_keys(s3_bucket) == sorted(
        f"starkeep/{owner.pk}/{r.object_storage_key}" for r in server_records.values())
    server_storage = DjangoObjectStorage(owner)
    for rid, record in server_records.items():
        body = moto_s3.client.get_object(Bucket=s3_bucket, Key=f"starkeep/{owner.pk}/{record.object_storage_key}")
        assert sha(body["Body"].read()) == record.content_hash == sha(blobs[rid])
        assert body["ContentType"] == record.mime_type
        assert server_storage.content_type(record.object_storage_key) == record.mime_type

    laptop, laptop_db, laptop_blobs = device_engine(live_server.url, token, "laptop", use_presign=use_presign)
    pulled = sync_until_done(laptop)
    assert sum(r.applied for r in pulled) == 3
    assert not any(r.errors for r in pulled)
    for rid, data in blobs.items():
        record = laptop_db.get(rid)
        assert record is not None
        got = laptop_blobs.get(record.object_storage_key)
        assert got is not None
        assert sha(got.data) == record.content_hash == sha(data)
        assert got.content_type == record.mime_type
