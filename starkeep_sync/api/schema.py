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

import msgspec
from rest_framework.renderers import JSONRenderer
from rest_framework.request import Request
from rest_framework.response import Response
from rest_framework.views import APIView

from .. import __version__
from ..conf import sync_settings
from ..core.approws import MAX_FILE_RECORD_ID_LENGTH, MAX_ROW_KEY_LENGTH
from ..core.constants import (
    DRIVE_APP_ID,
    HEADER_APP_ID,
    HEADER_APP_SIG,
    HEADER_APP_TS,
    HEADER_KEY_ID,
)
from ..core.keys import (
    APP_KEY_PATTERN,
    DRIVE_KEY_PATTERN,
    KEY_LENGTH_RULE,
    KEY_SYNTAX_RULE,
    MAX_KEY_BYTES,
    MAX_KEY_ENCODED_LENGTH,
    MAX_KEY_LENGTH,
)
from ..core.wire import MAX_JSON_DEPTH, json_schema_components
from . import views
from .authentication import AppSignatureAuthentication, DeviceTokenAuthentication
from .changes import ChangesView
from .exceptions import ProtocolErrors, SyncAPIException
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
# The wire objects (HLC, watermarks, records, app rows, the exchange request and response) come from
# ``wire.json_schema_components()``, generated from the msgspec types the exchange view decodes with, so
# their rules cannot drift from the decoder. This module only names the variants the routes need (input
# and output, per channel), adds descriptions and examples, and the rules of the server beyond the wire
# format: the Drive-key check on the Drive channel, what each op needs, what the server always sends.


def _ref(name: str) -> dict[str, Any]:
    return {"$ref": f"#/components/schemas/{name}"}


def _described(properties: dict[str, Any], descriptions: dict[str, str]) -> dict[str, Any]:
    """``properties`` with ``descriptions`` added; a member the wire types no longer have is a KeyError."""
    return {**properties, **{name: {**properties[name], "description": text} for name, text in descriptions.items()}}


def _as_sent(member: dict[str, Any]) -> dict[str, Any]:
    """A member the server always sends with a value: the decoder's leniency (null, a default) dropped."""
    return {k: v for k, v in member.items() if k not in ("nullable", "default")}


def _watermarks_ref(member: dict[str, Any], watermarks: dict[str, Any]) -> dict[str, Any]:
    """``$ref Watermarks`` for a watermark vector of the wire types, which must have the rules of ``Watermarks``."""
    if _as_sent(member) != watermarks:
        raise RuntimeError(f"a watermark vector of the wire types differs from Watermarks: {member!r}")
    return _ref("Watermarks")


APP_ID_PATTERN = r"^[A-Za-z0-9._-]{1,255}$"

HLC_EXAMPLE = {"wallTime": 1_700_000_000_000, "counter": 0, "nodeId": "nodeA"}
_HASH = "9f86d081884c7d659a2feaa0c55ad015a3bf4f1b2b0b822cd15d6c15b0f00a08"

_RECORD_DESCRIPTIONS = {
    "id": "Record id (a 26-character ULID in practice).",
    "type": "`<category>/<format>`, e.g. `image/jpeg`.",
    "deletedAt": "Set on a tombstone (soft delete), else null.",
    "contentHash": "sha256 hex of the blob bytes.",
    "objectStorageKey": "Blob key, `shared/<category>/<hash[:2]>/<hash>`, or empty for a record without a blob.",
}
#: On the Drive channel a record's key, when not empty, must be a Drive key (400 naming the field): a
#: rule of the route, not of the wire format, so it replaces the wire's pattern here.
_DRIVE_RECORD_KEY = {
    "pattern": rf"^$|{DRIVE_KEY_PATTERN}",
    "description": (
        "Empty, or a Drive key `shared/<category>/<shard>/<hash>` (checked on the Drive channel; see `DriveKey`)."),
}
_ENTRY_DESCRIPTIONS = {
    "row": (
        "`insert`: the full row (on a per-app channel it must carry `updated_at`); `update`: the patch; "
        f"`delete`: the row (its primary key) or null. No NUL in any text, no NaN or Infinity, at most "
        f"{MAX_JSON_DEPTH} levels of nesting. On a per-app channel the columns must suit the registered "
        "table: its primary-key columns present and scalar, the key at most "
        f"{MAX_ROW_KEY_LENGTH} characters as compact JSON ({MAX_FILE_RECORD_ID_LENGTH} for a file record's "
        "id), `updated_at` equal to the entry's `timestamp`; else 400 naming `appSyncableRows[i].row`."),
    "where": "Primary-key values of the row to change; required for `update`.",
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


def _body(wire: dict[str, Any], name: str, replaced: dict[str, Any] | None = None,
          descriptions: dict[str, str] | None = None) -> dict[str, Any]:
    """A route body's component from the wire types: some members ``replaced``, some described."""
    out = {k: v for k, v in wire[name].items() if k != "description"}  # the type's docstring is for Python
    properties = {**out["properties"], **(replaced or {})}
    out["properties"] = _described(properties, descriptions or {})
    return out


def _key_schema(pattern: str, description: str, example: str) -> dict[str, Any]:
    return {"type": "string", "minLength": 1, "maxLength": MAX_KEY_LENGTH, "pattern": pattern, "example": example,
            "description": f"{description} {KEY_SYNTAX_RULE} {KEY_LENGTH_RULE}",
            "x-maxBytes": MAX_KEY_BYTES, "x-maxEncodedLength": MAX_KEY_ENCODED_LENGTH}


def _exchange_request(wire: dict[str, Any], name: str, description: str, record: str) -> dict[str, Any]:
    """The wire's exchange request, with the record variant of its channel and this server's limits."""
    out = copy.deepcopy(wire["ExchangeRequest"])
    props = out["properties"]
    props["watermarks"] = _ref("Watermarks")  # the source of the Watermarks component
    props["records"]["items"] = _ref(record)
    props["appSyncableRows"]["items"] = _ref("AppSyncableRowInput")
    props["limit"]["description"] = (f"Page size; {sync_settings.DEFAULT_PAGE_LIMIT} when absent, and at most "
                                     f"{sync_settings.MAX_PAGE_LIMIT} (a larger one is lowered to that).")
    props["countPending"]["description"] = (
        "Extension: ask for `pending` in the response (a count of the backlog; ask once per catch-up).")
    out["title"] = name
    out["description"] = (
        f"{description} At most {sync_settings.MAX_ITEMS_PER_REQUEST} items (records and rows together; "
        f"413 `too_many_items` above) and {sync_settings.MAX_REQUEST_BYTES} bytes (413) per request. "
        "Unknown fields are ignored.")
    return out


def _changes_component() -> dict[str, Any]:
    """The ``sync/changes`` answer, from the msgspec type the Python client decodes it with."""
    from ..client.transport import ChangesAnswer

    (_, components) = msgspec.json.schema_components([ChangesAnswer], ref_template="#/components/schemas/{name}")
    out = dict(components["ChangesAnswer"])
    out["title"] = "Changes"
    out["description"] = ("Whether the owner's data on this channel moved since `cursor` (never what moved), "
                          "and the cursor to wait from next. Unknown fields are ignored.")
    out["example"] = {"changed": True, "cursor": "a0f3c1d2e4b5a69788796a5b4c3d2e1f0"}
    return out


def component_schemas() -> dict[str, Any]:
    """The ``components.schemas`` of the API, with this server's configured limits."""
    wire = json_schema_components()
    rec, ent = wire["SharedRecord"], wire["AppSyncableRow"]
    record_props = _described(rec["properties"], _RECORD_DESCRIPTIONS)
    entry_props = _described(ent["properties"], _ENTRY_DESCRIPTIONS)
    watermarks = wire["ExchangeRequest"]["properties"]["watermarks"]
    response = copy.deepcopy(wire["ExchangeResponse"])
    # The decoder reads a response leniently (absent or null arrays); the server sends every member but
    # the extension ``pending``, never null.
    sent = {name: _as_sent(member) for name, member in response["properties"].items()}
    sent["responderWatermarks"] = _watermarks_ref(sent["responderWatermarks"], watermarks)
    return {
        "HLC": {
            **wire["HLC"],
            "description": "A hybrid logical clock timestamp (PROTOCOL §1), in wire form. Unknown fields are ignored.",
            "example": HLC_EXAMPLE,
        },
        "Watermarks": {
            **watermarks,
            "description": "Per node id (a key of the same shape as `HLC.nodeId`), the highest HLC held.",
            "example": {"nodeA": HLC_EXAMPLE},
        },
        "SharedRecordInput": {
            **rec,
            "title": "SharedRecordInput",
            "description": (
                "A shared record as sent to the Drive channel (PROTOCOL §2). Unknown fields are ignored. "
                "An HLC further ahead of the server's clock than its skew bound is 400 `clock_skew`."),
            "properties": {**record_props,
                           "objectStorageKey": {**record_props["objectStorageKey"], **_DRIVE_RECORD_KEY}},
            "example": _RECORD_EXAMPLE,
        },
        "AnySharedRecordInput": {
            **rec,
            "title": "AnySharedRecordInput",
            "description": (
                "A shared record as sent to `/apps/{app_id}/sync/exchange`: well formed on every channel; "
                f"on `{DRIVE_APP_ID}` its key is also checked as in `SharedRecordInput`, elsewhere it is "
                "ignored."),
            "properties": record_props,
            "example": _RECORD_EXAMPLE,
        },
        "SharedRecord": {
            **rec,
            "description": "A shared record as the server sends it: every field present.",
            "required": list(record_props),
            "properties": record_props,
            "example": _RECORD_EXAMPLE,
        },
        "AppSyncableRowInput": {
            **ent,
            "title": "AppSyncableRowInput",
            "description": (
                "An app row entry as sent (PROTOCOL §2): `insert` needs `row`; `update` needs `row` and "
                "`where`; `delete` needs `where` or `row`. Unknown fields are ignored."
            ),
            "properties": entry_props,
            "example": _ENTRY_EXAMPLE,
        },
        "AppSyncableRow": {
            **ent,
            "description": "An app row entry as the server sends it.",
            "required": list(entry_props),
            "properties": entry_props,
            "example": _ENTRY_EXAMPLE,
        },
        "ExchangeRequest": _exchange_request(
            wire, "ExchangeRequest",
            "One exchange round on the Drive channel (PROTOCOL §4). `records` are applied; `appSyncableRows` "
            "must be well formed and are then ignored.", "SharedRecordInput"),
        "ChannelExchangeRequest": _exchange_request(
            wire, "ChannelExchangeRequest",
            "One exchange round on the channel of the path (PROTOCOL §4). A per-app channel applies "
            "`appSyncableRows` of its own app and registered tables and ignores well-formed `records`. Rows of "
            "another app or an unregistered table "
            + ("halt their node for the round (`UNKNOWN_APP_ROWS` is `halt`)"
               if sync_settings.UNKNOWN_APP_ROWS == "halt" else "are 400 `unknown_app` / `unknown_table`")
            + "; an `insert` without `row.updated_at` is 400; "
            f"`{DRIVE_APP_ID}` is the Drive channel (see `ExchangeRequest`).", "AnySharedRecordInput"),
        "ExchangeResponse": {
            **response,
            "description": "The answer of an exchange round (PROTOCOL §4.2).",
            "required": [name for name in sent if name != "pending"],
            "properties": _described(sent, {
                "hasMore": "True only if items above the requester's watermarks remain.",
                "pending": "Extension: how many such items remain after this page.",
            }),
        },
        "DriveKey": _key_schema(
            DRIVE_KEY_PATTERN,
            "A Drive-channel blob key: `shared/<category>/<shard>/<hash>`, each segment `[A-Za-z0-9_-]+` and "
            "the category `[a-z0-9_-]+`; the last segment is not `presign`. Any other key is 400 `invalid_key`.",
            f"shared/image/{_HASH[:2]}/{_HASH}"),
        "AppKey": _key_schema(
            APP_KEY_PATTERN,
            "A per-app blob key: `apps/<app_id>/syncable/<sub-key>` (one or more segments after `syncable/`). "
            "The app id in the key must be the path's: another app's prefix is 403 `forbidden_key`, any other "
            f"shape 400 `invalid_key`. On `apps/{DRIVE_APP_ID}/` (the Drive channel) a `DriveKey` instead. "
            "On file-system storage an upload whose segment is over 255 bytes is 400, and a key that is a "
            "prefix of another stored key (or extends one) is 409 `key_conflict`.",
            f"apps/notes/syncable/{_HASH}"),
        "PresignRequest": _body(wire, "PresignRequest", {"key": _ref("DriveKey")},
                                {"contentType": "Content-Type the upload will send."}),
        "ConfirmRequest": _body(wire, "ConfirmRequest", {"key": _ref("DriveKey")}),
        "Url": _body(wire, "Url", {"url": {**wire["Url"]["properties"]["url"], "format": "uri"}},
                     {"url": "Short-lived URL for the bytes."}),
        "Ok": _body(wire, "Ok"),
        "Stored": _body(wire, "Stored"),
        "Health": _body(wire, "Health"),
        "Changes": _changes_component(),
        "Binary": {"type": "string", "format": "binary",
                   "description": f"Blob bytes (at most {sync_settings.MAX_BLOB_BYTES} bytes)."},
        "Error": {
            **_body(wire, "Error"),
            "description": "The error body of every 4xx/5xx answer.",
            "example": {"error": {"code": "invalid_request", "message": "watermarks: is required",
                                  "field": "watermarks"}},
        },
        # The server never sends ``field`` empty or null: it is left out.
        "ErrorDetail": _body(wire, "ErrorDetail", {"field": _as_sent(wire["ErrorDetail"]["properties"]["field"])},
                             {"code": "Stable machine code.",
                              "field": "The request field at fault, where there is one."}),
    }


ERROR_DESCRIPTIONS: dict[int, str] = {
    400: ("Bad request; nothing is applied or stored. `invalid_request` (`field` names the culprit), "
          "`invalid_json`, `invalid_key`, `integrity_mismatch` (bytes that do not hash to the key or to "
          "`Content-Digest`), `clock_skew`, `unknown_app` / `unknown_table` (app rows), `incomplete_body` "
          "(shorter than its `Content-Length`)."),
    401: ("No valid credentials: `not_authenticated`, `authentication_failed` (a bad, revoked, expired or "
          "replayed credential). `WWW-Authenticate` names the scheme."),
    403: ("`permission_denied`: the credentials are not valid for this channel; `forbidden_key`: a key under "
          "another app's prefix."),
    404: ("`not_found`: no such route (a malformed app id, key or token matches none), no blob at this key, or "
          "an unknown or expired signed URL; `unknown_app`: no app with this id is registered."),
    409: "`key_conflict`: on file-system storage the key is a prefix of another stored key, or extends one.",
    410: ("`url_used`: this server's signed upload URL was already used once (it is single-use); ask "
          "`files/presign` for a new one."),
    411: ("`length_required`: a signed upload without `Content-Length` (its signature covers the body, which is "
           "read whole before it is stored)."),
    412: "`already_exists`: `If-None-Match: *` was sent and a blob is stored at this key; nothing was written.",
    413: ("`payload_too_large`, `too_many_items`: the body, the number of items or the blob is larger than this "
          "server accepts."),
    414: ("Request-URI too long: answered by the HTTP server in front of the app (gunicorn's "
          "`limit_request_line`, nginx's `large_client_header_buffers`), not by this API, so not with its JSON "
          f"error body. A valid key percent-encodes to at most {MAX_KEY_ENCODED_LENGTH} characters, so with a "
          "limit of 8190 only a request whose key is already invalid (over "
          f"{MAX_KEY_BYTES} bytes) can meet it."),
    415: "`unsupported_media_type`: the body is not sent as `Content-Type: application/json`.",
    429: "`throttled`: rate limited; `Retry-After` says when to retry.",
    503: ("`unverified_capacity`: too many bytes of requests whose signature is not yet checked are being read "
          "(`Retry-After`: a few seconds); `storage_unavailable`: the blob storage failed or is out of reach "
          "(`Retry-After`)."),
    507: ("`quota_exceeded`: the owner's quota is used up; `insufficient_storage`: the server's storage is full. "
          "Nothing was stored."),
}
#: Responses that carry a header, by status.
RESPONSE_HEADERS: dict[str, dict[str, Any]] = {
    "401": {"WWW-Authenticate": {"description": "The expected scheme.", "schema": {"type": "string"}}},
    "429": {"Retry-After": {"description": "Seconds to wait.", "schema": {"type": "integer", "minimum": 1}}},
    "503": {"Retry-After": {"description": "Seconds to wait.", "schema": {"type": "integer", "minimum": 1}}},
}
#: Statuses answered whatever the route, for every request with a key in its path.
PATH_KEY_STATUSES = ("414",)


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
                # One route serves every channel, the Drive one included: its rules are the union.
                _swap_refs(operation, _ref("DriveKey"), _ref("AppKey"))
                _swap_refs(operation, _ref("ExchangeRequest"), _ref("ChannelExchangeRequest"))
            if method == "post" and "requestBody" in operation:
                operation["requestBody"]["required"] = True  # a missing JSON body is a 400
            _add_response_headers(operation)
            if "{key}" in path or "{token}" in path:
                for status in PATH_KEY_STATUSES:
                    operation["responses"].setdefault(status, {"description": ERROR_DESCRIPTIONS[int(status)]})
        if "get" in item and "head" not in item and ("put" in item or path.endswith("/presign")):
            item["head"] = _head_of(item["get"], presign=path.endswith("/presign"))
    return schema


def _add_response_headers(operation: dict[str, Any]) -> None:
    for status, response in operation.get("responses", {}).items():
        if status not in RESPONSE_HEADERS:
            continue
        if response.get("content", {}).get("application/json", {}).get("schema") != _ref("Error"):
            continue  # health's 503 is its own report, sent without Retry-After
        response.setdefault("headers", {}).update(copy.deepcopy(RESPONSE_HEADERS[status]))


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


def _head_of(get: dict[str, Any], *, presign: bool = False) -> dict[str, Any]:
    """``HEAD``: GET's parameters, security and statuses, no bodies (introspection skips HEAD)."""
    head = copy.deepcopy(get)
    head["operationId"] = get["operationId"].removesuffix("_retrieve") + "_head"
    if presign:
        head["summary"] = "Whether a presigned download URL would be given"
        head["description"] = "The answer GET would give, without its body: 200 if the blob is present, else 404."
    else:
        head["summary"] = "Whether a blob is present"
        head["description"] = ("200 with `Content-Type` and `Content-Length` if present, 404 if not; never a "
                               "body.")
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

    def _errors(*codes: int) -> dict[int, Any]:
        # 404 everywhere: a malformed app id, key or token matches no route and gets our JSON 404.
        return {code: OpenApiResponse(_ref("Error"), description=ERROR_DESCRIPTIONS[code])
                for code in sorted({*codes, 404})}

    #: What every authenticated route can answer: a bad request, no or wrong credentials, an unknown app
    #: (404), a rate limit, and 503 (a signed body while too many unverified bytes are being read, or the
    #: blob storage out of reach).
    _AUTHENTICATED = (400, 401, 403, 404, 429, 503)

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
                    "that does not match is refused whole with 400 naming the field; nothing is applied. "
                    "Items beyond the owner's record quota are 507, nothing applied."),
                request={"application/json": _ref("ExchangeRequest")},
                responses={200: OpenApiResponse(_ref("ExchangeResponse"), description="The answer."),
                           **_errors(*_AUTHENTICATED, 413, 415, 507)},
                examples=[*_EXCHANGE_REQUEST_EXAMPLES, _EXCHANGE_RESPONSE_EXAMPLE],
            ))

    class FileViewSchema(OpenApiViewExtension):
        target_class = views.FileView
        match_subclasses = True

        def view_replacement(self) -> type[APIView]:
            common = {"tags": ["files"]}
            return _documented(
                self.target,
                get=dict(common, summary="Download a blob",
                         description=("The bytes, with the Content-Type they were stored with (any media type; "
                                      "`application/octet-stream` when none was given)."),
                         responses={(200, "*/*"): OpenApiResponse(
                             _ref("Binary"), description="The bytes."),
                             **_errors(*_AUTHENTICATED)}),
                put=dict(common, summary="Upload a blob",
                         description=(
                             "Stores the body under the caller's owner; its Content-Type (any media type, at "
                             "most 255 characters, no control characters) is kept. When the key "
                             "ends in a sha256 (64 hex digits) the bytes must hash to it, or nothing is stored. "
                             "`If-None-Match: *` stores only if the key is absent (else 412); "
                             "`Content-Digest: sha-256=:<base64>:` is checked too (400 on a mismatch). "
                             "A signed upload needs `Content-Length` (411)."),
                         request={"application/octet-stream": _ref("Binary")},
                         responses={201: OpenApiResponse(_ref("Stored"), description="Stored."),
                                    **_errors(*_AUTHENTICATED, 409, 411, 412, 413, 507)}),
                delete=dict(common, summary="Delete a blob",
                            responses={204: OpenApiResponse(description="Removed (or was absent)."),
                                       **_errors(*_AUTHENTICATED)}),
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
                           **_errors(*_AUTHENTICATED, 413)},
            ))

    class PresignGetViewSchema(OpenApiViewExtension):
        target_class = views.PresignGetView
        match_subclasses = True
        priority = 1  # when it is a FileView subclass: this extension, not FileView's

        def view_replacement(self) -> type[APIView]:
            get = dict(
                tags=["files"], summary="A URL to download a blob from directly",
                description="No key ends with `/presign`, so this route is never a file's.",
                responses={200: OpenApiResponse(_ref("Url"), description="Where to GET the bytes."),
                           **_errors(*_AUTHENTICATED)},
            )
            # Inherited PUT/DELETE handlers (a FileView subclass) are not presign operations.
            hidden = {m: dict(exclude=True) for m in ("put", "delete") if hasattr(self.target, m)}
            return _documented(self.target, get=get, **hidden)

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
                           **_errors(*_AUTHENTICATED, 413)},
            ))

    class DirectBlobViewSchema(OpenApiViewExtension):
        target_class = views.DirectBlobView
        match_subclasses = True

        def view_replacement(self) -> type[APIView]:
            common = {"tags": ["files"]}
            return _documented(
                self.target,
                get=dict(common, summary="Download through a signed URL",
                         description="The token in the path is the credential.",
                         responses={(200, "*/*"): OpenApiResponse(
                             _ref("Binary"), description="The bytes."), **_errors(404, 429, 503)}),
                put=dict(common, summary="Upload through a signed URL",
                         description=(
                             "The token in the path is the credential; it is good for one PUT (a second is 410, "
                             "whatever became of the first)."),
                         request={"application/octet-stream": _ref("Binary")},
                         responses={201: OpenApiResponse(_ref("Ok"), description="Stored."),
                                    **_errors(400, 409, 410, 412, 413, 429, 503, 507)}),
            )

    class ChangesViewSchema(OpenApiViewExtension):
        target_class = ChangesView
        match_subclasses = True

        def view_replacement(self) -> type[APIView]:
            return _documented(self.target, get=dict(
                tags=["sync"], summary="Wait until the channel changes (live changes)",
                description=(
                    "PROTOCOL §7d. Without `cursor`: at once, `changed: false` and the current cursor. With "
                    "one: at once with `changed: true` and the new cursor if the owner's data on this channel "
                    "moved since it, else held until it moves or `timeout` seconds pass (capped at "
                    f"{sync_settings.LIVE_MAX_TIMEOUT}), then `changed: false` and the same cursor. The answer "
                    "never says what changed. Authenticated and scoped like `sync/exchange` (an app signature "
                    "covers the empty body; the query string is not signed). 429 `throttled` also when "
                    f"{sync_settings.LIVE_MAX_WAITERS_PER_OWNER} requests of the owner already wait."),
                parameters=[
                    OpenApiParameter("cursor", str, OpenApiParameter.QUERY, required=False,
                                     description="A cursor this server answered before (empty: none)."),
                    OpenApiParameter("timeout", {"type": "number", "minimum": 0}, OpenApiParameter.QUERY,
                                     required=False,
                                     description=("Seconds to hold the request, 0 or more (default and cap: "
                                                  f"{sync_settings.LIVE_MAX_TIMEOUT}); anything else is 400.")),
                ],
                responses={200: OpenApiResponse(_ref("Changes"), description="Moved, or not (after the wait)."),
                           **_errors(400, 401, 403, 404, 429)},
            ))

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
            "(§8). Errors are `{\"error\": {\"code\", \"message\", \"field\"?}}`. A method a path does not "
            "list is 405 `method_not_allowed` with that body and an `Allow` header (OPTIONS answers DRF's "
            "description of the view, after authentication). Blob keys: at most "
            f"{MAX_KEY_BYTES} bytes in UTF-8 (see `DriveKey`, `AppKey`); a request line over the front "
            "server's limit is 414 from that server."),
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

    class SchemaView(ProtocolErrors, SpectacularAPIView):
        """``GET schema``: this API's OpenAPI 3 schema as JSON (no credentials needed)."""

        renderer_classes = [OpenApiJsonRenderer2]  # application/json, errors included
        authentication_classes: list[Any] = []
        permission_classes: list[Any] = []
        throttle_classes = [HealthRateThrottle]  # generation costs more than a health check
        generator_class = StarkeepSchemaGenerator
        serve_public = True
        urlconf = None
        patterns = None

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

    class SchemaView(ProtocolErrors, APIView):  # type: ignore[no-redef]
        """``GET schema`` without drf-spectacular installed: 404 with our error body."""

        authentication_classes: list[Any] = []
        permission_classes: list[Any] = []
        renderer_classes = [JSONRenderer]
        throttle_classes = [HealthRateThrottle]

        def get(self, request: Request, *args: Any, **kwargs: Any) -> Response:
            exc = SyncAPIException(
                "The OpenAPI schema needs drf-spectacular (pip install 'django-starkeep-sync[openapi]').",
                code="not_found")
            exc.status_code = 404
            raise exc
