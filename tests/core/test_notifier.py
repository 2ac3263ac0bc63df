"""Change notifications (PROTOCOL §7b)."""

from __future__ import annotations

import logging

import pytest

from starkeep_sync import LOCAL_CHANGE_RECORDED, LOCAL_DATA_SYNCED, REMOTE_UPDATE_AVAILABLE
from starkeep_sync.core.hlc import HLCTimestamp
from starkeep_sync.core.notifier import ChangeEvent, ChangeNotifier, create_change_notifier


def test_event_types_are_the_reference_names() -> None:
    assert REMOTE_UPDATE_AVAILABLE == "remote-update-available"
    assert LOCAL_DATA_SYNCED == "local-data-synced"
    assert LOCAL_CHANGE_RECORDED == "local-change-recorded"


def test_change_event_fields_and_defaults() -> None:
    ts = HLCTimestamp(1, 2, "n")
    e = ChangeEvent(LOCAL_CHANGE_RECORDED, ["a", "b"], ts, origin_app_id="notes")
    assert (e.event_type, e.record_ids, e.timestamp, e.origin_app_id) == (
        LOCAL_CHANGE_RECORDED, ["a", "b"], ts, "notes",
    )
    d = ChangeEvent(LOCAL_DATA_SYNCED)
    assert d.record_ids == []
    assert d.timestamp is None
    assert d.origin_app_id is None


def test_unknown_event_type_refused() -> None:
    with pytest.raises(ValueError):
        ChangeEvent("data-changed")


def test_subscribe_emit_in_subscription_order() -> None:
    notifier = create_change_notifier()
    assert isinstance(notifier, ChangeNotifier)
    calls: list[tuple[str, ChangeEvent]] = []
    notifier.subscribe(lambda e: calls.append(("first", e)))
    notifier.subscribe(lambda e: calls.append(("second", e)))
    notifier.subscribe(lambda e: calls.append(("third", e)))
    event = ChangeEvent(LOCAL_DATA_SYNCED, ["r1"])
    notifier.emit(event)
    assert [name for name, _ in calls] == ["first", "second", "third"]
    assert all(e is event for _, e in calls)


def test_emit_without_listeners_is_fine() -> None:
    ChangeNotifier().emit(ChangeEvent(REMOTE_UPDATE_AVAILABLE))


def test_unsubscribe_stops_delivery_and_is_idempotent() -> None:
    notifier = ChangeNotifier()
    a: list[ChangeEvent] = []
    b: list[ChangeEvent] = []
    unsub_a = notifier.subscribe(a.append)
    notifier.subscribe(b.append)
    notifier.emit(ChangeEvent(LOCAL_DATA_SYNCED, ["1"]))
    unsub_a()
    unsub_a()
    notifier.emit(ChangeEvent(LOCAL_DATA_SYNCED, ["2"]))
    assert [e.record_ids for e in a] == [["1"]]
    assert [e.record_ids for e in b] == [["1"], ["2"]]


def test_same_listener_twice_gets_two_calls_and_unsubscribes_one_at_a_time() -> None:
    notifier = ChangeNotifier()
    seen: list[ChangeEvent] = []
    unsub1 = notifier.subscribe(seen.append)
    notifier.subscribe(seen.append)
    notifier.emit(ChangeEvent(LOCAL_DATA_SYNCED))
    assert len(seen) == 2
    unsub1()
    notifier.emit(ChangeEvent(LOCAL_DATA_SYNCED))
    assert len(seen) == 3


def test_raising_listener_is_logged_and_others_still_run(caplog: pytest.LogCaptureFixture) -> None:
    notifier = ChangeNotifier()
    order: list[str] = []

    def bad(event: ChangeEvent) -> None:
        order.append("bad")
        raise RuntimeError("listener exploded")

    notifier.subscribe(lambda e: order.append("before"))
    notifier.subscribe(bad)
    notifier.subscribe(lambda e: order.append("after"))
    with caplog.at_level(logging.ERROR, logger="starkeep_sync"):
        notifier.emit(ChangeEvent(LOCAL_CHANGE_RECORDED, ["x"], origin_app_id="notes"))
    assert order == ["before", "bad", "after"]
    records = [r for r in caplog.records if r.name == "starkeep_sync"]
    assert len(records) == 1
    assert records[0].levelno >= logging.ERROR
    assert records[0].exc_info is not None
    assert "listener exploded" in caplog.text
    assert LOCAL_CHANGE_RECORDED in records[0].getMessage()


def test_listener_may_unsubscribe_during_emit() -> None:
    notifier = ChangeNotifier()
    seen: list[str] = []
    unsub: list = []

    def once(event: ChangeEvent) -> None:
        seen.append("once")
        unsub[0]()

    unsub.append(notifier.subscribe(once))
    notifier.subscribe(lambda e: seen.append("other"))
    notifier.emit(ChangeEvent(LOCAL_DATA_SYNCED))
    notifier.emit(ChangeEvent(LOCAL_DATA_SYNCED))
    assert seen == ["once", "other", "other"]
