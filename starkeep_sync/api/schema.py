"""OpenAPI 3 description of the HTTP API (PROTOCOL §4, §7, §8), served at ``<mount>/schema``.

drf-spectacular is optional (the ``openapi`` extra). Without it this module still
imports, and the ``schema`` route answers 404 with our JSON error body. With it,
:class:`SchemaView` builds the schema with :class:`StarkeepSchemaGenerator`, passed
explicitly, so a project needs neither ``drf_spectacular`` in ``INSTALLED_APPS`` nor
``REST_FRAMEWORK["DEFAULT_SCHEMA_CLASS"]``. The views themselves carry no schema
code: :class:`~drf_spectacular.extensions.OpenApiViewExtension` subclasses below
swap in documented stand-ins during generation only (so a project-wide
drf-spectacular schema documents our routes the same way, once our urls are loaded).

Limits that come from ``STARKEEP_SYNC`` (page limit, blob size) are read when the
schema is generated, so the served schema always matches the running server.
"""

from __future__ import annotations

import copy
from collections.abc import Callable
from typing import Any

from rest_framework.renderers import JSONRenderer
from rest_framework.request import Request
from rest_framework.response import Response
from rest_framework.views import APIView

from .. import __version__
from ..conf import sync_settings
from ..constants import (
    DRIVE_APP_ID,
    HEADER_APP_ID,
    HEADER_APP_SIG,
    HEADER_APP_TS,
    HEADER_KEY_ID,
    MAX_COUNTER,
    MAX_NODE_ID_LENGTH,
    MAX_WALL_TIME,
)
from ..keys import MAX_KEY_LENGTH
from ..wire import MAX_ID_LENGTH, MAX_TEXT_LENGTH
from . import views
from .authentication import AppSignatureAuthentication, DeviceTokenAuthentication
from .exceptions import SyncAPIException, exception_handler
from .throttling import HealthRateThrottle

try:  # the "openapi" extra
    from drf_spectacular.extensions import OpenApiAuthenticationExtension, OpenApiViewExtension
    from drf_spectacular.generators import EndpointEnumerator, SchemaGenerator
    from drf_spectacular.openapi import AutoSchema
    from drf_spectacular.renderers import OpenApiJsonRenderer2
    from drf_spectacular.settings import patched_settings
    from drf_spectacular.utils import OpenApiExample, OpenApiParameter, OpenApiResponse, extend_schema
    from drf_spectacular.views import SpectacularAPIView
except ImportError:  # pragma: no cover - depends on the environment
    HAS_SPECTACULAR = False
else:
    HAS_SPECTACULAR = True

# -- component schemas (plain JSON Schema of OpenAPI 3.0; no drf-spectacular needed to read them) ------------


def _ref(name: str) -> dict[str, Any]:
    return {"$ref": f"#/components/schemas/{name}"}


def _nullable_ref(name: str) -> dict[str, Any]:
    # OpenAPI 3.0 cannot put "nullable" beside a bare $ref; allOf is the usual spelling.
    return {"allOf": [_ref(name)], "nullable": True}


def _text(max_length: int, *, nullable: bool = False, min_length: int = 0, **extra: Any) -> dict[str, Any]:
    out: dict[str, Any] = {"type": "string", "maxLength": max_length, **extra}
    if min_length:
        out["minLength"] = min_length
    if nullable:
        out["nullable"] = True
    return out


#: A node id: non-empty, no ':' (the serialized HLC separator), no control characters.
NODE_ID_PATTERN = r"^[^:\x00-\x1f\x7f]+$"
#: Drive-channel keys: ``shared/<category>/<shard>/<hash>``.
DRIVE_KEY_PATTERN = r"^shared/[a-z0-9_-]+/[A-Za-z0-9_-]+/[A-Za-z0-9_-]+$"
#: Per-app keys: ``apps/<app_id>/syncable/<sub-key>`` (non-empty segments, no backslash or control characters).
APP_KEY_PATTERN = (
    r"^apps/[A-Za-z0-9._-]+/syncable/[^/\\\x00-\x1f\x7f]+(/[^/\\\x00-\x1f\x7f]+)*$"
    r"|^shared/[a-z0-9_-]+/[A-Za-z0-9_-]+/[A-Za-z0-9_-]+$"
)
APP_ID_PATTERN = r"^[A-Za-z0-9._-]{1,255}$"

HLC_EXAMPLE = {"wallTime": 1_700_000_000_000, "counter": 0, "nodeId": "nodeA"}
_HASH = "9f86d081884c7d659a2feaa0c55ad015a3bf4f1b2b0b822cd15d6c15b0f00a08"

_RECORD_PROPERTIES: dict[str, Any] = {
    "id": _text(MAX_ID_LENGTH, min_length=1, description="Record id (a 26-character ULID in practice)."),
    "kind": {"type": "string", "enum": ["data"], "default": "data"},
    "type": _text(255, pattern="/", description="`<category>/<format>`, e.g. `image/jpeg`."),
    "createdAt": _ref("HLC"),
    "updatedAt": _ref("HLC"),
    "deletedAt": {**_nullable_ref("HLC"), "description": "Set on a tombstone (soft delete), else null."},
    "version": {"type": "integer", "minimum": 0, "default": 1},
    "contentHash": _text(256, description="sha256 hex of the blob bytes."),
    "objectStorageKey": _text(MAX_KEY_LENGTH, description="Blob key, `shared/<category>/<hash[:2]>/<hash>`."),
    "mimeType": _text(255, nullable=True),
    "sizeBytes": {"type": "integer", "minimum": 0, "default": 0},
    "originalFilename": _text(MAX_TEXT_LENGTH, nullable=True),
    "originAppId": _text(255),
    "parentId": _text(MAX_ID_LENGTH, nullable=True),
    "label": _text(MAX_TEXT_LENGTH, nullable=True),
}
_RECORD_REQUIRED_IN = ["id", "type", "createdAt", "updatedAt", "contentHash", "objectStorageKey", "originAppId"]

_ENTRY_PROPERTIES: dict[str, Any] = {
    "timestamp": _ref("HLC"),
    "appId": _text(255, min_length=1),
    "table": _text(255, min_length=1),
    "op": {"type": "string", "enum": ["insert", "update", "delete"]},
    "row": {
        "type": "object", "nullable": True, "additionalProperties": True,
        "description": "`insert`: the full row; `update`: the patch; `delete`: the row (its primary key) or null.",
    },
    "where": {
        "type": "object", "nullable": True, "additionalProperties": True,
        "description": "Primary-key values of the row to change; required for `update`.",
    },
}

_RECORD_EXAMPLE = {
    "id": "01HF7Y8Z9ABCDEFGHJKMNPQRST",
    "kind": "data",
    "type": "image/jpeg",
    "createdAt": HLC_EXAMPLE,
    "updatedAt": HLC_EXAMPLE,
    "deletedAt": None,
    "version": 1,
    "contentHash": _HASH,
    "objectStorageKey": f"shared/image/{_HASH[:2]}/{_HASH}",
    "mimeType": "image/jpeg",
    "sizeBytes": 4,
    "originalFilename": "cat.jpg",
    "originAppId": "photos",
    "parentId": None,
    "label": None,
}
_ENTRY_EXAMPLE = {
    "timestamp": HLC_EXAMPLE,
    "appId": "notes",
    "table": "notes",
    "op": "insert",
    "row": {"id": "n1", "body": "hi", "updated_at": "018bcfe56800:0000:nodeA"},
    "where": None,
}


def component_schemas() -> dict[str, Any]:
    """The ``components.schemas`` of the API, with this server's configured limits."""
    return {
        "HLC": {
            "type": "object",
            "description": "A hybrid logical clock timestamp (PROTOCOL §1), in wire form.",
            "required": ["wallTime", "counter", "nodeId"],
            "properties": {
                "wallTime": {"type": "integer", "minimum": 0, "maximum": MAX_WALL_TIME,
                             "description": "Milliseconds since the epoch."},
                "counter": {"type": "integer", "minimum": 0, "maximum": MAX_COUNTER},
                "nodeId": _text(MAX_NODE_ID_LENGTH, min_length=1, pattern=NODE_ID_PATTERN),
            },
            "example": HLC_EXAMPLE,
        },
        "Watermarks": {
            "type": "object",
            "description": "Per node id (a key of the same shape as `HLC.nodeId`), the highest HLC held.",
            "additionalProperties": _ref("HLC"),
            "example": {"nodeA": HLC_EXAMPLE},
        },
        "SharedRecordInput": {
            "type": "object",
            "description": "A shared record as sent (PROTOCOL §2). Unknown fields are ignored.",
            "required": _RECORD_REQUIRED_IN,
            "properties": _RECORD_PROPERTIES,
            "example": _RECORD_EXAMPLE,
        },
        "SharedRecord": {
            "type": "object",
            "description": "A shared record as the server sends it: every field present.",
            "required": list(_RECORD_PROPERTIES),
            "properties": _RECORD_PROPERTIES,
            "example": _RECORD_EXAMPLE,
        },
        "AppSyncableRowInput": {
            "type": "object",
            "description": (
                "An app row entry as sent (PROTOCOL §2): `insert` needs `row`; `update` needs `row` and "
                "`where`; `delete` needs `where` or `row`. Unknown fields are ignored."
            ),
            "required": ["timestamp", "appId", "table", "op"],
            "properties": _ENTRY_PROPERTIES,
            "example": _ENTRY_EXAMPLE,
        },
        "AppSyncableRow": {
            "type": "object",
            "description": "An app row entry as the server sends it.",
            "required": list(_ENTRY_PROPERTIES),
            "properties": _ENTRY_PROPERTIES,
            "example": _ENTRY_EXAMPLE,
        },
        "ExchangeRequest": {
            "type": "object",
            "description": (
                "One exchange round (PROTOCOL §4). The Drive channel takes `records` and ignores "
                "`appSyncableRows`; a per-app channel does the reverse. At most "
                f"{sync_settings.MAX_ITEMS_PER_REQUEST} items (records and rows together) per request."
            ),
            "required": ["watermarks"],
            "properties": {
                "watermarks": _ref("Watermarks"),
                "records": {"type": "array", "nullable": True, "items": _ref("SharedRecordInput")},
                "appSyncableRows": {"type": "array", "nullable": True, "items": _ref("AppSyncableRowInput")},
                "limit": {"type": "integer", "nullable": True, "minimum": 1,
                          "maximum": sync_settings.MAX_PAGE_LIMIT,
                          "description": f"Page size; {sync_settings.DEFAULT_PAGE_LIMIT} when absent."},
                "countPending": {"type": "boolean",
                                 "description": "Extension: ask for `pending` in the response (a count of "
                                                "the backlog; ask once per catch-up)."},
            },
        },
        "ExchangeResponse": {
            "type": "object",
            "required": ["records", "appSyncableRows", "responderWatermarks", "hasMore"],
            "properties": {
                "records": {"type": "array", "items": _ref("SharedRecord")},
                "appSyncableRows": {"type": "array", "items": _ref("AppSyncableRow")},
                "responderWatermarks": _ref("Watermarks"),
                "hasMore": {"type": "boolean",
                            "description": "True only if items above the requester's watermarks remain."},
                "pending": {"type": "integer", "minimum": 0,
                            "description": "Extension: how many such items remain after this page."},
            },
        },
        "DriveKey": _text(MAX_KEY_LENGTH, min_length=1, pattern=DRIVE_KEY_PATTERN,
                          description="A Drive-channel blob key: `shared/<category>/<shard>/<hash>`.",
                          example=f"shared/image/{_HASH[:2]}/{_HASH}"),
        "AppKey": _text(MAX_KEY_LENGTH, min_length=1, pattern=APP_KEY_PATTERN,
                        description=(
                            "A per-app blob key: `apps/<app_id>/syncable/<sub-key>` with the app id of the path "
                            "(another app's prefix is 403); on `apps/starkeep-drive/` a Drive key."),
                        example=f"apps/notes/syncable/{_HASH}"),
        "PresignRequest": {
            "type": "object",
            "required": ["key"],
            "properties": {"key": _ref("DriveKey"),
                           "contentType": _text(255, nullable=True, pattern=r"^[^\x00-\x1f\x7f]*$",
                                                description="Content-Type the upload will send.")},
        },
        "ConfirmRequest": {"type": "object", "required": ["key"], "properties": {"key": _ref("DriveKey")}},
        "Url": {"type": "object", "required": ["url"],
                "properties": {"url": {"type": "string", "format": "uri",
                                       "description": "Short-lived URL for the bytes."}}},
        "Ok": {"type": "object", "required": ["ok"], "properties": {"ok": {"type": "boolean", "enum": [True]}}},
        "Stored": {"type": "object", "required": ["ok", "key"],
                   "properties": {"ok": {"type": "boolean", "enum": [True]}, "key": {"type": "string"}}},
        "Health": {
            "type": "object",
            "required": ["status", "db", "storage"],
            "properties": {"status": {"type": "string", "enum": ["ok", "degraded"]},
                           "db": {"type": "boolean"}, "storage": {"type": "boolean"}},
        },
        "Binary": {"type": "string", "format": "binary",
                   "description": f"Blob bytes (at most {sync_settings.MAX_BLOB_BYTES} bytes)."},
        "Error": {
            "type": "object",
            "description": "The error body of every 4xx/5xx answer.",
            "required": ["error"],
            "additionalProperties": False,
            "properties": {"error": {
                "type": "object",
                "required": ["code", "message"],
                "additionalProperties": False,
                "properties": {
                    "code": {"type": "string", "minLength": 1, "description": "Stable machine code."},
                    "message": {"type": "string", "minLength": 1},
                    "field": {"type": "string", "minLength": 1,
                              "description": "The request field at fault, where there is one."},
                },
            }},
            "example": {"error": {"code": "invalid_request", "message": "watermarks: is required",
                                  "field": "watermarks"}},
        },
    }


ERROR_DESCRIPTIONS: dict[int, str] = {
    400: "Bad request: malformed body, field or key (`field` names the culprit where there is one).",
    401: "No valid credentials.",
    403: "Credentials not valid for this channel, or a key of another app.",
    404: "No such route or app (a malformed app id, key or token matches no route), or no blob at this key.",
    409: "The key collides with another on this server's file storage (one is a prefix of the other).",
    413: "Body, item count or blob larger than this server accepts.",
    429: "Rate limited; `Retry-After` says when to retry.",
    507: "The owner's quota is used up; nothing was stored.",
}


def openapi_security_schemes() -> dict[str, Any]:
    """``components.securitySchemes`` (PROTOCOL §8): a bearer token, or the three signature headers together."""
    signed = (
        "Starkeep app signature (all three `X-Starkeep-App-*` headers together): "
        "`Sig = hex(HMAC-SHA256(secret, \"<appId>:<METHOD>:<path>:<ts>:\" + body))`, `<path>` relative to "
        "`/apps/<appId>`, GET/HEAD signing an empty body; the app id must be the path's; `Ts` within "
        f"{sync_settings.SIGNATURE_WINDOW_SECONDS} s; a signature is accepted once. Optional `{HEADER_KEY_ID}` "
        "names the secret."
    )
    return {
        "bearerAuth": {"type": "http", "scheme": "bearer",
                       "description": "Device token: `Authorization: Bearer <token>`."},
        "starkeepAppId": {"type": "apiKey", "in": "header", "name": HEADER_APP_ID, "description": signed},
        "starkeepAppSig": {"type": "apiKey", "in": "header", "name": HEADER_APP_SIG,
                           "description": "Lowercase hex HMAC-SHA256; see `starkeepAppId`."},
        "starkeepAppTs": {"type": "apiKey", "in": "header", "name": HEADER_APP_TS,
                          "description": "Milliseconds since the epoch; see `starkeepAppId`."},
    }


# -- post-processing shared by every generator (plain dict work) ----------------------------------------------

_PATH_PARAMETERS: dict[str, dict[str, Any]] = {
    "app_id": {
        "description": f"The app (channel) id; `{DRIVE_APP_ID}` is the Drive channel.",
        "schema": {"type": "string", "pattern": APP_ID_PATTERN, "minLength": 1, "maxLength": 255},
        "examples": {"app": {"value": "notes"}, "drive": {"value": DRIVE_APP_ID}},
    },
    "token": {
        "description": "The signed token of a URL from `files/presign` or `files/{key}/presign`.",
        "schema": {"type": "string", "pattern": "^[^/]+$", "minLength": 1},
    },
}


def postprocess(schema: dict[str, Any]) -> dict[str, Any]:
    """Fix what route introspection cannot know: path parameters, per-channel keys, HEAD operations."""
    for path, item in schema.get("paths", {}).items():
        per_app = "{app_id}" in path
        for method in list(item):
            operation = item[method]
            for param in operation.get("parameters", []):
                if param.get("in") != "path":
                    continue
                if param["name"] in _PATH_PARAMETERS:
                    param.update(copy.deepcopy(_PATH_PARAMETERS[param["name"]]))
                elif param["name"] == "key":
                    param["schema"] = _ref("AppKey" if per_app else "DriveKey")
                    param["description"] = "The blob key (its `/` may be sent as is or percent-encoded)."
            if per_app:
                _swap_refs(operation, _ref("DriveKey"), _ref("AppKey"))
            if method == "post" and "requestBody" in operation:
                operation["requestBody"]["required"] = True  # a missing JSON body is a 400
        if "get" in item and "put" in item and "head" not in item:
            item["head"] = _head_of(item["get"])
    return schema


def _swap_refs(node: Any, old: dict[str, Any], new: dict[str, Any]) -> None:
    if isinstance(node, dict):
        for k, v in node.items():
            if v == old:
                node[k] = dict(new)
            else:
                _swap_refs(v, old, new)
    elif isinstance(node, list):
        for i, v in enumerate(node):
            if v == old:
                node[i] = dict(new)
            else:
                _swap_refs(v, old, new)


def _head_of(get: dict[str, Any]) -> dict[str, Any]:
    """``HEAD files/{key}``: GET's parameters and security, no bodies (introspection skips HEAD)."""
    head = copy.deepcopy(get)
    head["operationId"] = get["operationId"].removesuffix("_retrieve") + "_head"
    head["summary"] = "Whether a blob is present"
    head["description"] = "200 with `Content-Type` and `Content-Length` if present, 404 if not; never a body."
    responses: dict[str, Any] = {}
    for code, response in get["responses"].items():
        responses[code] = {"description": response.get("description", "")}
        if "headers" in response:
            responses[code]["headers"] = response["headers"]
    responses["404"] = {"description": "No blob at this key."}
    head["responses"] = responses
    return head


# -- drf-spectacular wiring --------------------------------------------------------------------------------

if HAS_SPECTACULAR:

    _RETRY_AFTER = OpenApiParameter(
        "Retry-After", int, OpenApiParameter.HEADER, response=[429], description="Seconds to wait.")
    _AUTHENTICATE = OpenApiParameter(
        "WWW-Authenticate", str, OpenApiParameter.HEADER, response=[401], description="The expected scheme.")

    def _errors(*codes: int) -> dict[int, Any]:
        # 404 everywhere: a malformed app id, key or token matches no route and gets our JSON 404.
        return {code: OpenApiResponse(_ref("Error"), description=ERROR_DESCRIPTIONS[code])
                for code in sorted({*codes, 404})}

    def _operation(**kwargs: Any) -> Callable[[Callable[..., Any]], Callable[..., Any]]:
        """``extend_schema`` on drf-spectacular's AutoSchema, whatever DEFAULT_SCHEMA_CLASS names."""

        def decorate(func: Callable[..., Any]) -> Callable[..., Any]:
            # extend_schema bases its schema class on a "schema" attribute of the function when there
            # is one, else on DEFAULT_SCHEMA_CLASS (DRF's own AutoSchema, unless the project changed it).
            func.schema = AutoSchema  # type: ignore[attr-defined]
            return extend_schema(**kwargs)(func)

        return decorate

    def _documented(target: type[APIView], **operations: dict[str, Any]) -> type[APIView]:
        """A subclass of ``target`` whose handlers carry ``operations[method]`` (used for generation only)."""
        attrs: dict[str, Any] = {"__doc__": target.__doc__, "__module__": target.__module__}
        for method, kwargs in operations.items():
            parent = getattr(target, method)

            def handler(self: Any, *args: Any, _parent: Any = parent, **kw: Any) -> Any:
                return _parent(self, *args, **kw)

            attrs[method] = _operation(**kwargs)(handler)
        return type(target.__name__, (target,), attrs)

    _EXCHANGE_REQUEST_EXAMPLES = [
        OpenApiExample("Drive round", request_only=True, value={
            "watermarks": {"nodeA": HLC_EXAMPLE}, "records": [_RECORD_EXAMPLE], "limit": 1000}),
        OpenApiExample("App round", request_only=True, value={
            "watermarks": {}, "appSyncableRows": [_ENTRY_EXAMPLE]}),
    ]
    _EXCHANGE_RESPONSE_EXAMPLE = OpenApiExample("Answer", response_only=True, value={
        "records": [], "appSyncableRows": [],
        "responderWatermarks": {"nodeB": {"wallTime": 1_700_000_002_000, "counter": 3, "nodeId": "nodeB"}},
        "hasMore": False, "pending": 0})

    class ExchangeViewSchema(OpenApiViewExtension):
        target_class = views.ExchangeView
        match_subclasses = True

        def view_replacement(self) -> type[APIView]:
            return _documented(self.target, post=dict(
                tags=["sync"],
                summary="One exchange round",
                description=(
                    "Applies the items sent (LWW; items refused one by one are logged, not fatal) and answers "
                    "the items above the requester's `watermarks`, a page at a time (PROTOCOL §4-6). A body "
                    "that does not match is refused whole with 400 naming the field; nothing is applied."),
                request={"application/json": _ref("ExchangeRequest")},
                responses={200: OpenApiResponse(_ref("ExchangeResponse"), description="The answer."),
                           **_errors(400, 401, 403, 404, 413, 429, 507)},
                parameters=[_RETRY_AFTER, _AUTHENTICATE],
                examples=[*_EXCHANGE_REQUEST_EXAMPLES, _EXCHANGE_RESPONSE_EXAMPLE],
            ))

    class FileViewSchema(OpenApiViewExtension):
        target_class = views.FileView
        match_subclasses = True

        def view_replacement(self) -> type[APIView]:
            common = {"tags": ["files"], "parameters": [_RETRY_AFTER, _AUTHENTICATE]}
            return _documented(
                self.target,
                get=dict(common, summary="Download a blob",
                         description="The bytes, with the Content-Type they were stored with.",
                         responses={(200, "application/octet-stream"): OpenApiResponse(
                             _ref("Binary"), description="The bytes."),
                             **_errors(400, 401, 403, 404, 429)}),
                put=dict(common, summary="Upload a blob",
                         description=(
                             "Stores the body under the caller's owner; its Content-Type is kept. When the key "
                             "ends in a sha256 (64 hex digits) the bytes must hash to it, or nothing is stored."),
                         request={"application/octet-stream": _ref("Binary")},
                         responses={201: OpenApiResponse(_ref("Stored"), description="Stored."),
                                    **_errors(400, 401, 403, 409, 413, 429, 507)}),
                delete=dict(common, summary="Delete a blob",
                            responses={204: OpenApiResponse(description="Removed (or was absent)."),
                                       **_errors(400, 401, 403, 429)}),
            )

    class PresignPutViewSchema(OpenApiViewExtension):
        target_class = views.PresignPutView
        match_subclasses = True

        def view_replacement(self) -> type[APIView]:
            return _documented(self.target, post=dict(
                tags=["files"], summary="A URL to upload a blob to directly",
                description="An S3 presigned URL, or a short-lived signed URL of this server (`files-direct`).",
                request={"application/json": _ref("PresignRequest")},
                responses={200: OpenApiResponse(_ref("Url"), description="Where to PUT the bytes."),
                           **_errors(400, 401, 403, 413, 429)},
                parameters=[_RETRY_AFTER, _AUTHENTICATE],
            ))

    class PresignGetViewSchema(OpenApiViewExtension):
        target_class = views.PresignGetView
        match_subclasses = True
        priority = 1  # a FileView subclass: this extension, not FileView's

        def view_replacement(self) -> type[APIView]:
            # PUT and DELETE there are the file routes of a key ending in "/presign": not documented twice.
            return _documented(self.target, put=dict(exclude=True), delete=dict(exclude=True), get=dict(
                tags=["files"], summary="A URL to download a blob from directly",
                responses={200: OpenApiResponse(_ref("Url"), description="Where to GET the bytes."),
                           **_errors(400, 401, 403, 404, 429)},
                parameters=[_RETRY_AFTER, _AUTHENTICATE],
            ))

    class ConfirmViewSchema(OpenApiViewExtension):
        target_class = views.ConfirmView
        match_subclasses = True

        def view_replacement(self) -> type[APIView]:
            return _documented(self.target, post=dict(
                tags=["files"], summary="Confirm a direct upload",
                description="`{\"ok\": true}` once the blob is present; bytes that do not hash to a sha256 key "
                            "are removed and refused with 400.",
                request={"application/json": _ref("ConfirmRequest")},
                responses={200: OpenApiResponse(_ref("Ok"), description="Present."),
                           **_errors(400, 401, 403, 404, 413, 429)},
                parameters=[_RETRY_AFTER, _AUTHENTICATE],
            ))

    class DirectBlobViewSchema(OpenApiViewExtension):
        target_class = views.DirectBlobView
        match_subclasses = True

        def view_replacement(self) -> type[APIView]:
            common = {"tags": ["files"], "parameters": [_RETRY_AFTER]}
            return _documented(
                self.target,
                get=dict(common, summary="Download through a signed URL",
                         description="The token in the path is the credential.",
                         responses={(200, "application/octet-stream"): OpenApiResponse(
                             _ref("Binary"), description="The bytes."), **_errors(404, 429)}),
                put=dict(common, summary="Upload through a signed URL",
                         description="The token in the path is the credential.",
                         request={"application/octet-stream": _ref("Binary")},
                         responses={201: OpenApiResponse(_ref("Ok"), description="Stored."),
                                    **_errors(400, 409, 413, 429, 507)}),
            )

    class HealthViewSchema(OpenApiViewExtension):
        target_class = views.HealthView
        match_subclasses = True

        def view_replacement(self) -> type[APIView]:
            return _documented(self.target, get=dict(
                tags=["health"], summary="Database and storage reachability",
                description="No credentials needed.",
                responses={200: OpenApiResponse(_ref("Health"), description="All reachable."),
                           503: OpenApiResponse(_ref("Health"), description="Something is unreachable."),
                           **_errors(429)},
                parameters=[_RETRY_AFTER],
            ))

    class DeviceTokenScheme(OpenApiAuthenticationExtension):
        target_class = DeviceTokenAuthentication
        match_subclasses = True
        name = "bearerAuth"

        def get_security_definition(self, auto_schema: Any) -> dict[str, Any]:
            return openapi_security_schemes()["bearerAuth"]

    class AppSignatureScheme(OpenApiAuthenticationExtension):
        target_class = AppSignatureAuthentication
        match_subclasses = True
        # Three headers that go together: one AND-ed requirement.
        name = ["starkeepAppId", "starkeepAppSig", "starkeepAppTs"]

        def get_security_definition(self, auto_schema: Any) -> list[dict[str, Any]]:
            schemes = openapi_security_schemes()
            return [schemes[n] for n in self.name]

    class StarkeepEndpointEnumerator(EndpointEnumerator):
        """Only this app's routes, wherever the project mounted them."""

        def should_include_endpoint(self, path: str, callback: Any) -> bool:
            cls = getattr(callback, "cls", None)
            return (cls is not None and cls.__module__.startswith("starkeep_sync.")
                    and super().should_include_endpoint(path, callback))

    class StarkeepSchemaGenerator(SchemaGenerator):
        endpoint_inspector_cls = StarkeepEndpointEnumerator

        def get_schema(self, request: Any = None, public: bool = False) -> dict[str, Any]:
            return postprocess(super().get_schema(request=request, public=public))

    #: drf-spectacular settings for our schema, whatever SPECTACULAR_SETTINGS the project has.
    SPECTACULAR_OVERRIDES: dict[str, Any] = {
        "TITLE": "Starkeep sync API",
        "DESCRIPTION": (
            "The Starkeep sync protocol over HTTP: exchange rounds (PROTOCOL §4) and blobs (§7) on the Drive "
            f"channel (the un-prefixed routes, or `/apps/{DRIVE_APP_ID}/…`) and on per-app channels "
            "(`/apps/{app_id}/…`). Every route but `health`, `schema` and `files-direct` needs a principal "
            "(§8). Errors are `{\"error\": {\"code\", \"message\", \"field\"?}}`."),
        "VERSION": __version__,
        "OAS_VERSION": "3.0.3",
        "SERVERS": [],
        "SECURITY": [],
        "TAGS": [],
        "SCHEMA_PATH_PREFIX": None,
        "SCHEMA_PATH_PREFIX_TRIM": False,
        "SCHEMA_PATH_PREFIX_INSERT": "",
        "CAMELIZE_NAMES": False,
        "COMPONENT_SPLIT_REQUEST": False,
        "PREPROCESSING_HOOKS": [],
        "POSTPROCESSING_HOOKS": [],
        "AUTHENTICATION_WHITELIST": None,
        "SORT_OPERATIONS": True,
    }

    class SchemaView(SpectacularAPIView):
        """``GET schema``: this API's OpenAPI 3 schema as JSON (no credentials needed)."""

        renderer_classes = [OpenApiJsonRenderer2]  # application/json, errors included
        authentication_classes: list[Any] = []
        permission_classes: list[Any] = []
        throttle_classes = [HealthRateThrottle]  # generation costs more than a health check
        generator_class = StarkeepSchemaGenerator
        serve_public = True
        urlconf = None
        patterns = None

        def get_exception_handler(self) -> Any:
            return exception_handler

        @_operation(
            tags=["schema"], summary="This OpenAPI schema",
            responses={200: OpenApiResponse({"type": "object", "additionalProperties": True},
                                            description="OpenAPI 3 document."), **_errors(429)},
        )
        def get(self, request: Request, *args: Any, **kwargs: Any) -> Response:
            overrides = {**SPECTACULAR_OVERRIDES, "APPEND_COMPONENTS": {
                "schemas": component_schemas(), "securitySchemes": openapi_security_schemes()}}
            with patched_settings(overrides):
                return self._get_schema_response(request)

else:

    class SchemaView(APIView):  # type: ignore[no-redef]
        """``GET schema`` without drf-spectacular installed: 404 with our error body."""

        authentication_classes: list[Any] = []
        permission_classes: list[Any] = []
        renderer_classes = [JSONRenderer]
        throttle_classes = [HealthRateThrottle]

        def get_exception_handler(self) -> Any:
            return exception_handler

        def get(self, request: Request, *args: Any, **kwargs: Any) -> Response:
            exc = SyncAPIException(
                "The OpenAPI schema needs drf-spectacular (pip install 'django-starkeep-sync[openapi]').",
                code="not_found")
            exc.status_code = 404
            raise exc
