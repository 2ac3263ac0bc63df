"""Requester-side state of this instance when it syncs to another server."""

from __future__ import annotations

from typing import Any

from django.conf import settings
from django.db import IntegrityError, connections, models, router, transaction
from django.utils import timezone


class PeerSyncState(models.Model):
    """Per owner, peer URL and channel: own and peer watermarks, clock state, last outcome."""

    owner = models.ForeignKey(settings.AUTH_USER_MODEL, on_delete=models.CASCADE, related_name="+")
    peer_url = models.CharField(max_length=1024)
    channel = models.CharField(max_length=255)
    node_id = models.CharField(max_length=128)
    own_watermarks = models.JSONField(default=dict, blank=True)
    peer_watermarks = models.JSONField(default=dict, blank=True)
    clock_wall_time = models.BigIntegerField(default=0)
    clock_counter = models.IntegerField(default=0)
    last_exchange_at = models.DateTimeField(null=True, blank=True)
    last_error = models.TextField(blank=True)
    #: Blob keys whose transfer failed: {key: {attempts, first, last, error, direction}}.
    failed_transfers = models.JSONField(default=dict, blank=True)

    class Meta:
        constraints = [
            models.UniqueConstraint(fields=["owner", "peer_url", "channel"], name="starkeep_peer_state_unique"),
        ]

    def __str__(self) -> str:
        return f"{self.peer_url} [{self.channel}]"


class PeerStagedBlob(models.Model):
    """One entry of a ``PeerSyncState``'s staged set: a blob wanted here whose metadata landed (PROTOCOL §5c).

    ``ref`` names the record or row (see ``starkeep_sync.core.staged.ref_of``);
    ``ref_digest`` (its sha256) is what the uniqueness rule indexes, as refs can
    be longer than an index entry allows.
    """

    peer = models.ForeignKey(PeerSyncState, on_delete=models.CASCADE, related_name="staged_blobs")
    ref_digest = models.CharField(max_length=64)
    ref = models.TextField()
    item_id = models.TextField()
    key = models.CharField(max_length=1024)
    file_hash = models.CharField(max_length=256, blank=True)
    size = models.BigIntegerField(default=0)
    mime_type = models.CharField(max_length=255, null=True, blank=True)
    wanted = models.BooleanField(default=True)
    attempts = models.IntegerField(default=0)
    next_attempt = models.FloatField(default=0.0)
    last_error = models.TextField(blank=True)

    class Meta:
        constraints = [
            models.UniqueConstraint(fields=["peer", "ref_digest"], name="starkeep_staged_unique"),
        ]
        indexes = [models.Index(fields=["peer", "wanted", "next_attempt"], name="starkeep_staged_due")]
        verbose_name = "staged blob"

    def __str__(self) -> str:
        return f"{self.item_id} ({self.key})"


class PeerRemoteKey(models.Model):
    """A blob key the peer of a ``PeerSyncState`` is known to hold, so it is never uploaded again."""

    peer = models.ForeignKey(PeerSyncState, on_delete=models.CASCADE, related_name="remote_keys")
    key = models.CharField(max_length=1024)

    class Meta:
        constraints = [models.UniqueConstraint(fields=["peer", "key"], name="starkeep_remote_key_unique")]


class PeerRejectedItem(models.Model):
    """A version whose blob the peer refused for good; it ships again once written anew."""

    peer = models.ForeignKey(PeerSyncState, on_delete=models.CASCADE, related_name="rejected_items")
    ref_digest = models.CharField(max_length=64)
    ref = models.TextField()
    item_id = models.TextField()
    hlc = models.CharField(max_length=200)
    key = models.CharField(max_length=1024)
    reason = models.TextField()
    at = models.FloatField()

    class Meta:
        constraints = [models.UniqueConstraint(fields=["peer", "ref_digest"], name="starkeep_rejected_unique")]

    def __str__(self) -> str:
        return f"{self.item_id}: {self.reason}"


class ChannelActivityManager(models.Manager["ChannelActivity"]):
    def count_exchange(self, owner: Any, channel: str, refusal: str | None = None) -> None:
        """Count one exchange of ``owner`` on ``channel``, keeping ``refusal`` as the last error.

        Every exchange runs this, so it is one plain UPDATE, not a queryset
        (a tenth of the ORM's cost), and creates the row only the first time.
        """
        now = timezone.now()
        error = None if refusal is None else (refusal[:2000], now)
        if self._count(owner.pk, channel, now, error):
            return
        try:
            with transaction.atomic(using=self.db):
                self.create(owner=owner, channel=channel)
        except IntegrityError:
            pass  # another worker created it first
        self._count(owner.pk, channel, now, error)

    def _count(self, owner_id: int, channel: str, now: Any, error: tuple[str, Any] | None) -> bool:
        """The counter UPDATE; whether a row was there.

        On PostgreSQL, outside any transaction, it does not wait for its WAL flush:
        losing the last few counts in a crash is harmless, and the flush was a
        large part of a converged round. ``set_config(..., true)`` lasts for this
        statement's own transaction only, so it is not used inside one (under
        ATOMIC_REQUESTS it would cover the synced data too).
        """
        db = connections[router.db_for_write(self.model)]
        relaxed = db.vendor == "postgresql" and not db.in_atomic_block
        sets = "exchanges = exchanges + 1, last_exchange_at = %s"
        params: list[Any] = [db.ops.adapt_datetimefield_value(now)]
        if error is not None:
            sets += ", last_error = %s, last_error_at = %s"
            params += [error[0], db.ops.adapt_datetimefield_value(error[1])]
        source = " FROM (SELECT set_config('synchronous_commit', 'off', true)) AS relaxed" if relaxed else ""
        table = db.ops.quote_name(self.model._meta.db_table)
        with db.cursor() as cur:
            cur.execute(f"UPDATE {table} SET {sets}{source} WHERE owner_id = %s AND channel = %s",
                        [*params, owner_id, channel])
            return bool(cur.rowcount)


class ChannelActivity(models.Model):
    """Server side: how often an owner's devices exchanged on a channel, and the last refusal."""

    owner = models.ForeignKey(settings.AUTH_USER_MODEL, on_delete=models.CASCADE, related_name="+")
    channel = models.CharField(max_length=255)
    exchanges = models.BigIntegerField(default=0)
    last_exchange_at = models.DateTimeField(null=True, blank=True)
    last_error = models.TextField(blank=True)
    last_error_at = models.DateTimeField(null=True, blank=True)

    class Meta:
        constraints = [
            models.UniqueConstraint(fields=["owner", "channel"], name="starkeep_activity_unique"),
        ]
        verbose_name_plural = "channel activity"

    objects = ChannelActivityManager()

    def __str__(self) -> str:
        return f"{self.owner} [{self.channel}]"


class ServerClock(models.Model):
    """The persisted state of this server's own HLC (``NODE_ID``), for writes made on the server.

    Devices stamp their own writes; the server stamps only what its Python API
    (:mod:`starkeep_sync.server`) and the admin write. Keeping the last issued
    ``(wall_time, counter)`` here means a restarted server, or another worker,
    never issues a timestamp at or below one already issued.
    """

    node_id = models.CharField(max_length=128, unique=True)
    wall_time = models.BigIntegerField(default=0)
    counter = models.IntegerField(default=0)

    def __str__(self) -> str:
        return f"{self.node_id} @ {self.wall_time}:{self.counter}"
