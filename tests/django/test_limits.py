"""Rate limits (429 + Retry-After, honoured by the client) and per-owner quotas (507, nothing stored)."""

from __future__ import annotations

from typing import Any

import pytest
from rest_framework.test import APIClient

from starkeep_sync.core.exceptions import SyncTransportError
from starkeep_sync.device.supervisor import Backoff, SyncSupervisor
from starkeep_sync.models import Blob, SharedRecord
from tests.django.support import (
    BASE_MS,
    assert_error,
    bearer,
    body,
    drive_key,
    exchange,
    put_blob,
    record,
)

pytestmark = pytest.mark.django_db

RATES = {"exchange": "3/min", "files": "2/min", "health": "2/min"}


def limits(settings: Any, **extra: Any) -> None:
    settings.STARKEEP_SYNC = {"NODE_ID": "cloud", "THROTTLE_RATES": RATES, **extra}


def test_exchange_is_throttled_per_owner_with_retry_after(settings: Any, api: APIClient, alice_token: str,
                                                         bob_token: str) -> None:
    limits(settings)
    for _ in range(3):
        assert exchange(api, "/sync/exchange", body(), bearer(alice_token)).status_code == 200
    refused = exchange(api, "/sync/exchange", body(), bearer(alice_token))
    assert_error(refused, 429, "throttled")
    assert 1 <= int(refused["Retry-After"]) <= 60
    # Another owner has their own budget.
    assert exchange(api, "/sync/exchange", body(), bearer(bob_token)).status_code == 200


def test_files_and_health_are_throttled(settings: Any, api: APIClient, alice_token: str) -> None:
    limits(settings)
    data = b"x"
    url = f"/files/{drive_key(data)}"
    assert api.head(url, headers=bearer(alice_token)).status_code == 404
    assert api.head(url, headers=bearer(alice_token)).status_code == 404
    assert api.head(url, headers=bearer(alice_token)).status_code == 429
    assert api.get("/health").status_code == 200
    assert api.get("/health").status_code == 200
    assert_error(api.get("/health"), 429, "throttled")


def test_default_rates_are_on(settings: Any) -> None:
    from starkeep_sync.conf import DEFAULTS

    assert all(DEFAULTS["THROTTLE_RATES"][scope] for scope in ("exchange", "files", "health"))


def test_client_error_carries_retry_after_and_backoff_honours_it(live_server: Any, settings: Any,
                                                                 alice_token: str, transactional_db: None) -> None:
    limits(settings)
    from starkeep_sync.client import create_http_sync_transport
    from starkeep_sync.core.wire import SyncExchangeRequest

    transport = create_http_sync_transport(base_url=f"{live_server.url}/apps/starkeep-drive", auth=alice_token)
    for _ in range(3):
        transport.exchange(SyncExchangeRequest())
    with pytest.raises(SyncTransportError) as caught:
        transport.exchange(SyncExchangeRequest())
    err = caught.value
    assert err.status == 429 and err.retry_after is not None and err.retry_after >= 1

    class Engine:
        def exchange(self) -> Any:
            return transport.exchange(SyncExchangeRequest())

    delay = SyncSupervisor(Engine(), backoff=Backoff(base=0.01, jitter=0)).run_cycle()  # type: ignore[arg-type]
    assert delay >= err.retry_after - 1  # waits as the server asked, not 10 ms


def test_blob_quota_refuses_with_507_and_stores_nothing(settings: Any, api: APIClient, alice: Any,
                                                       alice_token: str) -> None:
    settings.STARKEEP_SYNC = {"NODE_ID": "cloud", "THROTTLE_RATES": {}, "QUOTA_BLOB_BYTES": 10}
    small, big = b"123456", b"abcdefgh"
    assert put_blob(api, f"/files/{drive_key(small)}", small, bearer(alice_token)).status_code == 201
    refused = put_blob(api, f"/files/{drive_key(big)}", big, bearer(alice_token))
    assert_error(refused, 507, "quota_exceeded")
    assert api.head(f"/files/{drive_key(big)}", headers=bearer(alice_token)).status_code == 404
    assert list(Blob.objects.filter(owner=alice).values_list("size_bytes", flat=True)) == [6]
    # Replacing the same key does not count its old size twice.
    assert put_blob(api, f"/files/{drive_key(small)}", small, bearer(alice_token)).status_code == 201


def test_record_quota_refuses_the_whole_request(settings: Any, api: APIClient, alice_token: str) -> None:
    settings.STARKEEP_SYNC = {"NODE_ID": "cloud", "THROTTLE_RATES": {}, "QUOTA_RECORDS": 3}
    first = [record(f"r{i}", BASE_MS + i) for i in range(2)]
    assert exchange(api, "/sync/exchange", body(records=first), bearer(alice_token)).status_code == 200
    too_many = [record(f"n{i}", BASE_MS + 10 + i) for i in range(2)]
    refused = exchange(api, "/sync/exchange", body(records=too_many), bearer(alice_token))
    assert_error(refused, 507, "quota_exceeded", "records")
    assert SharedRecord.objects.count() == 2  # nothing of the refused request applied
    # Updating held records is not growth.
    updates = [record(f"r{i}", BASE_MS + 20 + i) for i in range(2)]
    assert exchange(api, "/sync/exchange", body(records=updates), bearer(alice_token)).status_code == 200
    one_more = [record("n0", BASE_MS + 30)]
    assert exchange(api, "/sync/exchange", body(records=one_more), bearer(alice_token)).status_code == 200
