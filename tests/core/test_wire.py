"""The JSON wire format of PROTOCOL §4: round trips and strict validation."""

from __future__ import annotations

import copy
import json
from typing import Any

import pytest

from starkeep_sync import WireFormatError
from starkeep_sync.core.constants import MAX_COUNTER, MAX_NODE_ID_LENGTH, MAX_WALL_TIME
from starkeep_sync.core.hlc import HLCTimestamp
from starkeep_sync.core.records import AppSyncableRowEntry, DataRecord
from starkeep_sync.core.wire import (
    MAX_JSON_DEPTH,
    MAX_SIZE_BYTES,
    MAX_VERSION,
    MalformedJSONError,
    SyncExchangeRequest,
    SyncExchangeResponse,
    decode_json,
    decode_request,
    decode_response,
    encode_json,
    encode_request,
    encode_response,
    entry_from_wire,
    entry_to_wire,
    hlc_from_wire,
    hlc_to_wire,
    json_schema_components,
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
        # Every limit and every text field, so the one test of a valid record's text
        # (``SharedRecordWire.__post_init__``) can be seen to let none of them through.
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
    from starkeep_sync.core.wire import hlc_from_wire

    good = {"wallTime": 1, "counter": 0, "nodeId": "seen-node"}
    assert hlc_from_wire(good, "h") == (1, 0, "seen-node")
    assert hlc_from_wire(good, "h") == (1, 0, "seen-node")  # now on the fast path
    for bad, field in [({**good, "counter": -1}, "h.counter"), ({**good, "wallTime": 1.0}, "h.wallTime"),
                       ({**good, "counter": 1 << 16}, "h.counter"), ({**good, "nodeId": {"x": 1}}, "h.nodeId"),
                       ({**good, "nodeId": "seen:node"}, "h.nodeId"), ({**good, "wallTime": True}, "h.wallTime")]:
        with pytest.raises(WireFormatError) as err:
            hlc_from_wire(bad, "h")
        assert err.value.field == field


# -- bytes: decode_request / encode_request, decode_response / encode_response ----------------------


def as_bytes(body: Any) -> bytes:
    return json.dumps(body).encode()


def test_request_bytes_round_trip() -> None:
    body = request_with(records=[wire_record()], appSyncableRows=[wire_entry()], countPending=True)
    req = decode_request(as_bytes(body))
    assert req == SyncExchangeRequest.from_wire(body)
    assert json.loads(encode_request(req)) == body
    assert decode_request(encode_request(req)) == req
    # Compact, members in the order every sender writes them: the bytes a signature covers.
    assert encode_request(req) == json.dumps(req.to_wire(), separators=(",", ":")).encode()


def test_response_bytes_round_trip_with_wire_records_after_records() -> None:
    resp = SyncExchangeResponse.from_wire(response_with(records=[wire_record()], hasMore=True, pending=4))
    resp.wire_records = [wire_record(id="r2")]
    resp.wire_rows = [wire_entry()]
    body = encode_response(resp)
    assert json.loads(body) == resp.to_wire()
    back = decode_response(body)
    assert [r.id for r in back.records] == [wire_record()["id"], "r2"]
    assert back.app_syncable_rows == [entry_from_wire(wire_entry(), "e")]
    assert (back.has_more, back.pending, back.responder_watermarks) == (True, 4, resp.responder_watermarks)


def test_app_row_keys_pass_through_untouched() -> None:
    row = {"id": "n1", "snake_case": 1, "camelCase": 2, "Odd Key": {"nested_key": [1, "x"]},
           "updated_at": "0000000003e8:0000:nodeA"}
    entry = decode_request(as_bytes(request_with(appSyncableRows=[wire_entry(row=row)]))).app_syncable_rows[0]
    assert entry.row == row
    assert json.loads(encode_response(SyncExchangeResponse(app_syncable_rows=[entry])))["appSyncableRows"][0]["row"] \
        == row


def test_big_integers_in_rows_travel_both_ways() -> None:
    row = {"id": "n1", "big": 2**70, "updated_at": "0000000003e8:0000:nodeA"}
    entry = decode_request(as_bytes(request_with(appSyncableRows=[wire_entry(row=row)]))).app_syncable_rows[0]
    assert entry.row is not None and entry.row["big"] == 2**70
    assert encode_json(entry.row) == b'{"id":"n1","big":1180591620717411303424,"updated_at":"0000000003e8:0000:nodeA"}'


# -- issue #16: None lists ------------------------------------------------------------------------------


def test_none_lists_are_empty_in_python() -> None:
    req = SyncExchangeRequest(records=None, app_syncable_rows=None)  # type: ignore[arg-type]
    assert req.records == [] and req.app_syncable_rows == []
    assert req.to_wire() == {"watermarks": {}, "records": [], "appSyncableRows": []}
    assert decode_request(encode_request(req)) == req
    resp = SyncExchangeResponse(records=None, app_syncable_rows=None)  # type: ignore[arg-type]
    assert resp.to_wire()["records"] == [] and resp.to_wire()["appSyncableRows"] == []


@pytest.mark.parametrize("parse", [SyncExchangeRequest.from_wire, lambda b: decode_request(as_bytes(b))])
def test_null_lists_on_the_wire_are_empty(parse: Any) -> None:
    req = parse({"watermarks": {}, "records": None, "appSyncableRows": None, "limit": None})
    assert req == SyncExchangeRequest()


def test_null_and_absent_lists_in_a_response_are_empty() -> None:
    assert decode_response(b'{"records":null,"appSyncableRows":null}') == SyncExchangeResponse()
    assert decode_response(b"{}") == SyncExchangeResponse()


# -- errors from bytes ------------------------------------------------------------------------------------


def bytes_field(body: Any, decode: Any = decode_request) -> str:
    with pytest.raises(WireFormatError) as info:
        decode(body if isinstance(body, bytes) else as_bytes(body))
    assert not isinstance(info.value, MalformedJSONError)
    assert info.value.code == "invalid_request" and info.value.field is not None
    assert str(info.value).startswith(f"{info.value.field}: ")
    return info.value.field


@pytest.mark.parametrize(("body", "field"), [
    (request_with(records=[wire_record()] * 3 + [wire_record(sizeBytes=-1)]), "records[3].sizeBytes"),
    (request_with(records=[wire_record(), {k: v for k, v in wire_record().items() if k != "id"}]), "records[1].id"),
    (request_with(records=[wire_record(updatedAt=hlc(counter=MAX_COUNTER + 1))]), "records[0].updatedAt.counter"),
    (request_with(records=[wire_record(createdAt=hlc(node="a:b"))]), "records[0].createdAt.nodeId"),
    (request_with(records=[wire_record(label="a\x00")]), "records[0].label"),
    (request_with(records=[wire_record(type="jpeg")]), "records[0].type"),
    (request_with(watermarks={"nodeA": hlc(), "nodeB": hlc(wall=-1)}), "watermarks.nodeB.wallTime"),
    (request_with(watermarks={"nodeA": hlc(), "nodeB": {"wallTime": 1, "counter": 0}}), "watermarks.nodeB.nodeId"),
    (request_with(watermarks={"nodeB": hlc(node="x\ty")}), "watermarks.nodeB.nodeId"),
    (request_with(watermarks={"nodeA": hlc(), "a:b": hlc()}), "watermarks key 'a:b'"),
    (request_with(watermarks={"": hlc()}), "watermarks key ''"),
    (request_with(appSyncableRows=[wire_entry(), wire_entry(op="update", where=None)]), "appSyncableRows[1].where"),
    (request_with(appSyncableRows=[wire_entry(row={"id": "x\x00"})]), "appSyncableRows[0].row"),
    (request_with(appSyncableRows=[wire_entry(timestamp=hlc(counter=1.5))]), "appSyncableRows[0].timestamp.counter"),
    (request_with(limit=0), "limit"),
    ({"records": []}, "watermarks"),
    ([], "body"),
])
def test_decode_errors_name_the_field_msgspec_reports(body: Any, field: str) -> None:
    assert bytes_field(body) == field
    assert field_of(SyncExchangeRequest.from_wire, body) == field  # the dict path names it alike


def test_response_decode_errors_name_the_field() -> None:
    assert bytes_field(response_with(responderWatermarks={"nodeB": hlc(wall=True)}), decode_response) \
        == "responderWatermarks.nodeB.wallTime"
    assert bytes_field(response_with(pending=-1), decode_response) == "pending"
    assert bytes_field(response_with(hasMore=None), decode_response) == "hasMore"


@pytest.mark.parametrize("body", [b"", b"{", b"{oops}", b'{"watermarks":{}} x', b'{"watermarks":NaN}',
                                  b'{"watermarks":{},"limit":Infinity}', b'{"watermarks":{},"limit":1e999}'])
def test_not_json_is_malformed_json(body: bytes) -> None:
    with pytest.raises(MalformedJSONError) as info:
        decode_request(body)
    assert (info.value.code, info.value.field, info.value.status) == ("invalid_json", "body", 400)
    with pytest.raises(ValueError):
        decode_json(body)


@pytest.mark.parametrize("depth", [100, 5000])
def test_too_deep_a_row_is_refused(depth: int) -> None:
    """Refused as bad JSON where the decoder's recursion guard trips first (CPython 3.11), else by the row check."""
    nested = b"[" * depth + b"]" * depth
    body = (b'{"watermarks":{},"appSyncableRows":[{"timestamp":{"wallTime":1,"counter":0,"nodeId":"a"},'
            b'"appId":"notes","table":"notes","op":"insert","row":{"id":"1","x":' + nested + b"}}]}")
    with pytest.raises(WireFormatError) as info:
        decode_request(body)
    assert info.value.field is not None and info.value.field.startswith(("body", "appSyncableRows[0].row")), \
        info.value.field


def test_row_number_too_large_for_a_double_is_malformed_json() -> None:
    payload = as_bytes(request_with(appSyncableRows=[wire_entry()])).replace(b'"hi"', b"1e999")
    with pytest.raises(MalformedJSONError):
        decode_request(payload)


def test_unknown_fields_are_ignored_at_every_level_in_bytes() -> None:
    body = request_with(future={"x": [1]}, records=[wire_record(newField=1, createdAt={**hlc(), "tz": "utc"})],
                        appSyncableRows=[wire_entry(extra=None)])
    body["watermarks"]["nodeA"]["precision"] = "ms"
    req = decode_request(as_bytes(body))
    assert req == SyncExchangeRequest.from_wire(request_with(records=[wire_record()], appSyncableRows=[wire_entry()]))
    resp = decode_response(as_bytes(response_with(serverVersion="9", records=[wire_record(x=1)])))
    assert len(resp.records) == 1


# -- every rule at its bound: the value on the bound is taken, the one past it refused -----------------------

N = MAX_NODE_ID_LENGTH
RULES = [
    # (where the value goes, the accepted bound, the refused neighbour, the field named)
    ("hlc", "wallTime", 0, -1),
    ("hlc", "wallTime", MAX_WALL_TIME, MAX_WALL_TIME + 1),
    ("hlc", "counter", 0, -1),
    ("hlc", "counter", MAX_COUNTER, MAX_COUNTER + 1),
    ("hlc", "nodeId", "n", ""),
    ("hlc", "nodeId", "n" * N, "n" * (N + 1)),
    ("hlc", "nodeId", "a.b", "a:b"),
    ("hlc", "nodeId", "a~b", "a\x7fb"),
    ("hlc", "nodeId", "a b", "a\x1fb"),
    ("key", None, "n", ""),
    ("key", None, "n" * N, "n" * (N + 1)),
    ("key", None, "a.b", "a:b"),
    ("key", None, "a b", "a\nb"),
    ("record", "id", "i", ""),
    ("record", "id", "i" * 256, "i" * 257),
    ("record", "kind", "data", "file"),
    ("record", "type", "t/" + "x" * 253, "t/" + "x" * 254),
    ("record", "type", "/", "text"),
    ("record", "version", 0, -1),
    ("record", "version", MAX_VERSION, MAX_VERSION + 1),
    ("record", "contentHash", "h" * 256, "h" * 257),
    ("record", "objectStorageKey", "k" * 1024, "k" * 1025),
    ("record", "mimeType", "m" * 255, "m" * 256),
    ("record", "sizeBytes", 0, -1),
    ("record", "sizeBytes", MAX_SIZE_BYTES, MAX_SIZE_BYTES + 1),
    ("record", "originalFilename", "f" * 4096, "f" * 4097),
    ("record", "originAppId", "o" * 255, "o" * 256),
    ("record", "parentId", "p" * 256, "p" * 257),
    ("record", "label", "l" * 4096, "l" * 4097),
    ("record", "label", "a\x01b", "a\x00b"),
    ("entry", "appId", "a", ""),
    ("entry", "appId", "a" * 255, "a" * 256),
    ("entry", "table", "t", ""),
    ("entry", "table", "t" * 255, "t" * 256),
    ("entry", "op", "delete", "remove"),
    ("entry", "row", {"id": "n1", "x": "\x01"}, {"id": "n1", "x": "\x00"}),
    ("depth", "row", MAX_JSON_DEPTH - 1, MAX_JSON_DEPTH),
    ("request", "limit", 1, 0),
    ("response", "pending", 0, -1),
]


def place(kind: str, member: str | None, value: Any) -> tuple[Any, Any, str]:
    """``(body, parse, field)`` with ``value`` put where ``kind`` says."""
    if kind == "hlc":
        return request_with(watermarks={"w": {**hlc(), member: value}}), decode_request, f"watermarks.w.{member}"
    if kind == "key":
        return request_with(watermarks={value: hlc()}), decode_request, f"watermarks key {value!r}"
    if kind == "record":
        return request_with(records=[wire_record(**{member: value})]), decode_request, f"records[0].{member}"
    if kind == "entry":
        return (request_with(appSyncableRows=[wire_entry(**{member: value})]), decode_request,
                f"appSyncableRows[0].{member}")
    if kind == "depth":  # ``value`` levels of arrays below the row's own
        nested: Any = 0
        for _ in range(value):
            nested = [nested]
        row = {"id": "n1", "deep": nested, "updated_at": "0000000003e8:0000:nodeA"}
        return request_with(appSyncableRows=[wire_entry(row=row)]), decode_request, "appSyncableRows[0].row"
    if kind == "request":
        return request_with(**{member: value}), decode_request, member or ""
    return response_with(**{member: value}), decode_response, member or ""  # type: ignore[dict-item]


@pytest.mark.parametrize(("kind", "member", "ok", "bad"), RULES)
def test_rule_at_its_bound(kind: str, member: str | None, ok: Any, bad: Any) -> None:
    body, parse, _ = place(kind, member, ok)
    parse(as_bytes(body))
    body, parse, field = place(kind, member, bad)
    assert bytes_field(body, parse) == field


# -- schema --------------------------------------------------------------------------------------------------


def test_schema_components_come_from_the_decoding_types() -> None:
    schemas = json_schema_components()
    assert set(schemas) == {"HLC", "SharedRecord", "AppSyncableRow", "ExchangeRequest", "ExchangeResponse",
                            "PresignRequest", "ConfirmRequest", "Url", "Ok", "Stored", "Health", "Error", "ErrorDetail"}
    # The other routes' bodies: what their views decode and encode.
    assert schemas["PresignRequest"]["required"] == ["key"] and schemas["ConfirmRequest"]["required"] == ["key"]
    assert schemas["PresignRequest"]["properties"]["contentType"]["maxLength"] == 255
    assert schemas["Ok"]["required"] == ["ok"] and schemas["Stored"]["required"] == ["ok", "key"]
    assert set(schemas["Health"]["properties"]["status"]["enum"]) == {"ok", "degraded"}
    assert schemas["Error"]["additionalProperties"] is False and schemas["Error"]["required"] == ["error"]
    assert schemas["ErrorDetail"]["required"] == ["code", "message"]
    assert schemas["ErrorDetail"]["additionalProperties"] is False
    hlc_schema = schemas["HLC"]
    assert hlc_schema["required"] == ["wallTime", "counter", "nodeId"]
    assert hlc_schema["properties"]["wallTime"]["maximum"] == MAX_WALL_TIME
    assert hlc_schema["properties"]["counter"]["maximum"] == MAX_COUNTER
    assert hlc_schema["properties"]["nodeId"]["maxLength"] == MAX_NODE_ID_LENGTH
    record = schemas["SharedRecord"]["properties"]
    assert record["sizeBytes"]["maximum"] == MAX_SIZE_BYTES and record["version"]["maximum"] == MAX_VERSION
    assert record["deletedAt"] == {"default": None, "allOf": [{"$ref": "#/components/schemas/HLC"}], "nullable": True}
    request = schemas["ExchangeRequest"]
    assert request["required"] == ["watermarks"]
    assert request["properties"]["records"]["nullable"] is True
    assert request["properties"]["limit"]["minimum"] == 1
    assert set(schemas["AppSyncableRow"]["properties"]["op"]["enum"]) == {"insert", "update", "delete"}
    # JSON Schema 2020-12 (OpenAPI 3.1) on request.
    plain = json_schema_components(openapi_30=False)
    assert {"type": "null"} in plain["ExchangeRequest"]["properties"]["records"]["anyOf"]


def test_schema_patterns_agree_with_the_decoder() -> None:
    import re

    schemas = json_schema_components()
    node = re.compile(schemas["HLC"]["properties"]["nodeId"]["pattern"])
    media = re.compile(schemas["SharedRecord"]["properties"]["type"]["pattern"])
    for value in ["a", "a b", "a:b", "a\x00", "a\x7f"]:
        accepted = not (set(value) & {":", "\x00", "\x7f"})
        assert bool(node.search(value)) == accepted
        assert (hlc_from_wire(hlc(node=value), "h") == (1000, 0, value)) if accepted else \
            field_of(lambda d: hlc_from_wire(d, "h"), hlc(node=value)) == "h.nodeId"
    for value, accepted in [("a/b", True), ("ab", False), ("a/\x00", False)]:
        assert bool(media.search(value)) == accepted


@pytest.mark.parametrize("member", ["appId", "table"])
def test_an_entry_with_nul_in_its_app_id_or_table_is_refused_naming_it(member: str) -> None:
    from starkeep_sync.core.wire import decode_request

    entry = {"timestamp": {"wallTime": 1, "counter": 0, "nodeId": "a"}, "appId": "notes", "table": "notes",
             "op": "insert", "row": {"id": "1", "updated_at": "000000000001:0000:a"}}
    entry[member] = "no\x00tes"
    with pytest.raises(WireFormatError) as caught:
        decode_request(json.dumps({"watermarks": {}, "appSyncableRows": [entry]}).encode())
    assert caught.value.field is not None and caught.value.field.endswith(member)
