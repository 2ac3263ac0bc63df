"""Per-owner quotas: total blob bytes and number of synced rows (``STARKEEP_SYNC`` QUOTA_*)."""

from __future__ import annotations

from django.db.models import Sum
from rest_framework import status

from ..conf import sync_settings
from ..core.wire import SyncExchangeRequest
from ..models import AppRow, Blob, FileRecord, SharedRecord
from .exceptions import SyncAPIException


class QuotaExceeded(SyncAPIException):
    status_code = status.HTTP_507_INSUFFICIENT_STORAGE
    default_detail = "This owner's storage quota is used up."
    default_code = "quota_exceeded"


def blob_bytes_remaining(owner_id: int, replacing_key: str | None = None) -> int | None:
    """Bytes this owner may still store (``None``: no quota). A key being replaced frees its old size."""
    quota = sync_settings.QUOTA_BLOB_BYTES
    if quota is None:
        return None
    used = Blob.objects.filter(owner_id=owner_id).exclude(key=replacing_key or "").aggregate(
        total=Sum("size_bytes"))["total"] or 0
    return max(0, quota - used)


def check_record_quota(owner_id: int, channel_is_drive: bool, app_id: str | None,
                       request: SyncExchangeRequest) -> None:
    """Refuse the whole request (nothing applied) when its new items would exceed QUOTA_RECORDS."""
    quota = sync_settings.QUOTA_RECORDS
    if quota is None:
        return
    incoming = len(request.records) if channel_is_drive else len(request.app_syncable_rows)
    if not incoming:
        return
    held = (SharedRecord.objects.filter(owner_id=owner_id).count()
            + FileRecord.objects.filter(owner_id=owner_id).count()
            + AppRow.objects.filter(owner_id=owner_id).count())
    if held + incoming <= quota:
        return
    # Only items not held yet count against the quota.
    new = incoming
    if channel_is_drive:
        ids = {r.id for r in request.records}
        new = len(ids - set(SharedRecord.objects.filter(owner_id=owner_id, record_id__in=ids)
                            .values_list("record_id", flat=True)))
    if held + new > quota:
        raise QuotaExceeded(
            f"Storing {new} new item(s) would exceed this owner's quota of {quota} synced items "
            f"({held} held). Nothing in this request was applied.", field="records" if channel_is_drive
            else "appSyncableRows")
