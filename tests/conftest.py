from __future__ import annotations

import contextlib
import os
import re
import shutil
import socket
import tempfile
import threading
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import pytest
from django.core.servers.basehttp import ThreadedWSGIServer, WSGIRequestHandler
from django.db import connections, transaction
from django.test import TransactionTestCase
from django.test.testcases import LiveServerThread

from tests.harness import Pair, memory_pair

# Django's development server writes a response's headers and body in separate
# sends; on a kept-alive connection Nagle's algorithm then holds the body until
# the client's delayed ACK (about 40 ms per request). Real servers set
# TCP_NODELAY; so does the live server the HTTP tests run against.
WSGIRequestHandler.disable_nagle_algorithm = True


class PooledLiveServer(ThreadedWSGIServer):
    """The live server, with request threads from a pool that keep their database connections.

    Django's threaded server starts a thread per request and closes its
    connections after each one; on PostgreSQL every request then paid a new
    backend (about 20 ms), which dominated the HTTP scenarios there. The pool's
    connections are closed when the server stops, before the test database is
    dropped.
    """

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        # A kept-alive client connection holds its thread until the client closes it; devices
        # that move blobs side by side keep several each, so the pool is generous.
        self._pool = ThreadPoolExecutor(max_workers=64, thread_name_prefix="live-server")
        self._opened: set[Any] = set()
        self._opened_lock = threading.Lock()
        self._clients: set[Any] = set()

    def process_request(self, request: Any, client_address: Any) -> None:
        with self._opened_lock:
            self._clients.add(request)
        self._pool.submit(self._handle, request, client_address)

    def _handle(self, request: Any, client_address: Any) -> None:
        try:
            self.process_request_thread(request, client_address)
        finally:
            with self._opened_lock:
                self._opened.update(connections.all(initialized_only=True))
                self._clients.discard(request)

    def _close_connections(self) -> None:
        pass  # kept for the pool thread's next request

    def server_close(self) -> None:
        super().server_close()
        with self._opened_lock:
            idle = list(self._clients)
        for sock in idle:  # a connection its client never closed would hold its thread for good
            with contextlib.suppress(OSError):
                sock.shutdown(socket.SHUT_RDWR)
        self._pool.shutdown(wait=True)
        for conn in self._opened:
            conn.inc_thread_sharing()  # closed from the thread that stops the server
            conn.close()


LiveServerThread.server_class = PooledLiveServer


@pytest.fixture(scope="session")
def django_db_setup(django_db_setup: Any) -> Iterator[None]:
    """pytest-django's test databases, and before they are dropped, the connections that would keep
    them in use (PostgreSQL refuses to drop a database with a session open)."""
    yield
    from asgiref.sync import SyncToAsync

    from starkeep_sync.live import hub

    hub.stop_listener()  # the change feed's LISTEN connection, started by the first waiting request
    # Async views' database work from AsyncClient tests runs on asgiref's own executor thread (there is no
    # outer sync thread to run it on), which keeps its connection.
    SyncToAsync.single_thread_executor.submit(connections.close_all).result()


@pytest.fixture(scope="session")
def live_server(django_db_setup: Any, live_server: Any) -> Any:
    """pytest-django's live server, set up after the test databases so it stops (closing its pool's
    connections) before they are dropped; otherwise PostgreSQL refused to drop a database still in use."""
    return live_server

#: Tables that only migrations fill: emptying them would make every flush re-create them.
_KEEP_ON_FLUSH = frozenset({"django_content_type", "auth_permission", "django_migrations"})


def _fast_fixture_teardown(self: TransactionTestCase) -> None:
    """Empty the tables a transactional test wrote, with DELETE in one transaction.

    Django's flush TRUNCATEs every table on PostgreSQL (new files per table and
    index) and then re-creates content types and permissions through
    post_migrate: about 0.2 s per test, which dominated the PostgreSQL run of
    the live-server tests. Django creates foreign keys deferred on both
    databases, so the delete order does not matter.
    """
    for alias in self._databases_names(include_mirrors=False):
        conn = connections[alias]
        names = [t for t in conn.introspection.django_table_names(only_existing=True, include_views=False)
                 if t not in _KEEP_ON_FLUSH]
        with transaction.atomic(using=alias), conn.cursor() as cur:
            for name in names:
                cur.execute(f"DELETE FROM {conn.ops.quote_name(name)}")


TransactionTestCase._fixture_teardown = _fast_fixture_teardown  # type: ignore[method-assign]


#: Test directories that need PostgreSQL and Redis on 127.0.0.1 (tier 2); their tests are marked ``services``.
SERVICES_DIRS = (Path(__file__).parent / "load",)
_services_left_out = pytest.StashKey[int]()


def names_services(markexpr: str) -> bool:
    """Whether a ``-m`` expression mentions the ``services`` marker (to select or to exclude it)."""
    return re.search(r"\bservices\b", markexpr) is not None


@pytest.hookimpl(tryfirst=True)  # markers must be on the items before pytest applies ``-m``
def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Mark the tests that never open a database connection ``nodb``, and those that need services ``services``.

    The protocol core and the scenario runs on memory adapters or a sqlite
    device store do the same thing whatever Django's database is, so the
    PostgreSQL pass (``-m "not nodb"``) does not run them a second time.

    ``services`` tests are left out unless the ``-m`` expression names the
    marker, so a plain ``pytest`` (and any ``-m`` that does not mention it)
    needs nothing running; ``-m services`` or ``-m "services or not nodb"``
    brings them in, and they fail when PostgreSQL or Redis is unreachable.
    """
    core = Path(__file__).parent / "core"
    for item in items:
        parents = Path(str(item.fspath)).parents
        callspec = getattr(item, "callspec", None)
        in_memory = callspec is not None and callspec.params.get("pair") in ("memory", "sqlite-device")
        if in_memory or core in parents:
            item.add_marker(pytest.mark.nodb)
        if any(d in parents for d in SERVICES_DIRS):
            item.add_marker(pytest.mark.services)
    if names_services(config.getoption("markexpr") or ""):
        return
    left_out = [item for item in items if item.get_closest_marker("services") is not None]
    if left_out:
        config.hook.pytest_deselected(items=left_out)
        items[:] = [item for item in items if item.get_closest_marker("services") is None]
        config.stash[_services_left_out] = len(left_out)


def pytest_terminal_summary(terminalreporter: Any, config: pytest.Config) -> None:
    """Say that tests were left out for want of ``-m services``, and how to run them."""
    count = config.stash.get(_services_left_out, 0)
    if count:
        terminalreporter.write_line(
            f"{count} tests need PostgreSQL and Redis (marker 'services') and were left out; "
            'run them with -m services, or the whole second tier with -m "services or not nodb" '
            "(see README, Run the tests)."
        )


@pytest.fixture
def fast_tmp() -> Iterator[Path]:
    """A scratch directory in RAM where there is one: thousands of small blob files are slow on disk."""
    base = "/dev/shm" if os.access("/dev/shm", os.W_OK) else None
    path = Path(tempfile.mkdtemp(prefix="starkeep-", dir=base))
    yield path
    shutil.rmtree(path, ignore_errors=True)


@pytest.fixture(
    params=[
        "memory",
        "sqlite-device",
        pytest.param("http", marks=[pytest.mark.http, pytest.mark.django_db(transaction=True)]),
    ]
)
def pair(request: pytest.FixtureRequest) -> Pair:
    """A local requester and a cloud responder.

    Every scenario runs in-process on memory adapters, with a sqlite device store as the
    requester, and over real HTTP against the Django live server.
    """
    if request.param == "memory":
        return memory_pair()
    if request.param == "sqlite-device":
        from tests.device_harness import sqlite_device_pair

        return sqlite_device_pair(request.getfixturevalue("fast_tmp"))
    live_server = request.getfixturevalue("live_server")
    from tests.http_harness import http_pair

    return http_pair(live_server.url)
