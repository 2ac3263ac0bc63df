"""Requester-side sync state in the database (``PeerSyncState`` and its blob state)."""

from __future__ import annotations

import hashlib
from collections.abc import Collection, Iterable, Mapping
from typing import Any

from django.db import router, transaction
from django.db.models import Count, Sum
from django.utils import timezone

from ..core.hlc import ClockState, HLCTimestamp, deserialize_hlc, serialize_hlc
from ..core.staged import RejectedItem, StagedBlob
from ..models import PeerRejectedItem, PeerRemoteKey, PeerStagedBlob, PeerSyncState

#: Rows per statement in the batched reads and writes below (within SQLite's bound on parameters).
BATCH = 500


def _dump(w: Mapping[str, HLCTimestamp]) -> dict[str, list[Any]]:
    return {node: [h[0], h[1], h[2]] for node, h in w.items()}


def _load(d: Mapping[str, Any]) -> dict[str, HLCTimestamp]:
    return {node: HLCTimestamp(int(v[0]), int(v[1]), str(v[2])) for node, v in d.items()}


def _digest(ref: str) -> str:
    return hashlib.sha256(ref.encode()).hexdigest()


def _chunks(values: Iterable[Any]) -> Iterable[list[Any]]:
    batch: list[Any] = []
    for v in values:
        batch.append(v)
        if len(batch) == BATCH:
            yield batch
            batch = []
    if batch:
        yield batch


def _staged_of(row: PeerStagedBlob) -> StagedBlob:
    return StagedBlob(row.ref, row.item_id, row.key, row.file_hash, row.size, row.mime_type, row.wanted,
                      row.attempts, row.next_attempt, row.last_error)


class OrmSyncStateStore:
    """The core's ``SyncStateStore`` and ``BlobStateStore`` on one ``PeerSyncState`` row."""

    def __init__(self, state: PeerSyncState) -> None:
        self.state = state

    @classmethod
    def for_peer(cls, owner: Any, peer_url: str, channel: str, node_id: str) -> OrmSyncStateStore:
        state, _ = PeerSyncState.objects.get_or_create(
            owner=owner, peer_url=peer_url, channel=channel, defaults={"node_id": node_id}
        )
        return cls(state)

    def _save(self, *fields: str) -> None:
        self.state.save(update_fields=list(fields))

    def get_watermarks(self) -> dict[str, HLCTimestamp]:
        return _load(self.state.own_watermarks)

    def set_watermarks(self, w: Mapping[str, HLCTimestamp]) -> None:
        self.state.own_watermarks = _dump(w)
        self._save("own_watermarks")

    def get_peer_watermarks(self) -> dict[str, HLCTimestamp]:
        return _load(self.state.peer_watermarks)

    def set_peer_watermarks(self, w: Mapping[str, HLCTimestamp]) -> None:
        self.state.peer_watermarks = _dump(w)
        self.state.last_exchange_at = timezone.now()
        self._save("peer_watermarks", "last_exchange_at")

    def get_hlc_clock_state(self) -> ClockState | None:
        if not self.state.clock_wall_time:
            return None
        return ClockState(self.state.clock_wall_time, self.state.clock_counter)

    def set_hlc_clock_state(self, state: ClockState) -> None:
        self.state.clock_wall_time, self.state.clock_counter = state[0], state[1]
        self._save("clock_wall_time", "clock_counter")

    # -- blob state (BlobStateStore) -------------------------------------------------

    def _staged_rows(self, refs: Collection[str]) -> dict[str, PeerStagedBlob]:
        found: dict[str, PeerStagedBlob] = {}
        for chunk in _chunks({_digest(r) for r in refs}):
            for row in PeerStagedBlob.objects.filter(peer=self.state, ref_digest__in=chunk):
                found[row.ref] = row
        return found

    def stage_blobs(self, entries: Iterable[StagedBlob]) -> None:
        entries = {e.ref: e for e in entries}
        if not entries:
            return
        with transaction.atomic(using=router.db_for_write(PeerStagedBlob)):
            old = self._staged_rows(entries.keys())
            rows = []
            for ref, e in entries.items():
                prior = old.get(ref)
                if prior is not None and prior.key == e.key:  # the same blob keeps its history
                    e = StagedBlob(ref, e.item_id, e.key, e.file_hash, e.size, e.mime_type,
                                   prior.wanted or e.wanted, prior.attempts, prior.next_attempt, prior.last_error)
                rows.append(PeerStagedBlob(
                    peer=self.state, ref_digest=_digest(ref), ref=ref, item_id=e.item_id, key=e.key,
                    file_hash=e.file_hash, size=e.size, mime_type=e.mime_type, wanted=e.wanted,
                    attempts=e.attempts, next_attempt=e.next_attempt, last_error=e.last_error))
            PeerStagedBlob.objects.bulk_create(
                rows, batch_size=BATCH, update_conflicts=True, unique_fields=["peer", "ref_digest"],
                update_fields=["item_id", "key", "file_hash", "size", "mime_type", "wanted", "attempts",
                               "next_attempt", "last_error"],
            )

    def staged_blobs(self, *, due_at: float | None = None, limit: int | None = None,
                     failing: bool = False) -> list[StagedBlob]:
        rows = PeerStagedBlob.objects.filter(peer=self.state)
        if due_at is not None:
            rows = rows.filter(wanted=True, next_attempt__lte=due_at)
        if failing:
            rows = rows.filter(attempts__gt=0)
        rows = rows.order_by("next_attempt", "ref_digest")
        return [_staged_of(r) for r in (rows if limit is None else rows[:limit])]

    def staged_for(self, refs: Collection[str]) -> list[StagedBlob]:
        return [_staged_of(r) for r in self._staged_rows(refs).values()]

    def update_staged(self, entries: Iterable[StagedBlob]) -> None:
        entries = {e.ref: e for e in entries}
        with transaction.atomic(using=router.db_for_write(PeerStagedBlob)):
            rows = []
            for ref, row in self._staged_rows(entries.keys()).items():
                e = entries[ref]
                if row.key != e.key:
                    continue  # superseded meanwhile
                row.wanted, row.attempts, row.next_attempt, row.last_error = (
                    e.wanted, e.attempts, e.next_attempt, e.last_error)
                rows.append(row)
            PeerStagedBlob.objects.bulk_update(rows, ["wanted", "attempts", "next_attempt", "last_error"],
                                               batch_size=BATCH)

    def unstage_blobs(self, refs: Collection[str]) -> None:
        for chunk in _chunks({_digest(r) for r in refs}):
            PeerStagedBlob.objects.filter(peer=self.state, ref_digest__in=chunk).delete()

    def staged_totals(self) -> tuple[int, int]:
        totals = PeerStagedBlob.objects.filter(peer=self.state).aggregate(n=Count("pk"), size=Sum("size"))
        return totals["n"], totals["size"] or 0

    def remote_keys_known(self, keys: Collection[str]) -> set[str]:
        known: set[str] = set()
        for chunk in _chunks(set(keys)):
            known.update(PeerRemoteKey.objects.filter(peer=self.state, key__in=chunk).values_list("key", flat=True))
        return known

    def remember_remote_keys(self, keys: Collection[str]) -> None:
        PeerRemoteKey.objects.bulk_create([PeerRemoteKey(peer=self.state, key=k) for k in set(keys)],
                                          batch_size=BATCH, ignore_conflicts=True)

    def forget_remote_keys(self, keys: Collection[str] | None = None) -> None:
        if keys is None:
            PeerRemoteKey.objects.filter(peer=self.state).delete()
            return
        for chunk in _chunks(set(keys)):
            PeerRemoteKey.objects.filter(peer=self.state, key__in=chunk).delete()

    def reject_items(self, items: Iterable[RejectedItem]) -> None:
        rows = {i.ref: PeerRejectedItem(peer=self.state, ref_digest=_digest(i.ref), ref=i.ref, item_id=i.item_id,
                                        hlc=serialize_hlc(i.hlc), key=i.key, reason=i.reason, at=i.at)
                for i in items}
        PeerRejectedItem.objects.bulk_create(
            list(rows.values()), batch_size=BATCH, update_conflicts=True, unique_fields=["peer", "ref_digest"],
            update_fields=["item_id", "hlc", "key", "reason", "at"],
        )

    def rejected_items(self) -> list[RejectedItem]:
        return [RejectedItem(r.ref, r.item_id, deserialize_hlc(r.hlc), r.key, r.reason, r.at)
                for r in PeerRejectedItem.objects.filter(peer=self.state).order_by("at", "ref_digest")]

    def clear_rejected(self, refs: Collection[str]) -> None:
        for chunk in _chunks({_digest(r) for r in refs}):
            PeerRejectedItem.objects.filter(peer=self.state, ref_digest__in=chunk).delete()
