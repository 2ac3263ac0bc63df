"""Django signals: what an exchange, an upload or the server's Python API changed.

Every signal is sent once the transaction that made the change has committed
(``transaction.on_commit``; at once when there is none), never from inside it,
so a receiver that queues a task never races the data it is told about, and a
change that rolls back is never announced. Only items that actually changed
state are listed: LWW winners, not replays nor items that lost to a newer
version.

Senders are the models the change landed in (``SharedRecord``, ``AppRow``,
``Blob``), so ``@receiver(records_applied, sender=SharedRecord)`` works as with
``post_save``. Every signal also carries:

- ``owner``: the user the data belongs to;
- ``channel``: ``"starkeep-drive"`` or the app id of a per-app channel;
- ``source``: ``"exchange"`` (a device's sync round), ``"upload"`` (``PUT files/<key>``),
  ``"presigned"`` (a PUT to a URL handed out by ``files/presign``), ``"confirm"``
  (``files/confirm`` of bytes the server had not seen, e.g. uploaded straight to S3)
  or ``"server"`` (:mod:`starkeep_sync.server`);
- ``principal``: the authenticated :class:`~starkeep_sync.api.authentication.Principal`
  of the request, ``None`` for the server API and presigned URLs;
- ``credential``: which credential sent it: an app secret's key id, a device
  token's hint (its first characters, as ``starkeep_token list`` shows them), or
  ``None`` (server API, presigned URLs).

``notify_records_applied`` and ``notify_rows_applied`` also wake the owner's
requests waiting on the channel's live change feed (``starkeep_sync.live``):
through ``NOTIFY`` in the writing transaction on PostgreSQL, after commit otherwise.

Receivers run through ``send_robust``: one that raises is logged (Django's
``django.dispatch`` logger) and skipped. By then the change is committed and
the device has its answer coming; an exception could not undo the change, it
would only turn a successful request into a 500 that makes the device send
everything again.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from functools import partial
from typing import Any

from django.db import transaction
from django.dispatch import Signal

from .core.constants import DRIVE_APP_ID, FILE_RECORDS_TABLE
from .live import announce_change
from .models import AppRow, Blob, FileRecord, SharedRecord

#: Shared records (Drive channel) written. Extra kwargs: ``record_ids`` (list of ids, in the
#: order applied), ``node_ids`` (sorted list of the nodes whose HLCs stamped them).
records_applied = Signal()

#: App rows written on a per-app channel (``_starkeep_sync_records`` rows included). Extra
#: kwargs: ``rows`` (list of ``(table, pk)``, ``pk`` a tuple of the primary-key values),
#: ``node_ids`` (sorted list). Sender: ``AppRow``, or ``FileRecord`` when every row listed is
#: in ``_starkeep_sync_records``.
rows_applied = Signal()

#: A blob stored. Extra kwargs: ``key`` (the protocol key, without the owner prefix),
#: ``size`` (bytes), ``content_type`` (str or None).
blob_stored = Signal()

__all__ = [
    "blob_stored",
    "notify_blob_stored",
    "notify_records_applied",
    "notify_rows_applied",
    "records_applied",
    "rows_applied",
]


def _send(signal: Signal, sender: Any, kwargs: dict[str, Any]) -> None:
    signal.send_robust(sender, **kwargs)


def _on_commit(signal: Signal, sender: Any, **kwargs: Any) -> None:
    transaction.on_commit(partial(_send, signal, sender, kwargs))


def notify_records_applied(owner: Any, record_ids: Sequence[str], node_ids: Iterable[str], *, source: str,
                           principal: Any = None, credential: str | None = None) -> None:
    """Send ``records_applied`` after commit; nothing when ``record_ids`` is empty."""
    if not record_ids:
        return
    announce_change(owner.pk, DRIVE_APP_ID)
    _on_commit(records_applied, SharedRecord, owner=owner, channel=DRIVE_APP_ID,
               record_ids=list(dict.fromkeys(record_ids)), node_ids=sorted(set(node_ids)), source=source,
               principal=principal, credential=credential)


def notify_rows_applied(owner: Any, channel: str, rows: Sequence[tuple[str, tuple[Any, ...]]],
                        node_ids: Iterable[str], *, source: str, principal: Any = None,
                        credential: str | None = None) -> None:
    """Send ``rows_applied`` after commit; nothing when ``rows`` is empty."""
    if not rows:
        return
    announce_change(owner.pk, channel)
    listed = list(dict.fromkeys((table, tuple(pk)) for table, pk in rows))
    sender = FileRecord if all(t == FILE_RECORDS_TABLE for t, _ in listed) else AppRow
    _on_commit(rows_applied, sender, owner=owner, channel=channel, rows=listed, node_ids=sorted(set(node_ids)),
               source=source, principal=principal, credential=credential)


def notify_blob_stored(owner: Any, channel: str, key: str, size: int, content_type: str | None, *, source: str,
                       principal: Any = None, credential: str | None = None) -> None:
    """Send ``blob_stored`` after commit."""
    _on_commit(blob_stored, Blob, owner=owner, channel=channel, key=key, size=size,
               content_type=content_type or None, source=source, principal=principal, credential=credential)
