"""Requester-side sync state in the database (``PeerSyncState``)."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from django.utils import timezone

from ..core.hlc import ClockState, HLCTimestamp
from ..models import PeerSyncState


def _dump(w: Mapping[str, HLCTimestamp]) -> dict[str, list[Any]]:
    return {node: [h[0], h[1], h[2]] for node, h in w.items()}


def _load(d: Mapping[str, Any]) -> dict[str, HLCTimestamp]:
    return {node: HLCTimestamp(int(v[0]), int(v[1]), str(v[2])) for node, v in d.items()}


class OrmSyncStateStore:
    """The core's ``SyncStateStore`` on one ``PeerSyncState`` row."""

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
