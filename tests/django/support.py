"""Helpers for the Django API tests: wire dicts, keys, signatures, error-body checks.

Everything here is written against the protocol text (PROTOCOL §4, §7, §8), not
against our own codec or signer, so the tests check the server independently.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import time
from typing import Any

from rest_framework.test import APIClient

#: A realistic wall time (Nov 2023), far from the skew guard's bound.
BASE_MS = 1_700_000_000_000

DRIVE_EXCHANGE_URLS = ["/sync/exchange", "/apps/starkeep-drive/sync/exchange"]

_MISSING: Any = object()


def now_ms() -> int:
    return int(time.time() * 1000)


def hlc(wall: int, counter: int = 0, node: str = "nodeA") -> dict[str, Any]:
    return {"wallTime": wall, "counter": counter, "nodeId": node}


def ser(wall: int, counter: int = 0, node: str = "nodeA") -> str:
    """The serialized HLC form of PROTOCOL §1."""
    return f"{wall:012x}:{counter:04x}:{node}"


def sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def drive_key(data: bytes, category: str = "image") -> str:
    h = sha(data)
    return f"shared/{category}/{h[:2]}/{h}"


def app_key(app_id: str, data: bytes) -> str:
    return f"apps/{app_id}/syncable/{sha(data)}"


def record(
    rid: str,
    wall: int,
    node: str = "nodeA",
    *,
    counter: int = 0,
    label: str | None = None,
    data: bytes | None = None,
    deleted: bool = False,
) -> dict[str, Any]:
    """A shared record in wire form (PROTOCOL §2)."""
    stamp = hlc(wall, counter, node)
    return {
        "id": rid,
        "kind": "data",
        "type": "image/jpeg",
        "createdAt": stamp,
        "updatedAt": stamp,
        "deletedAt": stamp if deleted else None,
        "version": 1,
        "contentHash": sha(data) if data is not None else "",
        "objectStorageKey": drive_key(data) if data is not None else "",
        "mimeType": "image/jpeg",
        "sizeBytes": len(data) if data is not None else 0,
        "originalFilename": f"{rid}.jpg",
        "originAppId": "photos",
        "parentId": None,
        "label": label,
    }


def entry(
    app_id: str,
    table: str,
    row_id: str,
    wall: int,
    node: str = "nodeA",
    *,
    counter: int = 0,
    op: str = "insert",
    **columns: Any,
) -> dict[str, Any]:
    """An app row entry in wire form, keyed by ``id``."""
    row = {"id": row_id, **columns, "updated_at": ser(wall, counter, node)}
    return {
        "timestamp": hlc(wall, counter, node),
        "appId": app_id,
        "table": table,
        "op": op,
        "row": row,
        "where": None,
    }


def body(
    watermarks: dict[str, Any] | None = None,
    records: list[dict[str, Any]] | None = None,
    rows: list[dict[str, Any]] | None = None,
    limit: int | None = None,
) -> bytes:
    out: dict[str, Any] = {"watermarks": watermarks or {}}
    if records is not None:
        out["records"] = records
    if rows is not None:
        out["appSyncableRows"] = rows
    if limit is not None:
        out["limit"] = limit
    return json.dumps(out).encode()


def bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


def exchange(client: APIClient, url: str, payload: bytes, headers: dict[str, str] | None = None) -> Any:
    return client.post(url, data=payload, content_type="application/json", headers=headers or {})


def put_blob(client: APIClient, url: str, data: bytes, headers: dict[str, str] | None = None,
             content_type: str = "image/jpeg") -> Any:
    return client.put(url, data=data, content_type=content_type, headers=headers or {})


# -- Starkeep app signatures (PROTOCOL §8), computed here with hmac/hashlib only --------------


def signature(secret: str, app_id: str, method: str, path: str, ts: int | str, payload: bytes = b"") -> str:
    message = f"{app_id}:{method}:{path}:{ts}:".encode() + payload
    return hmac.new(secret.encode(), message, hashlib.sha256).hexdigest()


def signed_headers(
    secret: str,
    app_id: str,
    method: str,
    path: str,
    payload: bytes = b"",
    *,
    ts: int | None = None,
    key_id: str | None = None,
    header_app_id: str | None = None,
) -> dict[str, str]:
    ts = now_ms() if ts is None else ts
    headers = {
        "X-Starkeep-App-Id": header_app_id or app_id,
        "X-Starkeep-App-Sig": signature(secret, app_id, method, path, ts, payload),
        "X-Starkeep-App-Ts": str(ts),
    }
    if key_id is not None:
        headers["X-Starkeep-Key-Id"] = key_id
    return headers


# -- error bodies ----------------------------------------------------------------------------


def assert_error(response: Any, status: int, code: str | None = None, field: Any = _MISSING) -> dict[str, Any]:
    """``status`` with the protocol's error body ``{"error": {"code", "message"[, "field"]}}``.

    ``field``: a string checks the named field; ``None`` checks that no field is named;
    omitted, the field is not checked.
    """
    assert response.status_code == status, (response.status_code, getattr(response, "content", b"")[:500])
    assert response["Content-Type"].startswith("application/json"), response["Content-Type"]
    data = json.loads(response.content)
    assert set(data) == {"error"}, data
    err = data["error"]
    assert set(err) <= {"code", "message", "field"}, err
    assert isinstance(err["code"], str) and err["code"], err
    assert isinstance(err["message"], str) and err["message"], err
    if "field" in err:
        assert isinstance(err["field"], str) and err["field"], err
    if code is not None:
        assert err["code"] == code, err
    if field is not _MISSING:
        assert err.get("field") == field, err
    return err


def exchange_ok(response: Any) -> dict[str, Any]:
    """A 200 exchange response of the wire shape of PROTOCOL §4."""
    assert response.status_code == 200, (response.status_code, response.content[:500])
    assert response["Content-Type"].startswith("application/json")
    data = json.loads(response.content)
    assert {"records", "appSyncableRows", "responderWatermarks", "hasMore"} <= set(data), data
    assert isinstance(data["records"], list)
    assert isinstance(data["appSyncableRows"], list)
    assert isinstance(data["responderWatermarks"], dict)
    assert isinstance(data["hasMore"], bool)
    return data
