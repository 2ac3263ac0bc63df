"""The real-S3-protocol storage tier: django-storages' S3Storage against moto's server on loopback.

One moto server per session (``moto_s3``); each test gets a bucket of its own
(``s3_bucket``), because owner primary keys repeat across rolled-back tests and
would otherwise meet each other's objects under ``starkeep/<owner pk>/``.
Credentials are dummies and ``AWS_CONFIG_FILE`` / ``AWS_SHARED_CREDENTIALS_FILE``
point at a path that does not exist, so no real credentials are ever read, and
every endpoint is ``127.0.0.1``. If moto cannot start, the tests error: they never skip.
"""

from __future__ import annotations

import itertools
import logging
import threading
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import boto3
import pytest
from moto.server import ThreadedMotoServer

ACCESS_KEY = "starkeep-test-access"
SECRET_KEY = "starkeep-test-secret"
REGION = "us-east-1"
SESSION_BUCKET = "starkeep-session"
STORAGE_ALIAS = "s3"
_bucket_numbers = itertools.count(1)


class LoopbackMotoServer(ThreadedMotoServer):
    """``ThreadedMotoServer`` whose start fails loudly instead of waiting forever.

    ``ThreadedMotoServer.start()`` waits, without a timeout, for a server thread
    that may have died binding its socket; here it runs on a helper thread that
    is given ``timeout`` seconds.
    """

    def start(self, timeout: float = 30.0) -> None:  # type: ignore[override]
        errors: list[BaseException] = []

        def run() -> None:
            try:
                super(LoopbackMotoServer, self).start()
            except BaseException as err:  # pragma: no cover - only when moto is broken
                errors.append(err)

        starter = threading.Thread(target=run, daemon=True)
        starter.start()
        starter.join(timeout)
        if errors:
            raise RuntimeError(f"moto's S3 server failed to start: {errors[0]!r}") from errors[0]
        if starter.is_alive() or self._server is None:
            raise RuntimeError(f"moto's S3 server did not start within {timeout} s")


@dataclass
class MotoS3:
    """The running moto server and what a test needs to reach it."""

    endpoint_url: str
    client: Any  # a boto3 S3 client on the moto endpoint
    bucket: str = SESSION_BUCKET
    buckets: list[str] = field(default_factory=list)

    def storage_options(self, bucket: str | None = None, **overrides: Any) -> dict[str, Any]:
        """``OPTIONS`` of a ``storages.backends.s3.S3Storage`` alias on ``bucket``."""
        return {**self._base_options(bucket), **overrides}

    def _base_options(self, bucket: str | None) -> dict[str, Any]:
        return {
            "bucket_name": bucket or self.bucket,
            "endpoint_url": self.endpoint_url,
            "region_name": REGION,
            "access_key": ACCESS_KEY,
            "secret_key": SECRET_KEY,
            "addressing_style": "path",
            "file_overwrite": True,
            "querystring_auth": True,
        }

    def storages_setting(self, bucket: str | None = None, media_root: str | None = None,
                         **overrides: Any) -> dict[str, Any]:
        """A whole ``STORAGES`` setting: file-system ``default``, S3 ``s3``, static files."""
        default: dict[str, Any] = {"BACKEND": "django.core.files.storage.FileSystemStorage"}
        if media_root is not None:
            default["OPTIONS"] = {"location": media_root}
        return {
            "default": default,
            STORAGE_ALIAS: {
                "BACKEND": "storages.backends.s3.S3Storage",
                "OPTIONS": self.storage_options(bucket, **overrides),
            },
            "staticfiles": {"BACKEND": "django.contrib.staticfiles.storage.StaticFilesStorage"},
        }

    def new_bucket(self) -> str:
        name = f"starkeep-test-{next(_bucket_numbers)}"
        self.client.create_bucket(Bucket=name)
        self.buckets.append(name)
        return name

    def empty(self, bucket: str) -> None:
        """Delete every object of ``bucket`` (moto keeps them in this process)."""
        for key in self.object_keys(bucket):
            self.client.delete_object(Bucket=bucket, Key=key)

    def object_keys(self, bucket: str) -> list[str]:
        pages = self.client.get_paginator("list_objects_v2").paginate(Bucket=bucket)
        return sorted(obj["Key"] for page in pages for obj in page.get("Contents", []))


@pytest.fixture(scope="session")
def moto_s3(tmp_path_factory: pytest.TempPathFactory) -> Iterator[MotoS3]:
    """moto's S3 server on 127.0.0.1 (free port) with a bucket, for the whole session."""
    nowhere = str(tmp_path_factory.mktemp("aws") / "does-not-exist")
    assert not Path(nowhere).exists()
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("AWS_ACCESS_KEY_ID", ACCESS_KEY)
        mp.setenv("AWS_SECRET_ACCESS_KEY", SECRET_KEY)
        mp.setenv("AWS_DEFAULT_REGION", REGION)
        mp.setenv("AWS_CONFIG_FILE", nowhere)
        mp.setenv("AWS_SHARED_CREDENTIALS_FILE", nowhere)
        for var in ("AWS_PROFILE", "AWS_SESSION_TOKEN", "AWS_ENDPOINT_URL", "AWS_ENDPOINT_URL_S3"):
            mp.delenv(var, raising=False)
        mp.setenv("NO_PROXY", "127.0.0.1,localhost")  # loopback only, never through a proxy
        logging.getLogger("werkzeug").setLevel(logging.WARNING)  # moto's per-request log lines

        server = LoopbackMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
        server.start()
        try:
            host, port = server.get_host_and_port()
            assert host == "127.0.0.1", host
            endpoint = f"http://{host}:{port}"
            client = boto3.client(
                "s3", endpoint_url=endpoint, region_name=REGION,
                aws_access_key_id=ACCESS_KEY, aws_secret_access_key=SECRET_KEY,
            )
            client.create_bucket(Bucket=SESSION_BUCKET)
            assert SESSION_BUCKET in {b["Name"] for b in client.list_buckets()["Buckets"]}
            yield MotoS3(endpoint, client)
        finally:
            server.stop()


@pytest.fixture
def s3_bucket(moto_s3: MotoS3, settings: Any, tmp_path: Path) -> Iterator[str]:
    """A fresh bucket, made the app's blob storage (``STORAGE_ALIAS = "s3"``) for this test."""
    bucket = moto_s3.new_bucket()
    settings.STORAGES = moto_s3.storages_setting(bucket, media_root=str(tmp_path / "media"))
    settings.STARKEEP_SYNC = {**settings.STARKEEP_SYNC, "STORAGE_ALIAS": STORAGE_ALIAS}
    from django.core.cache import caches

    for cache in caches.all():  # no remembered signatures or throttle counts from other tests
        cache.clear()
    yield bucket
    moto_s3.empty(bucket)
