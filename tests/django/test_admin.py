"""The admin: credentials are generated and shown once; synced data changes only through the protocol.

The admin is driven through Django's test client as a logged-in superuser;
what it issues is then used on the real API, and what it writes is then
pulled by a device exchange.
"""

from __future__ import annotations

import importlib
import json
import re
from collections.abc import Iterator
from contextlib import contextmanager
from types import SimpleNamespace
from typing import Any

import pytest
from django.apps import apps as django_apps
from django.contrib.admin.models import CHANGE, LogEntry
from django.contrib.auth import get_user_model
from django.contrib.auth.models import Permission
from django.db import IntegrityError, connection, transaction
from django.db.models import Model
from django.test import Client
from django.utils.html import escape
from rest_framework.test import APIClient

from starkeep_sync import server
from starkeep_sync.admin import format_hlc
from starkeep_sync.core.constants import FILE_RECORDS_TABLE
from starkeep_sync.core.exceptions import SyncError
from starkeep_sync.core.hlc import HLCTimestamp, deserialize_hlc
from starkeep_sync.models import (
    AppRow,
    AppSecret,
    AppTable,
    Blob,
    ChannelActivity,
    DeviceToken,
    FileRecord,
    NodeCoverage,
    PeerSyncState,
    ServerClock,
    SharedRecord,
)
from starkeep_sync.models.credentials import hash_token
from tests.factories import make_secret, make_token
from tests.harness import NOTES_APP
from tests.http_harness import http_pair

from .support import (
    BASE_MS,
    app_key,
    assert_error,
    bearer,
    body,
    drive_key,
    entry,
    exchange,
    exchange_ok,
    hlc,
    record,
    ser,
    sha,
    signed_headers,
)

pytestmark = pytest.mark.django_db

NOTES_EXCHANGE = "/apps/notes/sync/exchange"
TOKEN_ADD = "/admin/starkeep_sync/devicetoken/add/"
SECRET_ADD = "/admin/starkeep_sync/appsecret/add/"
TOKEN_PATTERN = re.compile(r"skt_[A-Za-z0-9_-]{43}")
SECRET_PATTERN = re.compile(r"\b[0-9a-f]{64}\b")


def shown_messages(response: Any) -> list[str]:
    return [str(m) for m in response.context["messages"]]


def shown_once(response: Any, pattern: re.Pattern[str]) -> str:
    """The one secret the page's messages show."""
    found = [s for m in shown_messages(response) for s in pattern.findall(m)]
    assert len(found) == 1, shown_messages(response)
    return found[0]


@contextmanager
def check_constraints_off(model: type[Model], name: str) -> Iterator[None]:
    """Let the test store a row the database's check constraint refuses, as an older schema allowed.

    SQLite can ignore check constraints for a while; on PostgreSQL the constraint
    is dropped inside the test's transaction, which puts it back when it rolls back.
    """
    assert connection.in_atomic_block, "only inside a test transaction"
    with connection.cursor() as cur:
        if connection.vendor == "sqlite":
            cur.execute("PRAGMA ignore_check_constraints = ON")
            try:
                yield
            finally:
                cur.execute("PRAGMA ignore_check_constraints = OFF")
        else:
            qn = connection.ops.quote_name
            cur.execute(f"ALTER TABLE {qn(model._meta.db_table)} DROP CONSTRAINT {qn(name)}")
            yield


def empty_secret_row(owner: Any, app_id: str = "notes", key_id: str = "kempty") -> AppSecret:
    with check_constraints_off(AppSecret, "starkeep_secret_active_nonempty"):
        return AppSecret.objects.create(owner=owner, app_id=app_id, key_id=key_id, secret="")


def empty_hash_row(owner: Any) -> DeviceToken:
    with check_constraints_off(DeviceToken, "starkeep_token_active_has_hash"):
        return DeviceToken.objects.create(owner=owner, name="typed", token_hash="", hint="")


# -- device tokens -----------------------------------------------------------------------------


def test_add_token_generates_it_shows_it_once_and_it_authenticates(
    admin_client: Client, api: APIClient, alice: Any
) -> None:
    response = admin_client.post(TOKEN_ADD, {
        "owner": alice.pk, "name": "phone", "channels": "",
        # Posted by hand: none of these fields exist on the form, so all are ignored.
        "token_hash": "0" * 64, "hint": "skt_typed", "revoked_at": "2020-01-01 00:00",
    }, follow=True)
    assert response.status_code == 200
    plain = shown_once(response, TOKEN_PATTERN)

    row = DeviceToken.objects.get()
    assert (row.owner, row.name, row.channels, row.revoked_at) == (alice, "phone", [], None)
    assert row.token_hash == hash_token(plain) and row.hint == plain[:10]
    exchange_ok(exchange(api, "/sync/exchange", body(), bearer(plain)))

    # Never shown again: not on the change form, not in the list.
    for url in (f"/admin/starkeep_sync/devicetoken/{row.pk}/change/", "/admin/starkeep_sync/devicetoken/"):
        page = admin_client.get(url)
        assert page.status_code == 200
        assert plain not in page.content.decode() and row.token_hash not in page.content.decode()
        assert not TOKEN_PATTERN.search("".join(shown_messages(page)))


def test_add_token_limited_to_channels(admin_client: Client, api: APIClient, alice: Any, notes_app: Any) -> None:
    response = admin_client.post(TOKEN_ADD, {"owner": alice.pk, "name": "", "channels": "notes, todo"}, follow=True)
    plain = shown_once(response, TOKEN_PATTERN)
    assert DeviceToken.objects.get().channels == ["notes", "todo"]
    exchange_ok(exchange(api, NOTES_EXCHANGE, body(), bearer(plain)))
    assert_error(exchange(api, "/sync/exchange", body(), bearer(plain)), 403)


@pytest.mark.parametrize("channels", ["notes/x", "a*b", "é"])
def test_add_token_refuses_a_channel_that_is_not_an_app_id(admin_client: Client, alice: Any, channels: str) -> None:
    response = admin_client.post(TOKEN_ADD, {"owner": alice.pk, "name": "", "channels": channels})
    assert response.status_code == 200  # the form again, with its error
    assert "app id must be" in response.content.decode()
    assert not DeviceToken.objects.exists()


def test_token_change_form_edits_name_and_channels_only(admin_client: Client, alice: Any, bob: Any) -> None:
    make_token(alice)
    row = DeviceToken.objects.get()
    before = (row.token_hash, row.hint)
    response = admin_client.post(f"/admin/starkeep_sync/devicetoken/{row.pk}/change/", {
        "owner": bob.pk, "name": "tablet", "channels": "notes", "token_hash": "", "hint": "x",
    })
    assert response.status_code == 302, response.content[:2000]
    row.refresh_from_db()
    assert (row.owner, row.name, row.channels, (row.token_hash, row.hint)) == (alice, "tablet", ["notes"], before)


def test_revoke_tokens_action(admin_client: Client, api: APIClient, alice: Any) -> None:
    plain = make_token(alice)
    row = DeviceToken.objects.get()
    admin_client.post("/admin/starkeep_sync/devicetoken/", {"action": "revoke", "_selected_action": [row.pk]})
    row.refresh_from_db()
    assert row.revoked_at is not None
    assert_error(exchange(api, "/sync/exchange", body(), bearer(plain)), 401)


# -- app secrets -------------------------------------------------------------------------------


def test_add_secret_generates_it_shows_it_once_and_it_signs(
    admin_client: Client, api: APIClient, alice: Any, notes_app: Any
) -> None:
    typed = "my-own-secret-0123456789"
    response = admin_client.post(SECRET_ADD, {
        "owner": alice.pk, "app_id": "notes", "secret": typed, "key_id": "kmine",
    }, follow=True)
    assert response.status_code == 200
    secret = shown_once(response, SECRET_PATTERN)

    row = AppSecret.objects.get()
    assert row.secret == secret and row.secret != typed and row.key_id != "kmine"
    assert row.key_id in "".join(shown_messages(response))  # named, so the operator can tell secrets apart
    payload = body()
    exchange_ok(exchange(api, NOTES_EXCHANGE, payload, signed_headers(secret, "notes", "POST", "/sync/exchange",
                                                                      payload)))

    page = admin_client.get(f"/admin/starkeep_sync/appsecret/{row.pk}/change/")
    assert page.status_code == 200 and secret not in page.content.decode()
    assert secret not in admin_client.get("/admin/starkeep_sync/appsecret/").content.decode()


def test_add_secret_with_an_empty_secret_posted_still_generates_one(admin_client: Client, alice: Any) -> None:
    admin_client.post(SECRET_ADD, {"owner": alice.pk, "app_id": "notes", "secret": ""})
    row = AppSecret.objects.get()
    assert len(row.secret) == 64 and row.revoked_at is None


@pytest.mark.parametrize("app_id", ["", "no/slash", "white space", "x" * 256])
def test_add_secret_refuses_an_app_id_no_route_accepts(admin_client: Client, alice: Any, app_id: str) -> None:
    response = admin_client.post(SECRET_ADD, {"owner": alice.pk, "app_id": app_id})
    assert response.status_code == 200
    assert response.context["adminform"].form.errors["app_id"]
    assert not AppSecret.objects.exists()


def test_secret_change_form_changes_nothing(admin_client: Client, alice: Any, bob: Any) -> None:
    row = make_secret(alice, "notes")
    before = (row.owner_id, row.app_id, row.key_id, row.secret, row.revoked_at)
    response = admin_client.post(f"/admin/starkeep_sync/appsecret/{row.pk}/change/", {
        "owner": bob.pk, "app_id": "todo", "key_id": "kx", "secret": "", "revoked_at": "",
    })
    assert response.status_code == 302
    row.refresh_from_db()
    assert (row.owner_id, row.app_id, row.key_id, row.secret, row.revoked_at) == before


def test_revoke_secrets_action(admin_client: Client, api: APIClient, alice: Any, notes_app: Any) -> None:
    row = make_secret(alice, "notes")
    response = admin_client.post("/admin/starkeep_sync/appsecret/", {"action": "revoke", "_selected_action": [row.pk]},
                                 follow=True)
    assert any("Revoked 1 secret" in m for m in shown_messages(response))
    row.refresh_from_db()
    assert row.revoked_at is not None
    payload = body()
    headers = signed_headers(row.secret, "notes", "POST", "/sync/exchange", payload)
    assert_error(exchange(api, NOTES_EXCHANGE, payload, headers), 401)


# -- defence in depth: whatever the database holds -----------------------------------------------


@pytest.mark.parametrize("with_key_id", [False, True])
def test_signature_over_the_empty_key_is_401_even_for_an_active_empty_row(
    api: APIClient, alice: Any, notes_app: Any, with_key_id: bool
) -> None:
    row = empty_secret_row(alice)
    assert AppSecret.objects.filter(pk=row.pk, revoked_at__isnull=True, secret="").exists()
    payload = body()
    headers = signed_headers("", "notes", "POST", "/sync/exchange", payload,
                             key_id=row.key_id if with_key_id else None)
    assert_error(exchange(api, NOTES_EXCHANGE, payload, headers), 401)


def test_an_empty_secret_row_does_not_hide_the_owners_real_secret(
    api: APIClient, alice: Any, notes_app: Any
) -> None:
    empty_secret_row(alice)
    real = make_secret(alice, "notes")
    payload = body()
    exchange_ok(exchange(api, NOTES_EXCHANGE, payload, signed_headers(real.secret, "notes", "POST",
                                                                      "/sync/exchange", payload)))


@pytest.mark.parametrize("token", ["", "skt_", "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855"])
def test_bearer_for_a_row_with_an_empty_hash_is_401(api: APIClient, alice: Any, token: str) -> None:
    empty_hash_row(alice)
    headers = {"Authorization": f"Bearer {token}".rstrip()}
    assert_error(exchange(api, "/sync/exchange", body(), headers), 401)


def test_rows_without_a_secret_or_hash_are_never_usable(alice: Any) -> None:
    assert not empty_secret_row(alice).usable
    token = empty_hash_row(alice)
    assert not token.usable and not token.matches("")
    assert not DeviceToken(owner=alice, token_hash="A" * 64).usable  # not what hash_token makes
    assert make_secret(alice, "notes").usable
    make_token(alice)
    assert DeviceToken.objects.exclude(token_hash="").get().usable


def test_database_refuses_an_active_credential_without_a_secret(alice: Any) -> None:
    with pytest.raises(IntegrityError), transaction.atomic():
        AppSecret.objects.create(owner=alice, app_id="notes", key_id="k1", secret="")
    with pytest.raises(IntegrityError), transaction.atomic():
        DeviceToken.objects.create(owner=alice, token_hash="", hint="")
    # A revoked row may: that is what 0003 leaves of the rows older admins let in.
    AppSecret.objects.create(owner=alice, app_id="notes", key_id="k2", secret="", revoked_at="2026-01-01T00:00Z")


def test_issue_refuses_a_bad_app_id_or_channel(alice: Any) -> None:
    with pytest.raises(ValueError, match="app id"):
        AppSecret.issue(alice, "")
    with pytest.raises(ValueError, match="app id"):
        DeviceToken.issue(alice, channels=["ok", "not ok"])
    with pytest.raises(ValueError, match="list of app ids"):
        DeviceToken.issue(alice, channels="notes")  # type: ignore[arg-type]
    assert not AppSecret.objects.exists() and not DeviceToken.objects.exists()


def test_migration_0003_revokes_active_rows_without_a_secret(alice: Any) -> None:
    migration = importlib.import_module("starkeep_sync.migrations.0003_revoke_empty_credentials")
    empty_secret = empty_secret_row(alice)
    empty_token = empty_hash_row(alice)
    good_secret = make_secret(alice, "notes")
    make_token(alice)

    migration.revoke_empty_credentials(django_apps, SimpleNamespace(connection=connection))

    empty_secret.refresh_from_db()
    empty_token.refresh_from_db()
    assert empty_secret.revoked_at is not None and empty_token.revoked_at is not None
    assert AppSecret.objects.get(pk=good_secret.pk).revoked_at is None
    assert DeviceToken.objects.exclude(pk=empty_token.pk).get().revoked_at is None


# -- HLCs for people ------------------------------------------------------------------------------


@pytest.mark.parametrize(("value", "shown"), [
    ("01a24158fea3:0003:node-A", "2026-12-04 13:58:01.123 UTC · #3 · node-A"),
    ("000000000000:0000:", "1970-01-01 00:00:00.000 UTC · #0 · (no node)"),
    ("ffffffffffff:ffff:n", "281474976710655 ms · #65535 · n"),
    (None, "—"),
    ("", "—"),
    ("yesterday", "yesterday (not a valid HLC)"),
])
def test_format_hlc(value: str | None, shown: str) -> None:
    assert format_hlc(value) == shown


# -- synced data: read-only, changed only through the protocol -------------------------------------

SYNCED_MODELS = {
    "sharedrecord": SharedRecord, "filerecord": FileRecord, "approw": AppRow, "nodecoverage": NodeCoverage,
    "blob": Blob, "channelactivity": ChannelActivity, "peersyncstate": PeerSyncState, "serverclock": ServerClock,
}
ADMIN = "/admin/starkeep_sync"


def push_record(api: APIClient, token: str, rid: str = "r1", label: str | None = "first") -> None:
    exchange_ok(exchange(api, "/sync/exchange", body(records=[record(rid, BASE_MS, label=label)]), bearer(token)))


def push_row(api: APIClient, token: str, row_id: str = "n1", **columns: Any) -> None:
    rows = [entry("notes", "notes", row_id, BASE_MS, "nodeA", **columns)]
    exchange_ok(exchange(api, NOTES_EXCHANGE, body(rows=rows), bearer(token)))


def make_file_row(owner: Any, record_id: str = "f1") -> FileRecord:
    data = b"file row bytes"
    return FileRecord.objects.create(
        owner=owner, app_id="notes", record_id=record_id, object_storage_key=app_key("notes", data),
        content_hash=sha(data), mime_type="text/plain", size_bytes=len(data), original_filename="f.txt",
        origin_app_id="notes", created_at=ser(BASE_MS), updated_at=ser(BASE_MS), node_id="nodeA",
    )


def pull(api: APIClient, token: str, url: str = "/sync/exchange") -> dict[str, Any]:
    """What a device that already holds nodeA's writes up to BASE_MS receives next."""
    return exchange_ok(exchange(api, url, body(watermarks={"nodeA": hlc(BASE_MS)}), bearer(token)))


def action_names(response: Any) -> list[str]:
    form = response.context["action_form"]
    return [] if form is None else [name for name, _ in form.fields["action"].choices if name]


def sync_delete(client: Client, model: str, pks: list[int], confirm: bool = True) -> Any:
    data: dict[str, Any] = {"action": "sync_delete", "_selected_action": pks}
    if confirm:
        data["post"] = "yes"
    return client.post(f"{ADMIN}/{model}/", data, follow=confirm)


def server_stamp(value: str) -> HLCTimestamp:
    stamp = deserialize_hlc(value)
    assert stamp.node_id == "cloud"  # the server's NODE_ID in tests/settings.py
    return stamp


@pytest.fixture
def synced_rows(api: APIClient, alice: Any, alice_token: str, notes_app: Any) -> None:
    """One row of every synced model, written the way each is written in practice."""
    push_record(api, alice_token)
    push_row(api, alice_token, body="hi")
    make_file_row(alice)
    Blob.objects.create(owner=alice, key=drive_key(b"x"), content_type="image/jpeg", size_bytes=1)
    PeerSyncState.objects.create(owner=alice, peer_url="https://peer.invalid", channel="notes", node_id="srv")
    ServerClock.objects.create(node_id="cloud", wall_time=BASE_MS, counter=2)
    assert all(model.objects.exists() for model in SYNCED_MODELS.values())


@pytest.mark.parametrize("model", SYNCED_MODELS)
def test_synced_data_has_no_add_and_no_plain_delete(admin_client: Client, synced_rows: None, model: str) -> None:
    obj = SYNCED_MODELS[model].objects.first()
    assert obj is not None
    before = SYNCED_MODELS[model].objects.count()
    assert admin_client.get(f"{ADMIN}/{model}/add/").status_code == 403
    assert admin_client.get(f"{ADMIN}/{model}/{obj.pk}/delete/").status_code == 403
    assert admin_client.post(f"{ADMIN}/{model}/{obj.pk}/delete/", {"post": "yes"}).status_code == 403
    changelist = admin_client.get(f"{ADMIN}/{model}/")
    assert changelist.status_code == 200
    assert "delete_selected" not in action_names(changelist)
    admin_client.post(f"{ADMIN}/{model}/", {"action": "delete_selected", "_selected_action": [obj.pk], "post": "yes"})
    assert SYNCED_MODELS[model].objects.count() == before
    assert admin_client.get(f"{ADMIN}/{model}/{obj.pk}/change/").status_code == 200  # still viewable


@pytest.mark.parametrize("model", ["filerecord", "nodecoverage", "blob", "channelactivity", "peersyncstate",
                                   "serverclock"])
def test_synced_data_without_an_edit_path_has_no_plain_change(
    admin_client: Client, synced_rows: None, model: str
) -> None:
    rows = SYNCED_MODELS[model].objects.values()
    before = rows.first()
    assert before is not None
    edited = {name: "edited" for name, value in before.items() if isinstance(value, str)}
    response = admin_client.post(f"{ADMIN}/{model}/{before['id']}/change/", edited)
    assert response.status_code == 403
    assert rows.get(pk=before["id"]) == before


@pytest.mark.parametrize("model", ["sharedrecord", "filerecord", "approw"])
def test_delete_action_is_offered_only_with_delete_permission(
    client: Client, synced_rows: None, model: str
) -> None:
    viewer = get_user_model().objects.create_user("viewer", password="x", is_staff=True)
    viewer.user_permissions.add(Permission.objects.get(codename=f"view_{model}"))
    client.force_login(viewer)
    assert "sync_delete" not in action_names(client.get(f"{ADMIN}/{model}/"))
    obj = SYNCED_MODELS[model].objects.get()
    sync_delete(client, model, [obj.pk])
    assert SYNCED_MODELS[model].objects.get().deleted_at is None  # type: ignore[attr-defined]

    viewer.user_permissions.add(Permission.objects.get(codename=f"delete_{model}"))
    viewer = get_user_model().objects.get(pk=viewer.pk)  # fresh permission cache
    client.force_login(viewer)
    assert "sync_delete" in action_names(client.get(f"{ADMIN}/{model}/"))


def test_lists_show_hlcs_readably(admin_client: Client, synced_rows: None) -> None:
    shown = format_hlc(ser(BASE_MS))
    assert shown == "2023-11-14 22:13:20.000 UTC · #0 · nodeA"
    for model in ("sharedrecord", "filerecord", "approw", "nodecoverage"):
        assert shown in admin_client.get(f"{ADMIN}/{model}/").content.decode(), model
    record_id = SharedRecord.objects.get().pk
    assert shown in admin_client.get(f"{ADMIN}/sharedrecord/{record_id}/change/").content.decode()
    assert "2023-11-14 22:13:20.000 UTC · #2" in admin_client.get(f"{ADMIN}/serverclock/").content.decode()


def test_channel_activity_list_shows_the_last_refusal(
    admin_client: Client, api: APIClient, alice_token: str, notes_app: Any
) -> None:
    rows = [entry("notes", "ghost", "g1", BASE_MS, "nodeB")]
    exchange_ok(exchange(api, NOTES_EXCHANGE, body(rows=rows), bearer(alice_token)))
    refusal = ChannelActivity.objects.get(channel="notes").last_error
    assert "ghost" in refusal
    page = admin_client.get(f"{ADMIN}/channelactivity/").content.decode()
    assert escape(refusal) in page


# -- shared records ------------------------------------------------------------------------------------


def test_delete_action_asks_first_then_writes_a_tombstone_devices_receive(
    admin_client: Client, api: APIClient, alice_token: str
) -> None:
    push_record(api, alice_token)
    row = SharedRecord.objects.get()
    before = deserialize_hlc(row.updated_at)

    confirm = sync_delete(admin_client, "sharedrecord", [row.pk], confirm=False)
    assert confirm.status_code == 200 and "r1" in confirm.content.decode()
    row.refresh_from_db()
    assert row.deleted_at is None  # nothing yet

    done = sync_delete(admin_client, "sharedrecord", [row.pk])
    assert any("Deleted 1 shared record" in m for m in shown_messages(done))
    row.refresh_from_db()
    assert row.deleted_at == row.updated_at and row.node_id == "cloud" and row.version == 2
    assert server_stamp(row.deleted_at) > before
    (logged,) = LogEntry.objects.filter(object_id=str(row.pk), action_flag=CHANGE)
    assert logged.change_message == f"Deleted through the sync protocol: tombstone {format_hlc(row.deleted_at)}."

    records = pull(api, alice_token)["records"]
    assert [(r["id"], r["deletedAt"]["nodeId"]) for r in records] == [("r1", "cloud")]
    assert records[0]["deletedAt"] == records[0]["updatedAt"]


def test_delete_action_leaves_tombstones_as_they_are(admin_client: Client, api: APIClient, alice_token: str) -> None:
    push_record(api, alice_token)
    row = SharedRecord.objects.get()
    sync_delete(admin_client, "sharedrecord", [row.pk])
    row.refresh_from_db()
    tombstone = row.updated_at
    response = sync_delete(admin_client, "sharedrecord", [row.pk], confirm=False)
    assert "already deleted" in response.content.decode()
    sync_delete(admin_client, "sharedrecord", [row.pk])
    row.refresh_from_db()
    assert row.updated_at == tombstone


def test_metadata_edit_is_stamped_and_devices_receive_it(
    admin_client: Client, api: APIClient, alice_token: str
) -> None:
    push_record(api, alice_token)
    row = SharedRecord.objects.get()
    before = deserialize_hlc(row.updated_at)
    response = admin_client.post(f"{ADMIN}/sharedrecord/{row.pk}/change/", {
        "label": "renamed", "parent_id": "", "original_filename": "r1.jpg", "mime_type": "image/jpeg",
        # Not editable: ignored.
        "type": "video/mp4", "node_id": "typed", "updated_at": "ffffffffffff:ffff:typed", "version": "99",
    }, follow=True)
    assert response.status_code == 200
    row.refresh_from_db()
    assert (row.label, row.type, row.version, row.deleted_at) == ("renamed", "image/jpeg", 2, None)
    assert server_stamp(row.updated_at) > before and row.node_id == "cloud"
    assert any(format_hlc(row.updated_at) in m for m in shown_messages(response))
    assert response.redirect_chain[-1][0] == f"{ADMIN}/sharedrecord/"

    (pulled,) = pull(api, alice_token)["records"]
    assert (pulled["label"], pulled["updatedAt"]["nodeId"], pulled["deletedAt"]) == ("renamed", "cloud", None)


def test_saving_an_unchanged_form_writes_nothing(admin_client: Client, api: APIClient, alice_token: str) -> None:
    push_record(api, alice_token)
    row = SharedRecord.objects.get()
    response = admin_client.post(f"{ADMIN}/sharedrecord/{row.pk}/change/", {
        "label": "first", "parent_id": "", "original_filename": "r1.jpg", "mime_type": "image/jpeg",
    }, follow=True)
    assert "No changes." in shown_messages(response)
    row.refresh_from_db()
    assert row.updated_at == ser(BASE_MS) and not LogEntry.objects.filter(action_flag=CHANGE).exists()


def test_a_refused_edit_is_shown_and_nothing_is_logged(
    admin_client: Client, api: APIClient, alice_token: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    push_record(api, alice_token)
    row = SharedRecord.objects.get()

    def refuse(*args: Any, **kwargs: Any) -> Any:
        raise SyncError("the record quota is used up", code="quota_exceeded")

    monkeypatch.setattr(server, "update_record", refuse)
    response = admin_client.post(f"{ADMIN}/sharedrecord/{row.pk}/change/", {
        "label": "renamed", "parent_id": "", "original_filename": "r1.jpg", "mime_type": "image/jpeg",
    }, follow=True)
    assert "Nothing was saved: the record quota is used up" in shown_messages(response)
    row.refresh_from_db()
    assert row.label == "first" and not LogEntry.objects.filter(action_flag=CHANGE).exists()


def test_a_tombstone_is_read_only(admin_client: Client, api: APIClient, alice_token: str) -> None:
    push_record(api, alice_token)
    row = SharedRecord.objects.get()
    sync_delete(admin_client, "sharedrecord", [row.pk])
    response = admin_client.post(f"{ADMIN}/sharedrecord/{row.pk}/change/", {"label": "zombie"})
    assert response.status_code == 403
    row.refresh_from_db()
    assert row.label == "first"


# -- app rows and file rows -------------------------------------------------------------------------------


def test_app_row_edit_is_stamped_and_devices_receive_it(
    admin_client: Client, api: APIClient, alice_token: str, notes_app: Any
) -> None:
    push_row(api, alice_token, body="hi", pinned=False)
    row = AppRow.objects.get()
    response = admin_client.post(f"{ADMIN}/approw/{row.pk}/change/", {
        "data": json.dumps({"id": "n1", "body": "edited", "pinned": False, "tag": "new"}),
    }, follow=True)
    assert response.status_code == 200
    row.refresh_from_db()
    assert row.data == {"id": "n1", "body": "edited", "pinned": False, "tag": "new"}
    assert server_stamp(row.updated_at) > deserialize_hlc(ser(BASE_MS)) and row.deleted_at is None

    (pulled,) = pull(api, alice_token, NOTES_EXCHANGE)["appSyncableRows"]
    assert pulled["timestamp"]["nodeId"] == "cloud"
    assert (pulled["row"]["body"], pulled["row"]["tag"]) == ("edited", "new")


@pytest.mark.parametrize(("data", "error"), [
    ({"id": "n2", "body": "hi"}, "Primary-key columns"),
    ({"id": "n1"}, "cannot be removed"),
    ({"id": "n1", "body": "hi", "updated_at": "ffffffffffff:ffff:x"}, "the server stamps them"),
    (["n1", "hi"], "JSON object"),
])
def test_app_row_edit_refuses_what_is_not_an_update(
    admin_client: Client, api: APIClient, alice_token: str, notes_app: Any, data: Any, error: str
) -> None:
    push_row(api, alice_token, body="hi")
    row = AppRow.objects.get()
    response = admin_client.post(f"{ADMIN}/approw/{row.pk}/change/", {"data": json.dumps(data)})
    assert response.status_code == 200
    assert error in " ".join(response.context["adminform"].form.errors["data"])
    row.refresh_from_db()
    assert row.data == {"id": "n1", "body": "hi"} and row.updated_at == ser(BASE_MS)


def test_app_row_delete_action_writes_a_tombstone_devices_receive(
    admin_client: Client, api: APIClient, alice_token: str, notes_app: Any
) -> None:
    push_row(api, alice_token, body="hi")
    row = AppRow.objects.get()
    sync_delete(admin_client, "approw", [row.pk])
    row.refresh_from_db()
    assert row.deleted_at == row.updated_at and server_stamp(row.deleted_at).wall_time > BASE_MS

    (pulled,) = pull(api, alice_token, NOTES_EXCHANGE)["appSyncableRows"]
    assert (pulled["op"], pulled["table"], pulled["timestamp"]["nodeId"]) == ("delete", "notes", "cloud")


def test_file_row_delete_action_writes_a_tombstone_devices_receive(
    admin_client: Client, api: APIClient, alice: Any, alice_token: str, notes_app: Any
) -> None:
    row = make_file_row(alice)
    sync_delete(admin_client, "filerecord", [row.pk])
    row.refresh_from_db()
    assert row.deleted_at == row.updated_at and server_stamp(row.deleted_at).wall_time > BASE_MS

    (pulled,) = pull(api, alice_token, NOTES_EXCHANGE)["appSyncableRows"]
    assert (pulled["op"], pulled["table"], pulled["timestamp"]["nodeId"]) == ("delete", FILE_RECORDS_TABLE, "cloud")


def test_delete_action_reports_what_the_server_refused(
    admin_client: Client, api: APIClient, alice: Any, alice_token: str, notes_app: Any
) -> None:
    push_row(api, alice_token, body="hi")
    AppTable.objects.filter(name="notes").delete()  # the app dropped the table since
    row = AppRow.objects.get()
    response = sync_delete(admin_client, "approw", [row.pk])
    assert any("was not deleted" in m and "unknown table" in m for m in shown_messages(response))
    row.refresh_from_db()
    assert row.deleted_at is None


# -- a real device engine, over HTTP ------------------------------------------------------------------------


@pytest.mark.django_db(transaction=True)
def test_a_device_engine_takes_in_admin_edits_and_deletes(live_server: Any, admin_client: Client) -> None:
    pair = http_pair(live_server.url)
    pair.local.write_record("r1", label="before")
    pair.local.write_record("r2")
    pair.local.write_row("n1", "hello")
    pair.sync_until_done()
    pair.sync_until_done(NOTES_APP)

    r1, r2 = SharedRecord.objects.get(record_id="r1"), SharedRecord.objects.get(record_id="r2")
    admin_client.post(f"{ADMIN}/sharedrecord/{r1.pk}/change/", {
        "label": "after", "parent_id": "", "original_filename": "", "mime_type": r1.mime_type,
    })
    sync_delete(admin_client, "sharedrecord", [r2.pk])
    note = AppRow.objects.get()
    admin_client.post(f"{ADMIN}/approw/{note.pk}/change/", {"data": json.dumps({**note.data, "body": "edited"})})
    pair.sync_until_done()
    pair.sync_until_done(NOTES_APP)

    local_r1, local_r2 = pair.local.record("r1"), pair.local.record("r2")
    assert local_r1 is not None and local_r1.label == "after" and local_r1.updated_at.node_id == "cloud"
    assert local_r2 is not None and local_r2.is_deleted and local_r2.deleted_at.node_id == "cloud"  # type: ignore[union-attr]
    local_note = pair.local.row("n1")
    assert local_note is not None and local_note["body"] == "edited"
