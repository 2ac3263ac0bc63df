"""Storage faults are errors, not crashes: a full disk is 507, an unreachable storage 503, nothing half stored.

The full-disk tests mount a real 2 MiB tmpfs (they need root and a kernel that
allows the mount, and skip with that reason otherwise); the fault-injection
tests below run everywhere, with a storage whose writes raise.
"""

from __future__ import annotations

import errno
import hashlib
import os
import subprocess
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from botocore.exceptions import EndpointConnectionError
from django.core.files.storage import FileSystemStorage
from rest_framework.test import APIClient

from starkeep_sync import HLCClock, create_data_record, create_sync_engine, shared_object_key
from starkeep_sync.client import HttpObjectStorage, create_http_sync_transport
from starkeep_sync.device.memory import MemoryDatabaseAdapter, MemoryObjectStorage
from starkeep_sync.models import Blob
from tests.factories import make_token, make_user

from .support import assert_error, bearer, drive_key, put_blob

MIB = 1024 * 1024


def storages_at(location: str, backend: str = "django.core.files.storage.FileSystemStorage") -> dict[str, Any]:
    return {
        "default": {"BACKEND": backend, "OPTIONS": {"location": location}},
        "staticfiles": {"BACKEND": "django.contrib.staticfiles.storage.StaticFilesStorage"},
    }


def files_under(root: Path) -> list[Path]:
    return [p for p in root.rglob("*") if p.is_file()]


@pytest.fixture
def full_disk(tmp_path: Path, settings: Any) -> Iterator[Path]:
    """A 2 MiB tmpfs as the blob storage's location, unmounted afterwards."""
    mount = tmp_path / "tiny"
    mount.mkdir()
    done = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=2m", "tmpfs", str(mount)],
                          capture_output=True, text=True)
    if done.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here ({done.stderr.strip()}); the fault-injection tests cover the logic")
    try:
        settings.STORAGES = storages_at(str(mount))
        yield mount
    finally:
        subprocess.run(["umount", "-l", str(mount)], check=True)


@pytest.mark.django_db
def test_an_upload_larger_than_the_free_space_is_507_and_leaves_nothing(
        full_disk: Path, api: APIClient, alice_token: str) -> None:
    data = os.urandom(3 * MIB)
    response = put_blob(api, f"/files/{drive_key(data)}", data, bearer(alice_token))
    err = assert_error(response, 507, "insufficient_storage")
    assert "full" in err["message"] and "Errno" not in err["message"]  # no server internals in the body
    assert files_under(full_disk) == []  # no blob, no .upload-* temp file
    assert not Blob.objects.exists()
    # The storage still works for what fits.
    small = b"fits"
    assert put_blob(api, f"/files/{drive_key(small)}", small, bearer(alice_token)).status_code in (200, 201, 204)
    assert [p.name for p in files_under(full_disk)] == [hashlib.sha256(small).hexdigest()]


@pytest.mark.django_db(transaction=True)
def test_a_device_sees_why_its_push_failed(full_disk: Path, live_server: Any) -> None:
    token = make_token(make_user("phone-owner"))
    data = os.urandom(3 * MIB)
    digest = hashlib.sha256(data).hexdigest()
    key = shared_object_key("video/mp4", digest)
    local_db, local_storage = MemoryDatabaseAdapter(), MemoryObjectStorage()
    local_storage.put(key, data, "video/mp4")
    clock = HLCClock("phone")
    local_db.put(create_data_record(clock, type="video/mp4", origin_app_id="t", content_hash=digest,
                                    object_storage_key=key, size_bytes=len(data), id="v1"))
    base = f"{live_server.url}/apps/starkeep-drive"
    engine = create_sync_engine(
        local_database=local_db, local_storage=local_storage, clock=clock,
        remote_storage=HttpObjectStorage(base, auth=token),
        transport=create_http_sync_transport(base_url=base, auth=token),
    )
    result = engine.exchange()
    assert result.shipped == 0 and result.failed_pushes  # the record waits for its blob
    failure = engine.blob_failures[key]
    assert failure.direction == "push"
    assert "blob storage is full" in failure.last_error and "HTTP 507" in failure.last_error
    assert files_under(full_disk) == []


# -- fault injection: a storage whose writes raise ------------------------------------------------


class FailingStorage(FileSystemStorage):
    """Saves through ``save()`` (not the adapter's rename path), and fails with ``error``."""

    error: BaseException | None = None

    def _save(self, name: str, content: Any) -> str:
        if FailingStorage.error is not None:
            raise FailingStorage.error
        return super()._save(name, content)


@pytest.fixture
def failing(tmp_path: Path, settings: Any, monkeypatch: pytest.MonkeyPatch) -> Iterator[Path]:
    """The blob storage is a :class:`FailingStorage`; spooled temp files go to a directory of this test."""
    spool = tmp_path / "spool"
    spool.mkdir()
    monkeypatch.setattr(tempfile, "tempdir", str(spool))
    settings.STORAGES = storages_at(str(tmp_path / "blobs"), f"{__name__}.FailingStorage")
    yield spool
    FailingStorage.error = None


@pytest.mark.django_db
@pytest.mark.parametrize("error", [OSError(errno.ENOSPC, "No space left on device"),
                                   OSError(errno.EDQUOT, "Disk quota exceeded")])
def test_no_space_is_507(failing: Path, api: APIClient, alice_token: str, error: OSError) -> None:
    FailingStorage.error = error
    data = b"x" * 5000
    response = put_blob(api, f"/files/{drive_key(data)}", data, bearer(alice_token))
    assert_error(response, 507, "insufficient_storage")
    assert "Retry-After" not in response  # waiting does not free disk space
    assert files_under(failing) == [] and not Blob.objects.exists()


@pytest.mark.django_db
@pytest.mark.parametrize("error", [
    OSError(errno.EIO, "Input/output error"),
    PermissionError(errno.EACCES, "Permission denied"),
    EndpointConnectionError(endpoint_url="http://127.0.0.1:9/bucket"),
])
def test_other_storage_failures_are_503_with_retry_after(
        failing: Path, api: APIClient, alice_token: str, error: BaseException) -> None:
    FailingStorage.error = error
    data = b"y" * 5000
    response = put_blob(api, f"/files/{drive_key(data)}", data, bearer(alice_token))
    err = assert_error(response, 503, "storage_unavailable")
    assert int(response["Retry-After"]) > 0
    assert "127.0.0.1:9" not in err["message"]  # the storage's address stays in the server log
    assert files_under(failing) == [] and not Blob.objects.exists()


@pytest.mark.django_db
def test_a_storage_out_of_reach_on_head_is_503(api: APIClient, alice_token: str,
                                                monkeypatch: pytest.MonkeyPatch) -> None:
    def unreachable(self: FileSystemStorage, name: str) -> bool:
        raise EndpointConnectionError(endpoint_url="http://127.0.0.1:9/bucket")

    monkeypatch.setattr(FileSystemStorage, "exists", unreachable)
    response = api.head(f"/files/{drive_key(b'z')}", headers=bearer(alice_token))
    assert response.status_code == 503 and int(response["Retry-After"]) > 0


@pytest.mark.django_db
def test_a_full_disk_outside_the_blob_adapter_is_507_too(api: APIClient, alice_token: str,
                                                         monkeypatch: pytest.MonkeyPatch) -> None:
    """The handler maps a stray ENOSPC (a spool file, a log) to the same 507, not an HTML 500."""
    from starkeep_sync.models.records import BlobManager

    def disk_full(*args: Any, **kwargs: Any) -> Any:
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(BlobManager, "record", disk_full)  # past the adapter's own guards
    data = b"w" * 100
    assert_error(put_blob(api, f"/files/{drive_key(data)}", data, bearer(alice_token)), 507, "insufficient_storage")


@pytest.mark.django_db
def test_a_failing_disk_on_get_is_503_not_a_missing_blob(api: APIClient, alice_token: str,
                                                          monkeypatch: pytest.MonkeyPatch) -> None:
    key = drive_key(b"held")
    assert put_blob(api, f"/files/{key}", b"held", bearer(alice_token)).status_code == 201

    def broken(self: FileSystemStorage, name: str, mode: str = "rb") -> Any:
        raise OSError(errno.EIO, "Input/output error")

    monkeypatch.setattr(FileSystemStorage, "open", broken)
    assert_error(api.get(f"/files/{key}", headers=bearer(alice_token)), 503, "storage_unavailable")
    monkeypatch.undo()
    assert api.get(f"/files/{key}", headers=bearer(alice_token)).status_code == 200
