"""Wiring this Django instance as a requester: ORM adapters locally, HTTP to the peer."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, replace
from typing import Any

from django.db import connections
from django.utils import timezone

from ..adapters import DjangoObjectStorage, OrmAppSource, OrmDatabaseAdapter, OrmSyncStateStore
from ..client import HttpObjectStorage, create_http_sync_transport
from ..client.transport import ChangesAnswer, HttpSyncTransport
from ..core.blobs import TransferFailure
from ..core.constants import DEFAULT_PAGE_LIMIT, DRIVE_APP_ID
from ..core.engine import SyncEngine, create_sync_engine, response_of
from ..core.exceptions import SyncError
from ..core.hlc import HLCClock, HLCTimestamp, serialize_hlc
from ..core.staged import BlobPolicy
from ..core.transfers import DEFAULT_TRANSFER_CONCURRENCY
from ..core.wire import SyncExchangeRequest, SyncExchangeResponse
from ..device.supervisor import RoundReport
from ..models import AppNamespace


class NodeIdConflict(SyncError):
    """The peer holds writes stamped with our node id that this instance never made."""

    code = "node_id_conflict"


def node_id_conflict(node_id: str, theirs: HLCTimestamp, held: HLCTimestamp | None, url: str) -> NodeIdConflict:
    mine = f"up to {serialize_hlc(held)}" if held is not None else "none"
    return NodeIdConflict(
        f"{url} holds writes stamped with node id {node_id!r} up to {serialize_hlc(theirs)}, but this instance "
        f"holds {mine} under that id: the remote (or another of its devices) uses the same node id, or this "
        "instance lost writes it made (a restore). Two writers "
        "sharing a node id make last-write-wins and coverage treat their writes as one history, so updates "
        "would be lost or never sent. Sync with a node id of this instance's own, e.g. --node-id edge-1."
    )


class NodeIdGuard:
    """The exchange transport, refusing an answer whose coverage shows another writer of our node id.

    The remote's own node id is not on the wire, but its coverage vector
    (``responderWatermarks``) is, in every answer: if it holds our node id
    above the highest write of that id held here, someone else stamps writes
    with it. The check runs on the answer before the engine applies any of it.
    """

    prefetch_safe = True

    def __init__(self, inner: HttpSyncTransport, node_id: str, held: Callable[[], HLCTimestamp | None]) -> None:
        self.inner = inner
        self.node_id = node_id
        self._held = held
        self._known_held: HLCTimestamp | None = None

    def check(self, theirs: HLCTimestamp | None) -> None:
        if theirs is None or (self._known_held is not None and theirs <= self._known_held):
            return
        # Read again only when the remote is ahead of what we knew: this round may have written more.
        self._known_held = self._held()
        if self._known_held is None or theirs > self._known_held:
            raise node_id_conflict(self.node_id, theirs, self._known_held, self.inner.base_url)

    def exchange_json(self, request: SyncExchangeRequest) -> SyncExchangeResponse:
        """The answer decoded (the engine takes it as is), once its coverage passed ``check``.

        The check needs the decoded vector, so the decode happens here rather than in the engine:
        done once either way. Raises ``NodeIdConflict``, and what ``HttpSyncTransport.exchange`` raises.
        """
        response = response_of(self.inner.exchange_json(request))
        self.check(response.responder_watermarks.get(self.node_id))
        return response

    def exchange(self, request: SyncExchangeRequest) -> SyncExchangeResponse:
        return self.exchange_json(request)

    def wait_for_changes(self, cursor: str | None = None, timeout: float = 25.0) -> ChangesAnswer:
        """The live change feed, straight through: it carries no data to check."""
        return self.inner.wait_for_changes(cursor, timeout)

    def close(self) -> None:
        self.inner.close()


@dataclass
class Requester:
    engine: SyncEngine
    state: OrmSyncStateStore
    transport: Any
    remote_storage: HttpObjectStorage

    def record(self, report: RoundReport) -> None:
        """Remember the outcome and the failing blob keys on the ``PeerSyncState`` row."""
        row = self.state.state
        row.last_error = "" if report.error is None else f"{type(report.error).__name__}: {report.error}"
        row.failed_transfers = {
            key: {
                "direction": f.direction, "attempts": f.attempts, "first_failure": f.first_failure,
                "last_failure": f.last_failure, "last_error": f.last_error,
            }
            for key, f in self.engine.blob_failures.items()
        }
        if report.error is not None:
            row.last_exchange_at = timezone.now()
        row.save(update_fields=["last_error", "failed_transfers", "last_exchange_at"])

    def close(self) -> None:
        self.engine.close()
        self.transport.close()
        self.remote_storage.close()


def build_requester(*, owner: Any, url: str, channel: str, token: str, node_id: str,
                    page_limit: int = DEFAULT_PAGE_LIMIT, timeout: float = 30.0,
                    transfer_concurrency: int = DEFAULT_TRANSFER_CONCURRENCY,
                    blob_policy: BlobPolicy = "eager") -> Requester:
    """An engine syncing ``owner``'s data on ``channel`` with the server at ``url``."""
    url = url.rstrip("/")
    if not url.startswith(("http://", "https://")):
        raise ValueError(f"--url {url!r} must start with http:// or https://")
    if channel != DRIVE_APP_ID and not AppNamespace.objects.filter(app_id=channel).exists():
        raise ValueError(f"app {channel!r} is not registered here; register it with manage.py starkeep_app register")
    state = OrmSyncStateStore.for_peer(owner, url, channel, node_id)
    clock = HLCClock(node_id, initial_state=state.get_hlc_clock_state())
    base = f"{url}/apps/{channel}"
    transport = NodeIdGuard(create_http_sync_transport(base_url=base, auth=token, timeout=timeout), node_id,
                            lambda: engine.channel.coverage().get(node_id))
    remote = HttpObjectStorage(base, auth=token, timeout=timeout)
    drive = channel == DRIVE_APP_ID
    engine = create_sync_engine(
        local_database=OrmDatabaseAdapter(owner) if drive else None,
        local_storage=DjangoObjectStorage(owner),
        remote_storage=remote,
        transport=transport,
        clock=clock,
        sync_state=state,
        app_source=None if drive else OrmAppSource(owner),
        sync_shared_records=drive,
        page_limit=page_limit,
        app_id=None if drive else channel,
        transfer_concurrency=transfer_concurrency,
        blob_policy=blob_policy,
        # Blobs land through DjangoObjectStorage on transfer threads, each with its own connection.
        after_transfer=connections.close_all,
    )
    # What an earlier run learnt of the remote's coverage refuses a shared node id before any request.
    transport.check(state.get_peer_watermarks().get(node_id))
    if blob_policy == "eager":
        # Blobs an earlier lazy run left staged are wanted now.
        waiting = [replace(e, wanted=True) for e in engine.blob_state.staged_blobs() if not e.wanted]
        if waiting:
            engine.blob_state.update_staged(waiting)
    # Failures remembered by an earlier run come back as history, not as a fresh start.
    engine.file_sync.restore_failures(
        TransferFailure(key, d["direction"], d["attempts"], d["first_failure"], d["last_failure"], d["last_error"])
        for key, d in state.state.failed_transfers.items()
    )
    return Requester(engine, state, transport, remote)
