"""``GET sync/changes?cursor=&timeout=``: the live change feed (PROTOCOL §7d).

An async view, so under ASGI a waiting device holds no thread and no database
connection: the DRF steps (authentication, permissions, throttles, the one
exception handler) and each cursor read run in short synchronous phases, and
the wait in between is an ``await`` on this process's wake-up hub
(:mod:`starkeep_sync.live`). Under WSGI Django runs the same coroutine in the
request's thread, which then waits (capped by ``LIVE_MAX_TIMEOUT``); it answers
the same, it only costs that thread.
"""

from __future__ import annotations

import asyncio
import math
import random
import secrets
import time
from dataclasses import dataclass
from functools import partial
from typing import Any

from asgiref.sync import sync_to_async
from django.core.cache import caches
from django.core.handlers.asgi import ASGIRequest
from django.http import HttpResponse
from django.http.response import HttpResponseBase
from rest_framework import status
from rest_framework.request import Request

from ..adapters.orm import synced_db
from ..conf import sync_settings
from ..core.wire import encode_json
from ..live import NOTIFIED, Waiter, channel_cursor, hub, valid_cursor
from .exceptions import InvalidRequest, SyncAPIException
from .throttling import ChangesRateThrottle
from .views import SyncAPIView

#: A waiter's slot outlives its longest wait by this much, so a killed worker's slots free themselves.
SLOT_GRACE_SECONDS = 15


class TooManyWaiters(SyncAPIException):
    status_code = status.HTTP_429_TOO_MANY_REQUESTS
    default_detail = ("Too many change-feed requests of this owner are waiting at once "
                      "(LIVE_MAX_WAITERS_PER_OWNER); retry later, or close the other ones.")
    default_code = "throttled"
    wait = 5


@dataclass
class _Wait:
    owner_id: Any
    channel: str
    cursor: str | None
    timeout: float


def _answer(changed: bool, cursor: str) -> HttpResponse:
    response = HttpResponse(encode_json({"changed": changed, "cursor": cursor}), content_type="application/json")
    response["Cache-Control"] = "no-store"
    return response


def _release_connection() -> None:
    """Close this thread's connection before a wait: a waiting request holds none (Django closes it at the
    request's end otherwise)."""
    db = synced_db()
    if not db.in_atomic_block:  # a test's transaction, or ATOMIC_REQUESTS: not ours to close
        db.close()


def parse_timeout(text: str | None) -> float:
    """Seconds to hold the request: the ``timeout`` parameter, at most ``LIVE_MAX_TIMEOUT`` (also its default)."""
    cap = float(sync_settings.LIVE_MAX_TIMEOUT)
    if text is None:
        return cap
    try:
        seconds = float(text)
    except ValueError:
        seconds = math.nan
    if not math.isfinite(seconds) or seconds < 0:
        raise InvalidRequest("'timeout' must be a number of seconds, 0 or more.", field="timeout")
    return min(seconds, cap)


class WaiterSlots:
    """At most ``LIVE_MAX_WAITERS_PER_OWNER`` waiting requests per owner, counted in ``REPLAY_CACHE_ALIAS``.

    Each waiter holds one of the owner's numbered slot keys (``cache.add``), so
    with a shared cache (Redis) the cap holds across workers, and with a
    per-process cache per process. A slot expires a little after the longest
    wait, so a killed worker's waiters free theirs without anyone's help.
    """

    def __init__(self, owner_id: Any) -> None:
        self.cap: int | None = sync_settings.LIVE_MAX_WAITERS_PER_OWNER
        self.cache = caches[sync_settings.REPLAY_CACHE_ALIAS]
        self.prefix = f"starkeep_sync:live:{owner_id}:"
        self.held: str | None = None  # the one key kept while waiting: a waiter costs no list of them

    def take(self) -> None:
        if self.cap is None:
            return
        ttl = int(sync_settings.LIVE_MAX_TIMEOUT) + SLOT_GRACE_SECONDS
        token = secrets.token_hex(4)
        # A few random slots first: one round trip while the owner is far from the cap, whatever the cap.
        for i in random.sample(range(self.cap), min(3, self.cap)):
            if self.cache.add(self.prefix + str(i), token, timeout=ttl):
                self.held = self.prefix + str(i)
                return
        keys = [self.prefix + str(i) for i in range(self.cap)]
        taken = self.cache.get_many(keys)
        for key in keys:
            if key not in taken and self.cache.add(key, token, timeout=ttl):
                self.held = key
                return
        raise TooManyWaiters()

    def give_back(self) -> None:
        if self.held is not None:
            self.cache.delete(self.held)
            self.held = None


class ChangesView(SyncAPIView):
    """``GET sync/changes``: ``{"changed", "cursor"}``, held until the channel moves or ``timeout`` passes."""

    throttle_classes = [ChangesRateThrottle]
    http_method_names = ["get"]
    _asgi = False

    async def get(self, request: Request, app_id: str | None = None) -> HttpResponseBase:
        raise AssertionError("dispatch() answers GET itself")  # pragma: no cover - marks the view async

    async def dispatch(self, request: Any, *args: Any, **kwargs: Any) -> HttpResponseBase:  # type: ignore[override]
        self.args, self.kwargs = args, kwargs
        # Under ASGI the phases run in the event loop's shared pool, not in a thread of this request's own
        # (Django's thread-sensitive default), which would sit idle for as long as the request waits.
        # Under WSGI the request's thread is held anyway: keep its (persistent) connection.
        self._asgi = isinstance(request, ASGIRequest)
        sync = partial(sync_to_async, thread_sensitive=not self._asgi)
        waiter = Waiter(asyncio.get_running_loop())
        slots: WaiterSlots | None = None
        try:
            opened = await sync(self._phase)(self._open, request, waiter)
            if isinstance(opened, HttpResponseBase):
                return opened
            slots, deadline = opened
            while (left := deadline - time.monotonic()) > 0:
                reason = await waiter.wait(left)
                if reason is None:
                    break
                # A notification means something was applied on the channel, even in the rare case
                # its HLC left the coverage (and so the cursor) where it was.
                woken = await sync(self._phase)(self._compare, True, reason == NOTIFIED)
                if woken is not None:
                    return woken  # type: ignore[no-any-return]
            return await sync(self._phase)(self._compare, False)  # type: ignore[no-any-return]
        finally:
            hub.unsubscribe(waiter)
            if slots is not None and slots.held is not None:
                await sync(slots.give_back)()

    # -- the synchronous phases: DRF's request handling, cursor reads --------------------------------

    def _phase(self, step: Any, *args: Any) -> Any:
        """Run one step; a raised error becomes the protocol's error response through DRF's handler."""
        try:
            return step(*args)
        except Exception as exc:
            response = self.handle_exception(exc)
            return self.finalize_response(self.request, response, *self.args, **self.kwargs)
        finally:
            if self._asgi:
                # A phase may run on any thread of the pool, and under ASGI nothing closes a connection
                # left in one: close it here, a waiting request holds none.
                _release_connection()

    def _open(self, request: Any, waiter: Waiter) -> HttpResponseBase | tuple[WaiterSlots, float]:
        """Authenticate, then subscribe, then compare: an answer, or ``(slots, deadline)`` to wait."""
        wait = self._begin(request)
        if wait.cursor is None:
            return self._finish(_answer(False, channel_cursor(wait.owner_id, wait.channel)))
        deadline = time.monotonic() + wait.timeout
        # Subscribe first, then compare: a write committed after the comparison wakes this waiter.
        hub.subscribe(wait.owner_id, wait.channel, waiter)
        slots = WaiterSlots(wait.owner_id)
        answer = self._compare(wait.timeout > 0, slots=slots)
        if answer is not None:
            return answer
        return slots, deadline

    def _begin(self, request: Any) -> _Wait:
        # What APIView.dispatch does before calling a handler.
        self.request = self.initialize_request(request, *self.args, **self.kwargs)
        self.headers = self.default_response_headers
        if self.request.method != "GET":
            self.http_method_not_allowed(self.request)  # raises 405, with Allow: GET
        self.initial(self.request, *self.args, **self.kwargs)  # authentication, permissions, throttles, channel
        params = self.request.query_params
        cursor = params.get("cursor") or None
        if cursor is not None and not valid_cursor(cursor):
            raise InvalidRequest("'cursor' is not a cursor this server issued; leave it out to get the current one.",
                                 field="cursor")
        return _Wait(self.owner().pk, self.channel(), cursor, parse_timeout(params.get("timeout")))

    def _finish(self, response: HttpResponseBase) -> HttpResponseBase:
        return self.finalize_response(self.request, response, *self.args, **self.kwargs)  # type: ignore[no-any-return]

    def _compare(self, keep_waiting: bool, notified: bool = False,
                 slots: WaiterSlots | None = None) -> HttpResponseBase | None:
        """``changed`` when the channel moved (or ``notified``); when it did not, ``None`` to keep waiting
        (taking one of ``slots`` first, 429 when none is free) or, unless ``keep_waiting``, ``unchanged``."""
        given = self.request.query_params.get("cursor")
        current = channel_cursor(self.owner().pk, self.channel())
        if current != given or notified:
            return self._finish(_answer(True, current))
        if not keep_waiting:
            return self._finish(_answer(False, current))
        if slots is not None:
            slots.take()
        if not self._asgi:
            _release_connection()  # about to wait: hold no connection meanwhile
        return None
