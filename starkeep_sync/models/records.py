"""Synced data: shared records, AR rows, AW rows, and per-node coverage."""

from __future__ import annotations

from django.conf import settings
from django.db import connections, models, router
from django.utils import timezone

HLC_LENGTH = 160  # 12 + 1 + 4 + 1 + 128-character node id, with room to spare


class SharedRecord(models.Model):
    """A shared, file-backed record (PROTOCOL §2), scoped to an owner."""

    owner = models.ForeignKey(settings.AUTH_USER_MODEL, on_delete=models.CASCADE, related_name="+")
    record_id = models.CharField(max_length=256)
    kind = models.CharField(max_length=16, default="data")
    type = models.CharField(max_length=255)
    created_at = models.CharField(max_length=HLC_LENGTH)
    updated_at = models.CharField(max_length=HLC_LENGTH)
    deleted_at = models.CharField(max_length=HLC_LENGTH, null=True, blank=True)
    version = models.IntegerField(default=1)
    content_hash = models.CharField(max_length=256, blank=True)
    object_storage_key = models.CharField(max_length=1024, blank=True)
    mime_type = models.CharField(max_length=255, null=True, blank=True)
    size_bytes = models.BigIntegerField(default=0)
    original_filename = models.TextField(null=True, blank=True)
    origin_app_id = models.CharField(max_length=255, blank=True)
    parent_id = models.CharField(max_length=256, null=True, blank=True)
    label = models.TextField(null=True, blank=True)
    node_id = models.CharField(max_length=128)

    class Meta:
        constraints = [
            models.UniqueConstraint(fields=["owner", "record_id"], name="starkeep_record_unique"),
        ]
        indexes = [
            # Finds rows above a per-node watermark without reading the rest.
            models.Index(fields=["owner", "node_id", "updated_at"], name="starkeep_record_node"),
        ]

    def __str__(self) -> str:
        return f"{self.record_id} ({self.type})"


class FileRecord(models.Model):
    """A row of an app's reserved ``_starkeep_sync_records`` table (AR): it carries a blob."""

    owner = models.ForeignKey(settings.AUTH_USER_MODEL, on_delete=models.CASCADE, related_name="+")
    app_id = models.CharField(max_length=255)
    record_id = models.CharField(max_length=256)
    # Nullable: a tombstone for a row never held carries no file metadata.
    object_storage_key = models.CharField(max_length=1024, null=True, blank=True)
    content_hash = models.CharField(max_length=256, null=True, blank=True)
    mime_type = models.CharField(max_length=255, null=True, blank=True)
    size_bytes = models.BigIntegerField(null=True, blank=True)
    original_filename = models.TextField(null=True, blank=True)
    origin_app_id = models.CharField(max_length=255, null=True, blank=True)
    created_at = models.CharField(max_length=HLC_LENGTH, null=True, blank=True)
    updated_at = models.CharField(max_length=HLC_LENGTH)
    deleted_at = models.CharField(max_length=HLC_LENGTH, null=True, blank=True)
    node_id = models.CharField(max_length=128)
    #: Columns an app added beyond the reserved ones travel along untouched.
    extra = models.JSONField(default=dict, blank=True)

    class Meta:
        constraints = [
            models.UniqueConstraint(fields=["owner", "app_id", "record_id"], name="starkeep_file_unique"),
        ]
        indexes = [
            models.Index(fields=["owner", "app_id", "node_id", "updated_at"], name="starkeep_file_node"),
        ]

    def __str__(self) -> str:
        return f"{self.app_id}/{self.record_id}"


class AppRow(models.Model):
    """A row of any other app table (AW): metadata only, stored as JSON."""

    owner = models.ForeignKey(settings.AUTH_USER_MODEL, on_delete=models.CASCADE, related_name="+")
    app_id = models.CharField(max_length=255)
    table = models.CharField(max_length=255)
    #: JSON array of the primary-key values, canonical (compact) encoding.
    row_key = models.CharField(max_length=1024)
    data = models.JSONField(default=dict)
    updated_at = models.CharField(max_length=HLC_LENGTH)
    deleted_at = models.CharField(max_length=HLC_LENGTH, null=True, blank=True)
    node_id = models.CharField(max_length=128)

    class Meta:
        constraints = [
            models.UniqueConstraint(fields=["owner", "app_id", "table", "row_key"], name="starkeep_row_unique"),
        ]
        indexes = [
            models.Index(fields=["owner", "app_id", "table", "node_id", "updated_at"], name="starkeep_row_node"),
        ]

    def __str__(self) -> str:
        return f"{self.app_id}.{self.table} {self.row_key}"


class NodeCoverage(models.Model):
    """Per owner, scope and node: the highest HLC taken in.

    Maintained in the same transaction as every write, including LWW losers,
    so ``responderWatermarks`` is one indexed read and never over-reports a
    held row nor forgets an item whose newer version won.
    ``scope`` is ``"records"`` for shared records, ``"<app_id>/<table>"`` for app rows.
    """

    owner = models.ForeignKey(settings.AUTH_USER_MODEL, on_delete=models.CASCADE, related_name="+")
    scope = models.CharField(max_length=512)
    node_id = models.CharField(max_length=128)
    hlc = models.CharField(max_length=HLC_LENGTH)

    class Meta:
        constraints = [
            models.UniqueConstraint(fields=["owner", "scope", "node_id"], name="starkeep_coverage_unique"),
        ]
        verbose_name_plural = "node coverage"

    def __str__(self) -> str:
        return f"{self.scope} {self.node_id} {self.hlc}"


class BlobManager(models.Manager["Blob"]):
    def record(self, owner_id: int, key: str, content_type: str, size: int, sha256: str) -> None:
        """The blob's metadata row, inserted or refreshed in one statement (INSERT ... ON CONFLICT).

        Every upload runs this. On SQLite and PostgreSQL the statement is written
        out once per database: building it through ``bulk_create(update_conflicts=True)``
        costs about as much as running it.
        """
        db = connections[router.db_for_write(self.model)]
        if db.vendor not in ("sqlite", "postgresql"):
            self.bulk_create(
                [self.model(owner_id=owner_id, key=key, content_type=content_type, size_bytes=size, sha256=sha256)],
                update_conflicts=True, unique_fields=["owner", "key"],
                update_fields=["content_type", "size_bytes", "sha256", "created"],
            )
            return
        q = db.ops.quote_name
        cols = ", ".join(q(c) for c in ("owner_id", "key", "content_type", "size_bytes", "sha256", "created"))
        updates = ", ".join(f"{q(c)} = EXCLUDED.{q(c)}" for c in ("content_type", "size_bytes", "sha256", "created"))
        sql = (f"INSERT INTO {q(self.model._meta.db_table)} ({cols}) VALUES (%s, %s, %s, %s, %s, %s) "
               f"ON CONFLICT ({q('owner_id')}, {q('key')}) DO UPDATE SET {updates}")
        with db.cursor() as cursor:
            cursor.execute(sql, [owner_id, key, content_type, size, sha256,
                                 db.ops.adapt_datetimefield_value(timezone.now())])


class Blob(models.Model):
    """What the server knows of a stored blob beyond its bytes: type, size, hash."""

    owner = models.ForeignKey(settings.AUTH_USER_MODEL, on_delete=models.CASCADE, related_name="+")
    key = models.CharField(max_length=1024)
    content_type = models.CharField(max_length=255, blank=True)
    size_bytes = models.BigIntegerField(default=0)
    sha256 = models.CharField(max_length=64, blank=True)
    created = models.DateTimeField(auto_now=True)

    objects = BlobManager()

    class Meta:
        constraints = [models.UniqueConstraint(fields=["owner", "key"], name="starkeep_blob_unique")]

    def __str__(self) -> str:
        return self.key
