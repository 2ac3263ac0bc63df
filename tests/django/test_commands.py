from __future__ import annotations

from io import StringIO

import pytest
from django.core.management import CommandError, call_command

from starkeep_sync.models import AppNamespace, AppSecret, DeviceToken
from starkeep_sync.models.credentials import hash_token
from tests.factories import make_user

pytestmark = pytest.mark.django_db


def run(*args: str) -> tuple[str, str]:
    out, err = StringIO(), StringIO()
    call_command(*args, stdout=out, stderr=err)
    return out.getvalue(), err.getvalue()


def test_token_create_prints_only_the_token_and_stores_its_hash() -> None:
    out, _ = run("starkeep_token", "create", "--user", "bob", "--create-user", "--channel", "notes")
    token = out.strip()
    assert token.startswith("skt_") and "\n" not in token
    row = DeviceToken.objects.get()
    assert row.token_hash == hash_token(token) and token not in (row.token_hash, row.hint)
    assert row.channels == ["notes"] and row.owner.username == "bob"


def test_token_create_for_missing_user_without_flag_fails() -> None:
    with pytest.raises(CommandError, match="--create-user"):
        run("starkeep_token", "create", "--user", "ghost")


def test_token_list_and_revoke() -> None:
    make_user("carol")
    token = run("starkeep_token", "create", "--user", "carol")[0].strip()
    listing = run("starkeep_token", "list")[0]
    assert token[:10] in listing and token not in listing and "active" in listing
    run("starkeep_token", "revoke", token[:10])
    assert DeviceToken.objects.get().revoked_at is not None
    assert "revoked" in run("starkeep_token", "list")[0]
    with pytest.raises(CommandError):
        run("starkeep_token", "revoke", token[:10])


def test_app_register_list_remove() -> None:
    run("starkeep_app", "register", "notes", "--table", "notes:id", "--table", "_starkeep_sync_records:id",
        "--table", "tags:note_id,tag")
    ns = AppNamespace.objects.get(app_id="notes")
    assert ns.files_enabled
    assert {t.name: t.pk_columns for t in ns.tables.all()} == {
        "notes": ["id"], "_starkeep_sync_records": ["id"], "tags": ["note_id", "tag"]}
    assert "notes [files]" in run("starkeep_app", "list")[0]
    run("starkeep_app", "remove", "notes")
    assert not AppNamespace.objects.exists()
    with pytest.raises(CommandError):
        run("starkeep_app", "remove", "notes")


@pytest.mark.parametrize("spec", ["notes", "notes:", ":id"])
def test_app_register_rejects_bad_table_spec(spec: str) -> None:
    with pytest.raises(CommandError, match="NAME:PK"):
        run("starkeep_app", "register", "notes", "--table", spec)


def test_app_register_refuses_drive_channel() -> None:
    with pytest.raises(CommandError, match="Drive"):
        run("starkeep_app", "register", "starkeep-drive", "--table", "x:id")


def test_app_secret_prints_only_the_secret() -> None:
    make_user("dave")
    out, err = run("starkeep_app", "secret", "notes", "--user", "dave")
    row = AppSecret.objects.get()
    assert out.strip() == row.secret and row.key_id in err and row.app_id == "notes"


def test_status_on_an_empty_database_says_so() -> None:
    out, _ = run("starkeep_status")
    assert out.startswith("No synced data yet: no owner has records, rows or exchanges.")
    assert "manage.py starkeep_token create --user NAME" in out
    make_user("erin")  # a user with nothing synced is still "nothing yet"
    assert run("starkeep_status")[0] == out


def test_status_for_a_user_with_nothing_says_so() -> None:
    make_user("frank")
    out, _ = run("starkeep_status", "--user", "frank")
    assert out.startswith("No synced data yet: user 'frank' has no records")
    assert "starkeep_token create --user frank" in out


def test_token_create_with_a_bad_channel_is_a_command_error() -> None:
    with pytest.raises(CommandError, match="not/valid"):
        run("starkeep_token", "create", "--user", "bob", "--create-user", "--channel", "not/valid")
    assert DeviceToken.objects.count() == 0


def test_app_secret_for_a_bad_app_id_is_a_command_error() -> None:
    make_user("bob")
    with pytest.raises(CommandError, match="no spaces"):
        run("starkeep_app", "secret", "no spaces", "--user", "bob")
    assert AppSecret.objects.count() == 0
