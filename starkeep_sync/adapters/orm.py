"""ORM adapters: shared records and app rows of one owner.

Hot paths are SQL: LWW writes are one conditional upsert (records, and app
rows that carry their whole row), else a row-locked read-modify-write (app
row patches and deletes by key); "what is above this vector" is one
indexed range query per node that has anything above it, found from the
per-node coverage summary, so a converged round reads no data rows.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Collection, Iterable, Iterator, Mapping, Sequence
from contextlib import AbstractContextManager, ExitStack, contextmanager
from functools import lru_cache
from typing import Any

from django.db import DataError, IntegrityError, connections, router, transaction
from django.db.backends.base.base import BaseDatabaseWrapper
from django.db.models import Model, QuerySet
from django.db.models.expressions import RawSQL
from msgspec import Raw

from ..core import paging
from ..core.approws import EntryRefused, next_row, resolve_entries, resolve_entry, row_key_text
from ..core.constants import DELETED_AT, FILE_RECORDS_TABLE, NODE_ID, UPDATED_AT
from ..core.exceptions import SyncError
from ..core.hlc import ZERO_HLC, HLCTimestamp, deserialize_hlc, serialize_hlc
from ..core.protocols import RecordPage, ScanPage
from ..core.records import AppSyncableNamespace, AppSyncableRowEntry, AppSyncableTableInfo, DataRecord
from ..core.watermarks import node_floor_bound
from ..core.wire import encode_json
from ..models import AppNamespace, AppRow, FileRecord, NodeCoverage, SharedRecord
from . import sql


def synced_db() -> BaseDatabaseWrapper:
    """The connection the synced data lives on, as the project's database routers say."""
    return connections[router.db_for_write(SharedRecord)]


Watermarks = dict[str, HLCTimestamp]
RECORDS_SCOPE = "records"
UPSERT_BATCH = 500


def _lt(column: str, other: str) -> str:
    """``column < other`` in code-point order on every backend (PostgreSQL may collate otherwise)."""
    if synced_db().vendor == "postgresql":
        return f'{column} COLLATE "C" < {other} COLLATE "C"'
    return f"{column} < {other}"


@contextmanager
def read_snapshot() -> Iterator[None]:
    """Run the reads of one response (rows above a vector, coverage) in one snapshot.

    PostgreSQL's default READ COMMITTED gives each statement its own snapshot, so
    rows read per node and per table, and the coverage read after them, could see
    different sets of concurrently committed writes (see ``SyncResponder``).
    A read-only REPEATABLE READ transaction sees one set; read-only, it never
    fails to serialize. SQLite reads inside one transaction from one snapshot.
    """
    db = synced_db()
    if db.in_atomic_block:
        # An outer transaction (ATOMIC_REQUESTS, a test) already fixes the isolation.
        yield
        return
    with transaction.atomic(using=db.alias):
        if db.vendor == "postgresql":
            with db.cursor() as cur:
                cur.execute("SET TRANSACTION ISOLATION LEVEL REPEATABLE READ READ ONLY")
        yield


def stored_hlc(value: str) -> HLCTimestamp:
    """Parse an HLC this adapter wrote with ``serialize_hlc`` (trusted: no validation)."""
    return HLCTimestamp(int(value[:12], 16), int(value[13:17], 16), value[18:])


def node_floor_lookup(node: str, floor: HLCTimestamp) -> dict[str, str]:
    """ORM lookup for rows of ``node`` whose HLC is above ``floor`` (which may name another node)."""
    op, bound = node_floor_bound(node, floor)
    return {"updated_at__gt" if op == ">" else "updated_at__gte": serialize_hlc(bound)}


def bump_coverage(owner_id: int, scope: str, hlcs: Iterable[HLCTimestamp]) -> None:
    """Raise the per-node coverage summary to the highest of ``hlcs`` per node (one statement)."""
    best = paging.coverage_bump(hlcs)
    if not best:
        return
    table = synced_db().ops.quote_name(NodeCoverage._meta.db_table)
    placeholders = ", ".join(["(%s, %s, %s, %s)"] * len(best))
    params: list[Any] = []
    for node, h in sorted(best.items()):  # one lock order for every writer: no deadlock
        params += [owner_id, scope, node, serialize_hlc(h)]
    sql = (
        f"INSERT INTO {table} (owner_id, scope, node_id, hlc) VALUES {placeholders} "
        f"ON CONFLICT (owner_id, scope, node_id) DO UPDATE SET hlc = excluded.hlc "
        f"WHERE {_lt(table + '.hlc', 'excluded.hlc')}"
    )
    with synced_db().cursor() as cur:
        cur.execute(sql, params)


def coverage_of(owner_id: int, scopes: Sequence[str]) -> Watermarks:
    out: Watermarks = {}
    for scope, summary in coverage_by_scope(owner_id).items():
        if scope in scopes:
            for node, h in summary.items():
                if node not in out or h > out[node]:
                    out[node] = h
    return out


@lru_cache(maxsize=4)
def _coverage_sql(vendor: str) -> str:
    return (f"SELECT scope, node_id, hlc FROM {synced_db().ops.quote_name(NodeCoverage._meta.db_table)} "
            "WHERE owner_id = %s")


def coverage_by_scope(owner_id: int) -> dict[str, Watermarks]:
    """Every coverage summary of an owner, per scope, in one query.

    Read on every exchange, sometimes twice: a plain statement costs a tenth of
    the ORM's queryset for it.
    """
    out: dict[str, Watermarks] = {}
    db = synced_db()
    with db.cursor() as cur:
        cur.execute(_coverage_sql(db.vendor), [owner_id])
        for scope, node, hlc in cur.fetchall():
            out.setdefault(scope, {})[node] = stored_hlc(hlc)
    return out


class SnapshotCoverage:
    """Coverage read once per response, and a snapshot transaction only when rows will be read.

    The first read takes every scope of the owner in one statement, which is
    consistent by itself. When nothing of the channel is above the
    requester's vector (a converged round) that read is the whole answer, so
    the round runs no transaction at all. Otherwise, before the first data
    row is read, a read-only snapshot opens and the coverage is read again
    inside it, so the page, the counts and ``responderWatermarks`` all come
    from that one snapshot (see ``read_snapshot``).
    """

    def __init__(self, owner_id: int) -> None:
        self.owner_id = owner_id
        self._cached: dict[str, Watermarks] | None = None
        self._stack: ExitStack | None = None
        self._decided = False

    @contextmanager
    def snapshot(self) -> Iterator[None]:
        with ExitStack() as stack:
            self._stack, self._cached, self._decided = stack, None, False
            try:
                yield
            finally:
                self._stack, self._cached, self._decided = None, None, False

    def get(self, scope: str) -> Watermarks:
        if self._stack is None:
            return coverage_of(self.owner_id, [scope])
        if self._cached is None:
            self._cached = coverage_by_scope(self.owner_id)
        return dict(self._cached.get(scope, {}))

    def before_scan(self, in_channel: Callable[[str], bool], watermarks: Mapping[str, HLCTimestamp]) -> None:
        """Called before a response reads data rows; decides once whether it needs the snapshot."""
        if self._stack is None or self._decided:
            return
        self._decided = True
        if self._cached is None:
            self._cached = coverage_by_scope(self.owner_id)
        news = any(top > watermarks.get(node, ZERO_HLC)
                   for scope, summary in self._cached.items() if in_channel(scope)
                   for node, top in summary.items())
        if news:
            self._stack.enter_context(read_snapshot())
            self._cached = None  # read again, inside the snapshot


def _is_records_scope(scope: str) -> bool:
    return scope == RECORDS_SCOPE


def rows_since(
    queryset: QuerySet,
    fields: Sequence[str],
    coverage: Watermarks,
    watermarks: Mapping[str, HLCTimestamp],
    limit: int | None,
    cursor: str | None,
    exclude: Collection[tuple[Any, HLCTimestamp]] | None = None,
    ident: Callable[[Any], str] = str,
) -> tuple[list[tuple[Any, ...]], bool]:
    """Rows (tuples of ``fields``, ``updated_at`` first) above ``watermarks`` and the cursor, in HLC order.

    The paging is :func:`paging.page_since`'s; this supplies one indexed range
    query per node with news. Serialized HLCs sort as HLCs do, so the per-node
    streams merge on the stored strings without parsing them. ``exclude``
    holds ``(id, hlc)`` of rows to leave out (``ident`` turns an id into the
    first field's text); they are dropped before anything is built from them.
    """
    dropped: dict[str, set[tuple[str, str]]] = {}

    def drop_of(node: str, skip: Collection[tuple[Any, HLCTimestamp]]) -> set[tuple[str, str]]:
        if node not in dropped:
            # Excluded items were checked and stored by this request: their HLCs serialize without checks.
            dropped[node] = {(ident(i), f"{h[0]:012x}:{h[1]:04x}:{h[2]}") for i, h in skip}
        return dropped[node]

    def read(node: str, floor: HLCTimestamp, fetch: int | None,
             skip: Collection[tuple[Any, HLCTimestamp]]) -> list[tuple[Any, ...]]:
        qs = queryset.filter(node_id=node, **node_floor_lookup(node, floor)).order_by("updated_at")
        qs = qs.values_list("updated_at", *fields)
        if not skip:
            return list(qs[:fetch] if fetch is not None else qs)
        drop = drop_of(node, skip)
        rows = [t for t in (qs[:fetch + len(skip)] if fetch is not None else qs) if (t[1], t[0]) not in drop]
        return rows[:fetch] if fetch is not None else rows

    def skip_floor(node: str, floor: HLCTimestamp, skip: Collection[tuple[Any, HLCTimestamp]]) -> HLCTimestamp:
        drop = drop_of(node, skip)
        return _past_echoes(queryset, fields[0], node, floor, max(stamp for _, stamp in drop), drop)

    return paging.page_since(coverage, watermarks, read, _first, limit, cursor, exclude, skip_floor)


def _first(row: tuple[Any, ...]) -> Any:
    return row[0]


def _node_counter(queryset: QuerySet) -> Callable[[str, HLCTimestamp], int]:
    """``paging.count_since``'s per-node count: one indexed ``COUNT`` per node with news."""
    return lambda node, floor: queryset.filter(node_id=node, **node_floor_lookup(node, floor)).count()


def _past_echoes(queryset: QuerySet, ident: str, node: str, floor: HLCTimestamp, highest: str,
                 skip: set[tuple[str, str]]) -> HLCTimestamp:
    """``floor`` raised past this request's own items of ``node`` when nothing else lies among them.

    A device pushing a page finds its own rows right above its vector; reading
    them whole only to drop them cost a push a quarter of its time. Two columns
    of at most one row more than there are echoes tell whether every row up to
    the highest echo is one; if so the page starts after it, else ``floor`` stays.
    """
    span = list(queryset.filter(node_id=node, updated_at__lte=highest, **node_floor_lookup(node, floor))
                .order_by("updated_at").values_list("updated_at", ident)[:len(skip) + 1])
    if len(span) <= len(skip) and all((i, stamp) in skip for stamp, i in span):
        return stored_hlc(highest)
    return floor


# -- shared records -------------------------------------------------------------

_RECORD_COLUMNS = (
    "record_id", "kind", "type", "created_at", "updated_at", "deleted_at", "version", "content_hash",
    "object_storage_key", "mime_type", "size_bytes", "original_filename", "origin_app_id", "parent_id",
    "label", "node_id",
)


#: PostgreSQL array types of ``_RECORD_COLUMNS``, for the ``unnest`` upsert.
_RECORD_PG_TYPES = tuple("bigint" if c == "size_bytes" else "integer" if c == "version" else "text"
                         for c in _RECORD_COLUMNS)


def record_from_model(m: SharedRecord) -> DataRecord:
    return DataRecord(
        id=m.record_id,
        kind=m.kind,
        type=m.type,
        created_at=deserialize_hlc(m.created_at),
        updated_at=deserialize_hlc(m.updated_at),
        deleted_at=deserialize_hlc(m.deleted_at) if m.deleted_at else None,
        version=m.version,
        content_hash=m.content_hash,
        object_storage_key=m.object_storage_key,
        mime_type=m.mime_type,
        size_bytes=m.size_bytes,
        original_filename=m.original_filename,
        origin_app_id=m.origin_app_id,
        parent_id=m.parent_id,
        label=m.label,
    )


#: What a page reads of a record, after ``updated_at`` (see ``rows_since``).
_RECORD_READ = (
    "record_id", "kind", "type", "created_at", "deleted_at", "version", "content_hash", "object_storage_key",
    "mime_type", "size_bytes", "original_filename", "origin_app_id", "parent_id", "label",
)


def record_from_row(t: tuple[Any, ...]) -> DataRecord:
    """A ``DataRecord`` from a ``values_list("updated_at", *_RECORD_READ)`` tuple."""
    (updated, rid, kind, rtype, created, deleted, version, content_hash, key, mime, size, filename, origin,
     parent, label) = t
    return DataRecord(
        id=rid, kind=kind, type=rtype, created_at=stored_hlc(created), updated_at=stored_hlc(updated),
        deleted_at=stored_hlc(deleted) if deleted else None, version=version, content_hash=content_hash,
        object_storage_key=key, mime_type=mime, size_bytes=size, original_filename=filename,
        origin_app_id=origin, parent_id=parent, label=label,
    )


def _wire_hlc(value: str) -> dict[str, Any]:
    """The wire form of an HLC this adapter wrote with ``serialize_hlc``."""
    return {"wallTime": int(value[:12], 16), "counter": int(value[13:17], 16), "nodeId": value[18:]}


def record_row_to_wire(t: tuple[Any, ...]) -> dict[str, Any]:
    """What ``record_to_wire(record_from_row(t))`` gives, without building the record."""
    (updated, rid, kind, rtype, created, deleted, version, content_hash, key, mime, size, filename, origin,
     parent, label) = t
    return {
        "id": rid, "kind": kind, "type": rtype, "createdAt": _wire_hlc(created), "updatedAt": _wire_hlc(updated),
        "deletedAt": _wire_hlc(deleted) if deleted else None, "version": version, "contentHash": content_hash,
        "objectStorageKey": key, "mimeType": mime, "sizeBytes": size, "originalFilename": filename,
        "originAppId": origin, "parentId": parent, "label": label,
    }


def _record_values(r: DataRecord) -> list[Any]:
    deleted = r.deleted_at
    return [
        r.id, r.kind, r.type, serialize_hlc(r.created_at), serialize_hlc(r.updated_at),
        None if deleted is None else serialize_hlc(deleted), r.version, r.content_hash, r.object_storage_key,
        r.mime_type, r.size_bytes, r.original_filename, r.origin_app_id, r.parent_id, r.label, r.updated_at[2],
    ]


@lru_cache(maxsize=64)
def _record_upsert_sql(vendor: str, rows: int, conditional: bool) -> str:
    """The shared-record upsert: ``rows`` rows of values (SQLite), or one array per column (``rows`` 0, PostgreSQL).

    Built once per shape: the same text comes back for every full batch.
    """
    table = synced_db().ops.quote_name(SharedRecord._meta.db_table)
    cols = ", ".join(("owner_id", *_RECORD_COLUMNS))
    updates = ", ".join(f"{c} = excluded.{c}" for c in _RECORD_COLUMNS if c != "record_id")
    where = f" WHERE {_lt(table + '.updated_at', 'excluded.updated_at')}" if conditional else ""
    conflict = f"ON CONFLICT (owner_id, record_id) DO UPDATE SET {updates}{where} RETURNING record_id"
    if vendor == "postgresql":
        arrays = ", ".join(f"%s::{t}[]" for t in _RECORD_PG_TYPES)
        return f"INSERT INTO {table} ({cols}) SELECT %s, * FROM unnest({arrays}) {conflict}"
    return f"INSERT INTO {table} ({cols}) VALUES {sql.placeholders(len(_RECORD_COLUMNS) + 1, rows)} {conflict}"


class OrmDatabaseAdapter:
    """Shared records of one owner (the core's ``DatabaseAdapter``)."""

    def __init__(self, owner: Any) -> None:
        self.owner_id = owner.pk if hasattr(owner, "pk") else int(owner)
        self._qs = SharedRecord.objects.filter(owner_id=self.owner_id)
        self._coverage = SnapshotCoverage(self.owner_id)

    def read_snapshot(self) -> AbstractContextManager[None]:
        return self._coverage.snapshot()

    def get(self, id: str) -> DataRecord | None:
        m = self._qs.filter(record_id=id).first()
        return record_from_model(m) if m is not None else None

    def put(self, record: DataRecord) -> None:
        self._upsert([record], conditional=False)

    def delete(self, id: str, hlc: HLCTimestamp) -> DataRecord | None:
        with transaction.atomic(using=synced_db().alias):
            m = self._qs.select_for_update().filter(record_id=id).first()
            if m is None:
                return None
            stamp = serialize_hlc(hlc)
            m.deleted_at = m.updated_at = stamp
            m.node_id = hlc[2]
            m.version += 1
            m.save()
            bump_coverage(self.owner_id, RECORDS_SCOPE, [hlc])
            return record_from_model(m)

    def merge(self, records: Sequence[DataRecord]) -> list[bool]:
        """LWW-merge ``records``; which of them were stored."""
        if not records:
            return []
        # Two versions of one id in a batch: only the later can win, and one
        # statement may not touch a row twice.
        latest: dict[str, DataRecord] = {}
        for r in records:
            if r.id not in latest or r.updated_at > latest[r.id].updated_at:
                latest[r.id] = r
        # Rows are locked in id order: two requests carrying the same ids in another
        # HLC order (devices writing the same records) would otherwise deadlock.
        written = self._upsert(sorted(latest.values(), key=lambda r: r.id), conditional=True, coverage=records)
        return [r.id in written and latest[r.id] is r for r in records]

    def _upsert(self, records: Sequence[DataRecord], *, conditional: bool,
                coverage: Iterable[DataRecord] | None = None) -> set[str]:
        rows = [_record_values(r) for r in records]
        written: set[str] = set()
        db = synced_db()
        with transaction.atomic(using=db.alias), db.cursor() as cur:
            if db.vendor == "postgresql":
                # One array per column: a fixed-shape statement whatever the batch size,
                # so the driver binds 17 parameters instead of parsing thousands.
                columns = [list(c) for c in zip(*rows, strict=True)]
                cur.execute(_record_upsert_sql("postgresql", 0, conditional), [self.owner_id, *columns])
                written.update(row[0] for row in cur.fetchall())
            else:
                owner = self.owner_id
                for start in range(0, len(rows), UPSERT_BATCH):
                    batch = rows[start:start + UPSERT_BATCH]
                    params: list[Any] = []
                    for row in batch:
                        params.append(owner)
                        params.extend(row)
                    # Django's SQLite cursor would rewrite the 8,500 placeholders with a regular expression on
                    # every call: without ``sql.execute`` a 1,000-record SQLite push took 10% longer, 10,000 records
                    # 15% (one fixed-shape json_each statement instead: 17% and 29%) (same-run before/after,
                    # 2026-12-04).
                    sql.execute(cur, _record_upsert_sql(db.vendor, len(batch), conditional), params)
                    written.update(row[0] for row in cur.fetchall())
            bump_coverage(self.owner_id, RECORDS_SCOPE, (r.updated_at for r in (coverage or records)))
        return written

    def query(self, limit: int, cursor: str | None = None) -> RecordPage:
        return self.query_since({}, limit, cursor)

    def query_since(self, watermarks: Mapping[str, HLCTimestamp], limit: int, cursor: str | None = None,
                    exclude: Collection[tuple[str, HLCTimestamp]] | None = None) -> RecordPage:
        """Records above ``watermarks``; ``exclude`` holds ``(id, hlc)`` of records to leave out."""
        rows, more = self._rows_since(watermarks, limit, cursor, exclude)
        return RecordPage([record_from_row(t) for t in rows], rows[-1][0] if more and rows else None, more)

    def query_wire_since(self, watermarks: Mapping[str, HLCTimestamp], limit: int,
                         exclude: Collection[tuple[str, HLCTimestamp]] | None = None,
                         ) -> tuple[list[dict[str, Any]], bool]:
        """``query_since`` for a responder: one page in wire form, and whether more remain."""
        rows, more = self._rows_since(watermarks, limit, None, exclude)
        return [record_row_to_wire(t) for t in rows], more

    def _rows_since(self, watermarks: Mapping[str, HLCTimestamp], limit: int, cursor: str | None,
                    exclude: Collection[tuple[str, HLCTimestamp]] | None) -> tuple[list[tuple[Any, ...]], bool]:
        self._coverage.before_scan(_is_records_scope, watermarks)
        return rows_since(self._qs, _RECORD_READ, self.get_node_watermarks(), watermarks, limit, cursor, exclude)

    def count_since(self, watermarks: Mapping[str, HLCTimestamp]) -> int:
        self._coverage.before_scan(_is_records_scope, watermarks)
        return paging.count_since(self.get_node_watermarks(), watermarks, _node_counter(self._qs))

    def get_node_watermarks(self) -> Watermarks:
        return self._coverage.get(RECORDS_SCOPE)

    def all(self) -> list[DataRecord]:
        """Every record of this owner, tombstones included."""
        return [record_from_model(m) for m in self._qs.order_by("updated_at")]

    def __len__(self) -> int:
        return self._qs.count()

    def clear(self) -> None:
        """Forget every record and the coverage summary of this owner (a wipe)."""
        with transaction.atomic(using=synced_db().alias):
            self._qs.delete()
            NodeCoverage.objects.filter(owner_id=self.owner_id, scope=RECORDS_SCOPE).delete()


# -- app rows -------------------------------------------------------------------

_FILE_COLUMNS = (
    "object_storage_key", "content_hash", "mime_type", "size_bytes", "original_filename",
    "origin_app_id", "created_at",
)


#: What a scan reads of an AR row, after ``updated_at`` (then ``deleted_at``, ``node_id``).
_FILE_READ = ("record_id", *_FILE_COLUMNS, "extra")


#: What a scan reads after ``updated_at`` (see ``rows_since``), for the reserved file table and for others.
_FILE_SCAN = (*_FILE_READ, "deleted_at", "node_id")
_ROW_SCAN = ("row_key", "data", "deleted_at", "node_id")


# On PostgreSQL a responder's page of app rows is built as JSON text by the database, which the encoder
# copies as it is (``msgspec.Raw``): no JSON parsed, no dict built and none encoded per row in Python. A
# 10,000-row page took 72 ms instead of 101 (same-run, 2026-12-04). The text is concatenated:
# json_build_object took 2-3 times as long in PostgreSQL.


def _pg_object(members: Sequence[tuple[str, str]]) -> str:
    """SQL (PostgreSQL) giving a JSON object's text from ``(name, SQL giving that member's JSON text)`` pairs."""
    return " || ".join(("'{" if i == 0 else "',") + f'"{name}":\' || {value}'
                       for i, (name, value) in enumerate(members)) + " || '}'"


def _pg_json(column: str) -> str:
    """SQL: the JSON text of a column's value (``null`` for NULL)."""
    return f"coalesce(to_json({column})::text, 'null')"


def _pg_hlc(column: str) -> str:
    """SQL: the wire form of a stored HLC column (what ``_wire_hlc`` gives); ``null`` for NULL or ''."""
    return (f"CASE WHEN {column} IS NULL OR {column} = '' THEN 'null' ELSE "
            + _pg_object([("wallTime", f"(('x' || left({column}, 12))::bit(48)::bigint)::text"),
                          ("counter", f"(('x' || substr({column}, 14, 4))::bit(16)::integer)::text"),
                          ("nodeId", f"to_json(substr({column}, 19))::text")]) + " END")


def _pg_entry_json(row: str) -> str:
    """SQL: an app row as the JSON text of its scanned entry (``row``: SQL giving its stored columns as jsonb)."""
    return _pg_object([
        ("timestamp", _pg_hlc("updated_at")), ("appId", _pg_json("app_id")), ("table", "to_json(%s::text)::text"),
        ("op", _pg_deleted("deleted_at", """'"delete"'""", """'"insert"'""")),
        ("row", f"({row} || jsonb_build_object('updated_at', updated_at, 'deleted_at', deleted_at))::text"),
        ("where", "'null'"),
    ])


def _pg_deleted(column: str, then: str, otherwise: str) -> str:
    return f"CASE WHEN {column} IS NULL OR {column} = '' THEN {otherwise} ELSE {then} END"


#: What ``_row_of`` gives, as JSON text: the stored data, or the file record's extra and columns.
_ROW_JSON_PG = _pg_entry_json("data")
_FILE_JSON_PG = _pg_entry_json("extra || jsonb_build_object('id', record_id, "
                               + ", ".join(f"'{c}', {c}" for c in _FILE_COLUMNS) + ")")


#: The same rows' JSON text on SQLite (JSON1's ``json_set`` appends keys in order, as ``_row_of`` does).
_ROW_JSON_SQLITE = "json_set(data, '$.updated_at', updated_at, '$.deleted_at', deleted_at)"
_FILE_JSON_SQLITE = ("json_set(extra, '$.id', record_id, "
                     + ", ".join(f"'$.{c}', {c}" for c in (*_FILE_COLUMNS, "updated_at", "deleted_at")) + ")")


def _row_of(t: tuple[Any, ...], file_table: bool) -> dict[str, Any]:
    """The row of a ``_FILE_SCAN`` or ``_ROW_SCAN`` tuple, with its ``updated_at`` and ``deleted_at``."""
    if file_table:
        row: dict[str, Any] = dict(t[-3])  # extra
        row["id"] = t[1]
        for c, v in zip(_FILE_COLUMNS, t[2:-3], strict=True):
            row[c] = v
    else:
        row = dict(t[2])
    row[UPDATED_AT] = t[0]
    row[DELETED_AT] = t[-2]
    return row


def _advisory_id(owner_id: int, app_id: str, table: str, key: str) -> int:
    """A signed 64-bit lock id for one app row (a collision only serializes two writers)."""
    digest = hashlib.blake2b(f"{owner_id}\x1f{app_id}\x1f{table}\x1f{key}".encode(), digest_size=8).digest()
    return int.from_bytes(digest, "big", signed=True)


_pk_text = row_key_text


#: Columns of an app row's set-based upsert after ``owner_id``, per model: the key columns, then the rest.
_ROW_UPSERT = {
    "row": (("app_id", "table", "row_key"), ("data", "updated_at", "deleted_at", "node_id")),
    "file": (("app_id", "record_id"), (*_FILE_COLUMNS, "extra", "updated_at", "deleted_at", "node_id")),
}
_PG_TYPES = {"data": "jsonb", "extra": "jsonb", "size_bytes": "bigint"}


@lru_cache(maxsize=64)
def _row_upsert_sql(vendor: str, shape: str, rows: int) -> str:
    """The LWW upsert of app rows (``shape`` "row" or "file"): a row is written only over an older one.

    ``rows`` rows of values (SQLite), or every row in one JSON array parameter (``rows`` 0, PostgreSQL:
    a text array of JSON is quoted in Python by the driver, element by element, which took most of a
    1,000-row push's upsert). Returns the key of each row it wrote. Built once per shape.
    """
    model = FileRecord if shape == "file" else AppRow
    q = synced_db().ops.quote_name
    table = q(model._meta.db_table)
    keys, rest = _ROW_UPSERT[shape]
    columns = [q(c) for c in (*keys, *rest)]
    updates = ", ".join(f"{c} = excluded.{c}" for c in columns[len(keys):])
    conflict = (f"ON CONFLICT ({', '.join([q('owner_id'), *columns[:len(keys)]])}) DO UPDATE SET {updates} "
                f"WHERE {_lt(table + '.updated_at', 'excluded.updated_at')} RETURNING {q(keys[-1])}")
    into = f"INSERT INTO {table} ({q('owner_id')}, {', '.join(columns)})"
    if vendor == "postgresql":
        types = ", ".join(f"{q(c)} {_PG_TYPES.get(c, 'text')}" for c in (*keys, *rest))
        return f"{into} SELECT %s, r.* FROM jsonb_to_recordset(%s::jsonb) AS r({types}) {conflict}"
    return f"{into} VALUES {sql.placeholders(1 + len(columns), rows)} {conflict}"


class OrmNamespaceStore:
    """Registered namespaces (``AppNamespace`` rows), cached for the adapter's life."""

    def __init__(self) -> None:
        self._cache: dict[str, AppSyncableNamespace | None] = {}

    @staticmethod
    def _build(ns: AppNamespace) -> AppSyncableNamespace:
        return AppSyncableNamespace(
            ns.app_id,
            [AppSyncableTableInfo(t.name, t.pk_columns) for t in ns.tables.all()],
            files_enabled=ns.files_enabled,
        )

    def get(self, app_id: str) -> AppSyncableNamespace | None:
        if app_id not in self._cache:
            ns = AppNamespace.objects.prefetch_related("tables").filter(app_id=app_id).first()
            self._cache[app_id] = self._build(ns) if ns is not None else None
        return self._cache[app_id]

    def list(self) -> list[AppSyncableNamespace]:
        return [self._build(ns) for ns in AppNamespace.objects.prefetch_related("tables").order_by("app_id")]


class OrmApplier:
    """App rows of one owner: ``_starkeep_sync_records`` in ``FileRecord``, the rest in ``AppRow``."""

    def __init__(self, owner: Any, namespaces: OrmNamespaceStore) -> None:
        self.owner_id = owner.pk if hasattr(owner, "pk") else int(owner)
        self.namespaces = namespaces
        self.coverage = SnapshotCoverage(self.owner_id)

    # model mapping

    def _qs(self, app_id: str, table: str) -> QuerySet:
        if table == FILE_RECORDS_TABLE:
            return FileRecord.objects.filter(owner_id=self.owner_id, app_id=app_id)
        return AppRow.objects.filter(owner_id=self.owner_id, app_id=app_id, table=table)

    @staticmethod
    def _lookup(table: str, pk: Sequence[Any]) -> dict[str, Any]:
        if table == FILE_RECORDS_TABLE:
            return {"record_id": str(pk[0])}
        return {"row_key": _pk_text(pk)}

    @staticmethod
    def to_row(m: Model, info: AppSyncableTableInfo | None = None) -> dict[str, Any]:
        if isinstance(m, FileRecord):
            row: dict[str, Any] = dict(m.extra)
            row["id"] = m.record_id
            for c in _FILE_COLUMNS:
                row[c] = getattr(m, c)
        else:
            assert isinstance(m, AppRow)
            row = dict(m.data)
        row[UPDATED_AT] = m.updated_at
        row[DELETED_AT] = m.deleted_at
        row[NODE_ID] = m.node_id
        return row

    def _write(self, m: Model | None, app_id: str, table: str, pk: Sequence[Any], row: dict[str, Any]) -> None:
        fields = self._fields(app_id, table, row)
        if m is None:
            self._qs(app_id, table).model.objects.create(
                owner_id=self.owner_id, app_id=app_id, **({} if table == FILE_RECORDS_TABLE else {"table": table}),
                **self._lookup(table, pk), **fields,
            )
        else:
            for k, v in fields.items():
                setattr(m, k, v)
            m.save()

    @staticmethod
    def _fields(app_id: str, table: str, row: dict[str, Any]) -> dict[str, Any]:
        """Model field values of a stored row; ``EntryRefused`` when a reserved column has the wrong type."""
        bookkeeping = {"updated_at": row[UPDATED_AT], "deleted_at": row.get(DELETED_AT), "node_id": row[NODE_ID]}
        data = {k: v for k, v in row.items() if k not in (UPDATED_AT, DELETED_AT, NODE_ID)}
        if table == FILE_RECORDS_TABLE:
            fields: dict[str, Any] = {c: data.pop(c, None) for c in _FILE_COLUMNS}
            data.pop("id", None)
            size = fields["size_bytes"]
            if size is not None and (type(size) is not int or size < 0):
                raise EntryRefused(f"{app_id}.{table}: size_bytes must be a non-negative integer")
            for c in ("object_storage_key", "content_hash", "mime_type", "original_filename",
                      "origin_app_id", "created_at"):
                if fields[c] is not None and not isinstance(fields[c], str):
                    raise EntryRefused(f"{app_id}.{table}: {c} must be a string or null")
            fields["extra"] = data
        else:
            fields = {"data": data}
        fields.update(bookkeeping)
        return fields

    # protocol

    def apply(self, entry: AppSyncableRowEntry) -> bool:
        info, pk = resolve_entry(self.namespaces, entry)
        for attempt in range(2):
            try:
                with transaction.atomic(using=synced_db().alias):
                    return self._apply_locked(entry, info, pk)
            except (DataError, OverflowError) as err:
                # A value its column cannot hold (a key too long for PostgreSQL's varchar, an integer
                # past 64 bits): this entry is refused, like any other bad entry, not a 500.
                raise EntryRefused(f"{entry.app_id}.{entry.table}: a value does not fit its column "
                                   f"({str(err).splitlines()[0][:200]})") from None
            except IntegrityError:
                # Another worker inserted the same key first: the retry finds
                # and locks its row.
                if attempt:
                    raise
        raise AssertionError("unreachable")

    def _apply_locked(self, entry: AppSyncableRowEntry, info: AppSyncableTableInfo, pk: tuple[Any, ...]) -> bool:
        self._lock_keys([(entry.app_id, entry.table, self._key_text(entry.table, pk))])
        qs = self._qs(entry.app_id, entry.table)
        m = qs.select_for_update().filter(**self._lookup(entry.table, pk)).first()
        stored = self.to_row(m) if m is not None else None
        new = next_row(stored, entry, info, pk)
        bump_coverage(self.owner_id, f"{entry.app_id}/{entry.table}", [entry.timestamp])
        if new is None:
            return False
        self._write(m, entry.app_id, entry.table, pk, new)
        return True

    # batches

    @staticmethod
    def _key_text(table: str, pk: Sequence[Any]) -> str:
        return str(pk[0]) if table == FILE_RECORDS_TABLE else _pk_text(pk)

    def _lock_keys(self, keys: Iterable[tuple[str, str, str]]) -> None:
        """Serialize writers of the same rows, including rows that do not exist yet.

        ``SELECT ... FOR UPDATE`` cannot lock a row before it is inserted, so on
        PostgreSQL every writer of app rows first takes a transaction-scoped
        advisory lock per key, in one sorted order (no deadlocks). SQLite
        serializes writers itself.
        """
        db = synced_db()
        if db.vendor != "postgresql":
            return
        ids = sorted({_advisory_id(self.owner_id, *k) for k in keys})
        if ids:
            with db.cursor() as cur:
                cur.execute("SELECT pg_advisory_xact_lock(k) FROM unnest(%s::bigint[]) AS k ORDER BY k", [ids])

    def lock_row(self, app_id: str, table: str, pk: Sequence[Any]) -> dict[str, Any] | None:
        """The stored row (tombstones included) with its key locked until the transaction ends; ``None`` if absent.

        For writers that must read a row before they stamp its next version (the
        server's Python API): the same locks ``apply`` takes, so no exchange can
        write that row in between. Call inside ``transaction.atomic()`` on the data's database.
        """
        self._lock_keys([(app_id, table, self._key_text(table, pk))])
        m = self._qs(app_id, table).select_for_update().filter(**self._lookup(table, pk)).first()
        return self.to_row(m) if m is not None else None

    def apply_many(self, entries: Sequence[AppSyncableRowEntry], written: list[AppSyncableRowEntry] | None = None,
                   keys: Sequence[tuple[Any, ...]] | None = None) -> tuple[int, int, Exception | None]:
        """Apply entries in order in one transaction, stopping at the first that cannot apply.

        Returns ``(landed, applied, error)``: how many entries were taken in
        (the failing one and those after it are not), how many of them wrote,
        and the error that stopped the batch. One lock statement, one read
        and one upsert per table and one coverage update replace the four
        statements and a commit per row of ``apply``. ``written``, when given,
        receives the entries that changed a row (the LWW winners), in order.
        ``keys``: the primary keys already checked (``BatchApplier.apply_many``).
        """
        infos, pks, error = resolve_entries(self.namespaces, entries, keys)
        checked = list(zip(entries, infos, pks, strict=False))
        if not checked:
            return 0, 0, error
        won: list[AppSyncableRowEntry] = []
        try:
            with transaction.atomic(using=synced_db().alias):
                landed, applied, stopped = self._apply_checked(checked, won)
        except (DataError, OverflowError, IntegrityError):
            # A value its column cannot hold, somewhere in the batch: find which, one entry at a time.
            return self._apply_one_by_one(entries, written)
        if written is not None:
            written.extend(won)
        if stopped is not None:
            return landed, applied, stopped
        return landed, applied, error

    def _apply_one_by_one(self, entries: Sequence[AppSyncableRowEntry],
                          written: list[AppSyncableRowEntry] | None) -> tuple[int, int, Exception | None]:
        applied = 0
        for i, entry in enumerate(entries):
            try:
                if self.apply(entry):
                    applied += 1
                    if written is not None:
                        written.append(entry)
            except (SyncError, ValueError) as err:
                return i, applied, err
        return len(entries), applied, None

    def _apply_checked(
        self, checked: Sequence[tuple[AppSyncableRowEntry, AppSyncableTableInfo, tuple[Any, ...]]],
        won: list[AppSyncableRowEntry],
    ) -> tuple[int, int, Exception | None]:
        keys = [(e.app_id, e.table, self._key_text(e.table, pk)) for e, _, pk in checked]
        self._lock_keys(keys)
        if len(set(keys)) == len(keys) and all(e.op == "insert" or (e.op == "delete" and e.row and not e.where)
                                               for e, _, _ in checked):
            return self._upsert_whole_rows(checked, keys, won)
        by_table: dict[tuple[str, str], list[str]] = {}
        for app_id, table, key in keys:
            by_table.setdefault((app_id, table), []).append(key)
        stored: dict[tuple[str, str, str], dict[str, Any] | None] = {}
        for (app_id, table), table_keys in by_table.items():
            field = "record_id" if table == FILE_RECORDS_TABLE else "row_key"
            for m in self._qs(app_id, table).select_for_update().filter(**{f"{field}__in": table_keys}):
                stored[(app_id, table, getattr(m, field))] = self.to_row(m)
        dirty: dict[tuple[str, str, str], dict[str, Any]] = {}
        covered: dict[str, list[HLCTimestamp]] = {}
        landed = applied = 0
        stopped: Exception | None = None
        for (entry, info, pk), key in zip(checked, keys, strict=True):
            new = next_row(stored.get(key), entry, info, pk)
            if new is not None:
                try:
                    fields = self._fields(entry.app_id, entry.table, new)
                except EntryRefused as err:
                    stopped = err
                    break
                stored[key] = new
                dirty[key] = fields
                won.append(entry)
                applied += 1
            covered.setdefault(f"{entry.app_id}/{entry.table}", []).append(entry.timestamp)
            landed += 1
        self._upsert_rows(dirty)
        for scope, hlcs in sorted(covered.items()):
            bump_coverage(self.owner_id, scope, hlcs)
        return landed, applied, stopped

    def _upsert_whole_rows(
        self, checked: Sequence[tuple[AppSyncableRowEntry, AppSyncableTableInfo, tuple[Any, ...]]],
        keys: Sequence[tuple[str, str, str]], won: list[AppSyncableRowEntry],
    ) -> tuple[int, int, Exception | None]:
        """``_apply_checked`` for entries of distinct rows that each carry their whole row (inserts,
        scanned tombstones).

        Such an entry's row does not depend on the stored one, so nothing is read: one upsert per
        table writes each row only over an older one (LWW in its WHERE clause) and says which it wrote.
        The keys are locked all the same, so writers that read a row first (``apply``, ``lock_row``)
        never interleave with it. The read and Django's ``bulk_create`` it replaces made a 10,000-row
        PostgreSQL push take 1.45-1.51 s instead of 1.01-1.14 s (``python -m bench.profile app-push``,
        same-run before/after, 2026-12-04).
        """
        entries: dict[tuple[str, str, str], AppSyncableRowEntry] = {}
        by_table: dict[tuple[str, str], list[tuple[str, dict[str, Any]]]] = {}
        covered: dict[str, list[HLCTimestamp]] = {}
        stopped: Exception | None = None
        for (entry, info, pk), key in zip(checked, keys, strict=True):
            new = next_row(None, entry, info, pk)
            assert new is not None  # a whole row, with nothing stored to lose to
            try:
                fields = self._fields(entry.app_id, entry.table, new)
            except EntryRefused as err:
                stopped = err
                break
            entries[key] = entry
            by_table.setdefault(key[:2], []).append((key[2], fields))
            covered.setdefault(f"{entry.app_id}/{entry.table}", []).append(entry.timestamp)
        written: set[tuple[str, str, str]] = set()
        for (app_id, table), rows in sorted(by_table.items()):
            rows.sort(key=_first)  # one lock order for every writer: no deadlock
            written.update((app_id, table, k) for k in self._upsert_table(app_id, table, rows))
        won.extend(e for key, e in entries.items() if key in written)  # in the batch's order
        for scope, hlcs in sorted(covered.items()):
            bump_coverage(self.owner_id, scope, hlcs)
        return len(entries), len(written), stopped

    def _upsert_table(self, app_id: str, table: str, rows: Sequence[tuple[str, dict[str, Any]]]) -> list[str]:
        """LWW-upsert ``(key, model fields)`` rows of one table; the keys of those written."""
        shape = "file" if table == FILE_RECORDS_TABLE else "row"
        keys, rest = _ROW_UPSERT[shape]
        head = (app_id,) if shape == "file" else (app_id, table)
        db = synced_db()
        out: list[str] = []
        with db.cursor() as cur:
            if db.vendor == "postgresql":
                names = (*keys, *rest)
                batch = encode_json([dict(zip(names, (*head, key, *(f[c] for c in rest)), strict=True))
                                     for key, f in rows]).decode()
                cur.execute(_row_upsert_sql("postgresql", shape, 0), [self.owner_id, batch])
                out.extend(r[0] for r in cur.fetchall())
                return out
            values = [[self.owner_id, *head, key,
                       *(encode_json(f[c]).decode() if c in ("data", "extra") else f[c] for c in rest)]
                      for key, f in rows]
            for start in range(0, len(values), UPSERT_BATCH):
                batch_values = values[start:start + UPSERT_BATCH]
                sql.execute(cur, _row_upsert_sql(db.vendor, shape, len(batch_values)),
                            [v for row in batch_values for v in row])
                out.extend(r[0] for r in cur.fetchall())
        return out

    def _upsert_rows(self, dirty: Mapping[tuple[str, str, str], dict[str, Any]]) -> None:
        files = [FileRecord(owner_id=self.owner_id, app_id=a, record_id=k, **f)
                 for (a, t, k), f in dirty.items() if t == FILE_RECORDS_TABLE]
        rows = [AppRow(owner_id=self.owner_id, app_id=a, table=t, row_key=k, **f)
                for (a, t, k), f in dirty.items() if t != FILE_RECORDS_TABLE]
        # The keys are locked, so what was computed from the stored rows still holds: a plain upsert.
        if files:
            FileRecord.objects.bulk_create(
                files, update_conflicts=True, unique_fields=["owner", "app_id", "record_id"],
                update_fields=[*_FILE_COLUMNS, "extra", "updated_at", "deleted_at", "node_id"])
        if rows:
            AppRow.objects.bulk_create(
                rows, update_conflicts=True, unique_fields=["owner", "app_id", "table", "row_key"],
                update_fields=["data", "updated_at", "deleted_at", "node_id"])

    def scan_since(self, app_id: str, table: str, since: Mapping[str, HLCTimestamp],
                   limit: int | None = None, cursor: str | None = None,
                   exclude: Collection[tuple[tuple[Any, ...], HLCTimestamp]] | None = None) -> ScanPage:
        """Rows above ``since``; ``exclude`` holds ``(primary key, hlc)`` of rows to leave out."""
        rows, more = self._rows_since(app_id, table, since, limit, cursor, exclude)
        file_table = table == FILE_RECORDS_TABLE
        entries = [AppSyncableRowEntry(stored_hlc(t[0]), app_id, table, "delete" if t[-2] else "insert",
                                       _row_of(t, file_table), None) for t in rows]
        return ScanPage(entries, rows[-1][0] if more and rows else None, more)

    def scan_wire_since(self, app_id: str, table: str, since: Mapping[str, HLCTimestamp], limit: int,
                        exclude: Collection[tuple[tuple[Any, ...], HLCTimestamp]] | None = None,
                        ) -> tuple[list[tuple[str, dict[str, Any]]], bool]:
        """``scan_since`` for a responder: ``(stored HLC, entry in wire form)`` pairs, and whether more remain."""
        rows, more = self._rows_since(app_id, table, since, limit, None, exclude)
        file_table = table == FILE_RECORDS_TABLE
        return [(t[0], {"timestamp": _wire_hlc(t[0]), "appId": app_id, "table": table,
                        "op": "delete" if t[-2] else "insert", "row": _row_of(t, file_table), "where": None})
                for t in rows], more

    def scan_json_since(self, app_id: str, table: str, since: Mapping[str, HLCTimestamp], limit: int,
                        exclude: Collection[tuple[tuple[Any, ...], HLCTimestamp]] | None = None,
                        ) -> tuple[list[tuple[str, Raw]], bool] | None:
        """``scan_wire_since`` already encoded: each entry's JSON built by PostgreSQL; on SQLite, each row's
        JSON built by SQLite and the entry around it here; ``None`` elsewhere."""
        vendor = synced_db().vendor
        file_table = table == FILE_RECORDS_TABLE
        if vendor == "sqlite":
            # No row is parsed into a dict and encoded again: answering a 10,000-row page and encoding it took
            # 119 ms through ``scan_wire_since``'s dicts, 29 ms so (medians of 7, taking turns, same-run,
            # 2026-12-04); the body decodes to the same data.
            fields = ("record_id" if file_table else "row_key",
                      RawSQL(_FILE_JSON_SQLITE if file_table else _ROW_JSON_SQLITE, ()), "deleted_at", "node_id")
            rows, more = self._rows_since(app_id, table, since, limit, None, exclude, fields)
            head = f'"appId":{encode_json(app_id).decode()},"table":{encode_json(table).decode()},"op":"'
            nodes: dict[str, str] = {}
            out = []
            for updated, _, row, deleted, node in rows:
                node_json = nodes.get(node)
                if node_json is None:
                    node_json = nodes[node] = encode_json(node).decode()
                out.append((updated, Raw(
                    f'{{"timestamp":{{"wallTime":{int(updated[:12], 16)},"counter":{int(updated[13:17], 16)},'
                    f'"nodeId":{node_json}}},{head}{"delete" if deleted else "insert"}","row":{row},"where":null}}')))
            return out, more
        if vendor != "postgresql":
            return None
        fields = ("record_id" if file_table else "row_key",
                  RawSQL(_FILE_JSON_PG if file_table else _ROW_JSON_PG, (table,)))
        rows, more = self._rows_since(app_id, table, since, limit, None, exclude, fields)
        return [(t[0], Raw(t[2])) for t in rows], more

    def _rows_since(self, app_id: str, table: str, since: Mapping[str, HLCTimestamp], limit: int | None,
                    cursor: str | None, exclude: Collection[tuple[tuple[Any, ...], HLCTimestamp]] | None,
                    fields: Sequence[Any] | None = None) -> tuple[list[tuple[Any, ...]], bool]:
        prefix = f"{app_id}/"
        self.coverage.before_scan(lambda scope: scope.startswith(prefix), since)
        if fields is None:
            fields = _FILE_SCAN if table == FILE_RECORDS_TABLE else _ROW_SCAN
        return rows_since(self._qs(app_id, table), fields, self.get_node_watermarks(app_id, table),
                          since, limit, cursor, exclude, ident=lambda pk: self._key_text(table, pk))

    def count_since(self, app_id: str, table: str, since: Mapping[str, HLCTimestamp]) -> int:
        prefix = f"{app_id}/"
        self.coverage.before_scan(lambda scope: scope.startswith(prefix), since)
        return paging.count_since(self.get_node_watermarks(app_id, table), since,
                                  _node_counter(self._qs(app_id, table)))

    def get_node_watermarks(self, app_id: str, table: str) -> Watermarks:
        return self.coverage.get(f"{app_id}/{table}")

    def get_row(self, app_id: str, table: str, pk: Sequence[Any]) -> dict[str, Any] | None:
        m = self._qs(app_id, table).filter(**self._lookup(table, pk)).first()
        return self.to_row(m) if m is not None else None

    def rows(self, app_id: str, table: str) -> list[dict[str, Any]]:
        return [self.to_row(m) for m in self._qs(app_id, table)]

    def clear(self) -> None:
        with transaction.atomic(using=synced_db().alias):
            FileRecord.objects.filter(owner_id=self.owner_id).delete()
            AppRow.objects.filter(owner_id=self.owner_id).delete()
            NodeCoverage.objects.filter(owner_id=self.owner_id).exclude(scope=RECORDS_SCOPE).delete()


class OrmAppSource:
    """``namespaces`` + ``applier`` for one owner (the core's app-source protocol)."""

    def __init__(self, owner: Any) -> None:
        self.namespaces = OrmNamespaceStore()
        self.applier = OrmApplier(owner, self.namespaces)

    def read_snapshot(self) -> AbstractContextManager[None]:
        return self.applier.coverage.snapshot()

    def rows(self, app_id: str, table: str) -> list[dict[str, Any]]:
        return self.applier.rows(app_id, table)

    def clear(self) -> None:
        self.applier.clear()
