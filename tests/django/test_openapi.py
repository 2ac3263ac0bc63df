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
    "presign": {"post"},
    "confirm": {"post"},
    "presign-get": {"get"},
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
                if int(status) < 400 or status == "503":
                    continue
                if method == "head":
                    assert "content" not in response  # a HEAD answer never has a body
                else:
                    assert response["content"] == {"application/json": {"schema": error}}, (method, path, status)
    components = schema["components"]["schemas"]
    assert set(components["HLC"]["required"]) == {"wallTime", "counter", "nodeId"}
    assert set(components["SharedRecord"]["required"]) == {
        "id", "kind", "type", "createdAt", "updatedAt", "deletedAt", "version", "contentHash",
        "objectStorageKey", "mimeType", "sizeBytes", "originalFilename", "originAppId", "parentId", "label"}
    assert components["AppSyncableRowInput"]["properties"]["op"]["enum"] == ["insert", "update", "delete"]
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
    assert data["components"]["schemas"]["ExchangeRequest"]["properties"]["limit"]["maximum"] == 123


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
