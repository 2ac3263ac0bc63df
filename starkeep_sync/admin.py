"""Admin registrations: browse synced data, manage namespaces and credentials."""

from __future__ import annotations

from django.contrib import admin

from .models import (
    AppNamespace,
    AppRow,
    AppSecret,
    AppTable,
    Blob,
    DeviceToken,
    FileRecord,
    NodeCoverage,
    PeerSyncState,
    SharedRecord,
)


@admin.register(SharedRecord)
class SharedRecordAdmin(admin.ModelAdmin):
    list_display = ("record_id", "owner", "type", "node_id", "updated_at", "deleted_at", "size_bytes")
    list_filter = ("type", "node_id")
    search_fields = ("record_id", "content_hash", "original_filename", "label")
    readonly_fields = ("created_at", "updated_at", "deleted_at", "node_id")


@admin.register(FileRecord)
class FileRecordAdmin(admin.ModelAdmin):
    list_display = ("record_id", "owner", "app_id", "node_id", "updated_at", "deleted_at")
    list_filter = ("app_id",)
    search_fields = ("record_id", "object_storage_key")


@admin.register(AppRow)
class AppRowAdmin(admin.ModelAdmin):
    list_display = ("row_key", "owner", "app_id", "table", "node_id", "updated_at", "deleted_at")
    list_filter = ("app_id", "table")


@admin.register(NodeCoverage)
class NodeCoverageAdmin(admin.ModelAdmin):
    list_display = ("owner", "scope", "node_id", "hlc")
    list_filter = ("scope",)


@admin.register(Blob)
class BlobAdmin(admin.ModelAdmin):
    list_display = ("key", "owner", "content_type", "size_bytes", "created")
    search_fields = ("key",)


class AppTableInline(admin.TabularInline):
    model = AppTable
    extra = 1


@admin.register(AppNamespace)
class AppNamespaceAdmin(admin.ModelAdmin):
    list_display = ("app_id", "files_enabled", "created")
    inlines = [AppTableInline]


@admin.register(DeviceToken)
class DeviceTokenAdmin(admin.ModelAdmin):
    list_display = ("hint", "name", "owner", "channels", "created", "last_used", "revoked_at")
    readonly_fields = ("token_hash", "hint", "created", "last_used")
    actions = ["revoke"]

    @admin.action(description="Revoke selected tokens")
    def revoke(self, request: object, queryset: object) -> None:
        from django.utils import timezone

        queryset.filter(revoked_at__isnull=True).update(revoked_at=timezone.now())  # type: ignore[attr-defined]


@admin.register(AppSecret)
class AppSecretAdmin(admin.ModelAdmin):
    list_display = ("key_id", "app_id", "owner", "created", "revoked_at")
    exclude = ("secret",)
    readonly_fields = ("key_id",)


@admin.register(PeerSyncState)
class PeerSyncStateAdmin(admin.ModelAdmin):
    list_display = ("peer_url", "channel", "owner", "last_exchange_at", "last_error")
