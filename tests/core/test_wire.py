"""The JSON wire format of PROTOCOL §4: round trips and strict validation."""

from __future__ import annotations

import copy
import json
from typing import Any

import pytest

from starkeep_sync import WireFormatError
from starkeep_sync.constants import MAX_COUNTER, MAX_NODE_ID_LENGTH, MAX_WALL_TIME
from starkeep_sync.hlc import HLCTimestamp
from starkeep_sync.records import AppSyncableRowEntry, DataRecord
from starkeep_sync.wire import (
    SyncExchangeRequest,
    SyncExchangeResponse,
    entry_from_wire,
    entry_to_wire,
    hlc_from_wire,
    hlc_to_wire,
    record_from_wire,
    record_to_wire,
)

# The request and response examples of PROTOCOL §4, verbatim (the comment
# placeholders in the document stand for empty lists).
REQUEST_EXAMPLE = """
{"watermarks": {"nodeA": {"wallTime": 1000, "counter": 0, "nodeId": "nodeA"}},
 "records": [],
 "appSyncableRows": [],
 "limit": 1000}
"""
RESPONSE_EXAMPLE = """
{"records": [], "appSyncableRows": [],
 "responderWatermarks": {"nodeB": {"wallTime": 2000, "counter": 3, "nodeId": "nodeB"}},
 "hasMore": false}
"""
ENTRY_EXAMPLE = """
{"timestamp": {"wallTime": 1000, "counter": 0, "nodeId": "nodeA"},
 "appId": "notes", "table": "notes", "op": "insert",
 "row": {"id": "n1", "body": "hi", "updated_at": "0000000003e8:0000:nodeA"},
 "where": null}
"""

HASH = "ab" * 32


def hlc(wall: int = 1000, counter: int = 0, node: str = "nodeA") -> dict[str, Any]:
    return {"wallTime": wall, "counter": counter, "nodeId": node}


def wire_record(**overrides: Any) -> dict[str, Any]:
    rec: dict[str, Any] = {
        "id": "01HZX3Q7J8K9M0N1P2Q3R4S5T6",
        "kind": "data",
        "type": "image/jpeg",
        "createdAt": hlc(1000, 0),
        "updatedAt": hlc(1500, 2),
        "deletedAt": None,
        "version": 3,
        "contentHash": HASH,
        "objectStorageKey": f"shared/image/{HASH[:2]}/{HASH}",
        "mimeType": "image/jpeg",
        "sizeBytes": 12345,
        "originalFilename": "cat.jpg",
        "originAppId": "photos",
        "parentId": None,
        "label": "a cat",
    }
    rec.update(overrides)
    return rec


def wire_entry(**overrides: Any) -> dict[str, Any]:
    entry = json.loads(ENTRY_EXAMPLE)
    entry.update(overrides)
    return entry


def request_with(**overrides: Any) -> dict[str, Any]:
    body = json.loads(REQUEST_EXAMPLE)
    body.update(overrides)
    return body


def response_with(**overrides: Any) -> dict[str, Any]:
    body = json.loads(RESPONSE_EXAMPLE)
    body.update(overrides)
    return body


def field_of(parse: Any, data: Any) -> str:
    with pytest.raises(WireFormatError) as info:
        parse(data)
    err = info.value
    assert err.status == 400
    assert err.code == "invalid_request"
    assert err.field is not None
    assert err.field in str(err)
    return err.field


# -- round trips -------------------------------------------------------------------


def test_request_example_round_trips() -> None:
    data = json.loads(REQUEST_EXAMPLE)
    req = SyncExchangeRequest.from_wire(data)
    assert req.watermarks == {"nodeA": HLCTimestamp(1000, 0, "nodeA")}
    assert isinstance(req.watermarks["nodeA"], HLCTimestamp)
    assert req.records == []
    assert req.app_syncable_rows == []
    assert req.limit == 1000
    assert req.to_wire() == data
    assert json.loads(json.dumps(req.to_wire())) == data


def test_response_example_round_trips() -> None:
    data = json.loads(RESPONSE_EXAMPLE)
    resp = SyncExchangeResponse.from_wire(data)
    assert resp.responder_watermarks == {"nodeB": HLCTimestamp(2000, 3, "nodeB")}
    assert resp.has_more is False
    assert resp.records == []
    assert resp.app_syncable_rows == []
    assert resp.to_wire() == data


def test_response_has_more_true() -> None:
    resp = SyncExchangeResponse.from_wire(response_with(hasMore=True))
    assert resp.has_more is True
    assert resp.to_wire()["hasMore"] is True


def test_request_without_optional_fields() -> None:
    req = SyncExchangeRequest.from_wire({"watermarks": {}})
    assert req == SyncExchangeRequest()
    assert req.limit is None
    assert "limit" not in req.to_wire()
    assert SyncExchangeRequest.from_wire({"watermarks": {}, "limit": None}).limit is None


def test_record_round_trip() -> None:
    data = wire_record()
    rec = record_from_wire(data, "records[0]")
    assert rec == DataRecord(
        id="01HZX3Q7J8K9M0N1P2Q3R4S5T6",
        type="image/jpeg",
        created_at=HLCTimestamp(1000, 0, "nodeA"),
        updated_at=HLCTimestamp(1500, 2, "nodeA"),
        content_hash=HASH,
        object_storage_key=f"shared/image/{HASH[:2]}/{HASH}",
        size_bytes=12345,
        origin_app_id="photos",
        version=3,
        mime_type="image/jpeg",
        original_filename="cat.jpg",
        label="a cat",
    )
    assert record_to_wire(rec) == data


def test_tombstone_record_round_trip() -> None:
    data = wire_record(deletedAt=hlc(1500, 2), mimeType=None, originalFilename=None, label=None,
                       parentId="01HZX3Q7J8K9M0N1P2Q3R4S5T0")
    rec = record_from_wire(data, "r")
    assert rec.deleted_at == HLCTimestamp(1500, 2, "nodeA")
    assert rec.is_deleted
    assert rec.parent_id == "01HZX3Q7J8K9M0N1P2Q3R4S5T0"
    assert rec.mime_type is None
    assert record_to_wire(rec) == data


def test_records_and_entries_round_trip_in_request_and_response() -> None:
    update = wire_entry(op="update", row={"body": "bye"}, where={"id": "n1"},
                        timestamp=hlc(1001, 0))
    delete = wire_entry(op="delete", row={"id": "n1"}, where=None, timestamp=hlc(1002, 0))
    records = [wire_record(), wire_record(id="r2", deletedAt=hlc(1500, 2))]
    entries = [json.loads(ENTRY_EXAMPLE), update, delete]
    body = request_with(records=records, appSyncableRows=entries)
    req = SyncExchangeRequest.from_wire(copy.deepcopy(body))
    assert [r.id for r in req.records] == ["01HZX3Q7J8K9M0N1P2Q3R4S5T6", "r2"]
    assert [e.op for e in req.app_syncable_rows] == ["insert", "update", "delete"]
    assert req.app_syncable_rows[1].where == {"id": "n1"}
    assert req.to_wire() == body

    resp_body = response_with(records=records, appSyncableRows=entries, hasMore=True)
    resp = SyncExchangeResponse.from_wire(copy.deepcopy(resp_body))
    assert resp.to_wire() == resp_body
    # And through real JSON text.
    assert SyncExchangeResponse.from_wire(json.loads(json.dumps(resp.to_wire()))) == resp


def test_entry_example_parses() -> None:
    e = entry_from_wire(json.loads(ENTRY_EXAMPLE), "appSyncableRows[0]")
    assert e == AppSyncableRowEntry(
        timestamp=HLCTimestamp(1000, 0, "nodeA"),
        app_id="notes",
        table="notes",
        op="insert",
        row={"id": "n1", "body": "hi", "updated_at": "0000000003e8:0000:nodeA"},
        where=None,
    )
    assert entry_to_wire(e) == json.loads(ENTRY_EXAMPLE)


def test_delete_entry_with_where_only() -> None:
    e = entry_from_wire(wire_entry(op="delete", row=None, where={"id": "n1"}), "e")
    assert e.op == "delete"
    assert e.row is None
    assert entry_to_wire(e)["where"] == {"id": "n1"}


def test_hlc_wire_round_trip_extremes() -> None:
    longest = "n" * MAX_NODE_ID_LENGTH
    for value in (HLCTimestamp(0, 0, "a"), HLCTimestamp(MAX_WALL_TIME, MAX_COUNTER, longest)):
        assert hlc_from_wire(hlc_to_wire(value), "x") == value


def test_unknown_fields_are_ignored() -> None:
    body = request_with(
        futureField={"x": 1},
        records=[wire_record(somethingNew=True)],
        appSyncableRows=[wire_entry(extra=[1, 2])],
    )
    body["watermarks"]["nodeA"]["precision"] = "ms"
    req = SyncExchangeRequest.from_wire(body)
    assert req.watermarks == {"nodeA": HLCTimestamp(1000, 0, "nodeA")}
    assert len(req.records) == 1
    assert len(req.app_syncable_rows) == 1
    out = req.to_wire()
    assert "futureField" not in out
    assert "somethingNew" not in out["records"][0]

    resp = SyncExchangeResponse.from_wire(response_with(serverVersion="9"))
    assert "serverVersion" not in resp.to_wire()


def test_record_kind_defaults_to_data() -> None:
    data = wire_record()
    del data["kind"]
    assert record_from_wire(data, "r").kind == "data"


# -- refusals: request ---------------------------------------------------------------


@pytest.mark.parametrize("body", [[], "x", None, 3, [{"watermarks": {}}]])
def test_non_object_body(body: Any) -> None:
    assert field_of(SyncExchangeRequest.from_wire, body) == "body"
    assert field_of(SyncExchangeResponse.from_wire, body) == "body"


def test_missing_watermarks() -> None:
    assert field_of(SyncExchangeRequest.from_wire, {"records": []}) == "watermarks"


@pytest.mark.parametrize("value", [[], None, "nodeA", 1])
def test_watermarks_not_object(value: Any) -> None:
    assert field_of(SyncExchangeRequest.from_wire, {"watermarks": value}) == "watermarks"


@pytest.mark.parametrize(
    ("key", "bad"),
    [
        ("wallTime", -1),
        ("wallTime", 1.0),
        ("wallTime", 1000.5),
        ("wallTime", "1000"),
        ("wallTime", None),
        ("wallTime", True),
        ("wallTime", False),
        ("wallTime", MAX_WALL_TIME + 1),
        ("counter", -1),
        ("counter", 0.0),
        ("counter", "0"),
        ("counter", True),
        ("counter", MAX_COUNTER + 1),
        ("counter", None),
    ],
)
def test_bad_hlc_number(key: str, bad: Any) -> None:
    value = hlc()
    value[key] = bad
    body = request_with(watermarks={"nodeA": value})
    assert field_of(SyncExchangeRequest.from_wire, body) == f"watermarks.nodeA.{key}"


@pytest.mark.parametrize("key", ["wallTime", "counter", "nodeId"])
def test_hlc_missing_part(key: str) -> None:
    value = hlc()
    del value[key]
    body = request_with(watermarks={"nodeA": value})
    assert field_of(SyncExchangeRequest.from_wire, body) == f"watermarks.nodeA.{key}"


@pytest.mark.parametrize("value", [[1000, 0, "nodeA"], "0000000003e8:0000:nodeA", None, 5])
def test_hlc_not_object(value: Any) -> None:
    body = request_with(watermarks={"nodeA": value})
    assert field_of(SyncExchangeRequest.from_wire, body) == "watermarks.nodeA"


@pytest.mark.parametrize(
    "node",
    ["", "n" * (MAX_NODE_ID_LENGTH + 1), "node:A", "node\x00A", "node\nA", "node\x1fA", "node\x7f", 5, None],
)
def test_bad_node_id_in_hlc(node: Any) -> None:
    body = request_with(watermarks={"nodeA": hlc(node=node)})
    assert field_of(SyncExchangeRequest.from_wire, body) == "watermarks.nodeA.nodeId"


@pytest.mark.parametrize("node", ["", "n" * (MAX_NODE_ID_LENGTH + 1), "a:b", "a\tb"])
def test_bad_node_id_as_watermark_key(node: str) -> None:
    body = request_with(watermarks={node: hlc()})
    assert field_of(SyncExchangeRequest.from_wire, body).startswith("watermarks")


def test_longest_allowed_node_id_is_accepted() -> None:
    node = "n" * MAX_NODE_ID_LENGTH
    req = SyncExchangeRequest.from_wire(request_with(watermarks={node: hlc(node=node)}))
    assert req.watermarks[node].node_id == node


@pytest.mark.parametrize("value", [{}, "x", 1, True])
def test_records_not_a_list(value: Any) -> None:
    assert field_of(SyncExchangeRequest.from_wire, request_with(records=value)) == "records"
    assert field_of(SyncExchangeResponse.from_wire, response_with(records=value)) == "records"


@pytest.mark.parametrize("value", [{}, "x", 1])
def test_app_rows_not_a_list(value: Any) -> None:
    body = request_with(appSyncableRows=value)
    assert field_of(SyncExchangeRequest.from_wire, body) == "appSyncableRows"


@pytest.mark.parametrize("missing", ["id", "type", "updatedAt", "createdAt"])
def test_record_missing_required_field(missing: str) -> None:
    rec = wire_record()
    del rec[missing]
    body = request_with(records=[wire_record(), rec])
    assert field_of(SyncExchangeRequest.from_wire, body) == f"records[1].{missing}"


@pytest.mark.parametrize(
    ("key", "value"),
    [
        ("id", ""),
        ("id", None),
        ("id", 7),
        ("type", "jpeg"),
        ("type", None),
        ("kind", "file"),
        ("kind", None),
        ("sizeBytes", -1),
        ("sizeBytes", "10"),
        ("sizeBytes", 1.5),
        ("sizeBytes", True),
        ("version", "1"),
        ("version", -1),
        ("mimeType", 5),
        ("label", ["x"]),
        # Every limit and every text field, so the one-pass check of a valid record
        # (``_good_record``) can be seen to let none of them through.
        ("id", "i" * 257),
        ("id", "a\x00b"),
        ("type", "image/" + "j" * 250),
        ("type", "image/\x00"),
        ("contentHash", "h" * 257),
        ("contentHash", None),
        ("contentHash", "a\x00"),
        ("objectStorageKey", "k" * 1025),
        ("objectStorageKey", 3),
        ("originAppId", "o" * 256),
        ("originAppId", None),
        ("mimeType", "m" * 256),
        ("mimeType", "text/\x00"),
        ("originalFilename", "f" * 4097),
        ("originalFilename", "a\x00.jpg"),
        ("parentId", "p" * 257),
        ("parentId", 9),
        ("label", "l" * 4097),
        ("label", "\x00"),
        ("version", 2**31),
        ("version", True),
        ("sizeBytes", 2**63),
        ("createdAt", None),
        ("deletedAt", "gone"),
    ],
)
@pytest.mark.parametrize("parse", [SyncExchangeRequest.from_wire, SyncExchangeResponse.from_wire])
def test_record_bad_field(key: str, value: Any, parse: Any) -> None:
    body = request_with(records=[wire_record(), wire_record(**{key: value})])
    assert field_of(parse, body) == f"records[1].{key}"


@pytest.mark.parametrize("overrides", [
    {}, {"deletedAt": hlc(2000, 0)}, {"mimeType": None, "originalFilename": None, "label": None},
    {"parentId": "01HZX3Q7J8K9M0N1P2Q3R4S5T7"}, {"version": 0, "sizeBytes": 0},
    {"id": "i" * 256, "type": "t/" + "x" * 253, "originalFilename": "f" * 4096},
])
def test_valid_records_parse_alike_on_both_paths(overrides: dict[str, Any]) -> None:
    rec = wire_record(**overrides)
    fast = SyncExchangeResponse.from_wire(response_with(records=[rec])).records[0]
    checked = record_from_wire(rec, "records[0]")
    assert fast == checked and record_to_wire(fast) == {**rec, "kind": "data"}


def test_record_bad_hlc_names_nested_field() -> None:
    body = request_with(records=[wire_record(updatedAt=hlc(counter=-3))])
    assert field_of(SyncExchangeRequest.from_wire, body) == "records[0].updatedAt.counter"
    body = request_with(records=[wire_record(deletedAt=hlc(node="a:b"))])
    assert field_of(SyncExchangeRequest.from_wire, body) == "records[0].deletedAt.nodeId"
    body = request_with(records=[wire_record(createdAt="0000000003e8:0000:nodeA")])
    assert field_of(SyncExchangeRequest.from_wire, body) == "records[0].createdAt"


def test_record_not_an_object() -> None:
    body = request_with(records=[wire_record(), "r2"])
    assert field_of(SyncExchangeRequest.from_wire, body) == "records[1]"


@pytest.mark.parametrize("op", ["upsert", "INSERT", "", None, 1])
def test_entry_unknown_op(op: Any) -> None:
    body = request_with(appSyncableRows=[wire_entry(op=op)])
    assert field_of(SyncExchangeRequest.from_wire, body) == "appSyncableRows[0].op"


def test_entry_update_without_where() -> None:
    body = request_with(appSyncableRows=[wire_entry(op="update", row={"body": "x"}, where=None)])
    assert field_of(SyncExchangeRequest.from_wire, body) == "appSyncableRows[0].where"
    entry = wire_entry(op="update", row={"body": "x"})
    del entry["where"]
    body = request_with(appSyncableRows=[entry])
    assert field_of(SyncExchangeRequest.from_wire, body) == "appSyncableRows[0].where"


def test_entry_update_without_row() -> None:
    body = request_with(appSyncableRows=[wire_entry(op="update", row=None, where={"id": "n1"})])
    assert field_of(SyncExchangeRequest.from_wire, body) == "appSyncableRows[0].row"


def test_entry_insert_without_row() -> None:
    body = request_with(appSyncableRows=[wire_entry(row=None)])
    assert field_of(SyncExchangeRequest.from_wire, body) == "appSyncableRows[0].row"


def test_entry_delete_with_neither_row_nor_where() -> None:
    body = request_with(appSyncableRows=[wire_entry(op="delete", row=None, where=None)])
    assert field_of(SyncExchangeRequest.from_wire, body).startswith("appSyncableRows[0]")


@pytest.mark.parametrize(
    ("key", "value", "field"),
    [
        ("row", [1], "row"),
        ("where", "id=1", "where"),
        ("appId", "", "appId"),
        ("appId", None, "appId"),
        ("table", "", "table"),
        ("table", 3, "table"),
        ("timestamp", None, "timestamp"),
        ("timestamp", hlc(wall=-5), "timestamp.wallTime"),
    ],
)
def test_entry_bad_field(key: str, value: Any, field: str) -> None:
    body = request_with(appSyncableRows=[wire_entry(**{key: value})])
    assert field_of(SyncExchangeRequest.from_wire, body) == f"appSyncableRows[0].{field}"


def test_entry_missing_timestamp() -> None:
    entry = wire_entry()
    del entry["timestamp"]
    body = request_with(appSyncableRows=[entry])
    assert field_of(SyncExchangeRequest.from_wire, body) == "appSyncableRows[0].timestamp"


@pytest.mark.parametrize("limit", [0, -1])
def test_limit_below_one(limit: int) -> None:
    assert field_of(SyncExchangeRequest.from_wire, request_with(limit=limit)) == "limit"


@pytest.mark.parametrize("limit", ["10", 10.0, 1.5, True, [10], {}])
def test_limit_not_an_integer(limit: Any) -> None:
    assert field_of(SyncExchangeRequest.from_wire, request_with(limit=limit)) == "limit"


def test_limit_one_is_accepted() -> None:
    assert SyncExchangeRequest.from_wire(request_with(limit=1)).limit == 1


# -- refusals: response ----------------------------------------------------------------


@pytest.mark.parametrize("value", ["false", 0, 1, None, [], {}])
def test_response_has_more_not_bool(value: Any) -> None:
    assert field_of(SyncExchangeResponse.from_wire, response_with(hasMore=value)) == "hasMore"


def test_response_bad_watermarks() -> None:
    body = response_with(responderWatermarks=[])
    assert field_of(SyncExchangeResponse.from_wire, body) == "responderWatermarks"
    body = response_with(responderWatermarks={"nodeB": hlc(wall=True, node="nodeB")})
    assert field_of(SyncExchangeResponse.from_wire, body) == "responderWatermarks.nodeB.wallTime"


def test_response_bad_record() -> None:
    body = response_with(records=[wire_record(sizeBytes=-10)])
    assert field_of(SyncExchangeResponse.from_wire, body) == "records[0].sizeBytes"


def test_wire_format_error_is_a_value_error() -> None:
    with pytest.raises(ValueError):
        SyncExchangeRequest.from_wire({"watermarks": None})


def test_node_ids_seen_before_do_not_weaken_the_hlc_checks() -> None:
    from starkeep_sync.wire import hlc_from_wire

    good = {"wallTime": 1, "counter": 0, "nodeId": "seen-node"}
    assert hlc_from_wire(good, "h") == (1, 0, "seen-node")
    assert hlc_from_wire(good, "h") == (1, 0, "seen-node")  # now on the fast path
    for bad, field in [({**good, "counter": -1}, "h.counter"), ({**good, "wallTime": 1.0}, "h.wallTime"),
                       ({**good, "counter": 1 << 16}, "h.counter"), ({**good, "nodeId": {"x": 1}}, "h.nodeId"),
                       ({**good, "nodeId": "seen:node"}, "h.nodeId"), ({**good, "wallTime": True}, "h.wallTime")]:
        with pytest.raises(WireFormatError) as err:
            hlc_from_wire(bad, "h")
        assert err.value.field == field
