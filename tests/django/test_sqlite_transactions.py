"""On SQLite, an exchange that writes is one transaction: one commit, and nothing kept if the request fails."""

from __future__ import annotations

from typing import Any

import pytest
from django.db import connection
from django.db.backends.base.base import BaseDatabaseWrapper
from rest_framework.test import APIClient

from starkeep_sync.core.responder import SyncResponder
from starkeep_sync.models import ChannelActivity, NodeCoverage, SharedRecord

from .support import BASE_MS, bearer, body, exchange, exchange_ok, record

pytestmark = pytest.mark.django_db(transaction=True)

URL = "/sync/exchange"


@pytest.fixture(autouse=True)
def _sqlite_only() -> None:
    if connection.vendor != "sqlite":
        pytest.skip("SQLite only: PostgreSQL answers from its own REPEATABLE READ snapshot, a second transaction")


def count_commits(monkeypatch: Any) -> list[str]:
    commits: list[str] = []
    original = BaseDatabaseWrapper.commit

    def counting(self: Any) -> None:
        commits.append(self.alias)
        original(self)

    monkeypatch.setattr(BaseDatabaseWrapper, "commit", counting)
    return commits


def test_a_push_commits_its_records_coverage_and_activity_once(
        api: APIClient, alice: Any, alice_token: str, monkeypatch: Any) -> None:
    exchange_ok(exchange(api, URL, body(records=[record("warm", BASE_MS)]), bearer(alice_token)))
    commits = count_commits(monkeypatch)
    records = [record(f"r{i:03d}", BASE_MS + 1 + i) for i in range(700)]
    exchange_ok(exchange(api, URL, body(records=records), bearer(alice_token)))
    assert commits == ["default"]
    assert SharedRecord.objects.filter(owner=alice).count() == 701
    assert ChannelActivity.objects.get(owner=alice).exchanges == 2
    # A round that only reads keeps its own read-only snapshot (no write transaction to join).
    del commits[:]
    exchange_ok(exchange(api, URL, body(), bearer(alice_token)))
    assert commits == ["default"]
    assert ChannelActivity.objects.get(owner=alice).exchanges == 3


def test_a_push_whose_answer_fails_keeps_nothing(api: APIClient, alice: Any, alice_token: str,
                                                 monkeypatch: Any) -> None:
    def broken(*args: Any, **kwargs: Any) -> Any:
        raise RuntimeError("the answer could not be read")

    monkeypatch.setattr(SyncResponder, "_answer", broken)
    api.raise_request_exception = False
    response = exchange(api, URL, body(records=[record("r1", BASE_MS)]), bearer(alice_token))
    assert response.status_code == 500
    # The device saw no answer and will send the record again; the server holds none of it.
    assert not SharedRecord.objects.exists()
    assert not NodeCoverage.objects.exists()
    assert not ChannelActivity.objects.filter(exchanges__gt=0).exists()
