"""Requester-side state of this instance when it syncs to another server."""

from __future__ import annotations

from django.conf import settings
from django.db import models


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
