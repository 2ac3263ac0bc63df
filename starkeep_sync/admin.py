"""Admin registrations: browse synced data, manage namespaces and credentials.

Two rules shape this module:

- **Credentials are generated, never typed.** The add forms for device tokens
  and app secrets ask only who they are for; ``DeviceToken.issue`` /
  ``AppSecret.issue`` generate the secret, which is shown once through Django
  messages and never again.
- **Synced data changes only through the protocol.** A plain ORM edit or
  delete would carry no new HLC and no tombstone, so devices would never see
  it. Synced models are read-only here; the edits and deletes offered go
  through :mod:`starkeep_sync.server`, which stamps them with the server's
  clock so the next exchange carries them to every device.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Sequence
from datetime import UTC, datetime, timedelta
from typing import Any

from django import forms
from django.contrib import admin, messages
from django.contrib.admin import helpers
from django.contrib.auth import get_permission_codename
from django.core.exceptions import ValidationError
from django.db.models import Count, Model, QuerySet
from django.http import HttpRequest, HttpResponse, HttpResponseRedirect
from django.template.response import TemplateResponse
from django.urls import reverse
from django.utils import timezone

from . import server
from .conf import sync_settings
from .core.constants import DELETED_AT, FILE_RECORDS_TABLE, NODE_ID, UPDATED_AT
from .core.exceptions import SyncError
from .core.hlc import deserialize_hlc, serialize_hlc
from .models import (
    AppNamespace,
    AppRow,
    AppSecret,
    AppTable,
    Blob,
    ChannelActivity,
    DeviceToken,
    FileRecord,
    NodeCoverage,
    PeerRejectedItem,
    PeerStagedBlob,
    PeerSyncState,
    ServerClock,
    SharedRecord,
)
from .models.credentials import check_app_id, check_channels

#: What the sync API raises for a refused write: shown to the operator, never a 500.
_REFUSALS = (SyncError, ValueError, TypeError)


def format_hlc(value: str | None) -> str:
    """A serialized HLC for people: ``2026-12-04 13:58:01.123 UTC · #3 · node-A``."""
    if not value:
        return "—"
    try:
        wall, counter, node = deserialize_hlc(value)
    except ValueError:
        return f"{value} (not a valid HLC)"
    return f"{format_wall(wall, counter)} · {node or '(no node)'}"


def format_wall(wall_time: int, counter: int) -> str:
    """A clock state ``(wall_time, counter)``: ``2026-12-04 13:58:01.123 UTC · #3``."""
    try:
        moment = datetime(1970, 1, 1, tzinfo=UTC) + timedelta(milliseconds=wall_time)
        when = f"{moment:%Y-%m-%d %H:%M:%S}.{wall_time % 1000:03d} UTC"
    except OverflowError:
        # 12 hex digits reach past year 9999, which datetime cannot show.
        when = f"{wall_time} ms"
    return f"{when} · #{counter}"


# -- synced data: read-only, changed through the protocol ------------------------------------


class HLCColumns:
    """Readable columns for the HLC fields; each sorts by the serialized form, which is HLC order."""

    @admin.display(description="created (HLC)", ordering="created_at")
    def created_hlc(self, obj: Any) -> str:
        return format_hlc(obj.created_at)

    @admin.display(description="updated (HLC)", ordering="updated_at")
    def updated_hlc(self, obj: Any) -> str:
        return format_hlc(obj.updated_at)

    @admin.display(description="deleted (HLC)", ordering="deleted_at")
    def deleted_hlc(self, obj: Any) -> str:
        return format_hlc(obj.deleted_at)


class ReadOnlyAdmin(admin.ModelAdmin):
    """No add, no plain change, no plain delete (which also removes "delete selected")."""

    def has_add_permission(self, request: HttpRequest, obj: Model | None = None) -> bool:
        return False

    def has_change_permission(self, request: HttpRequest, obj: Model | None = None) -> bool:
        return False

    def has_delete_permission(self, request: HttpRequest, obj: Model | None = None) -> bool:
        return False


class SyncedDataAdmin(HLCColumns, ReadOnlyAdmin):
    """Read-only synced rows, plus "Delete (syncs to devices)" through :mod:`starkeep_sync.server`."""

    actions = ["sync_delete"]
    list_select_related = ("owner",)

    def has_sync_delete_permission(self, request: HttpRequest) -> bool:
        """The model's own delete permission, granted only to the tombstoning action."""
        codename = get_permission_codename("delete", self.opts)
        return request.user.has_perm(f"{self.opts.app_label}.{codename}")  # type: ignore[union-attr]

    def has_sync_change_permission(self, request: HttpRequest, obj: Model | None = None) -> bool:
        """The model's change permission; a tombstone stays read-only (the API edits live rows only)."""
        codename = get_permission_codename("change", self.opts)
        if not request.user.has_perm(f"{self.opts.app_label}.{codename}"):  # type: ignore[union-attr]
            return False
        return obj is None or getattr(obj, "deleted_at", None) is None

    def protocol_delete(self, obj: Any) -> str:
        """Tombstone ``obj`` through the sync API; returns its deletion HLC (serialized)."""
        raise NotImplementedError

    @admin.action(description="Delete (syncs to devices)", permissions=["sync_delete"])
    def sync_delete(self, request: HttpRequest, queryset: QuerySet) -> HttpResponse | None:
        live = list(queryset.filter(deleted_at__isnull=True).select_related("owner"))
        if request.POST.get("post") != "yes":
            return TemplateResponse(request, "admin/starkeep_sync/sync_delete_confirmation.html", {
                **self.admin_site.each_context(request),
                "title": "Delete through the sync protocol",
                "opts": self.opts,
                "queryset": queryset,
                "live": live,
                "already_deleted": queryset.count() - len(live),
                "node_id": sync_settings.NODE_ID,
                "action_checkbox_name": helpers.ACTION_CHECKBOX_NAME,
            })
        deleted = 0
        for obj in live:
            try:
                stamp = self.protocol_delete(obj)
            except _REFUSALS as err:
                self.message_user(request, f"{obj} was not deleted: {err}", messages.ERROR)
                continue
            deleted += 1
            # Logged as a change: the row stays, as the tombstone devices pull.
            super().log_change(request, obj, f"Deleted through the sync protocol: tombstone {format_hlc(stamp)}.")
        if deleted:
            self.message_user(request, f"Deleted {deleted} {self._noun(deleted)} as tombstones stamped by this "
                              f"server ({sync_settings.NODE_ID}); devices delete their copies at their next "
                              "exchange.", messages.SUCCESS)
        return None

    def _noun(self, count: int) -> str:
        return str(self.opts.verbose_name if count == 1 else self.opts.verbose_name_plural)

    # -- edits through the API: the change view saves nothing itself ---------------------------

    def save_model(self, request: HttpRequest, obj: Any, form: forms.ModelForm, change: bool) -> None:
        try:
            stamp = self.protocol_change(obj, form)
        except _REFUSALS as err:
            request._starkeep_refused = f"Nothing was saved: {err}"  # type: ignore[attr-defined]
            return
        request._starkeep_saved = stamp  # type: ignore[attr-defined]

    def protocol_change(self, obj: Any, form: forms.ModelForm) -> str | None:
        """Send the form's changes through the sync API; their HLC, or ``None`` if nothing changed."""
        raise NotImplementedError

    def save_related(self, request: HttpRequest, form: Any, formsets: Any, change: bool) -> None:
        pass  # no relations are edited here

    def log_change(self, request: HttpRequest, obj: Any, message: Any) -> Any:
        if getattr(request, "_starkeep_saved", None) is None:
            return None  # refused, or no change: nothing happened to log
        return super().log_change(request, obj, message)

    def response_change(self, request: HttpRequest, obj: Any) -> HttpResponse:
        refused = getattr(request, "_starkeep_refused", None)
        if refused is not None:
            self.message_user(request, refused, messages.ERROR)
            return HttpResponseRedirect(request.path)
        stamp = getattr(request, "_starkeep_saved", None)
        if stamp is None:
            self.message_user(request, "No changes.", messages.INFO)
        else:
            self.message_user(request, f"Saved through the sync protocol with HLC {format_hlc(stamp)}; "
                              "devices receive it at their next exchange.", messages.SUCCESS)
        if "_continue" in request.POST:
            return HttpResponseRedirect(request.path)
        return HttpResponseRedirect(reverse(f"admin:{self.opts.app_label}_{self.opts.model_name}_changelist",
                                            current_app=self.admin_site.name))


class SharedRecordForm(forms.ModelForm):
    class Meta:
        model = SharedRecord
        fields = ["label", "parent_id", "original_filename", "mime_type"]


@admin.register(SharedRecord)
class SharedRecordAdmin(SyncedDataAdmin):
    form = SharedRecordForm
    list_display = ("record_id", "owner", "type", "label", "updated_hlc", "deleted_hlc", "size_bytes")
    list_filter = ("type", "node_id")
    search_fields = ("record_id", "content_hash", "original_filename", "label")
    fieldsets = (
        (None, {"fields": ("record_id", "owner", "kind", "type", "version")}),
        ("Metadata (an edit is stamped with a new HLC and syncs to devices)",
         {"fields": ("label", "parent_id", "original_filename", "mime_type")}),
        ("Content", {"fields": ("content_hash", "object_storage_key", "size_bytes", "origin_app_id")}),
        ("Clock", {"fields": ("created_hlc", "updated_hlc", "deleted_hlc", "node_id")}),
    )
    readonly_fields = (
        "record_id", "owner", "kind", "type", "version", "content_hash", "object_storage_key", "size_bytes",
        "origin_app_id", "created_hlc", "updated_hlc", "deleted_hlc", "node_id",
    )

    def has_change_permission(self, request: HttpRequest, obj: Model | None = None) -> bool:
        return self.has_sync_change_permission(request, obj)

    def protocol_delete(self, obj: Any) -> str:
        tombstone = server.delete_record(obj.owner, obj.record_id)
        return serialize_hlc(tombstone.deleted_at or tombstone.updated_at)

    def protocol_change(self, obj: Any, form: forms.ModelForm) -> str | None:
        changes = {name: form.cleaned_data[name] for name in form.changed_data}
        if not changes:
            return None
        return serialize_hlc(server.update_record(obj.owner, obj.record_id, **changes).updated_at)


@admin.register(FileRecord)
class FileRecordAdmin(SyncedDataAdmin):
    list_display = ("record_id", "owner", "app_id", "original_filename", "updated_hlc", "deleted_hlc")
    list_filter = ("app_id",)
    search_fields = ("record_id", "object_storage_key")
    fields = (
        "record_id", "owner", "app_id", "object_storage_key", "content_hash", "mime_type", "size_bytes",
        "original_filename", "origin_app_id", "extra", "created_hlc", "updated_hlc", "deleted_hlc", "node_id",
    )
    readonly_fields = fields

    def protocol_delete(self, obj: Any) -> str:
        return str(server.delete_row(obj.owner, obj.app_id, FILE_RECORDS_TABLE, [obj.record_id])[DELETED_AT])


class AppRowForm(forms.ModelForm):
    """The row's columns as a JSON object; primary-key and bookkeeping columns cannot change here."""

    class Meta:
        model = AppRow
        fields = ["data"]
        help_texts = {"data": "The row's columns as a JSON object. Changed columns are sent as an update."}

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        # The ModelForm writes the posted value onto the instance before save; keep what was stored.
        self.stored = dict(self.instance.data or {})

    def pk_columns(self) -> list[str]:
        table = AppTable.objects.filter(namespace__app_id=self.instance.app_id, name=self.instance.table).first()
        return list(table.pk_columns) if table is not None else []

    def clean_data(self) -> dict[str, Any]:
        data = self.cleaned_data.get("data")
        if not isinstance(data, dict):
            raise ValidationError("The row must be a JSON object of column names to values.")
        stamped = sorted({UPDATED_AT, DELETED_AT, NODE_ID} & set(data))
        if stamped:
            raise ValidationError(f"Leave out {', '.join(stamped)}: the server stamps them.")
        removed = sorted(set(self.stored) - set(data))
        if removed:
            raise ValidationError(f"Columns cannot be removed ({', '.join(removed)}); set them to null instead.")
        moved = [c for c in self.pk_columns() if data.get(c) != self.stored.get(c)]
        if moved:
            raise ValidationError(f"Primary-key columns identify the row and cannot change: {', '.join(moved)}.")
        return data

    def changes(self) -> dict[str, Any]:
        data = self.cleaned_data["data"]
        return {k: v for k, v in data.items() if k not in self.stored or self.stored[k] != v}


@admin.register(AppRow)
class AppRowAdmin(SyncedDataAdmin):
    form = AppRowForm
    list_display = ("row_key", "owner", "app_id", "table", "updated_hlc", "deleted_hlc")
    list_filter = ("app_id", "table")
    search_fields = ("row_key",)
    fields = ("app_id", "table", "row_key", "owner", "data", "updated_hlc", "deleted_hlc", "node_id")
    readonly_fields = ("app_id", "table", "row_key", "owner", "updated_hlc", "deleted_hlc", "node_id")

    def has_change_permission(self, request: HttpRequest, obj: Model | None = None) -> bool:
        return self.has_sync_change_permission(request, obj)

    def protocol_delete(self, obj: Any) -> str:
        return str(server.delete_row(obj.owner, obj.app_id, obj.table, json.loads(obj.row_key))[DELETED_AT])

    def protocol_change(self, obj: Any, form: forms.ModelForm) -> str | None:
        changes = form.changes()  # type: ignore[attr-defined]
        if not changes:
            return None
        row = server.update_row(obj.owner, obj.app_id, obj.table, json.loads(obj.row_key), changes)
        return str(row[UPDATED_AT])


@admin.register(NodeCoverage)
class NodeCoverageAdmin(ReadOnlyAdmin):
    list_display = ("owner", "scope", "node_id", "covered")
    list_filter = ("scope",)
    list_select_related = ("owner",)
    fields = ("owner", "scope", "node_id", "covered", "hlc")
    readonly_fields = fields

    @admin.display(description="highest HLC taken in", ordering="hlc")
    def covered(self, obj: NodeCoverage) -> str:
        return format_hlc(obj.hlc)


@admin.register(Blob)
class BlobAdmin(ReadOnlyAdmin):
    list_display = ("key", "owner", "content_type", "size_bytes", "created")
    list_select_related = ("owner",)
    search_fields = ("key",)


@admin.register(ChannelActivity)
class ChannelActivityAdmin(ReadOnlyAdmin):
    """Exchanges per owner and channel; ``last_error`` shows refusals such as rows of an unknown app or table."""

    list_display = ("owner", "channel", "exchanges", "last_exchange_at", "last_error", "last_error_at")
    list_filter = ("channel",)
    list_select_related = ("owner",)
    search_fields = ("channel", "last_error")


class PeerStagedBlobInline(admin.TabularInline):
    """Blobs this instance, as a requester, still wants from that peer (PROTOCOL §5c); read-only."""

    model = PeerStagedBlob
    fields = ("item_id", "key", "size", "wanted", "attempts", "next_attempt", "last_error")
    readonly_fields = fields
    extra = 0
    max_num = 0
    can_delete = False
    ordering = ("-attempts", "next_attempt")


class PeerRejectedItemInline(admin.TabularInline):
    """Versions the peer refused for good; saving the record again ships a new version."""

    model = PeerRejectedItem
    fields = ("item_id", "key", "hlc", "reason")
    readonly_fields = fields
    extra = 0
    max_num = 0
    can_delete = False


@admin.register(PeerSyncState)
class PeerSyncStateAdmin(ReadOnlyAdmin):
    list_display = ("peer_url", "channel", "owner", "last_exchange_at", "last_error", "staged")
    list_select_related = ("owner",)
    inlines = (PeerStagedBlobInline, PeerRejectedItemInline)

    def get_queryset(self, request: HttpRequest) -> Any:
        return super().get_queryset(request).annotate(staged_count=Count("staged_blobs"))

    @admin.display(description="staged blobs", ordering="staged_count")
    def staged(self, obj: Any) -> int:
        return int(obj.staged_count)


@admin.register(ServerClock)
class ServerClockAdmin(ReadOnlyAdmin):
    list_display = ("node_id", "last_issued")
    fields = ("node_id", "last_issued", "wall_time", "counter")
    readonly_fields = fields

    @admin.display(description="last HLC issued")
    def last_issued(self, obj: ServerClock) -> str:
        return format_wall(obj.wall_time, obj.counter)


# -- namespaces ------------------------------------------------------------------------------


class AppTableInline(admin.TabularInline):
    model = AppTable
    extra = 1


@admin.register(AppNamespace)
class AppNamespaceAdmin(admin.ModelAdmin):
    list_display = ("app_id", "files_enabled", "created")
    inlines = [AppTableInline]


# -- credentials -----------------------------------------------------------------------------


def _adopt(obj: Model, row: Model) -> None:
    """Make the admin's unsaved ``obj`` the row ``issue()`` created, so the admin's redirect and log use it."""
    for f in row._meta.concrete_fields:
        setattr(obj, f.attname, getattr(row, f.attname))
    obj._state.adding = False
    obj._state.db = row._state.db


def _run_validator(check: Callable[[Any], Any], value: Any) -> Any:
    try:
        return check(value)
    except ValueError as err:
        raise ValidationError(str(err)) from None


class ChannelsField(forms.CharField):
    """App ids separated by commas or spaces; empty means every channel."""

    def prepare_value(self, value: Any) -> Any:
        if isinstance(value, (list, tuple)):
            return ", ".join(value)
        return value

    def to_python(self, value: Any) -> list[str]:  # type: ignore[override]
        text = super().to_python(value) or ""
        return _run_validator(check_channels, [c for c in text.replace(",", " ").split() if c])


class DeviceTokenForm(forms.ModelForm):
    channels = ChannelsField(required=False, help_text="App ids this token may use, separated by commas; "
                             "empty means every channel.")

    class Meta:
        model = DeviceToken
        fields = ["owner", "name", "channels"]


@admin.register(DeviceToken)
class DeviceTokenAdmin(admin.ModelAdmin):
    form = DeviceTokenForm
    list_display = ("hint_display", "name", "owner", "channels_display", "created", "last_used", "revoked_at")
    list_filter = ("revoked_at",)
    list_select_related = ("owner",)
    search_fields = ("hint", "name")
    actions = ["revoke"]

    def get_fields(self, request: HttpRequest, obj: DeviceToken | None = None) -> Sequence[str]:
        if obj is None:
            return ("owner", "name", "channels")
        return ("hint_display", "owner", "name", "channels", "created", "last_used", "revoked_at")

    def get_readonly_fields(self, request: HttpRequest, obj: DeviceToken | None = None) -> Sequence[str]:
        if obj is None:
            return ()
        # The owner is fixed: moving a token would hand a device's access to someone else.
        return ("hint_display", "owner", "created", "last_used", "revoked_at")

    @admin.display(description="token", ordering="hint")
    def hint_display(self, obj: DeviceToken) -> str:
        return f"{obj.hint}…" if obj.hint else "—"

    @admin.display(description="channels")
    def channels_display(self, obj: DeviceToken) -> str:
        return ", ".join(obj.channels) or "(every channel)"

    def save_model(self, request: HttpRequest, obj: DeviceToken, form: forms.ModelForm, change: bool) -> None:
        if change:
            obj.save(update_fields=["name", "channels"])
            return
        row, plain = DeviceToken.issue(obj.owner, name=obj.name, channels=list(obj.channels))
        _adopt(obj, row)
        self.message_user(request, f"Token for {row.owner}: {plain} — copy it now, it is not shown again "
                          "(only its hash is stored).", messages.SUCCESS)

    @admin.action(description="Revoke selected tokens", permissions=["change"])
    def revoke(self, request: HttpRequest, queryset: QuerySet) -> None:
        count = queryset.filter(revoked_at__isnull=True).update(revoked_at=timezone.now())
        self.message_user(request, f"Revoked {count} token(s); they are refused from the next request.",
                          messages.SUCCESS)


class AppSecretForm(forms.ModelForm):
    class Meta:
        model = AppSecret
        fields = ["owner", "app_id"]
        help_texts = {"app_id": "The app the secret signs for, as in /apps/<app id>/ (starkeep-drive for Drive)."}

    def clean_app_id(self) -> str:
        return _run_validator(check_app_id, self.cleaned_data.get("app_id"))


@admin.register(AppSecret)
class AppSecretAdmin(admin.ModelAdmin):
    form = AppSecretForm
    list_display = ("key_id", "app_id", "owner", "created", "revoked_at")
    list_filter = ("app_id", "revoked_at")
    list_select_related = ("owner",)
    search_fields = ("key_id", "app_id")
    actions = ["revoke"]

    def get_fields(self, request: HttpRequest, obj: AppSecret | None = None) -> Sequence[str]:
        if obj is None:
            return ("owner", "app_id")
        return ("key_id", "app_id", "owner", "created", "revoked_at")

    def get_readonly_fields(self, request: HttpRequest, obj: AppSecret | None = None) -> Sequence[str]:
        # Nothing of an issued secret changes: to move or rotate it, issue a new one and revoke this one.
        return () if obj is None else ("key_id", "app_id", "owner", "created", "revoked_at")

    def save_model(self, request: HttpRequest, obj: AppSecret, form: forms.ModelForm, change: bool) -> None:
        if change:
            return  # every field is read-only once issued
        row = AppSecret.issue(obj.owner, obj.app_id)
        _adopt(obj, row)
        self.message_user(request, f"Secret for app {row.app_id}, owner {row.owner}, key id {row.key_id}: "
                          f"{row.secret} — copy it now, it is not shown again.", messages.SUCCESS)

    @admin.action(description="Revoke selected secrets", permissions=["change"])
    def revoke(self, request: HttpRequest, queryset: QuerySet) -> None:
        count = queryset.filter(revoked_at__isnull=True).update(revoked_at=timezone.now())
        self.message_user(request, f"Revoked {count} secret(s); their signatures are refused from the next "
                          "request.", messages.SUCCESS)
