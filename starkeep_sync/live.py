"""Live changes (PROTOCOL §7d): the change cursor, and waking waiters when an owner's channel moves.

Three parts:

- :func:`channel_cursor`: an opaque digest of the channel's coverage summary
  (``NodeCoverage``, one indexed read of a few rows per owner). Every write
  raises coverage in the writing transaction, so the cursor moves whenever
  anything on the channel is applied, and a no-change check reads no data row.
- :func:`announce_change`: called where an exchange or the server API reports
  what it applied (``signals.notify_records_applied`` / ``notify_rows_applied``).
  On PostgreSQL it sends ``NOTIFY`` on the writing connection, so inside the
  writing transaction when there is one and delivered only at its commit (after
  it, when the adapter already committed); with Redis it publishes after commit;
  otherwise it wakes this process's waiters after commit.
- :data:`hub`: this process's waiters, keyed by ``(owner id, channel)``, and one
  listener per process (a daemon thread running an asyncio loop: psycopg's
  async ``notifies()`` or redis-py's async pub/sub) that fans each wake-up out
  to them. Waiters may live in any event loop (one per ASGI worker, or one per
  request under WSGI), so waking goes through ``call_soon_threadsafe``.

No lost wake-up: a waiter registers first, then compares its cursor. When the
listener (re)connects it wakes every registered waiter to compare again, since
a notification sent while it was not listening is gone.
"""

from __future__ import annotations

import asyncio
import hashlib
import importlib.util
import logging
import os
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from functools import partial
from typing import Any

from django.conf import settings
from django.db import transaction

from .conf import sync_settings
from .core.constants import CHANGES_PATH, DRIVE_APP_ID, LOGGER_NAME

logger = logging.getLogger(LOGGER_NAME)

#: PostgreSQL channel and Redis channel suffix of every wake-up.
NOTIFY_CHANNEL = "starkeep_sync_live"
#: Wake modes of the ``LIVE_WAKEUP`` setting ("auto" picks one of the others).
WAKEUP_MODES = ("auto", "postgresql", "redis", "local")
#: Why a waiter woke: a wake-up for its channel, or "compare again" (the listener reconnected).
NOTIFIED, RECHECK = "notified", "recheck"
#: Cursor text: a version letter and 32 hex digits.
CURSOR_LENGTH = 33

_REDIS_BACKENDS = ("django.core.cache.backends.redis.RedisCache", "django_redis.cache.RedisCache")


# -- the cursor ----------------------------------------------------------------------------


def channel_cursor(owner_id: Any, channel: str) -> str:
    """The channel's change cursor: a digest of its coverage rows (scope, node, HLC).

    Read from the per-node coverage summary of the owner (one indexed query,
    a row per node and table), never from the data rows.
    """
    from .adapters.orm import RECORDS_SCOPE, coverage_by_scope

    if channel == DRIVE_APP_ID:
        def wanted(scope: str) -> bool:
            return scope == RECORDS_SCOPE
    else:
        prefix = f"{channel}/"

        def wanted(scope: str) -> bool:
            return scope.startswith(prefix)
    digest = hashlib.sha256()
    for scope, summary in sorted(coverage_by_scope(owner_id).items()):
        if wanted(scope):
            for node, hlc in sorted(summary.items()):
                digest.update(f"{scope}\x00{node}\x00{hlc.wall_time}:{hlc.counter}\x00".encode())
    return "a" + digest.hexdigest()[:32]


def valid_cursor(text: str) -> bool:
    return len(text) == CURSOR_LENGTH and text[0] == "a" and all(c in "0123456789abcdef" for c in text[1:])


# -- choosing the wake-up path ---------------------------------------------------------------


def _cache_config() -> dict[str, Any]:
    caches = getattr(settings, "CACHES", {})
    return caches.get(sync_settings.REPLAY_CACHE_ALIAS, {})  # type: ignore[no-any-return]


def redis_url() -> str | None:
    """The Redis server of the ``REPLAY_CACHE_ALIAS`` cache, when that cache is Redis."""
    config = _cache_config()
    if config.get("BACKEND") not in _REDIS_BACKENDS:
        return None
    location = config.get("LOCATION")
    if isinstance(location, (list, tuple)):
        location = location[0] if location else None
    if isinstance(location, str):
        location = location.split(",")[0].strip()  # Django's "primary,replica,..." form: write to the primary
    return location or None


def wakeup_mode() -> str:
    """``postgresql``, ``redis`` or ``local``: how writes reach waiters in other processes."""
    mode = sync_settings.LIVE_WAKEUP
    if mode != "auto":
        return str(mode)
    from .adapters.orm import synced_db

    # LISTEN needs psycopg 3's async connection; a project on psycopg2 wakes through Redis or in process.
    if synced_db().vendor == "postgresql" and importlib.util.find_spec("psycopg") is not None:
        return "postgresql"
    if redis_url() is not None:
        return "redis"
    return "local"


def _redis_channel() -> str:
    from django.core.cache import caches

    # Under the cache's own key prefix, so several deployments may share one Redis.
    return str(caches[sync_settings.REPLAY_CACHE_ALIAS].make_key(NOTIFY_CHANNEL))


def _payload(owner_id: Any, channel: str) -> str:
    return f"{owner_id}:{channel}"


def _parse_payload(payload: str | bytes) -> tuple[str, str] | None:
    text = payload.decode(errors="replace") if isinstance(payload, bytes) else payload
    # App ids never hold ":", a custom user model's primary key might: split at the last one.
    owner, sep, channel = text.rpartition(":")
    return (owner, channel) if sep and owner and channel else None


# -- announcing a write ------------------------------------------------------------------------


_redis_clients: dict[str, Any] = {}
_redis_lock = threading.Lock()


def _redis_publisher(url: str) -> Any:
    with _redis_lock:
        client = _redis_clients.get(url)
        if client is None or _redis_clients.get("pid") != os.getpid():
            import redis

            client = redis.Redis.from_url(url, socket_timeout=5, socket_connect_timeout=5)
            _redis_clients.clear()
            _redis_clients.update({url: client, "pid": os.getpid()})
        return client


def _publish_redis(url: str, channel: str, payload: str) -> None:
    try:
        _redis_publisher(url).publish(channel, payload)
    except Exception:
        # The write is committed; waiters still answer at their timeout (their cursor has moved).
        logger.exception("live changes: could not publish a wake-up to Redis at %s", url)


def announce_change(owner_id: Any, channel: str) -> None:
    """Wake the owner's waiters on ``channel`` once the current write is committed.

    Call it where the write is reported, inside the writing transaction or after
    its commit; it never wakes anyone for a write that rolls back.
    """
    from .adapters.orm import synced_db

    db = synced_db()
    payload = _payload(owner_id, channel)
    mode = wakeup_mode()
    if mode == "postgresql":
        try:
            # On the writing connection: inside its transaction NOTIFY is delivered at commit;
            # outside one, the adapter has already committed what it wrote.
            with db.cursor() as cur:
                cur.execute("SELECT pg_notify(%s, %s)", [NOTIFY_CHANNEL, payload])
        except Exception:
            if db.in_atomic_block:
                raise  # the transaction is broken anyway; let it roll back as usual
            logger.exception("live changes: NOTIFY failed; waiters answer at their timeout")
        return
    if mode == "redis":
        url = redis_url()
        if url is not None:
            transaction.on_commit(partial(_publish_redis, url, _redis_channel(), payload), using=db.alias)
            return
    transaction.on_commit(partial(hub.wake, (str(owner_id), channel), NOTIFIED), using=db.alias)


# -- waiters and the per-process listener -------------------------------------------------------


class Waiter:
    """One waiting request, in its event loop; woken from any thread."""

    __slots__ = ("_event", "_loop", "_reason", "key")

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self.key: tuple[str, str] | None = None
        self._loop = loop
        self._event = asyncio.Event()
        self._reason: str | None = None

    def wake(self, reason: str) -> None:
        try:
            self._loop.call_soon_threadsafe(self._set, reason)
        except RuntimeError:
            pass  # its loop is closed: the request is over

    def _set(self, reason: str) -> None:
        if self._reason != NOTIFIED:  # a notification outranks a recheck
            self._reason = reason
        self._event.set()

    async def wait(self, timeout: float) -> str | None:
        """The reason of the next wake-up, or ``None`` when ``timeout`` seconds pass first."""
        try:
            await asyncio.wait_for(self._event.wait(), timeout)
        except TimeoutError:
            return None
        reason, self._reason = self._reason, None
        self._event.clear()
        return reason


#: ``(str(owner pk), channel)``.
Key = tuple[str, str]


class Hub:
    """This process's waiters, and the one listener that wakes them."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._waiters: dict[Key, set[Waiter]] = {}
        self._listener: _Listener | None = None
        self._pid = os.getpid()

    def __len__(self) -> int:
        with self._lock:
            return sum(len(w) for w in self._waiters.values())

    def subscribe(self, owner_id: Any, channel: str, waiter: Waiter) -> None:
        """Register ``waiter`` for ``(owner_id, channel)`` (from any thread): register first, then compare."""
        self._ensure_listener()
        key = (str(owner_id), channel)
        with self._lock:
            self._waiters.setdefault(key, set()).add(waiter)
            waiter.key = key

    def unsubscribe(self, waiter: Waiter) -> None:
        with self._lock:
            key, waiter.key = waiter.key, None
            waiters = self._waiters.get(key) if key is not None else None
            if waiters is not None:
                waiters.discard(waiter)
                if not waiters:
                    del self._waiters[key]  # type: ignore[arg-type]

    @contextmanager
    def subscribed(self, owner_id: Any, channel: str) -> Iterator[Waiter]:
        """A waiter in the running loop, registered for ``(owner_id, channel)`` for the block."""
        waiter = Waiter(asyncio.get_running_loop())
        self.subscribe(owner_id, channel, waiter)
        try:
            yield waiter
        finally:
            self.unsubscribe(waiter)

    def wake(self, key: Key, reason: str = NOTIFIED) -> None:
        with self._lock:
            waiters = list(self._waiters.get(key, ()))
        for waiter in waiters:
            waiter.wake(reason)

    def wake_all(self, reason: str = RECHECK) -> None:
        with self._lock:
            waiters = [w for ws in self._waiters.values() for w in ws]
        for waiter in waiters:
            waiter.wake(reason)

    def _ensure_listener(self) -> None:
        mode = wakeup_mode()
        with self._lock:
            if self._pid != os.getpid():  # forked: the parent's listener thread did not come along
                self._pid, self._listener = os.getpid(), None
            listener = self._listener
            if listener is not None and listener.mode == mode and listener.is_alive():
                return
            if listener is not None:
                listener.stop()
            self._listener = None
            if mode == "postgresql":
                self._listener = _PostgresListener(self, _postgres_conninfo())
            elif mode == "redis":
                url = redis_url()
                if url is not None:
                    self._listener = _RedisListener(self, url, _redis_channel())
            if self._listener is not None:
                self._listener.start()

    @property
    def listening(self) -> bool:
        """Whether this process's listener is connected (always true in local mode)."""
        listener = self._listener
        return listener is None or listener.ready.is_set()

    def stop_listener(self) -> None:
        """Stop this process's listener (tests; a new one starts with the next waiter)."""
        with self._lock:
            listener, self._listener = self._listener, None
        if listener is not None:
            listener.stop()
            listener.join(5)


def _postgres_conninfo() -> str:
    """A libpq connection string for the synced database, from Django's own settings for it."""
    from psycopg.conninfo import make_conninfo

    from .adapters.orm import synced_db

    s = synced_db().settings_dict
    params: dict[str, Any] = {"dbname": s.get("NAME") or "postgres", "application_name": "starkeep_sync live"}
    for key, name in (("USER", "user"), ("PASSWORD", "password"), ("HOST", "host"), ("PORT", "port")):
        if s.get(key):
            params[name] = s[key]
    for key, value in (s.get("OPTIONS") or {}).items():
        # libpq parameters only (sslmode, ...); Django's own options (pool, isolation_level, ...) are not.
        if isinstance(value, (str, int)) and key not in ("isolation_level", "server_side_binding", "assume_role",
                                                          "pool", "cursor_factory", "prepare_threshold"):
            params[key] = value
    return make_conninfo(**params)


class _Listener(threading.Thread):
    """A daemon thread with its own asyncio loop; reconnects with backoff, rechecks every waiter on connect."""

    mode = ""

    def __init__(self, hub: Hub) -> None:
        super().__init__(name=f"starkeep-live-{self.mode}", daemon=True)
        self.hub = hub
        self.ready = threading.Event()
        self._stopping = threading.Event()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._task: asyncio.Task[None] | None = None

    def run(self) -> None:
        loop = asyncio.new_event_loop()
        self._loop = loop
        try:
            self._task = loop.create_task(self._forever())
            loop.run_until_complete(self._task)
        except asyncio.CancelledError:
            pass
        finally:
            loop.close()

    async def _forever(self) -> None:
        delay = 0.2
        while not self._stopping.is_set():
            try:
                await self._listen()
            except asyncio.CancelledError:
                raise
            except Exception as err:
                logger.warning("live changes: %s listener lost its connection (%s); reconnecting in %.1f s",
                               self.mode, err, delay)
            self.ready.clear()
            if self._stopping.is_set():
                return
            await asyncio.sleep(delay)
            delay = min(delay * 2, 5.0)

    def connected(self) -> None:
        self.ready.set()
        # Anything committed while nobody listened sent its wake-up into the void: compare again.
        self.hub.wake_all(RECHECK)

    def deliver(self, payload: str | bytes) -> None:
        key = _parse_payload(payload)
        if key is not None:
            self.hub.wake(key, NOTIFIED)

    async def _listen(self) -> None:
        raise NotImplementedError

    def stop(self) -> None:
        self._stopping.set()
        loop, task = self._loop, self._task
        if loop is not None and task is not None:
            try:
                loop.call_soon_threadsafe(task.cancel)
            except RuntimeError:
                pass


class _PostgresListener(_Listener):
    mode = "postgresql"

    def __init__(self, hub: Hub, conninfo: str) -> None:
        super().__init__(hub)
        self.conninfo = conninfo

    async def _listen(self) -> None:
        import psycopg

        conn = await psycopg.AsyncConnection.connect(self.conninfo, autocommit=True)
        async with conn:
            await conn.execute(f"LISTEN {NOTIFY_CHANNEL}")
            self.connected()
            async for note in conn.notifies():
                self.deliver(note.payload)


class _RedisListener(_Listener):
    mode = "redis"

    def __init__(self, hub: Hub, url: str, channel: str) -> None:
        super().__init__(hub)
        self.url, self.channel = url, channel

    async def _listen(self) -> None:
        from redis import asyncio as aioredis

        client = aioredis.Redis.from_url(self.url, socket_connect_timeout=5, health_check_interval=15)
        try:
            pubsub = client.pubsub()
            await pubsub.subscribe(self.channel)
            # Listening only once Redis confirms the subscription: a publish before it would be lost.
            for _ in range(3):
                message = await pubsub.get_message(timeout=5.0)
                if message is not None and message.get("type") == "subscribe":
                    break
            else:
                raise ConnectionError("Redis did not confirm the subscription")
            self.connected()
            async for message in pubsub.listen():
                if message.get("type") == "message":
                    self.deliver(message["data"])
        finally:
            close = getattr(client, "aclose", None) or client.close  # aclose from redis-py 5.0.1
            await close()


#: This process's waiters.
hub = Hub()


# -- serving under ASGI ---------------------------------------------------------------------------------


def _is_change_feed(scope: dict[str, Any]) -> bool:
    return scope.get("type") == "http" and str(scope.get("path", "")).endswith(CHANGES_PATH)


def get_asgi_application() -> Any:
    """Django's ASGI application, except that a ``sync/changes`` request gets no thread of its own.

    Django's handler gives every request a thread for its synchronous parts (the
    ``request_started`` receivers, sync middleware), kept until the request ends:
    a thread per waiting device. For the change feed those short steps run on
    asgiref's one shared thread instead; the view's own phases run in the event
    loop's pool. Use it in your ``asgi.py`` in place of
    ``django.core.asgi.get_asgi_application``; every other request is Django's as usual.
    """
    import django
    from asgiref.sync import ThreadSensitiveContext
    from django.core.handlers.asgi import ASGIHandler

    class LiveFeedASGIHandler(ASGIHandler):
        async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
            if _is_change_feed(scope):
                await self.handle(scope, receive, send)
                return
            async with ThreadSensitiveContext():
                await self.handle(scope, receive, send)

    django.setup(set_prefix=False)
    return LiveFeedASGIHandler()
