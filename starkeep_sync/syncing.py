"""Wiring this Django instance as a requester: ORM adapters locally, HTTP to the peer."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from django.utils import timezone

from .adapters import DjangoObjectStorage, OrmAppSource, OrmDatabaseAdapter, OrmSyncStateStore
from .blobs import TransferFailure
from .client import HttpObjectStorage, create_http_sync_transport
from .constants import DRIVE_APP_ID
from .engine import SyncEngine, create_sync_engine
from .hlc import HLCClock
from .models import AppNamespace
from .supervisor import RoundReport


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
        self.transport.close()
        self.remote_storage.close()


def build_requester(*, owner: Any, url: str, channel: str, token: str, node_id: str,
                    page_limit: int = 1000, timeout: float = 30.0) -> Requester:
    """An engine syncing ``owner``'s data on ``channel`` with the server at ``url``."""
    url = url.rstrip("/")
    if not url.startswith(("http://", "https://")):
        raise ValueError(f"--url {url!r} must start with http:// or https://")
    if channel != DRIVE_APP_ID and not AppNamespace.objects.filter(app_id=channel).exists():
        raise ValueError(f"app {channel!r} is not registered here; register it with manage.py starkeep_app register")
    state = OrmSyncStateStore.for_peer(owner, url, channel, node_id)
    clock = HLCClock(node_id, initial_state=state.get_hlc_clock_state())
    base = f"{url}/apps/{channel}"
    transport = create_http_sync_transport(base_url=base, auth=token, timeout=timeout)
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
    )
    # Failures remembered by an earlier run come back as history, not as a fresh start.
    engine.file_sync.restore_failures(
        TransferFailure(key, d["direction"], d["attempts"], d["first_failure"], d["last_failure"], d["last_error"])
        for key, d in state.state.failed_transfers.items()
    )
    return Requester(engine, state, transport, remote)
