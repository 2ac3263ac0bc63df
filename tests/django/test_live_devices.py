"""Live mode end to end on tier 1: two devices through the Django live server (SQLite, in-process wake-up).

Device B's supervisor polls only every 30 s; it must hold device A's record within a second, which only
the change feed can give it.
"""

from __future__ import annotations

import time
from typing import Any

import pytest

from starkeep_sync.core.constants import REMOTE_UPDATE_AVAILABLE
from starkeep_sync.live import hub
from tests.factories import make_token, make_user
from tests.live_devices import close, device, live_supervisor, visible_after, wait_until_live

pytestmark = pytest.mark.django_db(transaction=True)


@pytest.fixture(autouse=True)
def _listener_stopped() -> Any:
    yield
    hub.stop_listener()


def test_a_push_on_one_device_reaches_a_live_device_within_a_second(live_server: Any) -> None:
    token = make_token(make_user("alice"))
    a, b = device(live_server.url, token, "device-a"), device(live_server.url, token, "device-b")
    events: list[str] = []
    b.change_notifier.subscribe(lambda e: events.append(e.event_type))
    try:
        with live_supervisor(b, interval=30) as supervisor:
            wait_until_live(supervisor)
            times = [visible_after(a, b, f"note {i}") for i in range(3)]
    finally:
        close(a)
    assert max(times) < 1.0, times
    assert events.count(REMOTE_UPDATE_AVAILABLE) >= 3
    assert supervisor.changes_seen >= 3


def test_without_the_route_the_supervisor_falls_back_to_its_interval(live_server: Any, settings: Any) -> None:
    """A server without sync/changes (the reference) answers 404: the supervisor stops long-polling."""
    settings.ROOT_URLCONF = "tests.django.urls_without_changes"
    token = make_token(make_user("alice"))
    b = device(live_server.url, token, "device-b")
    with live_supervisor(b, interval=0.2) as supervisor:
        deadline = time.monotonic() + 10
        while not supervisor.live_unavailable:  # gave up on the 404
            assert time.monotonic() < deadline, "the supervisor never noticed the missing route"
            time.sleep(0.02)
        rounds = supervisor.rounds
        time.sleep(0.6)
        assert supervisor.rounds > rounds  # and the interval keeps it syncing
        assert supervisor.live_active is False
    assert supervisor.last_error is None
