"""DjangoObjectStorage on django-storages' S3Storage, against moto's S3 server on loopback."""

from __future__ import annotations

import hashlib
import io
import os
from typing import Any
from urllib.parse import urlsplit

import pytest
import requests
from botocore.exceptions import ClientError
from django.core.files.storage import storages

from starkeep_sync.adapters import DjangoObjectStorage
from starkeep_sync.core.blobs import HashingReader
from starkeep_sync.core.exceptions import BlobIntegrityError
from starkeep_sync.models import Blob
from tests.factories import make_user
from tests.s3.conftest import STORAGE_ALIAS, MotoS3

pytestmark = pytest.mark.django_db


def sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def drive_key(data: bytes) -> str:
    h = sha(data)
    return f"shared/image/{h[:2]}/{h}"


def head(moto_s3: MotoS3, bucket: str, object_key: str) -> dict[str, Any] | None:
    try:
        return moto_s3.client.head_object(Bucket=bucket, Key=object_key)  # type: ignore[no-any-return]
    except ClientError as err:
        if err.response["ResponseMetadata"]["HTTPStatusCode"] == 404:
            return None
        raise


def body_of(moto_s3: MotoS3, bucket: str, object_key: str) -> bytes:
    return moto_s3.client.get_object(Bucket=bucket, Key=object_key)["Body"].read()  # type: ignore[no-any-return]


def test_the_blob_storage_is_a_real_s3_storage(s3_bucket: str, moto_s3: MotoS3) -> None:
    storage = DjangoObjectStorage(make_user("alice"))
    from storages.backends.s3 import S3Storage

    assert isinstance(storage.storage, S3Storage)
    assert storage.storage is storages[STORAGE_ALIAS]
    assert storage.storage.bucket_name == s3_bucket
    assert storage.storage.endpoint_url == moto_s3.endpoint_url
    assert urlsplit(moto_s3.endpoint_url).hostname == "127.0.0.1"


def test_round_trip_under_the_owner_prefix(s3_bucket: str, moto_s3: MotoS3) -> None:
    alice = make_user("alice")
    storage = DjangoObjectStorage(alice)
    data = b"\x89PNG" + os.urandom(3000)
    key = drive_key(data)
    object_key = f"starkeep/{alice.pk}/{key}"

    assert storage.has(key) is False
    assert storage.put(key, data, "image/png") == sha(data)

    assert moto_s3.object_keys(s3_bucket) == [object_key]
    meta = head(moto_s3, s3_bucket, object_key)
    assert meta is not None and meta["ContentType"] == "image/png" and meta["ContentLength"] == len(data)
    assert body_of(moto_s3, s3_bucket, object_key) == data

    assert storage.has(key) is True
    assert storage.size(key) == len(data)
    got = storage.get(key)
    assert got is not None
    assert (got.data, got.content_type, got.size) == (data, "image/png", len(data))
    row = Blob.objects.get(owner=alice, key=key)
    assert (row.size_bytes, row.sha256, row.content_type) == (len(data), sha(data), "image/png")

    stream = storage.open(key)
    assert stream is not None
    try:
        parts = []
        while chunk := stream.read(1000):
            assert len(chunk) <= 1000
            parts.append(chunk)
    finally:
        stream.close()
    assert b"".join(parts) == data
    assert getattr(stream, "content_type", None) == "image/png"

    storage.delete(key)
    assert storage.has(key) is False
    assert storage.get(key) is None and storage.open(key) is None
    assert head(moto_s3, s3_bucket, object_key) is None
    assert moto_s3.object_keys(s3_bucket) == []
    assert not Blob.objects.filter(owner=alice, key=key).exists()


def test_overwrite_replaces_the_object_in_place(s3_bucket: str, moto_s3: MotoS3) -> None:
    alice = make_user("alice")
    storage = DjangoObjectStorage(alice)
    key = f"apps/notes/syncable/{'a' * 10}"  # not a hash: any bytes may be stored under it
    storage.put(key, b"first", "text/plain")
    storage.put(key, b"second version", "application/json")
    assert moto_s3.object_keys(s3_bucket) == [f"starkeep/{alice.pk}/{key}"]
    got = storage.get(key)
    assert got is not None and (got.data, got.content_type) == (b"second version", "application/json")


def test_a_streamed_multipart_sized_put_round_trips(s3_bucket: str, moto_s3: MotoS3, tmp_path: Any) -> None:
    """Above boto3's 8 MiB multipart threshold, from a stream, read back in chunks."""
    alice = make_user("alice")
    storage = DjangoObjectStorage(alice)
    data = os.urandom(9 * 1024 * 1024 + 123)
    key = drive_key(data)
    path = tmp_path / "blob"
    path.write_bytes(data)
    with open(path, "rb") as source:
        assert storage.put(key, HashingReader(source, sha(data)), None) == sha(data)  # type: ignore[arg-type]
    meta = head(moto_s3, s3_bucket, f"starkeep/{alice.pk}/{key}")
    assert meta is not None and meta["ContentLength"] == len(data)
    assert meta["ContentType"] == "application/octet-stream"  # S3Storage's default; no extension to guess from
    stream = storage.open(key)
    assert stream is not None
    digest = hashlib.sha256()
    with stream:
        while chunk := stream.read(1024 * 1024):
            digest.update(chunk)
    assert digest.hexdigest() == sha(data)


def test_two_owners_with_the_same_key_see_separate_objects(s3_bucket: str, moto_s3: MotoS3) -> None:
    alice, bob = make_user("alice"), make_user("bob")
    key = "apps/notes/syncable/shared-name"
    DjangoObjectStorage(alice).put(key, b"alice's bytes", "text/plain")
    assert DjangoObjectStorage(bob).has(key) is False
    assert DjangoObjectStorage(bob).get(key) is None
    DjangoObjectStorage(bob).put(key, b"bob's bytes", "text/markdown")

    assert moto_s3.object_keys(s3_bucket) == sorted([f"starkeep/{alice.pk}/{key}", f"starkeep/{bob.pk}/{key}"])
    a, b = DjangoObjectStorage(alice).get(key), DjangoObjectStorage(bob).get(key)
    assert a is not None and (a.data, a.content_type) == (b"alice's bytes", "text/plain")
    assert b is not None and (b.data, b.content_type) == (b"bob's bytes", "text/markdown")

    DjangoObjectStorage(bob).delete(key)
    assert DjangoObjectStorage(alice).has(key) is True
    assert moto_s3.object_keys(s3_bucket) == [f"starkeep/{alice.pk}/{key}"]


def test_an_integrity_mismatch_stores_nothing(s3_bucket: str, moto_s3: MotoS3) -> None:
    alice = make_user("alice")
    storage = DjangoObjectStorage(alice)
    good = b"the real bytes" * 1000
    key = drive_key(good)
    with pytest.raises(BlobIntegrityError):
        storage.put(key, HashingReader(io.BytesIO(b"tampered" * 1000), sha(good)))  # type: ignore[arg-type]
    assert moto_s3.object_keys(s3_bucket) == []
    assert storage.has(key) is False
    assert not Blob.objects.filter(owner=alice).exists()

    # A bad second upload leaves the good object untouched.
    storage.put(key, good, "image/jpeg")
    with pytest.raises(BlobIntegrityError):
        storage.put(key, HashingReader(io.BytesIO(b"tampered"), sha(good)))  # type: ignore[arg-type]
    assert body_of(moto_s3, s3_bucket, f"starkeep/{alice.pk}/{key}") == good
    assert Blob.objects.get(owner=alice, key=key).sha256 == sha(good)


def test_missing_keys(s3_bucket: str, moto_s3: MotoS3) -> None:
    storage = DjangoObjectStorage(make_user("alice"))
    key = drive_key(b"never stored")
    assert storage.has(key) is False
    assert storage.open(key) is None
    assert storage.get(key) is None
    storage.delete(key)  # absent is not an error
    with pytest.raises(FileNotFoundError):
        storage.size(key)
    assert moto_s3.object_keys(s3_bucket) == []


def test_presigned_put_and_get_urls_work_with_plain_requests(s3_bucket: str, moto_s3: MotoS3) -> None:
    alice = make_user("alice")
    storage = DjangoObjectStorage(alice)
    data = os.urandom(5000)
    key = drive_key(data)
    object_key = f"starkeep/{alice.pk}/{key}"
    endpoint = urlsplit(moto_s3.endpoint_url)

    put_url = storage.url(key, method="PUT", content_type="image/webp")
    assert put_url is not None
    parts = urlsplit(put_url)
    assert (parts.scheme, parts.netloc) == (endpoint.scheme, endpoint.netloc)
    assert parts.path == f"/{s3_bucket}/{object_key}"
    assert parts.query  # the signature travels in the query string

    response = requests.put(put_url, data=data, headers={"Content-Type": "image/webp"}, timeout=30)
    assert response.status_code == 200, response.text
    meta = head(moto_s3, s3_bucket, object_key)
    assert meta is not None and meta["ContentType"] == "image/webp" and meta["ContentLength"] == len(data)
    assert storage.has(key)

    get_url = storage.url(key, method="GET")
    assert get_url is not None
    parts = urlsplit(get_url)
    assert (parts.netloc, parts.path) == (endpoint.netloc, f"/{s3_bucket}/{object_key}")
    response = requests.get(get_url, timeout=30)
    assert response.status_code == 200
    assert response.content == data
    assert response.headers["Content-Type"] == "image/webp"

    # Another owner's URL for the same key addresses another object, which is absent.
    bob = make_user("bob")
    other = DjangoObjectStorage(bob).url(key, method="GET")
    assert other is not None and f"/starkeep/{bob.pk}/" in urlsplit(other).path
    assert requests.get(other, timeout=30).status_code == 404


def test_a_file_system_storage_has_no_presigned_urls(s3_bucket: str, settings: Any) -> None:
    settings.STARKEEP_SYNC = {**settings.STARKEEP_SYNC, "STORAGE_ALIAS": "default"}
    storage = DjangoObjectStorage(make_user("alice"))
    assert storage.url(drive_key(b"x"), method="PUT") is None
    assert storage.url(drive_key(b"x")) is None


def test_the_backend_location_prefixes_every_object_key(s3_bucket: str, moto_s3: MotoS3, settings: Any) -> None:
    """put, open, has and presigned URLs agree on the key S3Storage writes (location + owner prefix)."""
    settings.STORAGES = moto_s3.storages_setting(s3_bucket, location="tenant-a")
    alice = make_user("alice")
    storage = DjangoObjectStorage(alice)
    data = os.urandom(2000)
    key = drive_key(data)
    object_key = f"tenant-a/starkeep/{alice.pk}/{key}"
    storage.put(key, data, "image/gif")
    assert moto_s3.object_keys(s3_bucket) == [object_key]
    assert storage.has(key)
    stream = storage.open(key)
    assert stream is not None
    with stream:
        assert stream.read() == data
    get_url = storage.url(key)
    assert get_url is not None and urlsplit(get_url).path == f"/{s3_bucket}/{object_key}"
    assert requests.get(get_url, timeout=30).content == data
    put_url = storage.url(key, method="PUT", content_type="image/gif")
    assert put_url is not None and urlsplit(put_url).path == f"/{s3_bucket}/{object_key}"


def test_gzipped_objects_are_read_back_decompressed(s3_bucket: str, moto_s3: MotoS3, settings: Any) -> None:
    """With S3Storage's ``gzip`` on, its own save/open compress and decompress: the bytes read are those stored."""
    settings.STORAGES = moto_s3.storages_setting(s3_bucket, gzip=True)
    alice = make_user("alice")
    storage = DjangoObjectStorage(alice)
    data = b"<svg xmlns='http://www.w3.org/2000/svg'>" + b"<rect/>" * 5000 + b"</svg>"
    key = drive_key(data)
    storage.put(key, data, "image/svg+xml")
    meta = head(moto_s3, s3_bucket, f"starkeep/{alice.pk}/{key}")
    assert meta is not None and meta.get("ContentEncoding") == "gzip" and meta["ContentLength"] < len(data)
    stream = storage.open(key)
    assert stream is not None
    reader = HashingReader(stream, sha(data))  # type: ignore[arg-type]
    with stream:
        assert reader.read() == data
    got = storage.get(key)
    assert got is not None and got.data == data and got.content_type == "image/svg+xml"
