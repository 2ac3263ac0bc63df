"""The JSON wire format of PROTOCOL §4, strictly validated.

``from_wire`` accepts parsed JSON (dicts and lists) and raises
``WireFormatError`` naming the first offending field; ``to_wire`` produces
plain dicts ready for ``json.dumps``. Unknown fields are ignored.
"""

from __future__ import annotations

import math
import operator
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from .constants import MAX_COUNTER, MAX_NODE_ID_LENGTH, MAX_WALL_TIME
from .exceptions import WireFormatError
from .hlc import HLCTimestamp
from .records import OPS, AppSyncableRowEntry, DataRecord

MAX_ID_LENGTH = 256
_CONTROL = re.compile(r"[\x00-\x1f\x7f]")
MAX_TEXT_LENGTH = 4096
#: ``version`` is stored in a 32-bit column, ``sizeBytes`` in a 64-bit one.
MAX_VERSION = 2**31 - 1
MAX_SIZE_BYTES = 2**63 - 1
#: Deepest nesting of JSON values inside an app row's ``row`` or ``where``.
MAX_JSON_DEPTH = 64


@dataclass(slots=True)
class SyncExchangeRequest:
    watermarks: dict[str, HLCTimestamp] = field(default_factory=dict)
    records: list[DataRecord] = field(default_factory=list)
    app_syncable_rows: list[AppSyncableRowEntry] = field(default_factory=list)
    limit: int | None = None
    #: Extension (not in the reference): ask the responder for ``pending``, a count
    #: of what remains. Counting costs the responder a pass over that backlog, so a
    #: requester asks once per catch-up and estimates the later pages itself.
    count_pending: bool = False
    #: ``records`` already in wire form (the engine encodes a predicted next page while the
    #: previous one is answered); sent instead of encoding ``records`` again. ``from_wire``
    #: never fills it.
    wire_records: list[dict[str, Any]] | None = field(default=None, compare=False)

    def to_wire(self) -> dict[str, Any]:
        out: dict[str, Any] = {
            "watermarks": watermarks_to_wire(self.watermarks),
            "records": self.wire_records if self.wire_records is not None
            else [record_to_wire(r) for r in self.records],
            "appSyncableRows": [entry_to_wire(e) for e in self.app_syncable_rows],
        }
        if self.limit is not None:
            out["limit"] = self.limit
        if self.count_pending:
            out["countPending"] = True
        return out

    @classmethod
    def from_wire(cls, data: Any) -> SyncExchangeRequest:
        if not isinstance(data, dict):
            raise WireFormatError("body", "must be a JSON object")
        if "watermarks" not in data:
            raise WireFormatError("watermarks", "is required")
        limit = data.get("limit")
        if limit is not None:
            limit = _int(limit, "limit")
            if limit < 1:
                raise WireFormatError("limit", "must be at least 1")
        count_pending = data.get("countPending", False)
        if not isinstance(count_pending, bool):
            raise WireFormatError("countPending", "must be a boolean")
        return cls(
            watermarks=watermarks_from_wire(data["watermarks"], "watermarks"),
            records=_records(data.get("records")),
            app_syncable_rows=_list(data.get("appSyncableRows"), "appSyncableRows", entry_from_wire),
            limit=limit,
            count_pending=count_pending,
        )


@dataclass(slots=True)
class SyncExchangeResponse:
    records: list[DataRecord] = field(default_factory=list)
    app_syncable_rows: list[AppSyncableRowEntry] = field(default_factory=list)
    responder_watermarks: dict[str, HLCTimestamp] = field(default_factory=dict)
    has_more: bool = False
    #: Extension (not in the reference): items above the requester's
    #: watermarks that remain after this page. ``None`` when unknown.
    pending: int | None = None
    #: Records already in wire form, sent after ``records``: a responder whose
    #: adapter reads them so (``query_wire_since``) skips building ``DataRecord``s
    #: it would only serialise. ``from_wire`` never fills it.
    wire_records: list[dict[str, Any]] = field(default_factory=list)
    #: The same for app row entries, sent after ``app_syncable_rows``.
    wire_rows: list[dict[str, Any]] = field(default_factory=list)

    def to_wire(self) -> dict[str, Any]:
        records = [record_to_wire(r) for r in self.records]
        if self.wire_records:
            records += self.wire_records
        rows = [entry_to_wire(e) for e in self.app_syncable_rows]
        if self.wire_rows:
            rows += self.wire_rows
        out: dict[str, Any] = {
            "records": records,
            "appSyncableRows": rows,
            "responderWatermarks": watermarks_to_wire(self.responder_watermarks),
            "hasMore": self.has_more,
        }
        if self.pending is not None:
            out["pending"] = self.pending
        return out

    @classmethod
    def from_wire(cls, data: Any) -> SyncExchangeResponse:
        if not isinstance(data, dict):
            raise WireFormatError("body", "must be a JSON object")
        has_more = data.get("hasMore", False)
        if not isinstance(has_more, bool):
            raise WireFormatError("hasMore", "must be a boolean")
        pending = data.get("pending")
        if pending is not None:
            pending = _int(pending, "pending")
        return cls(
            records=_records(data.get("records")),
            app_syncable_rows=_list(data.get("appSyncableRows"), "appSyncableRows", entry_from_wire),
            responder_watermarks=watermarks_from_wire(
                data.get("responderWatermarks", {}), "responderWatermarks"
            ),
            has_more=has_more,
            pending=pending,
        )


# -- HLC ---------------------------------------------------------------------


def hlc_to_wire(hlc: HLCTimestamp) -> dict[str, Any]:
    return {"wallTime": hlc[0], "counter": hlc[1], "nodeId": hlc[2]}


def _bad_node_id(node: str) -> str | None:
    if not node:
        return "must not be empty"
    if len(node) > MAX_NODE_ID_LENGTH:
        return f"must be at most {MAX_NODE_ID_LENGTH} characters"
    if ":" in node:
        return "must not contain ':'"
    if _CONTROL.search(node):
        return "must not contain control characters"
    return None


#: Node ids already found valid: a request names a handful of nodes thousands of times.
_GOOD_NODES: set[str] = set()
_GOOD_NODES_MAX = 4096


def validate_node_id(node: Any, where: str) -> str:
    if type(node) is str and node in _GOOD_NODES:
        return node
    if not isinstance(node, str):
        raise WireFormatError(where, "must be a string")
    problem = _bad_node_id(node)
    if problem:
        raise WireFormatError(where, problem)
    if len(_GOOD_NODES) >= _GOOD_NODES_MAX:
        _GOOD_NODES.clear()
    _GOOD_NODES.add(node)
    return node


_HLC_FIELDS = operator.itemgetter("wallTime", "counter", "nodeId")
#: ``tuple.__new__`` straight: the named tuple's own ``__new__`` is a Python function.
_new_tuple = tuple.__new__


def _good_hlc(data: Any) -> HLCTimestamp | None:
    """The common valid HLC in one test; ``None`` when it needs the checks that name a problem."""
    if type(data) is dict:
        try:
            fields = wall, counter, node = _HLC_FIELDS(data)
        except KeyError:
            return None
        if (type(wall) is int and type(counter) is int and 0 <= wall <= MAX_WALL_TIME
                and 0 <= counter <= MAX_COUNTER and type(node) is str and node in _GOOD_NODES):
            return _new_tuple(HLCTimestamp, fields)  # type: ignore[no-any-return]
    return None


def hlc_from_wire(data: Any, where: str) -> HLCTimestamp:
    good = _good_hlc(data)
    if good is not None:
        return good
    if not isinstance(data, dict):
        raise WireFormatError(where, "must be an HLC object {wallTime, counter, nodeId}")
    wall, counter, node = data.get("wallTime"), data.get("counter"), data.get("nodeId")
    if type(wall) is not int:
        raise WireFormatError(f"{where}.wallTime", "must be an integer")
    if not (0 <= wall <= MAX_WALL_TIME):
        raise WireFormatError(f"{where}.wallTime", f"must be between 0 and {MAX_WALL_TIME}")
    if type(counter) is not int:
        raise WireFormatError(f"{where}.counter", "must be an integer")
    if not (0 <= counter <= MAX_COUNTER):
        raise WireFormatError(f"{where}.counter", f"must be between 0 and {MAX_COUNTER}")
    validate_node_id(node, f"{where}.nodeId")
    return HLCTimestamp(wall, counter, node)


def watermarks_to_wire(w: Mapping[str, HLCTimestamp]) -> dict[str, Any]:
    return {node: hlc_to_wire(h) for node, h in w.items()}


def watermarks_from_wire(data: Any, where: str) -> dict[str, HLCTimestamp]:
    if not isinstance(data, dict):
        raise WireFormatError(where, "must be an object of nodeId -> HLC")
    out = {}
    for node, value in data.items():
        validate_node_id(node, f"{where} key {node!r}"[:200])
        out[node] = hlc_from_wire(value, f"{where}.{node}")
    return out


# -- records -------------------------------------------------------------------


def record_to_wire(r: DataRecord) -> dict[str, Any]:
    return {
        "id": r.id,
        "kind": r.kind,
        "type": r.type,
        "createdAt": hlc_to_wire(r.created_at),
        "updatedAt": hlc_to_wire(r.updated_at),
        "deletedAt": hlc_to_wire(r.deleted_at) if r.deleted_at is not None else None,
        "version": r.version,
        "contentHash": r.content_hash,
        "objectStorageKey": r.object_storage_key,
        "mimeType": r.mime_type,
        "sizeBytes": r.size_bytes,
        "originalFilename": r.original_filename,
        "originAppId": r.origin_app_id,
        "parentId": r.parent_id,
        "label": r.label,
    }


def _str(d: dict, key: str, where: str, *, nullable: bool = False, max_len: int = MAX_TEXT_LENGTH,
         required: bool = True) -> str | None:
    if key not in d:
        if nullable or not required:
            return None
        raise WireFormatError(f"{where}.{key}", "is required")
    v = d[key]
    if v is None:
        if nullable:
            return None
        raise WireFormatError(f"{where}.{key}", "must be a string, not null")
    if not isinstance(v, str):
        raise WireFormatError(f"{where}.{key}", "must be a string")
    if len(v) > max_len:
        raise WireFormatError(f"{where}.{key}", f"must be at most {max_len} characters")
    if "\x00" in v:  # PostgreSQL text cannot hold NUL: refuse it on every database alike
        raise WireFormatError(f"{where}.{key}", "must not contain NUL characters")
    return v


def _int(v: Any, where: str) -> int:
    if type(v) is not int:
        raise WireFormatError(where, "must be an integer")
    return v


#: Every field of a record, in one C call: the common record carries them all.
_RECORD_FIELDS = operator.itemgetter(
    "id", "type", "contentHash", "objectStorageKey", "originAppId", "mimeType", "originalFilename", "parentId",
    "label", "version", "sizeBytes", "kind", "createdAt", "updatedAt", "deletedAt",
)


def _good_record(d: dict[str, Any]) -> DataRecord | None:
    """A record of the common valid shape, checked in a few tests; ``None`` for ``record_from_wire``'s checks.

    Accepts exactly what the checks below accept: a pulled page is thousands of
    records, and naming the field at fault only matters for the rare bad one.
    """
    try:
        (rid, rtype, chash, key, origin, mime, name, parent, label, version, size, kind, created_raw, updated_raw,
         deleted_raw) = _RECORD_FIELDS(d)
    except KeyError:  # an optional field left out: its default
        rid, rtype, chash, key, origin = (d.get("id"), d.get("type"), d.get("contentHash"),
                                          d.get("objectStorageKey"), d.get("originAppId"))
        mime, name, parent, label = d.get("mimeType"), d.get("originalFilename"), d.get("parentId"), d.get("label")
        version, size, kind = d.get("version", 1), d.get("sizeBytes", 0), d.get("kind", "data")
        created_raw, updated_raw, deleted_raw = d.get("createdAt"), d.get("updatedAt"), d.get("deletedAt")
    if not (type(rid) is str and type(rtype) is str and type(chash) is str and type(key) is str
            and type(origin) is str and type(version) is int and type(size) is int
            and 0 < len(rid) <= MAX_ID_LENGTH and len(rtype) <= 255 and "/" in rtype and len(chash) <= 256
            and len(key) <= 1024 and len(origin) <= 255 and 0 <= version <= MAX_VERSION
            and 0 <= size <= MAX_SIZE_BYTES and kind == "data"):
        return None
    if ((mime is not None and (type(mime) is not str or len(mime) > 255))
            or (name is not None and (type(name) is not str or len(name) > MAX_TEXT_LENGTH))
            or (parent is not None and (type(parent) is not str or len(parent) > MAX_ID_LENGTH))
            or (label is not None and (type(label) is not str or len(label) > MAX_TEXT_LENGTH))):
        return None
    if "\x00" in f"{rid}{rtype}{chash}{key}{origin}{mime or ''}{name or ''}{parent or ''}{label or ''}":
        return None
    created, updated = _good_hlc(created_raw), _good_hlc(updated_raw)
    deleted = None if deleted_raw is None else _good_hlc(deleted_raw)
    if created is None or updated is None or (deleted is None and deleted_raw is not None):
        return None
    return DataRecord(rid, rtype, created, updated, chash, key, size, origin, version, deleted, mime, name, parent,
                      label)


def record_from_wire(d: Any, where: str) -> DataRecord:
    if not isinstance(d, dict):
        raise WireFormatError(where, "must be a record object")
    rid = _str(d, "id", where, max_len=MAX_ID_LENGTH)
    if not rid:
        raise WireFormatError(f"{where}.id", "must not be empty")
    kind = d.get("kind", "data")
    if kind != "data":
        raise WireFormatError(f"{where}.kind", "must be 'data'")
    rtype = _str(d, "type", where, max_len=255)
    if "/" not in rtype:  # type: ignore[operator]
        raise WireFormatError(f"{where}.type", "must look like '<category>/<format>'")
    for key in ("createdAt", "updatedAt"):
        if key not in d:
            raise WireFormatError(f"{where}.{key}", "is required")
    created = hlc_from_wire(d["createdAt"], f"{where}.createdAt")
    updated = hlc_from_wire(d["updatedAt"], f"{where}.updatedAt")
    deleted_raw = d.get("deletedAt")
    deleted = None if deleted_raw is None else hlc_from_wire(deleted_raw, f"{where}.deletedAt")
    version = _int(d.get("version", 1), f"{where}.version")
    size = d.get("sizeBytes", 0)
    size = _int(size, f"{where}.sizeBytes")
    if not 0 <= size <= MAX_SIZE_BYTES:
        raise WireFormatError(f"{where}.sizeBytes", f"must be between 0 and {MAX_SIZE_BYTES}")
    if not 0 <= version <= MAX_VERSION:
        raise WireFormatError(f"{where}.version", f"must be between 0 and {MAX_VERSION}")
    return DataRecord(
        id=rid,
        type=rtype,  # type: ignore[arg-type]
        created_at=created,
        updated_at=updated,
        deleted_at=deleted,
        version=version,
        content_hash=_str(d, "contentHash", where, max_len=256) or "",
        object_storage_key=_str(d, "objectStorageKey", where, max_len=1024) or "",
        mime_type=_str(d, "mimeType", where, nullable=True, max_len=255),
        size_bytes=size,
        original_filename=_str(d, "originalFilename", where, nullable=True),
        origin_app_id=_str(d, "originAppId", where, max_len=255) or "",
        parent_id=_str(d, "parentId", where, nullable=True, max_len=MAX_ID_LENGTH),
        label=_str(d, "label", where, nullable=True),
    )


# -- app row entries -----------------------------------------------------------------


def entry_to_wire(e: AppSyncableRowEntry) -> dict[str, Any]:
    return {
        "timestamp": hlc_to_wire(e.timestamp),
        "appId": e.app_id,
        "table": e.table,
        "op": e.op,
        "row": dict(e.row) if e.row is not None else None,
        "where": dict(e.where) if e.where is not None else None,
    }


def entry_from_wire(d: Any, where: str) -> AppSyncableRowEntry:
    if not isinstance(d, dict):
        raise WireFormatError(where, "must be an app row entry object")
    if "timestamp" not in d:
        raise WireFormatError(f"{where}.timestamp", "is required")
    ts = hlc_from_wire(d["timestamp"], f"{where}.timestamp")
    app_id = _str(d, "appId", where, max_len=255)
    table = _str(d, "table", where, max_len=255)
    if not app_id:
        raise WireFormatError(f"{where}.appId", "must not be empty")
    if not table:
        raise WireFormatError(f"{where}.table", "must not be empty")
    op = d.get("op")
    if op not in OPS:
        raise WireFormatError(f"{where}.op", "must be one of 'insert', 'update', 'delete'")
    row = d.get("row")
    if row is not None and not isinstance(row, dict):
        raise WireFormatError(f"{where}.row", "must be an object or null")
    cond = d.get("where")
    if cond is not None and not isinstance(cond, dict):
        raise WireFormatError(f"{where}.where", "must be an object or null")
    _check_json(row, f"{where}.row")
    _check_json(cond, f"{where}.where")
    if op == "insert" and not row:
        raise WireFormatError(f"{where}.row", "is required for op 'insert'")
    if op == "update":
        if not row:
            raise WireFormatError(f"{where}.row", "is required for op 'update'")
        if not cond:
            raise WireFormatError(f"{where}.where", "is required for op 'update'")
    if op == "delete" and not row and not cond:
        raise WireFormatError(f"{where}.where", "op 'delete' needs 'where' or 'row'")
    return AppSyncableRowEntry(ts, app_id, table, op, row, cond)  # type: ignore[arg-type]


def _check_json(value: Any, where: str) -> None:
    """Refuse what a JSON column cannot store on every database: NUL in text, NaN/Infinity, deep nesting."""
    stack: list[tuple[Any, int]] = [(value, 0)]
    while stack:  # iterative: nesting must not exhaust the Python stack
        v, depth = stack.pop()
        if isinstance(v, str):
            if "\x00" in v:
                raise WireFormatError(where, "must not contain NUL characters")
        elif isinstance(v, float):
            if not math.isfinite(v):
                raise WireFormatError(where, "must not contain NaN or Infinity")
        elif isinstance(v, (dict, list)):
            if depth >= MAX_JSON_DEPTH:
                raise WireFormatError(where, f"must not nest deeper than {MAX_JSON_DEPTH} levels")
            if isinstance(v, dict):
                stack.extend((k, depth + 1) for k in v)  # keys are strings too
                stack.extend((x, depth + 1) for x in v.values())
            else:
                stack.extend((x, depth + 1) for x in v)


def _records(value: Any) -> list[DataRecord]:
    """``records`` of a request or response: the common shape fast, anything else through the checks."""
    if type(value) is not list:
        return _list(value, "records", record_from_wire)
    out = []
    for i, d in enumerate(value):
        r = _good_record(d) if type(d) is dict else None
        # The checks that name the problem; they also learn a node id seen for the first time.
        out.append(r if r is not None else record_from_wire(d, f"records[{i}]"))
    return out


def _list(value: Any, where: str, parse: Any) -> list:
    if value is None:
        return []
    if not isinstance(value, list):
        raise WireFormatError(where, "must be an array")
    return [parse(item, f"{where}[{i}]") for i, item in enumerate(value)]
