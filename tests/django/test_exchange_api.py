"""``POST sync/exchange`` over DRF's test client (PROTOCOL §3, §4, §6)."""

from __future__ import annotations

import json
from typing import Any

import pytest
from django.test import override_settings
from rest_framework.test import APIClient

from starkeep_sync.models import AppRow, ChannelActivity, FileRecord, NodeCoverage, SharedRecord

from .support import (
    BASE_MS,
    DRIVE_EXCHANGE_URLS,
    assert_error,
    bearer,
    body,
    entry,
    exchange,
    exchange_ok,
    hlc,
    now_ms,
    record,
)

pytestmark = pytest.mark.django_db

NOTES_URL = "/apps/notes/sync/exchange"
DAY_MS = 86_400_000


def _nothing_applied() -> None:
    assert SharedRecord.objects.count() == 0
    assert AppRow.objects.count() == 0
    assert FileRecord.objects.count() == 0
    assert NodeCoverage.objects.count() == 0


# -- every exchange route works -------------------------------------------------------------


@pytest.mark.parametrize("url", DRIVE_EXCHANGE_URLS)
def test_drive_push_is_applied_and_not_echoed(api: APIClient, alice: Any, alice_token: str, url: str) -> None:
    rec = record("01HREC0000000000000000000A", BASE_MS, "nodeA", label="first")
    data = exchange_ok(exchange(api, url, body(records=[rec]), bearer(alice_token)))

    assert data["records"] == []  # no echo of what was just pushed (§5 rule 7a)
    assert data["appSyncableRows"] == []
    assert data["hasMore"] is False
    assert data["responderWatermarks"] == {"nodeA": hlc(BASE_MS, 0, "nodeA")}
    stored = SharedRecord.objects.get()
    assert (stored.owner_id, stored.record_id, stored.label, stored.node_id) == (
        alice.pk, rec["id"], "first", "nodeA",
    )


@pytest.mark.parametrize("url", DRIVE_EXCHANGE_URLS)
def test_drive_pull_returns_the_record_in_wire_form(api: APIClient, alice_token: str, url: str) -> None:
    rec = record("01HREC0000000000000000000A", BASE_MS, "nodeA", label="x", data=b"jpeg bytes")
    exchange_ok(exchange(api, url, body(records=[rec]), bearer(alice_token)))

    # Another device of the same owner, from zero watermarks.
    data = exchange_ok(exchange(api, url, body(), bearer(alice_token)))
    assert data["records"] == [rec]
    assert data["responderWatermarks"] == {"nodeA": rec["updatedAt"]}
    assert data["hasMore"] is False

    # Once covered, nothing comes back.
    data = exchange_ok(exchange(api, url, body(watermarks={"nodeA": rec["updatedAt"]}), bearer(alice_token)))
    assert data["records"] == []


def test_app_channel_push_is_applied_and_not_echoed(
    api: APIClient, alice: Any, alice_token: str, notes_app: Any
) -> None:
    e = entry("notes", "notes", "n1", BASE_MS, "nodeA", body="hello")
    data = exchange_ok(exchange(api, NOTES_URL, body(rows=[e]), bearer(alice_token)))

    assert data["appSyncableRows"] == []
    assert data["records"] == []
    assert data["responderWatermarks"] == {"nodeA": hlc(BASE_MS)}
    row = AppRow.objects.get()
    assert (row.owner_id, row.app_id, row.table, row.data["body"]) == (alice.pk, "notes", "notes", "hello")

    pulled = exchange_ok(exchange(api, NOTES_URL, body(), bearer(alice_token)))
    assert len(pulled["appSyncableRows"]) == 1
    got = pulled["appSyncableRows"][0]
    assert (got["appId"], got["table"], got["op"], got["timestamp"]) == ("notes", "notes", "insert", hlc(BASE_MS))
    assert got["row"]["id"] == "n1" and got["row"]["body"] == "hello"


def test_app_channel_file_record_row(api: APIClient, alice_token: str, notes_app: Any) -> None:
    e = entry("notes", "_starkeep_sync_records", "f1", BASE_MS, "nodeA",
              object_storage_key="apps/notes/syncable/attachment-1", content_hash="", size_bytes=3,
              mime_type="text/plain", original_filename="a.txt", origin_app_id="notes", created_at=None)
    exchange_ok(exchange(api, NOTES_URL, body(rows=[e]), bearer(alice_token)))
    assert FileRecord.objects.get().object_storage_key == "apps/notes/syncable/attachment-1"


def test_responder_watermarks_cover_everything_after_apply(api: APIClient, alice_token: str) -> None:
    held = record("01HREC0000000000000000000B", BASE_MS + 50, "nodeB")
    exchange_ok(exchange(api, "/sync/exchange", body(records=[held]), bearer(alice_token)))

    pushed = [record("01HREC0000000000000000000A", BASE_MS + 10, "nodeA"),
              record("01HREC0000000000000000000C", BASE_MS + 20, "nodeA")]
    data = exchange_ok(exchange(api, "/sync/exchange", body(records=pushed), bearer(alice_token)))

    assert data["responderWatermarks"] == {"nodeA": hlc(BASE_MS + 20, 0, "nodeA"),
                                           "nodeB": hlc(BASE_MS + 50, 0, "nodeB")}
    # What the requester did not have comes back; what it just pushed does not.
    assert [r["id"] for r in data["records"]] == [held["id"]]


def test_lww_loser_is_not_applied_but_response_is_200(api: APIClient, alice_token: str) -> None:
    newer = record("01HREC0000000000000000000A", BASE_MS + 100, "nodeB", label="newer")
    older = record("01HREC0000000000000000000A", BASE_MS, "nodeA", label="older")
    exchange_ok(exchange(api, "/sync/exchange", body(records=[newer]), bearer(alice_token)))
    data = exchange_ok(exchange(api, "/sync/exchange", body(records=[older]), bearer(alice_token)))
    assert SharedRecord.objects.get().label == "newer"
    assert set(data["responderWatermarks"]) == {"nodeA", "nodeB"}


@pytest.mark.parametrize("url", [*DRIVE_EXCHANGE_URLS, NOTES_URL])
def test_has_more_is_exact(api: APIClient, alice_token: str, notes_app: Any, url: str) -> None:
    if url == NOTES_URL:
        items = [entry("notes", "notes", f"n{i}", BASE_MS + i, "nodeA") for i in range(3)]
        payload, stream = body(rows=items), "appSyncableRows"
    else:
        items = [record(f"01HREC000000000000000000{i:02d}", BASE_MS + i, "nodeA") for i in range(3)]
        payload, stream = body(records=items), "records"
    exchange_ok(exchange(api, url, payload, bearer(alice_token)))

    two = exchange_ok(exchange(api, url, body(limit=2), bearer(alice_token)))
    assert len(two[stream]) == 2 and two["hasMore"] is True

    three = exchange_ok(exchange(api, url, body(limit=3), bearer(alice_token)))
    assert len(three[stream]) == 3 and three["hasMore"] is False

    # The next page: above the second item, the last one, and no more.
    rest = exchange_ok(exchange(api, url, body(watermarks={"nodeA": hlc(BASE_MS + 1)}, limit=1),
                                bearer(alice_token)))
    assert len(rest[stream]) == 1 and rest["hasMore"] is False


@pytest.mark.parametrize("url", DRIVE_EXCHANGE_URLS)
def test_drive_channel_ignores_app_rows(api: APIClient, alice_token: str, notes_app: Any, url: str) -> None:
    rows = [entry("notes", "notes", "n1", BASE_MS, "nodeA")]
    data = exchange_ok(exchange(api, url, body(rows=rows), bearer(alice_token)))
    assert AppRow.objects.count() == 0
    assert data["appSyncableRows"] == [] and data["responderWatermarks"] == {}


def test_drive_channel_never_sends_app_rows(api: APIClient, alice_token: str, notes_app: Any) -> None:
    exchange_ok(exchange(api, NOTES_URL, body(rows=[entry("notes", "notes", "n1", BASE_MS)]),
                         bearer(alice_token)))
    data = exchange_ok(exchange(api, "/sync/exchange", body(), bearer(alice_token)))
    assert data["appSyncableRows"] == [] and data["responderWatermarks"] == {}


def test_app_channel_ignores_shared_records(api: APIClient, alice_token: str, notes_app: Any) -> None:
    data = exchange_ok(exchange(api, NOTES_URL, body(records=[record("01HREC0000000000000000000A", BASE_MS)]),
                                bearer(alice_token)))
    assert SharedRecord.objects.count() == 0
    assert data["records"] == [] and data["responderWatermarks"] == {}

    # And never sends the Drive's records either.
    exchange_ok(exchange(api, "/sync/exchange", body(records=[record("01HREC0000000000000000000B", BASE_MS)]),
                         bearer(alice_token)))
    data = exchange_ok(exchange(api, NOTES_URL, body(), bearer(alice_token)))
    assert data["records"] == [] and data["responderWatermarks"] == {}


def test_app_channel_refuses_a_request_with_rows_of_another_app_under_reject(
    api: APIClient, alice_token: str, notes_app: Any, todo_app: Any
) -> None:
    foreign = entry("todo", "items", "t1", BASE_MS, "nodeB")
    own = entry("notes", "notes", "n1", BASE_MS, "nodeA")
    with _sync_settings(UNKNOWN_APP_ROWS="reject"):
        response = exchange(api, NOTES_URL, body(rows=[own, foreign]), bearer(alice_token))
    assert_error(response, 400, "unknown_app")
    assert response.json()["error"]["field"] == "appSyncableRows[1].appId"
    assert not AppRow.objects.exists()  # not even the legitimate row before it


def test_unknown_table_refuses_the_request_under_reject(api: APIClient, alice_token: str, notes_app: Any) -> None:
    rows = [entry("notes", "notes", "n1", BASE_MS, "nodeA"), entry("notes", "nope", "x1", BASE_MS, "nodeB")]
    with _sync_settings(UNKNOWN_APP_ROWS="reject"):
        response = exchange(api, NOTES_URL, body(rows=rows), bearer(alice_token))
        assert_error(response, 400, "unknown_table")
        assert "nope" in response.json()["error"]["message"]
        assert not AppRow.objects.exists()
        exchange_ok(exchange(api, NOTES_URL, body(rows=rows[:1]), bearer(alice_token)))  # still serving
    assert AppRow.objects.count() == 1


def test_unknown_table_halts_its_node_by_default_and_the_refusal_is_recorded(
    api: APIClient, alice: Any, alice_token: str, notes_app: Any
) -> None:
    rows = [entry("notes", "notes", "n1", BASE_MS, "nodeA"), entry("notes", "nope", "x1", BASE_MS, "nodeB")]
    data = exchange_ok(exchange(api, NOTES_URL, body(rows=rows), bearer(alice_token)))
    assert data["responderWatermarks"] == {"nodeA": hlc(BASE_MS)}  # nodeB halted, not covered
    assert AppRow.objects.count() == 1
    activity = ChannelActivity.objects.get(owner=alice, channel="notes")
    assert "nope" in activity.last_error and "nodeB" in activity.last_error


def test_app_channel_halts_the_node_of_another_apps_rows_by_default(
    api: APIClient, alice_token: str, notes_app: Any, todo_app: Any
) -> None:
    foreign = entry("todo", "items", "t1", BASE_MS, "nodeB")
    own = entry("notes", "notes", "n1", BASE_MS, "nodeA")
    data = exchange_ok(exchange(api, NOTES_URL, body(rows=[foreign, own]), bearer(alice_token)))

    assert list(AppRow.objects.values_list("app_id", flat=True)) == ["notes"]
    assert data["responderWatermarks"] == {"nodeA": hlc(BASE_MS)}  # nodeB not covered
    # todo's own channel holds nothing either.
    data = exchange_ok(exchange(api, "/apps/todo/sync/exchange", body(), bearer(alice_token)))
    assert data["appSyncableRows"] == [] and data["responderWatermarks"] == {}


def test_app_channel_does_not_send_another_apps_rows(
    api: APIClient, alice_token: str, notes_app: Any, todo_app: Any
) -> None:
    exchange_ok(exchange(api, "/apps/todo/sync/exchange", body(rows=[entry("todo", "items", "t1", BASE_MS)]),
                         bearer(alice_token)))
    data = exchange_ok(exchange(api, NOTES_URL, body(), bearer(alice_token)))
    assert data["appSyncableRows"] == [] and data["responderWatermarks"] == {}


def test_unknown_table_halts_that_node_only_under_halt(
    api: APIClient, alice_token: str, notes_app: Any
) -> None:
    rows = [
        entry("notes", "nope", "x1", BASE_MS, "nodeB"),
        entry("notes", "notes", "n2", BASE_MS + 1, "nodeB"),  # after the failure: halted
        entry("notes", "notes", "n1", BASE_MS, "nodeA"),
    ]
    data = exchange_ok(exchange(api, NOTES_URL, body(rows=rows), bearer(alice_token)))
    assert list(AppRow.objects.values_list("data__id", flat=True)) == ["n1"]
    assert set(data["responderWatermarks"]) == {"nodeA"}


def test_unregistered_app_is_404(api: APIClient, alice_token: str) -> None:
    response = exchange(api, "/apps/ghost/sync/exchange", body(rows=[entry("ghost", "t", "1", BASE_MS)]),
                        bearer(alice_token))
    assert_error(response, 404, "unknown_app")
    _nothing_applied()


@pytest.mark.parametrize("url", ["/sync/exchange", NOTES_URL])
def test_far_future_hlc_is_refused_and_the_rest_answers(
    api: APIClient, alice_token: str, notes_app: Any, url: str
) -> None:
    future = now_ms() + 2 * DAY_MS
    if url == NOTES_URL:
        payload = body(rows=[entry("notes", "notes", "bad", future, "nodeF"),
                             entry("notes", "notes", "good", BASE_MS, "nodeA")])
    else:
        payload = body(records=[record("01HREC000000000000000FUTUR", future, "nodeF"),
                                record("01HREC0000000000000000000A", BASE_MS, "nodeA")])
    data = exchange_ok(exchange(api, url, payload, bearer(alice_token)))

    assert data["responderWatermarks"] == {"nodeA": hlc(BASE_MS)}
    if url == NOTES_URL:
        assert list(AppRow.objects.values_list("data__id", flat=True)) == ["good"]
    else:
        assert list(SharedRecord.objects.values_list("record_id", flat=True)) == ["01HREC0000000000000000000A"]
    # The refused HLC did not move the server's clock: a normal write still works after it.
    later = exchange_ok(exchange(api, "/sync/exchange",
                                 body(records=[record("01HREC0000000000000000000Z", BASE_MS + 5, "nodeZ")]),
                                 bearer(alice_token)))
    assert "nodeF" not in later["responderWatermarks"]


# -- malformed bodies: 400 naming the field, nothing applied ------------------------------------

VALID = record("01HREC0000000000000000000A", BASE_MS, "nodeA")
VALID_ROW = entry("notes", "notes", "n1", BASE_MS, "nodeA")


def _without(d: dict[str, Any], key: str) -> dict[str, Any]:
    return {k: v for k, v in d.items() if k != key}


MALFORMED = [
    pytest.param(b"{not json", "body", id="invalid-json"),
    pytest.param(b"", "body", id="empty-body"),
    pytest.param(b"[]", "body", id="array-body"),
    pytest.param(b'"hello"', "body", id="string-body"),
    pytest.param(b"{}", "watermarks", id="missing-watermarks"),
    pytest.param(b'{"records": [], "limit": 5}', "watermarks", id="missing-watermarks-with-others"),
    pytest.param(b'{"watermarks": []}', "watermarks", id="watermarks-array"),
    pytest.param(b'{"watermarks": {"nodeA": {"wallTime": "1", "counter": 0, "nodeId": "nodeA"}}}',
                 "watermarks.nodeA.wallTime", id="watermark-wall-string"),
    pytest.param(b'{"watermarks": {"nodeA": {"wallTime": 1, "counter": -1, "nodeId": "nodeA"}}}',
                 "watermarks.nodeA.counter", id="watermark-negative-counter"),
    pytest.param(b'{"watermarks": {}, "records": {}}', "records", id="records-object"),
    pytest.param(b'{"watermarks": {}, "appSyncableRows": "x"}', "appSyncableRows", id="rows-string"),
    pytest.param(b'{"watermarks": {}, "limit": "5"}', "limit", id="limit-string"),
    pytest.param(b'{"watermarks": {}, "limit": true}', "limit", id="limit-bool"),
    pytest.param(b'{"watermarks": {}, "limit": 1.5}', "limit", id="limit-float"),
    pytest.param(b'{"watermarks": {}, "limit": 0}', "limit", id="limit-zero"),
    pytest.param(b'{"watermarks": {}, "limit": -3}', "limit", id="limit-negative"),
    pytest.param(b'{"watermarks": {}, "countPending": 1}', "countPending", id="count-pending-int"),
    pytest.param(body(records=[VALID, _without(VALID, "updatedAt")]), "records[1].updatedAt",
                 id="valid-record-then-missing-updatedAt"),
    pytest.param(body(records=[VALID, {**VALID, "id": "01HREC0000000000000000000B", "sizeBytes": "3"}]),
                 "records[1].sizeBytes", id="valid-record-then-wrong-type"),
    pytest.param(body(records=[VALID, "not a record"]), "records[1]", id="valid-record-then-string"),
    pytest.param(body(records=[{**VALID, "kind": "folder"}]), "records[0].kind", id="record-kind"),
]

MALFORMED_ROWS = [
    pytest.param(body(rows=[{**VALID_ROW, "op": "upsert"}]), "appSyncableRows[0].op", id="unknown-op"),
    pytest.param(body(rows=[VALID_ROW, {**VALID_ROW, "op": "upsert"}]), "appSyncableRows[1].op",
                 id="valid-row-then-unknown-op"),
    pytest.param(body(rows=[VALID_ROW, _without(VALID_ROW, "timestamp")]), "appSyncableRows[1].timestamp",
                 id="valid-row-then-missing-timestamp"),
    pytest.param(body(rows=[VALID_ROW, {**VALID_ROW, "table": 7}]), "appSyncableRows[1].table",
                 id="valid-row-then-table-int"),
    pytest.param(body(rows=[{**VALID_ROW, "row": None}]), "appSyncableRows[0].row", id="insert-without-row"),
]


@pytest.mark.parametrize(("payload", "field"), MALFORMED)
@pytest.mark.parametrize("url", [*DRIVE_EXCHANGE_URLS, NOTES_URL])
def test_malformed_body_is_refused_whole(
    api: APIClient, alice_token: str, notes_app: Any, url: str, payload: bytes, field: str
) -> None:
    response = exchange(api, url, payload, bearer(alice_token))
    assert_error(response, 400, field=field)
    _nothing_applied()


@pytest.mark.parametrize(("payload", "field"), MALFORMED_ROWS)
def test_malformed_rows_are_refused_whole(
    api: APIClient, alice_token: str, notes_app: Any, payload: bytes, field: str
) -> None:
    response = exchange(api, NOTES_URL, payload, bearer(alice_token))
    assert_error(response, 400, field=field)
    _nothing_applied()


def test_invalid_json_has_its_own_code(api: APIClient, alice_token: str) -> None:
    assert_error(exchange(api, "/sync/exchange", b"{oops", bearer(alice_token)), 400, "invalid_json", "body")


def test_unknown_fields_are_ignored(api: APIClient, alice_token: str) -> None:
    payload = json.dumps({"watermarks": {}, "records": [{**VALID, "extra": 1}], "future": True}).encode()
    exchange_ok(exchange(api, "/sync/exchange", payload, bearer(alice_token)))
    assert SharedRecord.objects.count() == 1


def test_wrong_method_has_the_error_body(api: APIClient, alice_token: str) -> None:
    assert_error(api.get("/sync/exchange", headers=bearer(alice_token)), 405, "method_not_allowed")


# -- limits ------------------------------------------------------------------------------------


def _sync_settings(**overrides: Any) -> Any:
    return override_settings(STARKEEP_SYNC={"NODE_ID": "cloud", **overrides})


@pytest.mark.parametrize("url", [*DRIVE_EXCHANGE_URLS, NOTES_URL])
def test_body_over_max_request_bytes_is_413(api: APIClient, alice_token: str, notes_app: Any, url: str) -> None:
    payload = body(records=[VALID], rows=[VALID_ROW])
    with _sync_settings(MAX_REQUEST_BYTES=len(payload) - 1):
        assert_error(exchange(api, url, payload, bearer(alice_token)), 413, "payload_too_large")
        _nothing_applied()
    with _sync_settings(MAX_REQUEST_BYTES=len(payload)):
        exchange_ok(exchange(api, url, payload, bearer(alice_token)))


@pytest.mark.parametrize("url", ["/sync/exchange", NOTES_URL])
def test_too_many_items_is_413(api: APIClient, alice_token: str, notes_app: Any, url: str) -> None:
    records = [record(f"01HREC000000000000000000{i:02d}", BASE_MS + i) for i in range(3)]
    rows = [entry("notes", "notes", f"n{i}", BASE_MS + i) for i in range(3)]
    payload = body(records=records) if url == "/sync/exchange" else body(rows=rows)
    with _sync_settings(MAX_ITEMS_PER_REQUEST=2):
        assert_error(exchange(api, url, payload, bearer(alice_token)), 413, "too_many_items")
        _nothing_applied()
    with _sync_settings(MAX_ITEMS_PER_REQUEST=3):
        exchange_ok(exchange(api, url, payload, bearer(alice_token)))


@pytest.mark.parametrize("url", [*DRIVE_EXCHANGE_URLS, NOTES_URL])
def test_limit_above_max_page_limit_is_clamped(api: APIClient, alice_token: str, notes_app: Any, url: str) -> None:
    """As the TypeScript engine expects (it asks with the page size it pushes with): clamped, hasMore exact."""
    if url == "/apps/notes/sync/exchange":
        payload = body(rows=[entry("notes", "notes", f"n{i}", BASE_MS + i) for i in range(7)])
        stream = "appSyncableRows"
    else:
        payload = body(records=[record(f"01HREC000000000000000000{i:02d}", BASE_MS + i) for i in range(7)])
        stream = "records"
    exchange_ok(exchange(api, url, payload, bearer(alice_token)))
    with _sync_settings(MAX_PAGE_LIMIT=5):
        data = exchange_ok(exchange(api, url, body(limit=6), bearer(alice_token)))
        assert len(data[stream]) == 5 and data["hasMore"] is True
        data = exchange_ok(exchange(api, url, body(limit=500), bearer(alice_token)))
        assert len(data[stream]) == 5


def test_default_page_limit_applies_without_limit(api: APIClient, alice_token: str) -> None:
    records = [record(f"01HREC000000000000000000{i:02d}", BASE_MS + i) for i in range(3)]
    exchange_ok(exchange(api, "/sync/exchange", body(records=records), bearer(alice_token)))
    with _sync_settings(DEFAULT_PAGE_LIMIT=2):
        data = exchange_ok(exchange(api, "/sync/exchange", body(), bearer(alice_token)))
    assert len(data["records"]) == 2 and data["hasMore"] is True


def _asking(payload: bytes) -> bytes:
    return json.dumps({**json.loads(payload), "countPending": True}).encode()


@pytest.mark.parametrize("url", ["/sync/exchange", NOTES_URL])
def test_pending_is_counted_only_when_the_request_asks(
    api: APIClient, alice_token: str, notes_app: Any, url: str
) -> None:
    if url == NOTES_URL:
        payload = body(rows=[entry("notes", "notes", f"n{i}", BASE_MS + i) for i in range(5)])
        stream = "appSyncableRows"
    else:
        payload = body(records=[record(f"01HREC000000000000000000{i:02d}", BASE_MS + i) for i in range(5)])
        stream = "records"
    exchange_ok(exchange(api, url, payload, bearer(alice_token)))

    asked = exchange_ok(exchange(api, url, _asking(body(limit=2)), bearer(alice_token)))
    assert len(asked[stream]) == 2 and asked["hasMore"] is True and asked["pending"] == 3
    # Not asked: the backlog is not counted (a requester carries its first count forward).
    silent = exchange_ok(exchange(api, url, body(limit=2), bearer(alice_token)))
    assert silent["hasMore"] is True and "pending" not in silent
    # A page that is not cut has nothing pending; said only when asked.
    last = exchange_ok(exchange(api, url, body(limit=5), bearer(alice_token)))
    assert last["hasMore"] is False and "pending" not in last
    last = exchange_ok(exchange(api, url, _asking(body(limit=5)), bearer(alice_token)))
    assert last["hasMore"] is False and last["pending"] == 0
    with _sync_settings(COUNT_PENDING=False):
        off = exchange_ok(exchange(api, url, _asking(body(limit=2)), bearer(alice_token)))
    assert off["hasMore"] is True and "pending" not in off
