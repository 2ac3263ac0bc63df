"""Two owners with identical ids never see, overwrite or delete each other's data (PROTOCOL §7, §8).

Alice and Bob use the same record ids, node ids, app ids, table names, primary
keys and blob keys. Another owner's blob answers exactly like a missing one.
"""

from __future__ import annotations

import json
from typing import Any

import pytest
from rest_framework.test import APIClient

from starkeep_sync.models import AppRow, Blob, SharedRecord
from tests.factories import make_secret

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
    put_blob,
    record,
    signed_headers,
)

pytestmark = pytest.mark.django_db

RID = "01HSAMEID00000000000000000"
NOTES = "/apps/notes/sync/exchange"
ALICE_BYTES = b"alice's photo"
BOB_BYTES = b"bob's photo, a different one"


def _body(response: Any) -> bytes:
    return b"".join(response.streaming_content) if hasattr(response, "streaming_content") else response.content


def _labels(owner: Any) -> list[str | None]:
    return list(SharedRecord.objects.filter(owner=owner).values_list("label", flat=True))


# -- exchange ----------------------------------------------------------------------------------


def test_same_record_id_is_two_records(api: APIClient, alice: Any, bob: Any, alice_token: str,
                                       bob_token: str) -> None:
    exchange_ok(exchange(api, "/sync/exchange", body(records=[record(RID, BASE_MS, "nodeA", label="alice")]),
                         bearer(alice_token)))
    # Bob's version is later on the same node: it would win LWW if the rows were shared.
    bob_push = exchange_ok(exchange(
        api, "/sync/exchange", body(records=[record(RID, BASE_MS + 100, "nodeA", label="bob")]), bearer(bob_token)))
    assert bob_push["records"] == []
    assert bob_push["responderWatermarks"] == {"nodeA": hlc(BASE_MS + 100)}

    assert _labels(alice) == ["alice"] and _labels(bob) == ["bob"]

    alice_pull = exchange_ok(exchange(api, "/sync/exchange", body(), bearer(alice_token)))
    assert [(r["id"], r["label"]) for r in alice_pull["records"]] == [(RID, "alice")]
    assert alice_pull["responderWatermarks"] == {"nodeA": hlc(BASE_MS)}  # Bob's HLC does not leak

    bob_pull = exchange_ok(exchange(api, "/apps/starkeep-drive/sync/exchange", body(), bearer(bob_token)))
    assert [(r["id"], r["label"]) for r in bob_pull["records"]] == [(RID, "bob")]


def test_tombstone_of_one_owner_does_not_delete_the_other(api: APIClient, alice: Any, bob: Any,
                                                          alice_token: str, bob_token: str) -> None:
    exchange_ok(exchange(api, "/sync/exchange", body(records=[record(RID, BASE_MS, "nodeA", label="alice")]),
                         bearer(alice_token)))
    tomb = record(RID, BASE_MS + 500, "nodeB", label="gone", deleted=True)
    exchange_ok(exchange(api, "/sync/exchange", body(records=[tomb]), bearer(bob_token)))
    mine = SharedRecord.objects.get(owner=alice)
    assert mine.deleted_at is None and mine.label == "alice"
    assert SharedRecord.objects.get(owner=bob).deleted_at is not None


def test_watermarks_of_one_owner_do_not_hide_the_others_records(
    api: APIClient, alice_token: str, bob_token: str
) -> None:
    """Bob's newer write on nodeA must not make Alice's responder think she has it (or vice versa)."""
    exchange_ok(exchange(api, "/sync/exchange", body(records=[record("01HALICE000000000000000000", BASE_MS + 900)]),
                         bearer(alice_token)))
    exchange_ok(exchange(api, "/sync/exchange", body(records=[record("01HBOB00000000000000000000", BASE_MS + 5)]),
                         bearer(bob_token)))
    bob_pull = exchange_ok(exchange(api, "/sync/exchange", body(), bearer(bob_token)))
    assert [r["id"] for r in bob_pull["records"]] == ["01HBOB00000000000000000000"]
    assert bob_pull["responderWatermarks"] == {"nodeA": hlc(BASE_MS + 5)}


def test_same_app_rows_are_two_rows(api: APIClient, alice: Any, bob: Any, alice_token: str, bob_token: str,
                                    notes_app: Any) -> None:
    exchange_ok(exchange(api, NOTES, body(rows=[entry("notes", "notes", "n1", BASE_MS, "nodeA", body="alice")]),
                         bearer(alice_token)))
    exchange_ok(exchange(api, NOTES, body(rows=[entry("notes", "notes", "n1", BASE_MS + 100, "nodeA", body="bob")]),
                         bearer(bob_token)))
    # Bob deletes "his" n1 (same app, table and primary key) later still.
    delete = {**entry("notes", "notes", "n1", BASE_MS + 200, "nodeA", op="delete"), "row": None,
              "where": {"id": "n1"}}
    exchange_ok(exchange(api, NOTES, body(rows=[delete]), bearer(bob_token)))

    a = AppRow.objects.get(owner=alice)
    assert a.data["body"] == "alice" and a.deleted_at is None
    b = AppRow.objects.get(owner=bob)
    assert b.data["body"] == "bob" and b.deleted_at is not None

    alice_pull = exchange_ok(exchange(api, NOTES, body(), bearer(alice_token)))
    assert [(e["op"], e["row"]["body"]) for e in alice_pull["appSyncableRows"]] == [("insert", "alice")]
    assert alice_pull["responderWatermarks"] == {"nodeA": hlc(BASE_MS)}


def test_update_of_one_owner_does_not_patch_the_other(api: APIClient, alice: Any, alice_token: str,
                                                      bob_token: str, notes_app: Any) -> None:
    exchange_ok(exchange(api, NOTES, body(rows=[entry("notes", "notes", "n1", BASE_MS, "nodeA", body="alice")]),
                         bearer(alice_token)))
    update = entry("notes", "notes", "n1", BASE_MS + 100, "nodeA", op="update", body="patched")
    update["where"] = {"id": "n1"}
    exchange_ok(exchange(api, NOTES, body(rows=[update]), bearer(bob_token)))
    assert AppRow.objects.get(owner=alice).data["body"] == "alice"


# -- blobs ---------------------------------------------------------------------------------------

KEYS = [
    pytest.param("", drive_key(ALICE_BYTES), id="drive"),
    pytest.param("/apps/notes", app_key("notes", ALICE_BYTES), id="notes"),
]


@pytest.mark.parametrize(("base", "key"), KEYS)
def test_another_owners_blob_is_like_a_missing_one(
    api: APIClient, alice_token: str, bob_token: str, notes_app: Any, base: str, key: str
) -> None:
    url = f"{base}/files/{key}"
    assert put_blob(api, url, ALICE_BYTES, bearer(alice_token)).status_code == 201
    bob = bearer(bob_token)

    assert api.head(url, headers=bob).status_code == 404
    assert_error(api.get(url, headers=bob), 404, "not_found")
    assert_error(api.get(f"{url}/presign", headers=bob), 404, "not_found")
    confirm = api.post(f"{base}/files/confirm", data=json.dumps({"key": key}), content_type="application/json",
                       headers=bob)
    assert_error(confirm, 404, "not_found")
    # Bob's delete of "his" key leaves Alice's blob alone.
    assert api.delete(url, headers=bob).status_code in (200, 204)

    assert api.head(url, headers=bearer(alice_token)).status_code == 200
    assert _body(api.get(url, headers=bearer(alice_token))) == ALICE_BYTES
    assert list(Blob.objects.values_list("key", flat=True)) == [key]


def test_same_key_different_bytes_per_owner(api: APIClient, alice_token: str, bob_token: str,
                                            notes_app: Any) -> None:
    url = "/apps/notes/files/apps/notes/syncable/avatar.txt"
    put_blob(api, url, ALICE_BYTES, bearer(alice_token), content_type="text/plain")
    put_blob(api, url, BOB_BYTES, bearer(bob_token), content_type="application/x-bob")
    alice_get = api.get(url, headers=bearer(alice_token))
    assert _body(alice_get) == ALICE_BYTES and alice_get["Content-Type"] == "text/plain"
    bob_get = api.get(url, headers=bearer(bob_token))
    assert _body(bob_get) == BOB_BYTES and bob_get["Content-Type"] == "application/x-bob"

    assert api.delete(url, headers=bearer(bob_token)).status_code in (200, 204)
    assert _body(api.get(url, headers=bearer(alice_token))) == ALICE_BYTES


def test_presigned_urls_stay_in_their_owners_space(api: APIClient, alice: Any, bob: Any, alice_token: str,
                                                   bob_token: str) -> None:
    key = drive_key(ALICE_BYTES)
    put_blob(api, f"/files/{key}", ALICE_BYTES, bearer(alice_token))

    # Bob presigns a PUT for the same key and uploads through it: it lands in Bob's space.
    url = json.loads(api.post("/files/presign", data=json.dumps({"key": key}), content_type="application/json",
                              headers=bearer(bob_token)).content)["url"]
    assert APIClient().put(url.removeprefix("http://testserver"), data=ALICE_BYTES,
                           content_type="image/jpeg").status_code in (200, 201)
    assert Blob.objects.filter(owner=bob, key=key).exists()
    confirm = api.post("/files/confirm", data=json.dumps({"key": key}), content_type="application/json",
                       headers=bearer(bob_token))
    assert confirm.status_code == 200

    # Alice's presigned GET serves Alice's bytes; deleting Bob's copy does not touch them.
    get_url = json.loads(api.get(f"/files/{key}/presign", headers=bearer(alice_token)).content)["url"]
    api.delete(f"/files/{key}", headers=bearer(bob_token))
    got = APIClient().get(get_url.removeprefix("http://testserver"))
    assert got.status_code == 200 and _body(got) == ALICE_BYTES
    assert api.head(f"/files/{key}", headers=bearer(bob_token)).status_code == 404


# -- app signatures: the secret decides the owner ------------------------------------------------


def test_signed_exchange_lands_in_the_signers_space(api: APIClient, alice: Any, bob: Any,
                                                    notes_app: Any) -> None:
    make_secret(alice, "notes")
    bob_secret = make_secret(bob, "notes")
    payload = body(rows=[entry("notes", "notes", "n1", BASE_MS, "nodeA", body="bob")])
    # No key id: the server finds the secret among both owners' notes secrets.
    headers = signed_headers(bob_secret.secret, "notes", "POST", "/sync/exchange", payload)
    exchange_ok(exchange(api, NOTES, payload, headers))
    assert list(AppRow.objects.values_list("owner_id", flat=True)) == [bob.pk]


@pytest.mark.parametrize("with_key_id", [True, False])
def test_signed_streamed_put_lands_in_the_signers_space(
    api: APIClient, alice: Any, bob: Any, alice_token: str, bob_token: str, notes_app: Any, with_key_id: bool
) -> None:
    alice_secret = make_secret(alice, "notes")
    bob_secret = make_secret(bob, "notes")
    assert alice_secret.pk < bob_secret.pk  # Alice's secret is the first candidate
    key = app_key("notes", BOB_BYTES)
    headers = signed_headers(bob_secret.secret, "notes", "PUT", f"/files/{key}", BOB_BYTES,
                             key_id=bob_secret.key_id if with_key_id else None)
    response = put_blob(api, f"/apps/notes/files/{key}", BOB_BYTES, headers)
    assert response.status_code == 201, response.content

    assert api.head(f"/apps/notes/files/{key}", headers=bearer(bob_token)).status_code == 200
    assert api.head(f"/apps/notes/files/{key}", headers=bearer(alice_token)).status_code == 404
    assert list(Blob.objects.values_list("owner_id", flat=True)) == [bob.pk]


def test_signed_requests_cannot_read_another_owners_blob(api: APIClient, alice: Any, bob: Any,
                                                         alice_token: str, notes_app: Any) -> None:
    make_secret(alice, "notes")
    bob_secret = make_secret(bob, "notes")
    key = app_key("notes", ALICE_BYTES)
    put_blob(api, f"/apps/notes/files/{key}", ALICE_BYTES, bearer(alice_token))
    headers = signed_headers(bob_secret.secret, "notes", "GET", f"/files/{key}")
    assert_error(api.get(f"/apps/notes/files/{key}", headers=headers), 404, "not_found")


def test_signed_streamed_put_with_bad_signature_and_two_owners_stores_nothing(
    api: APIClient, alice: Any, bob: Any, alice_token: str, bob_token: str, notes_app: Any
) -> None:
    make_secret(alice, "notes")
    bob_secret = make_secret(bob, "notes")
    key = app_key("notes", BOB_BYTES)
    headers = signed_headers(bob_secret.secret, "notes", "PUT", f"/files/{key}", BOB_BYTES + b"tampered")
    assert_error(put_blob(api, f"/apps/notes/files/{key}", BOB_BYTES, headers), 401, "authentication_failed")
    for token in (alice_token, bob_token):
        assert api.head(f"/apps/notes/files/{key}", headers=bearer(token)).status_code == 404
    assert Blob.objects.count() == 0
