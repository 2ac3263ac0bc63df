"""The responder side of one exchange round (PROTOCOL §6).

The in-process transport and the DRF exchange view both run
:class:`SyncResponder`; only the adapters differ. So does the request policy
(PROTOCOL §6 "Request policy"): the page-limit clamp, the item cap, the checks
that refuse a malformed request whole, and what happens to app rows of an app
or table this side does not know live here, with the same defaults everywhere.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from contextlib import AbstractContextManager, nullcontext
from dataclasses import dataclass, field
from typing import Any

from .channel import ChannelView, Item, group_by_node
from .constants import (
    DEFAULT_PAGE_LIMIT,
    DRIVE_APP_ID,
    FILE_RECORDS_TABLE,
    LOGGER_NAME,
    MAX_ITEMS_PER_REQUEST,
    MAX_PAGE_LIMIT,
    UNKNOWN_ROWS_POLICIES,
    UPDATED_AT,
)
from .exceptions import InvalidKeyError, SyncError, WireFormatError
from .hlc import HLCClock
from .keys import validate_key
from .protocols import AppSource, BatchApplier, DatabaseAdapter, ObjectStorage, SnapshotReader
from .wire import SyncExchangeRequest, SyncExchangeResponse

logger = logging.getLogger(LOGGER_NAME)

DEFAULT_LIMIT = DEFAULT_PAGE_LIMIT


class TooManyItems(SyncError):
    """A request carries more records and app rows than the responder takes at once."""

    code = "too_many_items"
    status = 413


class UnknownRows(SyncError):
    """App rows of an app or table this responder does not know, under the ``"reject"`` policy."""

    status = 400


@dataclass(slots=True)
class Refusal:
    node: str
    item: str
    reason: str


@dataclass(slots=True)
class ExchangeReport:
    """What one handled request did, for logs, status pages and tests."""

    received: int = 0
    applied: int = 0
    sent: int = 0
    refused: list[Refusal] = field(default_factory=list)
    halted_nodes: set[str] = field(default_factory=set)
    #: Ids of the shared records this request stored (LWW winners, not replays nor losers), in order.
    applied_record_ids: list[str] = field(default_factory=list)
    #: ``(app_id, table, primary key)`` of the app rows this request wrote, in order.
    applied_rows: list[tuple[str, str, tuple[Any, ...]]] = field(default_factory=list)
    #: Nodes whose HLCs stamped what was applied.
    applied_nodes: set[str] = field(default_factory=set)


class SyncResponder:
    def __init__(
        self,
        *,
        database: DatabaseAdapter | None,
        storage: ObjectStorage | None,
        clock: HLCClock,
        app_source: AppSource | None = None,
        sync_shared_records: bool = True,
        app_id: str | None = None,
        default_limit: int = DEFAULT_PAGE_LIMIT,
        max_limit: int | None = MAX_PAGE_LIMIT,
        max_items: int | None = MAX_ITEMS_PER_REQUEST,
        unknown_rows: str = "halt",
        count_pending: bool = True,
        on_refused: Callable[[Refusal], None] | None = None,
    ) -> None:
        if unknown_rows not in UNKNOWN_ROWS_POLICIES:
            raise ValueError(f"unknown_rows must be one of {UNKNOWN_ROWS_POLICIES}, not {unknown_rows!r}")
        self.channel = ChannelView(
            database=database,
            app_source=app_source,
            sync_shared_records=sync_shared_records,
            app_id=app_id,
        )
        self.storage = storage
        self.clock = clock
        self.default_limit = default_limit
        self.max_limit = max_limit
        self.max_items = max_items
        self.unknown_rows = unknown_rows
        self.count_pending = count_pending
        self.on_refused = on_refused
        # Looked up once: a runtime-checkable isinstance took a sixth of an in-process no-op round.
        adapter = self.channel.database if self.channel.shared else self.channel.app_source
        self._snapshots = adapter if isinstance(adapter, SnapshotReader) else None

    def exchange(self, request: SyncExchangeRequest) -> SyncExchangeResponse:
        return self.handle(request)[0]

    def handle(self, request: SyncExchangeRequest,
               report: ExchangeReport | None = None) -> tuple[SyncExchangeResponse, ExchangeReport]:
        """Apply ``request`` and answer it; ``report`` (filled as items apply) says what it did.

        A caller that passes its own ``report`` still learns what was applied
        when answering fails afterwards (applied items may be committed by then).
        """
        report = ExchangeReport() if report is None else report
        carried = len(request.records) + len(request.app_syncable_rows)
        if self.max_items is not None and carried > self.max_items:
            raise TooManyItems(f"{carried} items in one request; this responder takes at most {self.max_items}.")
        items = self.channel.inbound_items(request.records, request.app_syncable_rows, side="responder")
        self._check_request(request, items)
        report.received = len(items)
        received: set[tuple[object, ...]] = set()
        for node, run in group_by_node(items).items():
            landed = self._apply_run(node, run, report)
            for item in run[:landed]:
                received.add((item.identity, item.hlc))

        limit = request.limit or self.default_limit
        if self.max_limit is not None:
            limit = min(limit, self.max_limit)
        with self._read_snapshot():
            return self._answer(request, limit, received, report), report

    def _check_request(self, request: SyncExchangeRequest, items: list[Item]) -> None:
        """Refuse a malformed request whole, naming the field, before anything of it is applied.

        What no applier could ever accept (keys that break the key rules, entries
        without a usable primary key or ``updated_at``) is the sender's bug, not one
        node's bad luck: a 400 says so. Rows of an app or table this side does not
        know halt their node (they may come from a newer app version), unless the
        policy is ``"reject"``.
        """
        if self.channel.shared:
            for i, r in enumerate(request.records):
                if r.object_storage_key:
                    _checked_key(r.object_storage_key, DRIVE_APP_ID, f"records[{i}].objectStorageKey")
            return
        entries = request.app_syncable_rows
        for i, e in enumerate(entries):
            if e.op == "insert" and (not e.row or UPDATED_AT not in e.row):
                # A full row always carries its stamp (scans emit stored rows, which have one);
                # patches and deletes may leave it to the entry's timestamp.
                raise WireFormatError(f"appSyncableRows[{i}].row.updated_at", "is required on an insert (the full row)")
            if e.table == FILE_RECORDS_TABLE and e.op != "delete" and e.row and e.row.get("object_storage_key"):
                _checked_key(str(e.row["object_storage_key"]), e.app_id,
                             f"appSyncableRows[{i}].row.object_storage_key")
        refused = [item for item in items if item.error]
        if not refused:
            return
        position = {id(e): i for i, e in enumerate(entries)}
        for item in refused:
            assert item.entry is not None
            where = f"appSyncableRows[{position[id(item.entry)]}]"
            ns = self.channel.namespace_for(item.entry.app_id)
            if ns is None or ns.table(item.entry.table) is None:
                if self.unknown_rows == "reject":
                    field = f"{where}.appId" if ns is None else f"{where}.table"
                    raise UnknownRows(f"{field}: {item.error}", code="unknown_app" if ns is None else "unknown_table",
                                      field=field)
                continue  # halts its node when applied
            raise WireFormatError(f"{where}.row", item.error)  # type: ignore[arg-type]

    def _read_snapshot(self) -> AbstractContextManager[object]:
        """One consistent view of the holdings for everything a response reads.

        The requester moves its vector up to ``responderWatermarks`` for every node
        the response did not cut, so that vector must not cover an item the page
        missed. With concurrent writers a page read in several queries (per node,
        per table) and a coverage read afterwards can disagree: an item committed
        in between would be covered but never sent, and lost for that requester.
        Adapters that can read from one snapshot offer ``read_snapshot()``.
        """
        return self._snapshots.read_snapshot() if self._snapshots is not None else nullcontext()

    def _answer(self, request: SyncExchangeRequest, limit: int, received: set[tuple[object, ...]],
                report: ExchangeReport) -> SyncExchangeResponse:
        # No echo (PROTOCOL §5.7a): what this request stored is left out, and hasMore stays exact.
        out: list[Item] = []
        wire: list[Any] = []  # wire dicts, or msgspec.Raw JSON
        encoded = self.channel.json_changes_since(request.watermarks, limit, exclude=received)
        if encoded is None:
            encoded = self.channel.wire_changes_since(request.watermarks, limit, exclude=received)
        if encoded is not None:
            wire, has_more = encoded
        else:
            out, has_more = self.channel.changes_since(request.watermarks, limit, exclude=received)
        report.sent = len(out) + len(wire)
        pending: int | None = None
        if self.count_pending and request.count_pending:
            # Only when asked: a count reads the whole backlog, and a requester that
            # counted once estimates the next pages from it (see ``SyncEngine``).
            total = 0 if not has_more else self.channel.count_since(request.watermarks)
            if total is not None:
                # What is above the vector, less this page and what this request
                # itself stored (it will never be sent back).
                pending = max(0, total - report.sent - report.applied)
        return SyncExchangeResponse(
            records=[i.record for i in out if i.record is not None],
            wire_records=wire if self.channel.shared else [],
            wire_rows=[] if self.channel.shared else wire,
            app_syncable_rows=[i.entry for i in out if i.entry is not None],
            responder_watermarks=self.channel.coverage(),
            has_more=has_more,
            pending=pending,
        )

    def _refuse(self, node: str, item: Item, reason: str, report: ExchangeReport) -> None:
        refusal = Refusal(node, item.describe(), reason)
        report.refused.append(refusal)
        report.halted_nodes.add(node)
        logger.warning("refused %s from node %s: %s (node halted for this round)", refusal.item, node, reason)
        if self.on_refused is not None:
            self.on_refused(refusal)

    def _check(self, item: Item) -> str | None:
        if item.error:
            return item.error
        try:
            self.clock.observe(item.hlc)  # keys were checked with the whole request (``_check_request``)
        except SyncError as err:
            return str(err)
        return None

    @staticmethod
    def _note_row(item: Item, report: ExchangeReport) -> None:
        # An app row's identity is ("a", app_id, table, *primary key).
        report.applied_rows.append((item.identity[1], item.identity[2], tuple(item.identity[3:])))
        report.applied_nodes.add(item.node)

    def _apply_run(self, node: str, run: list[Item], report: ExchangeReport) -> int:
        """Apply one node's items in HLC order up to its first failure; return how many landed."""
        prefix: list[Item] = []
        for item in run:
            reason = self._check(item)
            if reason is not None:
                self._refuse(node, item, reason, report)
                break
            prefix.append(item)
        landed = 0
        i = 0
        while i < len(prefix):
            item = prefix[i]
            if item.record is not None:
                j = i
                while j < len(prefix) and prefix[j].record is not None:
                    j += 1
                assert self.channel.database is not None
                results = self.channel.database.merge([p.record for p in prefix[i:j]])  # type: ignore[misc]
                report.applied += sum(results)
                for p, stored in zip(prefix[i:j], results, strict=True):
                    if stored:
                        report.applied_record_ids.append(p.record.id)  # type: ignore[union-attr]
                        report.applied_nodes.add(node)
                landed = j
                i = j
                continue
            assert self.channel.app_source is not None and item.entry is not None
            applier = self.channel.app_source.applier
            if isinstance(applier, BatchApplier):
                # Adapters that can apply a run of entries in one transaction (the ORM) do.
                j = i
                while j < len(prefix) and prefix[j].entry is not None:
                    j += 1
                written: list[Any] = []
                # With the keys ``inbound_items`` found: the applier does not check the entries again.
                took, wrote, error = applier.apply_many([p.entry for p in prefix[i:j]], written,  # type: ignore[misc]
                                                        [p.identity[3:] for p in prefix[i:j]])
                report.applied += wrote
                by_entry = {id(p.entry): p for p in prefix[i:j]}
                for e in written:
                    self._note_row(by_entry[id(e)], report)
                landed = i + took
                if error is not None:
                    self._refuse(node, prefix[landed], str(error), report)
                    return landed
                i = j
                continue
            try:
                if applier.apply(item.entry):
                    report.applied += 1
                    self._note_row(item, report)
            except (SyncError, ValueError) as err:
                self._refuse(node, item, str(err), report)
                return landed
            landed = i + 1
            i += 1
        return landed


def create_in_process_sync_transport(
    *,
    database: DatabaseAdapter | None,
    storage: ObjectStorage | None,
    clock: HLCClock,
    app_source: AppSource | None = None,
    sync_shared_records: bool = True,
    app_id: str | None = None,
    **policy: Any,
) -> SyncResponder:
    """A responder answering ``exchange(request)`` in this process (tests, embedded peers).

    Requests and responses go through the wire codec both ways, so what an
    in-process round moves is exactly what would cross HTTP; ``policy`` takes
    :class:`SyncResponder`'s request-policy arguments, whose defaults are the server's.
    """
    return InProcessTransport(
        database=database,
        storage=storage,
        clock=clock,
        app_source=app_source,
        sync_shared_records=sync_shared_records,
        app_id=app_id,
        **policy,
    )


class InProcessTransport(SyncResponder):
    def exchange(self, request: SyncExchangeRequest) -> SyncExchangeResponse:
        decoded = SyncExchangeRequest.from_wire(request.to_wire())
        response = self.handle(decoded)[0]
        return SyncExchangeResponse.from_wire(response.to_wire())


def _checked_key(key: str, channel: str, field: str) -> None:
    try:
        validate_key(key, channel)
    except InvalidKeyError as err:
        err.field = field
        err.message = f"{field}: {err.message}"
        raise
