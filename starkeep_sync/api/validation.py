"""Structural checks of an exchange request beyond its JSON shape, done before anything is applied.

The protocol refuses a malformed request whole (400, naming the field). Over
HTTP that covers, besides the wire shape, what no applier could ever accept
and what would otherwise only halt one node quietly: object keys that break the
key rules or the channel's namespace, and app rows of a registered table that
name no primary key or whose ``updated_at`` contradicts the entry. A row
without ``updated_at`` is accepted: the entry's timestamp defines it (PROTOCOL §2). Rows of
apps or tables this server does not know still halt their node (PROTOCOL §6),
since a newer server may know them.
"""

from __future__ import annotations

from ..approws import check_entry
from ..constants import DRIVE_APP_ID, FILE_RECORDS_TABLE
from ..exceptions import InvalidKeyError, SyncError, WireFormatError
from ..keys import validate_key
from ..protocols import AppSyncableNamespaceStore
from ..wire import SyncExchangeRequest


def validate_exchange(request: SyncExchangeRequest, channel: str, namespaces: AppSyncableNamespaceStore) -> None:
    """Raise ``WireFormatError`` (400) or ``InvalidKeyError`` (400/403) naming the first offending field."""
    if channel == DRIVE_APP_ID:
        for i, r in enumerate(request.records):
            if r.object_storage_key:
                _key(r.object_storage_key, DRIVE_APP_ID, f"records[{i}].objectStorageKey")
        return
    ns = namespaces.get(channel)
    for i, e in enumerate(request.app_syncable_rows):
        if e.app_id != channel or ns is None:
            continue  # refused per node by the responder
        info = ns.table(e.table)
        if info is None:
            continue
        where = f"appSyncableRows[{i}]"
        try:
            check_entry(e, info)
        except SyncError as err:
            raise WireFormatError(f"{where}.row", err.message) from None
        if e.table == FILE_RECORDS_TABLE and e.op != "delete" and e.row and e.row.get("object_storage_key"):
            _key(str(e.row["object_storage_key"]), channel, f"{where}.row.object_storage_key")


def _key(key: str, channel: str, field: str) -> None:
    try:
        validate_key(key, channel)
    except InvalidKeyError as err:
        err.field = field
        err.message = f"{field}: {err.message}"
        raise
