"""Structural checks of an exchange request beyond its JSON shape, done before anything is applied.

The protocol refuses a malformed request whole (400, naming the field). Over
HTTP that covers, besides the wire shape, what no applier could ever accept
and what would otherwise only halt one node quietly: object keys that break the
key rules or the channel's namespace, and app rows of a registered table that
name no primary key or whose ``updated_at`` contradicts the entry.
``insert`` entries must carry the row's ``updated_at`` (a full row always has
one); an ``update`` patch or a ``delete`` may leave it to the entry's timestamp.

Rows of an app other than the channel's, or of a table this server does not
know, are refused whole (400 ``unknown_app`` / ``unknown_table``) under the
default ``UNKNOWN_APP_ROWS = "reject"``; with ``"halt"`` they halt their node
for the round as PROTOCOL §6 describes, and the rest of the request applies.
"""

from __future__ import annotations

from ..approws import check_entry
from ..conf import sync_settings
from ..constants import DRIVE_APP_ID, FILE_RECORDS_TABLE, UPDATED_AT
from ..exceptions import InvalidKeyError, SyncError, WireFormatError
from ..keys import validate_key
from ..protocols import AppSyncableNamespaceStore
from ..wire import SyncExchangeRequest
from .exceptions import InvalidRequest


def validate_exchange(request: SyncExchangeRequest, channel: str, namespaces: AppSyncableNamespaceStore) -> None:
    """Raise ``WireFormatError`` (400) or ``InvalidKeyError`` (400/403) naming the first offending field."""
    if channel == DRIVE_APP_ID:
        for i, r in enumerate(request.records):
            if r.object_storage_key:
                _key(r.object_storage_key, DRIVE_APP_ID, f"records[{i}].objectStorageKey")
        return
    ns = namespaces.get(channel)
    reject = sync_settings.UNKNOWN_APP_ROWS == "reject"
    for i, e in enumerate(request.app_syncable_rows):
        where = f"appSyncableRows[{i}]"
        if e.app_id != channel or ns is None:
            if reject:
                raise InvalidRequest(f"{where}.appId: app {e.app_id!r} is not this channel's app ({channel!r}).",
                                     code="unknown_app", field=f"{where}.appId")
            continue  # halts its node in the responder
        info = ns.table(e.table)
        if info is None:
            if reject:
                raise InvalidRequest(f"{where}.table: table {e.table!r} is not registered for app {channel!r} "
                                     f"(register it with: manage.py starkeep_app register {channel} --table ...).",
                                     code="unknown_table", field=f"{where}.table")
            continue
        if e.op == "insert" and (not e.row or UPDATED_AT not in e.row):
            # A full row always carries its stamp (scans emit stored rows, which have one);
            # patches and deletes by ``where`` may leave it to the entry's timestamp.
            raise WireFormatError(f"{where}.row.updated_at", "is required on an insert (the full row)")
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
