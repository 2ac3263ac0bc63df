"""The OpenAPI schema at ``<mount>/schema``: served, valid OpenAPI 3, complete, optional."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
from django.test import Client
from django.urls import URLPattern, reverse

from starkeep_sync import urls as sync_urls

pytest.importorskip("drf_spectacular")

#: Every named route of starkeep_sync/urls.py and the operations the schema must list for it.
#: A route added without a line here fails ``test_every_route_is_documented``.
DOCUMENTED: dict[str, set[str]] = {
    "health": {"get"},
    "app-health": {"get"},
    "schema": {"get"},
    "direct": {"get", "put", "head"},
    "exchange": {"post"},
    "changes": {"get"},
    "presign": {"post"},
    "confirm": {"post"},
    "presign-get": {"get", "head"},
    "file": {"get", "put", "delete", "head"},
}
UNDOCUMENTED = {"no-route"}  # the JSON 404 behind everything else under our prefixes

SECURED = [{"bearerAuth": []}, {"starkeepAppId": [], "starkeepAppSig": [], "starkeepAppTs": []}]


@pytest.fixture
def schema() -> dict[str, Any]:
    response = Client().get(reverse("starkeep_sync:schema"))
    assert response.status_code == 200, response.content[:500]
    assert response["Content-Type"].startswith("application/json")
    return json.loads(response.content)


def openapi_path(pattern: URLPattern) -> str:
    """``/apps/{app_id}/files/{key}`` from the route's regex or converter syntax."""
    text = str(pattern.pattern).lstrip("^").rstrip("$")
    text = re.sub(r"\(\?P<(\w+)>(?:[^()]|\([^()]*\))*\)", r"{\1}", text)  # regex groups
    text = re.sub(r"<(?:\w+:)?(\w+)>", r"{\1}", text)  # path() converters
    return "/" + text


def test_schema_is_served_as_json_without_credentials(schema: dict[str, Any]) -> None:
    assert schema["openapi"].startswith("3.")
    assert schema["info"]["title"] == "Starkeep sync API"
    assert schema["paths"]


def test_schema_is_valid_openapi(schema: dict[str, Any]) -> None:
    try:
        from openapi_spec_validator import validate
    except ImportError:  # pragma: no cover - depends on the environment
        assert {"openapi", "info", "paths", "components"} <= set(schema)
        for item in schema["paths"].values():
            for operation in item.values():
                assert operation["responses"]
        return
    validate(schema)


def test_schema_generation_emits_no_warning() -> None:
    from drf_spectacular.drainage import GENERATOR_STATS

    assert Client().get(reverse("starkeep_sync:schema")).status_code == 200
    assert not GENERATOR_STATS, "drf-spectacular warned or erred while generating the schema"


def test_every_route_is_documented(schema: dict[str, Any]) -> None:
    named = {p.name for p in sync_urls.urlpatterns}
    assert named - UNDOCUMENTED == {n for base in DOCUMENTED for n in (base, f"{base}-app")} & named
    assert set(DOCUMENTED) <= named
    seen = 0
    for pattern in sync_urls.urlpatterns:
        if pattern.name in UNDOCUMENTED:
            continue
        base = pattern.name.removesuffix("-app")
        path = openapi_path(pattern)
        assert path in schema["paths"], (pattern.name, path, sorted(schema["paths"]))
        assert set(schema["paths"][path]) == DOCUMENTED[base], (path, set(schema["paths"][path]))
        if "{app_id}" in path:
            for operation in schema["paths"][path].values():
                params = {p["name"]: p for p in operation["parameters"] if p["in"] == "path"}
                assert params["app_id"]["required"] is True
                assert params["app_id"]["schema"]["pattern"] == "^[A-Za-z0-9._-]{1,255}$"
        seen += 1
    assert seen == len(schema["paths"])  # and nothing else


def test_security_schemes(schema: dict[str, Any]) -> None:
    schemes = schema["components"]["securitySchemes"]
    assert schemes["bearerAuth"] == {**schemes["bearerAuth"], "type": "http", "scheme": "bearer"}
    for name, header in [("starkeepAppId", "X-Starkeep-App-Id"), ("starkeepAppSig", "X-Starkeep-App-Sig"),
                         ("starkeepAppTs", "X-Starkeep-App-Ts")]:
        assert schemes[name] == {**schemes[name], "type": "apiKey", "in": "header", "name": header}
    public = {"/health", "/apps/{app_id}/health", "/schema", "/files-direct/{token}"}
    for path, item in schema["paths"].items():
        for method, operation in item.items():
            if path in public:
                assert "security" not in operation, (method, path)
            else:
                assert operation["security"] == SECURED, (method, path)


def test_error_bodies_and_wire_shapes(schema: dict[str, Any]) -> None:
    error = {"$ref": "#/components/schemas/Error"}
    for path, item in schema["paths"].items():
        for method, operation in item.items():
            for status, response in operation["responses"].items():
                if int(status) < 400:
                    continue
                if method == "head" or status == "414":
                    # A HEAD answer never has a body; 414 comes from the server in front, not from us.
                    assert "content" not in response, (method, path, status)
                elif path.endswith("/health") and status == "503":
                    assert response["content"] == {"application/json": {"schema": {
                        "$ref": "#/components/schemas/Health"}}}
                    assert "headers" not in response
                else:
                    assert response["content"] == {"application/json": {"schema": error}}, (method, path, status)
                    header = {"401": "WWW-Authenticate", "429": "Retry-After", "503": "Retry-After"}.get(status)
                    if header:
                        assert header in response["headers"], (method, path, status)
    components = schema["components"]["schemas"]
    assert set(components["HLC"]["required"]) == {"wallTime", "counter", "nodeId"}
    assert set(components["SharedRecord"]["required"]) == {
        "id", "kind", "type", "createdAt", "updatedAt", "deletedAt", "version", "contentHash",
        "objectStorageKey", "mimeType", "sizeBytes", "originalFilename", "originAppId", "parentId", "label"}
    # The enum comes from the wire type's Literal, which msgspec lists sorted; its order means nothing.
    assert sorted(components["AppSyncableRowInput"]["properties"]["op"]["enum"]) == ["delete", "insert", "update"]
    assert set(components["ExchangeResponse"]["properties"]) == {
        "records", "appSyncableRows", "responderWatermarks", "hasMore", "pending"}
    exchange = schema["paths"]["/sync/exchange"]["post"]
    assert exchange["requestBody"]["required"] is True
    assert exchange["requestBody"]["content"]["application/json"]["schema"] == {
        "$ref": "#/components/schemas/ExchangeRequest"}
    put = schema["paths"]["/files/{key}"]["put"]["requestBody"]["content"]
    assert put["application/octet-stream"]["schema"] == {"$ref": "#/components/schemas/Binary"}
    assert components["Binary"]["format"] == "binary"
    # Per-app routes take per-app keys, the Drive routes Drive keys.
    key_of = {p: next(x for x in item["get"]["parameters"] if x["name"] == "key")["schema"]
              for p, item in schema["paths"].items() if p.endswith("/files/{key}")}
    assert key_of == {"/files/{key}": {"$ref": "#/components/schemas/DriveKey"},
                      "/apps/{app_id}/files/{key}": {"$ref": "#/components/schemas/AppKey"}}


def test_limits_follow_the_settings(settings: Any) -> None:
    settings.STARKEEP_SYNC = {**settings.STARKEEP_SYNC, "MAX_PAGE_LIMIT": 123}
    data = json.loads(Client().get(reverse("starkeep_sync:schema")).content)
    limit = data["components"]["schemas"]["ExchangeRequest"]["properties"]["limit"]
    # A larger limit is lowered, not refused: no "maximum" that would call it invalid.
    assert "maximum" not in limit and "at most 123" in limit["description"]


def test_without_drf_spectacular_the_route_answers_404_json() -> None:
    """drf-spectacular is an extra: without it the app imports and /schema is our JSON 404."""
    script = """
import importlib.abc, json, sys

class Block(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path=None, target=None):
        if name == "drf_spectacular" or name.startswith("drf_spectacular."):
            raise ImportError("blocked for this test")
        return None

sys.meta_path.insert(0, Block())
import django
django.setup()
import starkeep_sync.api.views, starkeep_sync.urls
from django.test import Client
from django.urls import reverse
response = Client().get(reverse("starkeep_sync:schema"))
print(json.dumps({"status": response.status_code, "type": response["Content-Type"],
                  "body": json.loads(response.content),
                  "loaded": any(m.startswith("drf_spectacular") for m in sys.modules)}))
"""
    root = Path(__file__).resolve().parents[2]
    env = {**os.environ, "DJANGO_SETTINGS_MODULE": "tests.settings",
           "PYTHONPATH": os.pathsep.join([str(root), os.environ.get("PYTHONPATH", "")])}
    done = subprocess.run([sys.executable, "-c", script], cwd=root, env=env, capture_output=True, text=True,
                          timeout=120)
    assert done.returncode == 0, done.stderr[-2000:]
    result = json.loads(done.stdout.strip().splitlines()[-1])
    assert result["status"] == 404
    assert result["type"].startswith("application/json")
    assert result["body"]["error"]["code"] == "not_found"
    assert "drf-spectacular" in result["body"]["error"]["message"]
    assert result["loaded"] is False


#: The statuses each operation documents (PROTOCOL §4, §7, §8 and the hostile-client findings of issue 14).
#: tests/django/test_schema_truth.py makes the server answer each one that it can provoke.
AUTHENTICATED = {"400", "401", "403", "404", "429", "503"}
STATUSES: dict[tuple[str, str], set[str]] = {
    ("post", "/sync/exchange"): {"200", "413", "415", "507"} | AUTHENTICATED,
    ("get", "/files/{key}"): {"200", "414"} | AUTHENTICATED,
    ("head", "/files/{key}"): {"200", "414"} | AUTHENTICATED,
    ("put", "/files/{key}"): {"201", "409", "411", "412", "413", "414", "507"} | AUTHENTICATED,
    ("delete", "/files/{key}"): {"204", "414"} | AUTHENTICATED,
    ("post", "/files/presign"): {"200", "413"} | AUTHENTICATED,
    ("get", "/files/{key}/presign"): {"200", "414"} | AUTHENTICATED,
    ("head", "/files/{key}/presign"): {"200", "414"} | AUTHENTICATED,
    ("post", "/files/confirm"): {"200", "413"} | AUTHENTICATED,
    ("get", "/files-direct/{token}"): {"200", "404", "414", "429", "503"},
    ("head", "/files-direct/{token}"): {"200", "404", "414", "429", "503"},
    ("put", "/files-direct/{token}"): {"201", "400", "404", "409", "410", "412", "413", "414", "429", "503", "507"},
    ("get", "/health"): {"200", "404", "429", "503"},
    ("get", "/schema"): {"200", "404", "429"},
}


def test_statuses_of_every_operation(schema: dict[str, Any]) -> None:
    for (method, path), statuses in STATUSES.items():
        assert set(schema["paths"][path][method]["responses"]) == statuses, (method, path)
        app_path = "/apps/{app_id}" + path
        if app_path in schema["paths"]:
            assert set(schema["paths"][app_path][method]["responses"]) == statuses, (method, app_path)


def test_key_rules_in_the_schema_are_the_servers(schema: dict[str, Any]) -> None:
    """Each key pattern accepts exactly what ``validate_key`` accepts, up to the byte bound."""
    from starkeep_sync.core.exceptions import InvalidKeyError
    from starkeep_sync.core.keys import MAX_KEY_BYTES, validate_key

    components = schema["components"]["schemas"]
    drive, app = components["DriveKey"], components["AppKey"]
    for key_schema in (drive, app):
        assert key_schema["maxLength"] == MAX_KEY_BYTES and key_schema["minLength"] == 1
        assert key_schema["x-maxBytes"] == MAX_KEY_BYTES and key_schema["x-maxEncodedLength"] == 3 * MAX_KEY_BYTES
        assert f"At most {MAX_KEY_BYTES} bytes in UTF-8" in key_schema["description"]
    h = "ab" * 32
    samples = [
        f"shared/image/ab/{h}", "shared/my_cat-2/A_b-9/Z", "shared/Image/ab/x", "shared/image/ab", "shared/a/b/c/d",
        "shared/image/ab/presign", "shared/image/ab/presignx", "shared/i.mg/ab/x", "shared/image/a b/x",
        "apps/notes/syncable/x", "apps/notes/syncable/a/b/c.jpg", "apps/notes/syncable/presign",
        "apps/notes/syncable/a/presign", "apps/notes/syncable/presign/a", "apps/notes/syncable/./x",
        "apps/notes/syncable/../x", "apps/notes/syncable/...", "apps/notes/syncable/.x", "apps/notes/syncable/x.",
        "apps/notes/syncable//x", "apps/notes/syncable/x/", "apps/notes/syncable/a\\b", "apps/notes/syncable/a\x00",
        "apps/notes/syncable/a\x7f", "apps/notes/syncable/a\x1f", "apps/notes/syncable/\u00e9\U0001f600 ok",
        "apps/notes/syncable/a\x85", "apps/other/syncable/x", "apps/notes/other/x", "apps/notes/syncable",
        "/apps/notes/syncable/x", "apps/../syncable/x", "apps/notes/syncable/a?b#c%20",
    ]

    def accepted(key: str, channel: str) -> bool:
        try:
            validate_key(key, channel)
        except InvalidKeyError:
            return False
        return True

    for key in samples:
        assert bool(re.search(drive["pattern"], key)) == accepted(key, "starkeep-drive"), key
        # The per-app routes serve every channel: their pattern is "notes" keys or Drive keys, with
        # any app id in the key (another app's is 403, not 400: the path decides, a pattern cannot).
        as_app = accepted(key, "notes") or accepted(key, "starkeep-drive") or accepted(key, key.split("/")[1])
        assert bool(re.search(app["pattern"], key)) == as_app, key


def test_path_keys_may_meet_the_front_servers_request_line_limit(schema: dict[str, Any]) -> None:
    for path, item in schema["paths"].items():
        for method, operation in item.items():
            assert ("414" in operation["responses"]) == ("{key}" in path or "{token}" in path), (method, path)


def test_exchange_request_rules(schema: dict[str, Any]) -> None:
    components = schema["components"]["schemas"]
    per_app = schema["paths"]["/apps/{app_id}/sync/exchange"]["post"]["requestBody"]["content"]
    assert per_app["application/json"]["schema"] == {"$ref": "#/components/schemas/ChannelExchangeRequest"}
    assert components["ExchangeRequest"]["properties"]["records"]["items"] == {
        "$ref": "#/components/schemas/SharedRecordInput"}
    assert components["ChannelExchangeRequest"]["properties"]["records"]["items"] == {
        "$ref": "#/components/schemas/AnySharedRecordInput"}
    drive_key = components["SharedRecordInput"]["properties"]["objectStorageKey"]["pattern"]
    assert re.search(drive_key, "") and re.search(drive_key, "shared/image/ab/cd")
    assert not re.search(drive_key, "apps/notes/syncable/x")
    # What each op needs: an empty or null row/where counts as absent (wire.entry_from_wire).
    rules = components["AppSyncableRowInput"]["anyOf"]
    assert {tuple(r["properties"]["op"]["enum"]) + tuple(r["required"]) for r in rules} == {
        ("insert", "row"), ("update", "row", "where"), ("delete", "row"), ("delete", "where")}
