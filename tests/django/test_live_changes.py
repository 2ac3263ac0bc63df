"""``GET sync/changes`` (PROTOCOL §7d): the async view in process, through Django's ASGI handler.

Wake-ups fire on commit, so these tests use real transactions (``transaction=True``).
On SQLite the in-process wake-up is used; the PostgreSQL pass of the suite runs the
same tests over ``LISTEN/NOTIFY`` (the ``auto`` mode picks it there).
"""

from __future__ import annotations

import asyncio
import json
import random
import threading
import time
from collections.abc import Awaitable, Callable, Iterator
from typing import Any

import pytest
from asgiref.sync import async_to_sync, sync_to_async
from django.core.cache import caches
from django.db import connection
from django.test import AsyncClient, Client

from starkeep_sync import server
from starkeep_sync.api.changes import SLOT_GRACE_SECONDS, ChangesView
from starkeep_sync.live import hub
from tests.factories import make_secret, make_token, make_user, register_app

from .support import assert_error, bearer, signed_headers

pytestmark = pytest.mark.django_db(transaction=True)

DRIVE = "/sync/changes"
NOTES = "/apps/notes/sync/changes"


@pytest.fixture(autouse=True)
def _listener_stopped() -> Iterator[None]:
    """The hub's listener (PostgreSQL) holds a connection to the test database: stop it after each test."""
    yield
    hub.stop_listener()


@pytest.fixture
def alice() -> Any:
    return make_user("alice")


@pytest.fixture
def notes() -> Any:
    return register_app("notes", {"notes": ["id"]})


def run(main: Callable[[], Awaitable[Any]]) -> Any:
    return async_to_sync(main)()


async def poll(client: AsyncClient, url: str, token: str, **params: Any) -> tuple[int, dict[str, Any]]:
    response = await client.get(url, {k: v for k, v in params.items() if v is not None}, headers=bearer(token))
    return response.status_code, json.loads(response.content)


async def cursor_of(client: AsyncClient, url: str, token: str) -> str:
    status, data = await poll(client, url, token)
    assert status == 200 and data["changed"] is False, data
    return str(data["cursor"])


async def until_waiting(count: int = 1) -> None:
    """Until ``count`` requests wait in this process's hub (they registered and compared)."""
    deadline = time.monotonic() + 5
    while len(hub) < count:
        assert time.monotonic() < deadline, "the request never started waiting"
        await asyncio.sleep(0.002)


#: See ``_serialized_on_memory_sqlite``.
_memory_db = threading.Lock()


def _written(write: Callable[..., Any]) -> Callable[..., Awaitable[Any]]:
    def call(*args: Any, **kwargs: Any) -> Any:
        if connection.vendor != "sqlite":
            return write(*args, **kwargs)
        with _memory_db:
            return write(*args, **kwargs)

    return sync_to_async(call)


put_record = _written(server.put_record)
put_row = _written(server.put_row)


@pytest.fixture(autouse=True)
def _serialized_on_memory_sqlite(monkeypatch: pytest.MonkeyPatch) -> None:
    """On SQLite the test database lives in memory, shared between threads in shared-cache mode, where a
    table lock fails at once ("database table is locked") instead of waiting as a file database does. The
    view's phases (on the loop's pool under ASGI) and the test's writes then take turns; the interleavings
    that matter, between phases, are kept. PostgreSQL runs them truly at once."""
    if connection.vendor != "sqlite":
        return
    phase = ChangesView._phase

    def serialized(self: Any, *args: Any) -> Any:
        with _memory_db:
            return phase(self, *args)

    monkeypatch.setattr(ChangesView, "_phase", serialized)


def test_without_a_cursor_it_answers_at_once_with_the_current_one(alice: Any) -> None:
    token = make_token(alice)

    async def main() -> None:
        client = AsyncClient()
        started = time.monotonic()
        status, data = await poll(client, DRIVE, token, timeout=20)
        assert status == 200 and data["changed"] is False and isinstance(data["cursor"], str)
        assert time.monotonic() - started < 2
        # Nothing changed: the same cursor, and with timeout=0 an immediate "unchanged".
        assert await cursor_of(client, DRIVE, token) == data["cursor"]
        assert await poll(client, DRIVE, token, cursor=data["cursor"], timeout=0) == (200, data)

    run(main)


def test_a_write_since_the_cursor_answers_changed_at_once(alice: Any) -> None:
    token = make_token(alice)

    async def main() -> None:
        client = AsyncClient()
        before = await cursor_of(client, DRIVE, token)
        await put_record(alice, type="text/plain", label="one")
        started = time.monotonic()
        status, data = await poll(client, DRIVE, token, cursor=before, timeout=20)
        assert status == 200 and data["changed"] is True and data["cursor"] != before
        assert time.monotonic() - started < 2
        assert set(data) == {"changed", "cursor"}  # never what changed

    run(main)


def test_a_waiter_wakes_when_a_write_commits_and_times_out_without_one(alice: Any) -> None:
    token = make_token(alice)

    async def main() -> None:
        client = AsyncClient()
        cursor = await cursor_of(client, DRIVE, token)
        started = time.monotonic()
        status, data = await poll(client, DRIVE, token, cursor=cursor, timeout=0.3)
        assert (status, data) == (200, {"changed": False, "cursor": cursor})
        assert time.monotonic() - started >= 0.3

        waiting = asyncio.create_task(poll(client, DRIVE, token, cursor=cursor, timeout=20))
        await until_waiting()
        written = time.monotonic()
        await put_record(alice, type="text/plain")
        status, data = await waiting
        assert status == 200 and data["changed"] is True and data["cursor"] != cursor
        assert time.monotonic() - written < 1.0
        assert len(hub) == 0  # unsubscribed once answered

    run(main)


def test_no_lost_wake_up_under_random_interleavings(alice: Any, notes: Any) -> None:
    """B reads the cursor, A writes, B waits: every wait ends ``changed``, whatever the order of the steps.

    500 times in process on SQLite; 150 over PostgreSQL's NOTIFY, where each wait's reconnect costs more.
    """
    token = make_token(alice)
    rng = random.Random(17)
    iterations = 150 if connection.vendor == "postgresql" else 500

    async def main() -> None:
        client = AsyncClient()
        slow = 0
        for i in range(iterations):
            url, write = (DRIVE, lambda: put_record(alice, type="text/plain")) if i % 2 else (
                NOTES, lambda i=i: put_row(alice, "notes", "notes", {"id": f"n{i}", "body": "x"}))
            cursor = await cursor_of(client, url, token)
            waiting = asyncio.create_task(poll(client, url, token, cursor=cursor, timeout=10))
            # The write lands before the request is read, while it authenticates or compares, or while it waits.
            for _ in range(rng.randrange(0, 6)):
                await asyncio.sleep(0)
            if rng.random() < 0.3:
                await asyncio.sleep(rng.random() * 0.003)
            started = time.monotonic()
            await write()
            status, data = await waiting
            assert status == 200 and data["changed"] is True, (i, data)
            slow += time.monotonic() - started > 1.0
        assert slow == 0, f"{slow} of {iterations} waits took over a second to end"

    run(main)


def test_another_owners_write_never_wakes_the_waiter(alice: Any) -> None:
    token = make_token(alice)
    bob = make_user("bob")

    async def main() -> None:
        client = AsyncClient()
        cursor = await cursor_of(client, DRIVE, token)
        waiting = asyncio.create_task(poll(client, DRIVE, token, cursor=cursor, timeout=0.6))
        await until_waiting()
        await put_record(bob, type="text/plain")
        assert await waiting == (200, {"changed": False, "cursor": cursor})
        # The control: the owner's own write does wake it.
        waiting = asyncio.create_task(poll(client, DRIVE, token, cursor=cursor, timeout=10))
        await until_waiting()
        await put_record(alice, type="text/plain")
        assert (await waiting)[1]["changed"] is True

    run(main)


def test_an_app_channel_and_the_drive_never_wake_each_other(alice: Any, notes: Any) -> None:
    app_token = make_token(alice, channels=["notes"])
    drive_token = make_token(alice, channels=["starkeep-drive"])

    async def main() -> None:
        client = AsyncClient()
        app_cursor = await cursor_of(client, NOTES, app_token)
        drive_cursor = await cursor_of(client, DRIVE, drive_token)
        app_wait = asyncio.create_task(poll(client, NOTES, app_token, cursor=app_cursor, timeout=0.6))
        await until_waiting()
        await put_record(alice, type="text/plain")  # the Drive
        assert await app_wait == (200, {"changed": False, "cursor": app_cursor})

        # The Drive cursor was read before the Drive write above: it answers at once.
        assert (await poll(client, DRIVE, drive_token, cursor=drive_cursor, timeout=10))[1]["changed"] is True
        drive_cursor = await cursor_of(client, DRIVE, drive_token)
        drive_wait = asyncio.create_task(poll(client, DRIVE, drive_token, cursor=drive_cursor, timeout=0.6))
        await until_waiting()
        await put_row(alice, "notes", "notes", {"id": "n1", "body": "x"})
        assert await drive_wait == (200, {"changed": False, "cursor": drive_cursor})
        # And the app waiter sees its own channel's write.
        assert (await poll(client, NOTES, app_token, cursor=app_cursor, timeout=5))[1]["changed"] is True

    run(main)


# -- authentication, scope, parameters, limits (through the sync test client: WSGI-style) ---------


def test_no_credentials_is_401(alice: Any) -> None:
    response = Client().get(DRIVE)
    assert_error(response, 401, "not_authenticated")
    assert response.has_header("WWW-Authenticate")


def test_a_token_for_another_channel_is_403(alice: Any, notes: Any) -> None:
    token = make_token(alice, channels=["notes"])
    assert_error(Client().get(DRIVE, headers=bearer(token)), 403, "permission_denied")
    assert Client().get(NOTES, headers=bearer(token)).status_code == 200


def test_an_unregistered_app_is_404(alice: Any) -> None:
    assert_error(Client().get("/apps/nope/sync/changes", headers=bearer(make_token(alice))), 404, "unknown_app")


def test_an_hmac_signed_get_works_and_its_replay_does_not(alice: Any, notes: Any) -> None:
    secret = make_secret(alice, "notes")
    headers = signed_headers(secret.secret, "notes", "GET", "/sync/changes", key_id=secret.key_id)
    response = Client().get(NOTES, {"timeout": "0"}, headers=headers)
    assert response.status_code == 200, response.content
    assert json.loads(response.content)["changed"] is False
    assert_error(Client().get(NOTES, {"timeout": "0"}, headers=headers), 401, "authentication_failed")
    # A signature over another path does not verify here.
    other = signed_headers(secret.secret, "notes", "GET", "/sync/exchange", key_id=secret.key_id)
    assert_error(Client().get(NOTES, headers=other), 401, "authentication_failed")


@pytest.mark.parametrize("params, field", [
    ({"cursor": "not-a-cursor"}, "cursor"),
    ({"cursor": "a" + "g" * 32}, "cursor"),
    ({"timeout": "soon"}, "timeout"),
    ({"timeout": "-1"}, "timeout"),
    ({"timeout": "nan"}, "timeout"),
    ({"timeout": "inf"}, "timeout"),
    ({"timeout": ""}, "timeout"),
])
def test_bad_parameters_are_400_naming_them(alice: Any, params: dict[str, str], field: str) -> None:
    response = Client().get(DRIVE, params, headers=bearer(make_token(alice)))
    assert_error(response, 400, "invalid_request", field=field)


def test_other_methods_are_405(alice: Any) -> None:
    response = Client().post(DRIVE, b"{}", content_type="application/json", headers=bearer(make_token(alice)))
    assert_error(response, 405, "method_not_allowed")
    assert response["Allow"] == "GET"


def test_a_long_timeout_is_capped_by_the_setting(alice: Any, settings: Any) -> None:
    settings.STARKEEP_SYNC = {**settings.STARKEEP_SYNC, "LIVE_MAX_TIMEOUT": 1}
    token = make_token(alice)
    cursor = json.loads(Client().get(DRIVE, headers=bearer(token)).content)["cursor"]
    started = time.monotonic()
    response = Client().get(DRIVE, {"cursor": cursor, "timeout": "3600"}, headers=bearer(token))
    assert json.loads(response.content) == {"changed": False, "cursor": cursor}
    assert 1 <= time.monotonic() - started < 3


def test_waiters_past_the_cap_are_429_with_retry_after(alice: Any, settings: Any) -> None:
    settings.STARKEEP_SYNC = {**settings.STARKEEP_SYNC, "LIVE_MAX_WAITERS_PER_OWNER": 2}
    token = make_token(alice)

    async def main() -> None:
        client = AsyncClient()
        cursor = await cursor_of(client, DRIVE, token)
        held = [asyncio.create_task(poll(client, DRIVE, token, cursor=cursor, timeout=10)) for _ in range(2)]
        await until_waiting(2)
        response = await client.get(DRIVE, {"cursor": cursor, "timeout": "10"}, headers=bearer(token))
        assert_error(response, 429, "throttled")
        assert int(response["Retry-After"]) >= 1
        # An answer that needs no wait takes no slot.
        assert (await poll(client, DRIVE, token, cursor=cursor, timeout=0))[0] == 200
        assert (await poll(client, DRIVE, token))[0] == 200
        await put_record(alice, type="text/plain")
        assert [answer[1]["changed"] for answer in await asyncio.gather(*held)] == [True, True]
        # The slots were given back.
        cursor = await cursor_of(client, DRIVE, token)
        assert await poll(client, DRIVE, token, cursor=cursor, timeout=0.05) == (
            200, {"changed": False, "cursor": cursor})

    run(main)


def test_the_cap_counts_waiters_of_other_workers_through_the_cache(alice: Any, settings: Any) -> None:
    """Slots live in REPLAY_CACHE_ALIAS: one taken by another worker counts here, and expires on its own."""
    settings.STARKEEP_SYNC = {**settings.STARKEEP_SYNC, "LIVE_MAX_WAITERS_PER_OWNER": 1}
    token = make_token(alice)
    cache = caches["default"]
    cache.set(f"starkeep_sync:live:{alice.pk}:0", "elsewhere", timeout=30 + SLOT_GRACE_SECONDS)
    cursor = json.loads(Client().get(DRIVE, headers=bearer(token)).content)["cursor"]
    assert_error(Client().get(DRIVE, {"cursor": cursor, "timeout": "5"}, headers=bearer(token)), 429, "throttled")
    cache.delete(f"starkeep_sync:live:{alice.pk}:0")  # as when its timeout passes
    assert Client().get(DRIVE, {"cursor": cursor, "timeout": "0.05"}, headers=bearer(token)).status_code == 200


def test_the_changes_scope_is_throttled_on_its_own(alice: Any, settings: Any) -> None:
    rates = {"exchange": None, "files": None, "health": None, "changes": "2/min"}
    settings.STARKEEP_SYNC = {**settings.STARKEEP_SYNC, "THROTTLE_RATES": rates}
    token = make_token(alice)
    for _ in range(2):
        assert Client().get(DRIVE, headers=bearer(token)).status_code == 200
    response = Client().get(DRIVE, headers=bearer(token))
    assert_error(response, 429, "throttled")
    assert response.has_header("Retry-After")
    # Exchanges keep their own budget.
    exchange = Client().post("/sync/exchange", b'{"watermarks": {}}', content_type="application/json",
                             headers=bearer(token))
    assert exchange.status_code == 200


def test_waiting_requests_hold_no_thread_under_the_asgi_handler(alice: Any, settings: Any) -> None:
    """Through ``starkeep_sync.live.get_asgi_application`` (what example_project/asgi.py serves), 60 waiting
    requests add no thread per request; Django's own handler would keep one for each."""
    settings.STARKEEP_SYNC = {**settings.STARKEEP_SYNC, "LIVE_MAX_WAITERS_PER_OWNER": None}
    from starkeep_sync.live import get_asgi_application

    app = get_asgi_application()
    token = make_token(alice)
    count = 60

    async def request(cursor: str, sent: list[dict[str, Any]]) -> None:
        gone = asyncio.Event()
        first = True

        async def receive() -> dict[str, Any]:
            nonlocal first
            if first:
                first = False
                return {"type": "http.request", "body": b"", "more_body": False}
            await gone.wait()  # the client never leaves on its own
            return {"type": "http.disconnect"}

        async def send(message: dict[str, Any]) -> None:
            sent.append(message)

        scope = {"type": "http", "asgi": {"version": "3.0"}, "http_version": "1.1", "method": "GET",
                 "scheme": "http", "path": DRIVE, "raw_path": DRIVE.encode(), "root_path": "",
                 "query_string": f"cursor={cursor}&timeout=20".encode(),
                 "headers": [(b"host", b"testserver"), (b"authorization", f"Bearer {token}".encode())],
                 "client": ("127.0.0.1", 40000), "server": ("testserver", 80)}
        await app(scope, receive, send)

    async def main() -> None:
        cursor = await cursor_of(AsyncClient(), DRIVE, token)
        before = threading.active_count()
        answers: list[list[dict[str, Any]]] = [[] for _ in range(count)]
        tasks = [asyncio.create_task(request(cursor, sent)) for sent in answers]
        await until_waiting(count)
        during = threading.active_count()
        assert during - before < 12, (before, during)  # a small shared pool, not a thread per request
        await put_record(alice, type="text/plain")
        await asyncio.wait_for(asyncio.gather(*tasks), 10)
        for sent in answers:
            assert sent[0]["status"] == 200
            body = b"".join(m.get("body", b"") for m in sent if m["type"] == "http.response.body")
            assert json.loads(body)["changed"] is True

    # In a thread of its own, as a server's loop runs: under async_to_sync the handler's thread-sensitive
    # steps would go to the calling thread instead, and nothing would tell the two handlers apart.
    failure: list[BaseException] = []

    def serve() -> None:
        try:
            asyncio.run(main())
        except BaseException as err:
            failure.append(err)

    server = threading.Thread(target=serve)
    server.start()
    server.join(60)
    if failure:
        raise failure[0]
