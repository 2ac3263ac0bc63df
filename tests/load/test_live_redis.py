"""The Redis wake-up path (``LIVE_WAKEUP = "redis"``), in process: a write publishes after commit, this
process's Redis listener wakes the waiter. Tier 2 (Redis on 127.0.0.1); keys live under a prefix of
their own and are deleted afterwards."""

from __future__ import annotations

import asyncio
import random
import secrets
import time
from collections.abc import Iterator
from typing import Any

import pytest
from django.core.cache import caches
from django.test import AsyncClient

from starkeep_sync.live import hub, wakeup_mode
from tests.django.test_live_changes import DRIVE, cursor_of, poll, put_record, run, until_waiting
from tests.factories import make_token, make_user
from tests.load.conftest import REDIS_URL, delete_cache_keys

pytestmark = pytest.mark.django_db(transaction=True)


@pytest.fixture
def redis_wakeups(settings: Any) -> Iterator[None]:
    import redis

    prefix = f"starkeep-live-{secrets.token_hex(4)}"
    settings.CACHES = {"default": {"BACKEND": "django.core.cache.backends.redis.RedisCache",
                                   "LOCATION": REDIS_URL, "KEY_PREFIX": prefix}}
    settings.STARKEEP_SYNC = {**settings.STARKEEP_SYNC, "LIVE_WAKEUP": "redis"}
    try:
        yield
    finally:
        hub.stop_listener()
        caches["default"].close()
        client = redis.Redis.from_url(REDIS_URL)
        delete_cache_keys(client, prefix)
        client.close()


def test_a_write_wakes_the_waiter_through_redis(redis_wakeups: None) -> None:
    alice, bob = make_user("alice"), make_user("bob")
    token = make_token(alice)
    assert wakeup_mode() == "redis"

    async def main() -> None:
        client = AsyncClient()
        cursor = await cursor_of(client, DRIVE, token)
        waiting = asyncio.create_task(poll(client, DRIVE, token, cursor=cursor, timeout=0.8))
        await until_waiting()
        await put_record(bob, type="text/plain")  # another owner: published, but not for this waiter
        assert await waiting == (200, {"changed": False, "cursor": cursor})
        assert hub.listening

        rng = random.Random(3)
        for i in range(100):
            cursor = await cursor_of(client, DRIVE, token)
            waiting = asyncio.create_task(poll(client, DRIVE, token, cursor=cursor, timeout=10))
            for _ in range(rng.randrange(0, 6)):
                await asyncio.sleep(0)
            started = time.monotonic()
            await put_record(alice, type="text/plain", label=f"{i}")
            status, data = await waiting
            assert status == 200 and data["changed"] is True, (i, data)
            assert time.monotonic() - started < 1.0, i

    run(main)


def test_the_waiter_cap_is_shared_through_redis(redis_wakeups: None, settings: Any) -> None:
    """Slots live in Redis: a waiter held by another worker (another process's key) counts here."""
    settings.STARKEEP_SYNC = {**settings.STARKEEP_SYNC, "LIVE_MAX_WAITERS_PER_OWNER": 1}
    alice = make_user("alice")
    token = make_token(alice)

    async def main() -> None:
        client = AsyncClient()
        cursor = await cursor_of(client, DRIVE, token)
        caches["default"].set(f"starkeep_sync:live:{alice.pk}:0", "another worker", timeout=30)
        response = await client.get(DRIVE, {"cursor": cursor, "timeout": "5"}, headers={
            "Authorization": f"Bearer {token}"})
        assert response.status_code == 429 and int(response["Retry-After"]) >= 1

    run(main)
