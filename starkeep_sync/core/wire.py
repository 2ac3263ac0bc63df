"""The JSON wire format of PROTOCOL §4: one typed model, decoded and validated in C by msgspec.

Each wire object is a ``msgspec.Struct`` below, its rules in ``Annotated[..., Meta(...)]`` or,
where no Meta constraint can say it, in ``__post_init__``. Bytes go through cached decoders and
one encoder: ``decode_request``/``encode_request`` and ``decode_response``/``encode_response``.
``from_wire``/``to_wire`` still take and give plain dicts. Unknown members are ignored (§4.7).
A body that breaks a rule raises ``WireFormatError`` naming the member (``records[3].sizeBytes``);
a body that is not JSON raises ``MalformedJSONError`` (code ``invalid_json``).
"""

from __future__ import annotations

import math
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Annotated, Any, Literal, TypeVar

import msgspec
from msgspec import Meta

from .exceptions import WireFormatError
from .hlc import HLCTimestamp, NodeId, WireHLC, WireRuleError, hlc_to_wire, node_id_problem
from .records import AppSyncableRowEntry, DataRecord

__all__ = [
    "MalformedJSONError",
    "SyncExchangeRequest",
    "SyncExchangeResponse",
    "decode_json",
    "decode_request",
    "decode_response",
    "encode_json",
    "encode_request",
    "encode_response",
    "json_schema_components",
    "peek_response",
]

T = TypeVar("T")

MAX_ID_LENGTH = 256
MAX_TEXT_LENGTH = 4096
MAX_NAME_LENGTH = 255
MAX_HASH_LENGTH = 256
MAX_STORAGE_KEY_LENGTH = 1024
#: ``version`` is stored in a 32-bit column, ``sizeBytes`` in a 64-bit one.
MAX_VERSION = 2**31 - 1
MAX_SIZE_BYTES = 2**63 - 1
#: Deepest nesting of JSON values inside an app row's ``row`` or ``where``.
MAX_JSON_DEPTH = 64

#: PostgreSQL text cannot hold NUL, so no text member may carry one, on every database alike.
NO_NUL_PATTERN = r"^[^\x00]*$"
#: ``<category>/<format>``, without NUL.
MEDIA_TYPE_PATTERN = r"^[^\x00]*/[^\x00]*$"


class MalformedJSONError(WireFormatError):
    """The body is not JSON: a syntax error, NaN/Infinity, a number no double holds, or too deep a nesting."""

    code = "invalid_json"


# -- the types -----------------------------------------------------------------------------
# NUL and the '/' of a media type are declared as patterns for the schema but checked in
# ``SharedRecordWire.__post_init__``: one test over the whole record instead of a regex per
# member, which cost 40 % of a decode.


def _text(max_length: int, *, min_length: int = 0, pattern: str = NO_NUL_PATTERN) -> Meta:
    return Meta(min_length=min_length, max_length=max_length, extra_json_schema={"pattern": pattern})


RecordId = Annotated[str, _text(MAX_ID_LENGTH, min_length=1)]
MediaType = Annotated[str, _text(MAX_NAME_LENGTH, pattern=MEDIA_TYPE_PATTERN)]
ContentHash = Annotated[str, _text(MAX_HASH_LENGTH)]
StorageKey = Annotated[str, _text(MAX_STORAGE_KEY_LENGTH)]
Name = Annotated[str, _text(MAX_NAME_LENGTH)]
RequiredName = Annotated[str, _text(MAX_NAME_LENGTH, min_length=1)]
ParentId = Annotated[str, _text(MAX_ID_LENGTH)]
Text = Annotated[str, _text(MAX_TEXT_LENGTH)]
Version = Annotated[int, Meta(ge=0, le=MAX_VERSION)]
SizeBytes = Annotated[int, Meta(ge=0, le=MAX_SIZE_BYTES)]
Limit = Annotated[int, Meta(ge=1)]
Pending = Annotated[int, Meta(ge=0)]
Watermarks = dict[NodeId, WireHLC]

#: The text members of a record, by Python attribute and wire name, for finding a NUL.
_RECORD_TEXT = (("id", "id"), ("type", "type"), ("content_hash", "contentHash"),
                ("object_storage_key", "objectStorageKey"), ("origin_app_id", "originAppId"),
                ("mime_type", "mimeType"), ("original_filename", "originalFilename"), ("parent_id", "parentId"),
                ("label", "label"))


class SharedRecordWire(msgspec.Struct, rename="camel", kw_only=True, gc=False):
    """A shared record (PROTOCOL §2.1); members in the order every sender writes them."""

    id: RecordId
    kind: Literal["data"] = "data"
    type: MediaType
    created_at: WireHLC
    updated_at: WireHLC
    deleted_at: WireHLC | None = None
    version: Version = 1
    content_hash: ContentHash
    object_storage_key: StorageKey
    mime_type: Name | None = None
    size_bytes: SizeBytes = 0
    original_filename: Text | None = None
    origin_app_id: Name
    parent_id: ParentId | None = None
    label: Text | None = None

    def __post_init__(self) -> None:
        if "/" not in self.type:
            raise WireRuleError("type", "must look like '<category>/<format>'")
        if "\x00" in (f"{self.id}{self.type}{self.content_hash}{self.object_storage_key}{self.origin_app_id}"
                      f"{self.mime_type}{self.original_filename}{self.parent_id}{self.label}"):
            for attr, member in _RECORD_TEXT:
                if "\x00" in (getattr(self, attr) or ""):
                    raise WireRuleError(member, "must not contain NUL characters")

    @classmethod
    def of(cls, r: DataRecord) -> SharedRecordWire:
        deleted = r.deleted_at
        return cls(id=r.id, kind=r.kind, type=r.type, created_at=WireHLC.of(r.created_at),  # type: ignore[arg-type]
                   updated_at=WireHLC.of(r.updated_at), deleted_at=None if deleted is None else WireHLC.of(deleted),
                   version=r.version, content_hash=r.content_hash, object_storage_key=r.object_storage_key,
                   mime_type=r.mime_type, size_bytes=r.size_bytes, original_filename=r.original_filename,
                   origin_app_id=r.origin_app_id, parent_id=r.parent_id, label=r.label)

    def record(self) -> DataRecord:
        c, u, d = self.created_at, self.updated_at, self.deleted_at
        return DataRecord(
            self.id, self.type, HLCTimestamp(c.wall_time, c.counter, c.node_id),
            HLCTimestamp(u.wall_time, u.counter, u.node_id), self.content_hash, self.object_storage_key,
            self.size_bytes, self.origin_app_id, self.version,
            None if d is None else HLCTimestamp(d.wall_time, d.counter, d.node_id),
            self.mime_type, self.original_filename, self.parent_id, self.label, self.kind,
        )


class AppRowEntryWire(msgspec.Struct, rename="camel", kw_only=True, gc=False):
    """An app row entry (PROTOCOL §2.2). ``row`` and ``where`` are free JSON objects: their keys pass untouched.

    ``gc=False`` (as ``SharedRecordWire``): no cycle can pass through an entry decoded or converted
    from JSON data, and a page of untracked entries brings the next full collection no nearer.
    """

    timestamp: WireHLC
    app_id: RequiredName
    table: RequiredName
    op: Literal["insert", "update", "delete"]
    row: dict[str, Any] | None = None
    where: dict[str, Any] | None = None

    def __post_init__(self) -> None:
        row, cond, op = self.row, self.where, self.op
        if "\x00" in self.app_id or "\x00" in self.table:
            raise WireRuleError("appId" if "\x00" in self.app_id else "table", "must not contain NUL characters")
        _check_json(row, "row")
        _check_json(cond, "where")
        # An empty object counts as absent, as in the schema's op rules.
        if op == "insert" and not row:
            raise WireRuleError("row", "is required for op 'insert'")
        if op == "update":
            if not row:
                raise WireRuleError("row", "is required for op 'update'")
            if not cond:
                raise WireRuleError("where", "is required for op 'update'")
        if op == "delete" and not row and not cond:
            raise WireRuleError("where", "op 'delete' needs 'where' or 'row'")

    def entry(self) -> AppSyncableRowEntry:
        return AppSyncableRowEntry(self.timestamp.timestamp(), self.app_id, self.table, self.op, self.row, self.where)


_FILLED = {"type": "object", "minProperties": 1, "additionalProperties": True}
#: ``AppRowEntryWire.__post_init__``'s op rules as JSON Schema (no ``Meta`` can say them), added to the
#: ``AppSyncableRow`` component: an empty or null ``row``/``where`` counts as absent.
ENTRY_OP_RULES: list[dict[str, Any]] = [
    {"properties": {"op": {"enum": ["insert"]}, "row": _FILLED}, "required": ["row"]},
    {"properties": {"op": {"enum": ["update"]}, "row": _FILLED, "where": _FILLED}, "required": ["row", "where"]},
    {"properties": {"op": {"enum": ["delete"]}, "row": _FILLED}, "required": ["row"]},
    {"properties": {"op": {"enum": ["delete"]}, "where": _FILLED}, "required": ["where"]},
]


def _check_json(value: Any, member: str) -> None:
    """Refuse what a JSON column cannot store on every database: NUL in text, NaN/Infinity, deep nesting.

    Parsed JSON never holds NaN; dicts given to ``from_wire`` may.
    """
    if not value:
        return
    # Iterative (nesting must not exhaust the Python stack), and only containers go on the stack: with every
    # scalar pushed too, checking a bench row (six members, a list of two) took 3.3 us instead of 1.2.
    # Exact types first, subclasses after: 10,000 bench rows took 13.7 ms with an isinstance chain per
    # value and a test per key, 10.1 ms so (same-run).
    stack: list[tuple[Any, int]] = [(value, 0)]
    while stack:
        v, depth = stack.pop()
        if depth >= MAX_JSON_DEPTH:
            raise WireRuleError(member, f"must not nest deeper than {MAX_JSON_DEPTH} levels")
        if isinstance(v, dict):
            try:
                bad_key = "\x00" in "".join(v)
            except TypeError:  # keys that are not all text (only from Python data): look at each
                bad_key = any(isinstance(k, str) and "\x00" in k for k in v)
            if bad_key:
                raise WireRuleError(member, "must not contain NUL characters")
            children: Any = v.values()
        elif isinstance(v, list):
            children = v
        else:
            children = (v,)  # a scalar given as the whole value
            depth -= 1
        for x in children:
            t = type(x)
            if t is str:
                if "\x00" in x:
                    raise WireRuleError(member, "must not contain NUL characters")
            elif t is int or t is bool or x is None:
                continue
            elif t is dict or t is list:
                stack.append((x, depth + 1))
            elif isinstance(x, str):
                if "\x00" in x:
                    raise WireRuleError(member, "must not contain NUL characters")
            elif isinstance(x, float):
                if not math.isfinite(x):
                    raise WireRuleError(member, "must not contain NaN or Infinity")
            elif isinstance(x, (dict, list)):
                stack.append((x, depth + 1))


def _check_keys(vector: Mapping[str, Any], member: str) -> None:
    """The characters of a vector's node ids (msgspec checks their lengths)."""
    for node in vector:
        problem = node_id_problem(node)
        if problem is not None:
            raise WireRuleError(_key_field(member, node), problem)


def _key_field(member: str, node: object) -> str:
    return f"{member} key {node!r}"[:200]


class ExchangeRequestWire(msgspec.Struct, rename="camel", kw_only=True):
    """The exchange request (PROTOCOL §4.1). ``records`` and ``appSyncableRows`` may be absent or null."""

    watermarks: Watermarks
    records: list[SharedRecordWire] | None = None
    app_syncable_rows: list[AppRowEntryWire] | None = None
    limit: Limit | None = None
    count_pending: bool = False

    def __post_init__(self) -> None:
        _check_keys(self.watermarks, "watermarks")


class ExchangeResponseWire(msgspec.Struct, rename="camel", kw_only=True):
    """The exchange response (PROTOCOL §4.2), read leniently: absent arrays are empty, absent coverage is {}."""

    records: list[SharedRecordWire] | None = None
    app_syncable_rows: list[AppRowEntryWire] | None = None
    responder_watermarks: Watermarks = {}
    has_more: bool = False
    pending: Pending | None = None

    def __post_init__(self) -> None:
        _check_keys(self.responder_watermarks, "responderWatermarks")


# The JSON bodies of the other routes (PROTOCOL §7, §8): the server decodes the requests and
# encodes the answers with these types, and the OpenAPI schema describes them from the same types.

#: A blob key in a request body; the key rules (``keys.validate_key``) are checked by the route,
#: which knows its channel.
BodyKey = Annotated[str, Meta(min_length=1)]
#: A media type as sent; the route checks it further (``type/subtype``, optional parameters).
ContentType = Annotated[str, Meta(max_length=MAX_NAME_LENGTH, extra_json_schema={"pattern": r"^[^\x00-\x1f\x7f]*$"})]
#: ``true``, the only value of an ``ok`` member.
OkTrue = Annotated[bool, Meta(extra_json_schema={"enum": [True]})]
NonEmpty = Annotated[str, Meta(min_length=1)]


class PresignRequestWire(msgspec.Struct, rename="camel", frozen=True):
    """``POST files/presign``: the key to upload to, and the Content-Type the upload will send."""

    key: BodyKey
    content_type: ContentType | None = None


class ConfirmRequestWire(msgspec.Struct, frozen=True):
    """``POST files/confirm``: the key whose directly uploaded bytes to check."""

    key: BodyKey


class UrlWire(msgspec.Struct, frozen=True):
    """Where to send or fetch the bytes directly (absolute, or relative to the server)."""

    url: str


class OkWire(msgspec.Struct, frozen=True):
    ok: OkTrue


class StoredWire(msgspec.Struct, frozen=True):
    ok: OkTrue
    key: str


class HealthWire(msgspec.Struct, frozen=True):
    status: Literal["ok", "degraded"]
    db: bool
    storage: bool


class ErrorDetailWire(msgspec.Struct, frozen=True, omit_defaults=True, forbid_unknown_fields=True):
    code: NonEmpty
    message: NonEmpty
    #: The request member at fault, where there is one (never sent empty or null).
    field: NonEmpty | None = None


class ErrorWire(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    """The body of every 4xx/5xx answer of this API."""

    error: ErrorDetailWire


class _StampWire(msgspec.Struct, rename="camel", gc=False):
    updated_at: WireHLC


class _EntryStampWire(msgspec.Struct, gc=False):
    timestamp: WireHLC


class _PeekWire(msgspec.Struct, rename="camel"):
    records: list[_StampWire] | None = None
    app_syncable_rows: list[_EntryStampWire] | None = None
    responder_watermarks: Watermarks = {}
    has_more: bool = False
    pending: Pending | None = None


_REQUEST_DECODER = msgspec.json.Decoder(ExchangeRequestWire)
_RESPONSE_DECODER = msgspec.json.Decoder(ExchangeResponseWire)
_PEEK_DECODER = msgspec.json.Decoder(_PeekWire)
_JSON_DECODER = msgspec.json.Decoder()
_ENCODER = msgspec.json.Encoder()


# -- the Python side ----------------------------------------------------------------------------


@dataclass(slots=True)
class SyncExchangeRequest:
    watermarks: dict[str, HLCTimestamp] = field(default_factory=dict)
    records: list[DataRecord] = field(default_factory=list)
    app_syncable_rows: list[AppSyncableRowEntry] = field(default_factory=list)
    limit: int | None = None
    #: Extension (not in the reference): ask the responder for ``pending``, a count of what remains.
    #: Counting costs the responder a pass over that backlog, so a requester asks once per catch-up
    #: and estimates the later pages itself.
    count_pending: bool = False

    def __post_init__(self) -> None:
        # ``None`` means none, as on the wire (issue #16).
        if self.records is None:
            self.records = []
        if self.app_syncable_rows is None:
            self.app_syncable_rows = []

    def to_wire(self) -> dict[str, Any]:
        out: dict[str, Any] = {
            "watermarks": watermarks_to_wire(self.watermarks),
            "records": [record_to_wire(r) for r in self.records],
            "appSyncableRows": [entry_to_wire(e) for e in self.app_syncable_rows],
        }
        if self.limit is not None:
            out["limit"] = self.limit
        if self.count_pending:
            out["countPending"] = True
        return out

    @classmethod
    def from_wire(cls, data: Any) -> SyncExchangeRequest:
        return _request_of(_convert(data, ExchangeRequestWire, ""))


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
    #: it would only serialise. Each is a wire dict, or ``msgspec.Raw`` JSON text
    #: its database built (``query_json_since``), which ``encode_response`` copies
    #: as it is and ``to_wire`` parses. ``from_wire`` never fills it.
    wire_records: list[Any] = field(default_factory=list)
    #: The same for app row entries, sent after ``app_syncable_rows``.
    wire_rows: list[Any] = field(default_factory=list)

    def __post_init__(self) -> None:
        if self.records is None:
            self.records = []
        if self.app_syncable_rows is None:
            self.app_syncable_rows = []

    def to_wire(self) -> dict[str, Any]:
        return self._wire(raw=False)

    def _wire(self, *, raw: bool) -> dict[str, Any]:
        """The wire dict; with ``raw``, ``msgspec.Raw`` items stay as they are (for the encoder)."""
        records = [record_to_wire(r) for r in self.records]
        if self.wire_records:
            records += self.wire_records if raw else _plain(self.wire_records)
        rows = [entry_to_wire(e) for e in self.app_syncable_rows]
        if self.wire_rows:
            rows += self.wire_rows if raw else _plain(self.wire_rows)
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
        return _response_of(_convert(data, ExchangeResponseWire, ""))


def _plain(items: list[Any]) -> list[Any]:
    """Wire items as plain data: ``msgspec.Raw`` JSON parsed, dicts as they are."""
    return [_JSON_DECODER.decode(i) if isinstance(i, msgspec.Raw) else i for i in items]


def _request_of(w: ExchangeRequestWire) -> SyncExchangeRequest:
    return SyncExchangeRequest(
        watermarks=_timestamps(w.watermarks),
        records=[r.record() for r in w.records] if w.records else [],
        app_syncable_rows=[e.entry() for e in w.app_syncable_rows] if w.app_syncable_rows else [],
        limit=w.limit,
        count_pending=w.count_pending,
    )


def _response_of(w: ExchangeResponseWire) -> SyncExchangeResponse:
    return SyncExchangeResponse(
        records=[r.record() for r in w.records] if w.records else [],
        app_syncable_rows=[e.entry() for e in w.app_syncable_rows] if w.app_syncable_rows else [],
        responder_watermarks=_timestamps(w.responder_watermarks),
        has_more=w.has_more,
        pending=w.pending,
    )


def _timestamps(vector: Mapping[str, WireHLC]) -> dict[str, HLCTimestamp]:
    return {node: h.timestamp() for node, h in vector.items()}


# -- bytes ------------------------------------------------------------------------------------


def decode_request(body: bytes) -> SyncExchangeRequest:
    """An exchange request from its JSON body; ``WireFormatError`` / ``MalformedJSONError`` otherwise."""
    return _request_of(_decode(_REQUEST_DECODER, body))


def decode_response(body: bytes) -> SyncExchangeResponse:
    """An exchange response from its JSON body; ``WireFormatError`` / ``MalformedJSONError`` otherwise."""
    return _response_of(_decode(_RESPONSE_DECODER, body))


@dataclass(frozen=True, slots=True)
class ResponsePeek:
    """What a requester needs of a response to ask for the next page: each item's HLC, per stream, and the rest."""

    record_stamps: list[HLCTimestamp]
    row_stamps: list[HLCTimestamp]
    responder_watermarks: dict[str, HLCTimestamp]
    has_more: bool
    pending: int | None

    @classmethod
    def of(cls, response: SyncExchangeResponse) -> ResponsePeek:
        return cls([r.updated_at for r in response.records], [e.timestamp for e in response.app_syncable_rows],
                   response.responder_watermarks, response.has_more, response.pending)


def peek_response(body: bytes) -> ResponsePeek:
    """The HLCs, ``responderWatermarks``, ``hasMore`` and ``pending`` of a response body, without the rest.

    Reads the whole body but builds only the stamps: a 10,000-record page in 8 ms, against 38 for
    ``decode_response`` (same-run). A body that is not a valid response raises as ``decode_response`` would,
    or passes here and fails there.
    """
    w = _decode(_PEEK_DECODER, body)
    return ResponsePeek([r.updated_at.timestamp() for r in w.records or ()],
                        [e.timestamp.timestamp() for e in w.app_syncable_rows or ()],
                        _timestamps(w.responder_watermarks), w.has_more, w.pending)


def encode_request(request: SyncExchangeRequest) -> bytes:
    """The compact JSON body of ``request``: exactly what is sent, and what a signature covers."""
    return _ENCODER.encode(request.to_wire())


def encode_response(response: SyncExchangeResponse) -> bytes:
    return _ENCODER.encode(response._wire(raw=True))


def decode_body(body: bytes, type_: type[T]) -> T:
    """A route's JSON body as ``type_`` (``PresignRequestWire``...); ``WireFormatError`` naming the member."""
    return _decode(msgspec.json.Decoder(type_), body)  # type: ignore[no-any-return]


def encode_json(value: Any) -> bytes:
    """Compact JSON of plain data (any size of integer; NaN and Infinity become null)."""
    return _ENCODER.encode(value)


def decode_json(data: bytes) -> Any:
    """Parse JSON into plain data; ``MalformedJSONError`` (a ``ValueError``) when it is not JSON."""
    return _decode(_JSON_DECODER, data)


def _decode(decoder: msgspec.json.Decoder[Any], body: bytes) -> Any:
    try:
        return decoder.decode(body)
    except msgspec.ValidationError as err:
        raise _wire_error(err, "", lambda: _JSON_DECODER.decode(body)) from None
    except msgspec.DecodeError as err:
        raise MalformedJSONError("body", f"is not valid JSON ({err})") from None
    except RecursionError:
        raise MalformedJSONError("body", "nests too deeply") from None


def _convert(data: Any, type_: Any, where: str) -> Any:
    try:
        return msgspec.convert(data, type_)
    except msgspec.ValidationError as err:
        raise _wire_error(err, where, lambda: data) from None


# -- errors -----------------------------------------------------------------------------------

_LOCATED = re.compile(r"(?s)(.*) - at (`key` in )?`\$([^`]*)`")
_MISSING = re.compile(r"Object missing required field `(.+)`")


def _join(base: str, member: str) -> str:
    if not member:
        return base
    if not base:
        return member
    return base + member if member.startswith("[") else f"{base}.{member}"


def _wire_error(err: msgspec.ValidationError, where: str, source: Callable[[], Any]) -> WireFormatError:
    """``err`` as a ``WireFormatError`` whose field is the path msgspec reports, below ``where``."""
    field_, problem = _locate(err, source)
    if problem.startswith("Number out of range"):  # 1e999: Infinity in disguise
        return MalformedJSONError("body", f"{problem} at {field_ or 'the top level'}")
    return WireFormatError(_join(where, field_) or "body", problem)


def _locate(err: msgspec.ValidationError, source: Callable[[], Any]) -> tuple[str, str]:
    """``(path, problem)`` of a validation error, with ``$.`` dropped and dict keys filled in."""
    match = _LOCATED.fullmatch(str(err))
    problem, in_key, path = (match.group(1), match.group(2), match.group(3).lstrip(".")) if match else (str(err), None,
                                                                                                       "")
    cause = err.__cause__
    if isinstance(cause, WireRuleError):
        path, problem = _join(path, cause.member), cause.problem
    elif missing := _MISSING.fullmatch(problem):
        path, problem = _join(path, missing.group(1)), "is required"
    if in_key or "[...]" in path:
        # msgspec does not name the key of a dict member: find it in the parsed input.
        vector = path.split("[...]", 1)[0]
        try:
            found = _in_vector(source(), vector, bool(in_key))
        except (msgspec.DecodeError, RecursionError):
            found = None
        if found is not None:
            return found
        path = path.replace("[...]", "")
    return path, problem


def _in_vector(data: Any, vector: str, in_key: bool) -> tuple[str, str] | None:
    """The first key (or value) of the watermark vector ``vector`` in ``data`` that breaks a rule."""
    values = data.get(vector) if isinstance(data, dict) else None
    if not isinstance(values, dict):
        return None
    for node, value in values.items():
        if in_key:
            problem = node_id_problem(node)
            if problem is not None:
                return _key_field(vector, node), problem
            continue
        try:
            msgspec.convert(value, WireHLC)
        except msgspec.ValidationError as err:
            inner, problem = _locate(err, lambda v=value: v)
            return _join(f"{vector}.{node}", inner), problem
    return None


# -- single objects, as dicts ------------------------------------------------------------------


def hlc_from_wire(data: Any, where: str) -> HLCTimestamp:
    return _convert(data, WireHLC, where).timestamp()  # type: ignore[no-any-return]


def watermarks_to_wire(w: Mapping[str, HLCTimestamp]) -> dict[str, Any]:
    return {node: hlc_to_wire(h) for node, h in w.items()}


def watermarks_from_wire(data: Any, where: str) -> dict[str, HLCTimestamp]:
    vector = _convert(data, Watermarks, where)
    try:
        _check_keys(vector, where)
    except WireRuleError as err:
        raise WireFormatError(err.member, err.problem) from None
    return _timestamps(vector)


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


def record_from_wire(d: Any, where: str) -> DataRecord:
    return _convert(d, SharedRecordWire, where).record()  # type: ignore[no-any-return]


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
    return _convert(d, AppRowEntryWire, where).entry()  # type: ignore[no-any-return]


# -- schema -----------------------------------------------------------------------------------

#: Component names of the OpenAPI schema, by struct.
_SCHEMA_NAMES = {
    "PresignRequestWire": "PresignRequest",
    "ConfirmRequestWire": "ConfirmRequest",
    "UrlWire": "Url",
    "OkWire": "Ok",
    "StoredWire": "Stored",
    "HealthWire": "Health",
    "ErrorDetailWire": "ErrorDetail",
    "ErrorWire": "Error",
    "WireHLC": "HLC",
    "SharedRecordWire": "SharedRecord",
    "AppRowEntryWire": "AppSyncableRow",
    "ExchangeRequestWire": "ExchangeRequest",
    "ExchangeResponseWire": "ExchangeResponse",
}
_REF_PREFIX = "#/components/schemas/"


def json_schema_components(*, openapi_30: bool = True) -> dict[str, Any]:
    """OpenAPI ``components.schemas`` of the API's JSON bodies, from the types that decode and encode them.

    Named ``HLC``, ``SharedRecord``, ``AppSyncableRow``, ``ExchangeRequest`` and
    ``ExchangeResponse``, and for the other routes ``PresignRequest``, ``ConfirmRequest``, ``Url``,
    ``Ok``, ``Stored``, ``Health``, ``Error`` and ``ErrorDetail``; each describes what the decoder
    accepts. With ``openapi_30`` (the default) a nullable member is spelled ``nullable: true`` (OpenAPI 3.0) rather than
    ``anyOf [..., {"type": "null"}]`` (JSON Schema 2020-12, OpenAPI 3.1).
    """
    _, components = msgspec.json.schema_components(
        (ExchangeRequestWire, ExchangeResponseWire, PresignRequestWire, ConfirmRequestWire, UrlWire, OkWire,
         StoredWire, HealthWire, ErrorWire), ref_template=_REF_PREFIX + "{name}")
    renamed = {_SCHEMA_NAMES.get(name, name): {**schema, "title": _SCHEMA_NAMES.get(name, name)}
               for name, schema in components.items()}
    renamed["AppSyncableRow"]["anyOf"] = ENTRY_OP_RULES
    out: dict[str, Any] = _rename_refs(renamed)
    return _to_openapi_30(out) if openapi_30 else out


def _rename_refs(value: Any) -> Any:
    if isinstance(value, dict):
        ref = value.get("$ref")
        if isinstance(ref, str) and ref.startswith(_REF_PREFIX):
            name = ref[len(_REF_PREFIX):]
            return {**value, "$ref": _REF_PREFIX + _SCHEMA_NAMES.get(name, name)}
        return {k: _rename_refs(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_rename_refs(v) for v in value]
    return value


def _to_openapi_30(value: Any) -> Any:
    if isinstance(value, list):
        return [_to_openapi_30(v) for v in value]
    if not isinstance(value, dict):
        return value
    value = {k: _to_openapi_30(v) for k, v in value.items()}
    if value.get("required") == []:  # an empty list is not allowed in 3.0
        del value["required"]
    if "propertyNames" in value:  # 3.1 only: the key rule stays readable as an extension
        value["x-propertyNames"] = value.pop("propertyNames")
    options = value.get("anyOf")
    if isinstance(options, list) and {"type": "null"} in options:
        rest = [o for o in options if o != {"type": "null"}]
        del value["anyOf"]
        if len(rest) == 1 and "$ref" in rest[0]:
            # OpenAPI 3.0 ignores siblings of a bare $ref; allOf is the usual spelling.
            return {**value, "allOf": rest, "nullable": True}
        if len(rest) == 1:
            return {**value, **rest[0], "nullable": True}
        return {**value, "anyOf": rest, "nullable": True}
    return value
