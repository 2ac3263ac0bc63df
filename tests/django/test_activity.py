"""The per-channel activity counter behind ``starkeep_status``: every exchange counts, the last refusal is kept."""

from __future__ import annotations

from typing import Any

import pytest
from rest_framework.test import APIClient

from starkeep_sync.models import ChannelActivity

from .support import BASE_MS, bearer, body, exchange, exchange_ok, now_ms, record

pytestmark = pytest.mark.django_db

URL = "/sync/exchange"
TWO_DAYS_MS = 2 * 86_400_000


def test_exchanges_are_counted_and_the_last_refusal_is_kept(api: APIClient, alice: Any, bob: Any,
                                                            alice_token: str) -> None:
    exchange_ok(exchange(api, URL, body(records=[record("r1", BASE_MS)]), bearer(alice_token)))
    activity = ChannelActivity.objects.get(owner=alice, channel="starkeep-drive")
    assert (activity.exchanges, activity.last_error, activity.last_error_at) == (1, "", None)
    first_seen = activity.last_exchange_at
    assert first_seen is not None

    ahead = record("r2", now_ms() + TWO_DAYS_MS, "skewed")  # past the clock-skew bound: refused
    exchange_ok(exchange(api, URL, body(records=[ahead]), bearer(alice_token)))
    activity.refresh_from_db()
    assert activity.exchanges == 2
    assert activity.last_error.startswith("record r2 from node skewed:")
    assert activity.last_error_at is not None and activity.last_exchange_at >= first_seen

    exchange_ok(exchange(api, URL, body(), bearer(alice_token)))
    activity.refresh_from_db()
    assert activity.exchanges == 3 and activity.last_error.startswith("record r2")  # kept until the next refusal
    assert not ChannelActivity.objects.filter(owner=bob).exists()
