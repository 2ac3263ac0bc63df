"""DRF views: the exchange round, blob routes, presigned URLs, health.

The exchange view runs the core's :class:`~starkeep_sync.core.responder.SyncResponder`
with ORM adapters scoped to the caller's owner and channel; the in-process
transport runs the same class with memory adapters.
"""

from __future__ import annotations

import hashlib
import hmac as _hmac
import logging
from collections.abc import Callable
from contextlib import AbstractContextManager, nullcontext
from typing import Any, TypeVar

from django.contrib.auth import get_user_model
from django.core import signing
from django.core.cache import caches
from django.db import transaction
from django.http import FileResponse, HttpResponse
from django.urls import reverse
from rest_framework import authentication, status
from rest_framework.exceptions import UnsupportedMediaType
from rest_framework.request import Request
from rest_framework.views import APIView

from ..adapters.orm import OrmAppSource, OrmDatabaseAdapter, synced_db
from ..adapters.storage import DjangoObjectStorage, get_blob_storage
from ..conf import sync_settings
from ..core.blobs import CHUNK_SIZE
from ..core.constants import DRIVE_APP_ID, LOGGER_NAME
from ..core.exceptions import BlobIntegrityError, SyncError
from ..core.hlc import HLCClock
from ..core.keys import expected_sha256, validate_key
from ..core.responder import ExchangeReport, SyncResponder
from ..core.wire import (
    ConfirmRequestWire,
    HealthWire,
    MalformedJSONError,
    OkWire,
    PresignRequestWire,
    StoredWire,
    UrlWire,
    decode_body,
    decode_request,
    encode_json,
    encode_response,
)
from ..models import AppNamespace, ChannelActivity
from ..signals import notify_blob_stored, notify_records_applied, notify_rows_applied
from .authentication import Principal, channel_of
from .bodies import read_body
from .exceptions import (
    BlobNotFound,
    InvalidRequest,
    ProtocolErrors,
    RouteNotFound,
    SyncAPIException,
    UnknownChannel,
)
from .permissions import ChannelAllowed, HasPrincipal
from .quotas import check_record_quota
from .throttling import ExchangeRateThrottle, FilesRateThrottle, HealthRateThrottle
from .uploads import checked_content_type, store_upload

logger = logging.getLogger(LOGGER_NAME)

DIRECT_SALT = "starkeep_sync.direct"


class SyncAPIView(ProtocolErrors, APIView):
    """Base: our authentication, channel permissions and JSON error body."""

    permission_classes = [HasPrincipal, ChannelAllowed]
    parser_classes: list[Any] = []  # bodies are read raw, with our own size limit
    throttle_classes = [FilesRateThrottle]

    def get_authenticators(self) -> list[Any]:
        return [cls() for cls in sync_settings.AUTHENTICATION_CLASSES]

    def channel(self) -> str:
        return channel_of(self.request)

    def owner(self) -> Any:
        principal = self.request.auth
        assert isinstance(principal, Principal)
        return principal.owner

    #: Whether ``initial`` refuses an unregistered app's channel (404 ``unknown_app``).
    check_channel = True

    def initial(self, request: Request, *args: Any, **kwargs: Any) -> None:
        super().initial(request, *args, **kwargs)  # authentication, permissions, throttles
        if self.check_channel:
            self.ensure_channel_exists()

    def ensure_channel_exists(self) -> None:
        channel = self.channel()
        if channel != DRIVE_APP_ID and not AppNamespace.objects.filter(app_id=channel).exists():
            raise UnknownChannel(f"App {channel!r} is not registered on this server.")


def json_response(data: Any, status_code: int = 200) -> HttpResponse:
    return HttpResponse(encode_json(data), status=status_code, content_type="application/json")


class ExchangeView(SyncAPIView):
    """``POST sync/exchange``: one exchange round, answered by the core responder."""

    throttle_classes = [ExchangeRateThrottle]
    check_channel = False  # checked through the responder's namespace store, which it reuses

    def post(self, request: Request, app_id: str | None = None) -> HttpResponse:
        responder = build_responder(self.owner(), self.channel())
        app_source = responder.channel.app_source
        if app_source is not None and app_source.namespaces.get(self.channel()) is None:
            # Through the responder's own (caching) namespace store: one lookup per request.
            raise UnknownChannel(f"App {self.channel()!r} is not registered on this server.")
        if request.content_type.split(";", 1)[0].strip().lower() != "application/json":
            raise UnsupportedMediaType(request.content_type or "(none)")
        exchange = _decoded(decode_request, read_body(request))
        items = len(exchange.records) + len(exchange.app_syncable_rows)
        check_record_quota(self.owner().pk, self.channel() == DRIVE_APP_ID, self.channel(), exchange)
        report = ExchangeReport()
        with _one_write_transaction(items):
            try:
                response, report = responder.handle(exchange, report)
                if report.refused:
                    logger.info("exchange for owner %s on %s: %d item(s) refused", self.owner().pk,
                                self.channel(), len(report.refused))
                record_activity(self.owner(), self.channel(), report)
            finally:
                # Even when answering failed: on PostgreSQL what was applied is committed already.
                # Registered inside the write transaction (SQLite, ATOMIC_REQUESTS), the signals
                # are dropped with it if it rolls back.
                announce_exchange(request, self.owner(), self.channel(), report)
        answer = HttpResponse(encode_response(response), content_type="application/json")
        # Freeing a request's thousands of records took ~2 ms of a 1,000-record push. Held by the
        # response, they go when the server drops it, after the body is sent, while the device is reading it.
        answer._starkeep_request = exchange  # type: ignore[attr-defined]
        return answer


#: How many leading characters of a device token ``DeviceToken.issue`` keeps as its ``hint``.
_TOKEN_HINT_LENGTH = 10


def credential_of(request: Request) -> str | None:
    """Which credential sent a request, for signals: an app secret's key id, or a device token's hint."""
    principal = request.auth
    if not isinstance(principal, Principal):
        return None
    if principal.key_id:
        return principal.key_id
    if principal.scheme == "token":
        # The hint is what ``starkeep_token list`` shows; the token itself never leaves this function.
        parts = authentication.get_authorization_header(request).split()
        if len(parts) == 2:
            return parts[1][:_TOKEN_HINT_LENGTH].decode("ascii", "replace")
    return None


def announce_exchange(request: Request, owner: Any, channel: str, report: ExchangeReport) -> None:
    """``records_applied`` / ``rows_applied`` for what the exchange stored, after its commit."""
    who = {"source": "exchange", "principal": request.auth, "credential": credential_of(request)}
    notify_records_applied(owner, report.applied_record_ids, report.applied_nodes, **who)
    notify_rows_applied(owner, channel, [(table, pk) for _, table, pk in report.applied_rows],
                        report.applied_nodes, **who)


def _one_write_transaction(items: int) -> AbstractContextManager[object]:
    """On SQLite, a request that writes is one transaction: its items, its answer and its activity count.

    SQLite has one writer at a time anyway, and each commit there costs several
    fsyncs; the counter's own commit was a tenth of a push. For shared records
    the first statement is then the write itself, so the transaction never has
    to upgrade a read lock (which SQLite refuses when another writer waits); app
    rows read their stored rows first, as they did in their own transaction
    before. The answer read inside it is one snapshot, as ``read_snapshot``
    wants. A round that only reads keeps its read-only snapshot, and its counter
    commits on its own. PostgreSQL keeps
    separate transactions: its snapshot must be REPEATABLE READ from the start
    (see ``read_snapshot``), and the counter there does not wait for its flush.
    """
    db = synced_db()
    if items and db.vendor == "sqlite" and not db.in_atomic_block:
        return transaction.atomic(using=db.alias)
    return nullcontext()


def record_activity(owner: Any, channel: str, report: ExchangeReport) -> None:
    """Count the exchange and keep its first refusal, for ``starkeep_status`` and the admin."""
    refusal = None
    if report.refused:
        first = report.refused[0]
        refusal = f"{first.item} from node {first.node}: {first.reason}"
    ChannelActivity.objects.count_exchange(owner, channel, refusal)


def build_responder(owner: Any, channel: str) -> SyncResponder:
    """The core responder for ``owner`` on ``channel``, with this server's request policy."""
    common = {
        "clock": HLCClock(sync_settings.NODE_ID, max_skew_ms=sync_settings.MAX_CLOCK_SKEW_MS),
        "storage": DjangoObjectStorage(owner),
        "default_limit": sync_settings.DEFAULT_PAGE_LIMIT,
        "max_limit": sync_settings.MAX_PAGE_LIMIT,
        "max_items": sync_settings.MAX_ITEMS_PER_REQUEST,
        "unknown_rows": sync_settings.UNKNOWN_APP_ROWS,
        "count_pending": sync_settings.COUNT_PENDING,
    }
    if channel == DRIVE_APP_ID:
        return SyncResponder(database=OrmDatabaseAdapter(owner), sync_shared_records=True, **common)
    return SyncResponder(
        database=None, app_source=OrmAppSource(owner), sync_shared_records=False, app_id=channel, **common
    )


def _stream_size(stream: Any, storage: DjangoObjectStorage, key: str) -> int:
    """The length of an opened blob: from the stream itself (a file's size, an S3 body's
    ContentLength) when it knows, else from storage (on S3, one more request)."""
    size = getattr(stream, "size", None)
    return size if isinstance(size, int) else storage.size(key)


class FileView(SyncAPIView):
    """``HEAD/GET/PUT/DELETE files/<key>`` within the caller's owner prefix."""

    streams_body = True

    def _storage(self, key: str) -> DjangoObjectStorage:
        validate_key(key, self.channel())
        return DjangoObjectStorage(self.owner())

    def head(self, request: Request, key: str, app_id: str | None = None) -> HttpResponse:
        storage = self._storage(key)
        if not storage.has(key):
            return HttpResponse(status=404)
        response = HttpResponse(status=200, content_type=storage.content_type(key) or "application/octet-stream")
        response["Content-Length"] = str(storage.size(key))
        return response

    def get(self, request: Request, key: str, app_id: str | None = None) -> HttpResponse:
        storage = self._storage(key)
        stream = storage.open(key)
        if stream is None:
            raise BlobNotFound()
        response = FileResponse(stream, content_type=storage.content_type(key) or "application/octet-stream")
        response["Content-Length"] = str(_stream_size(stream, storage, key))
        return response

    def put(self, request: Request, key: str, app_id: str | None = None) -> HttpResponse:
        storage = self._storage(key)
        principal = request.auth if isinstance(request.auth, Principal) else None
        size, content_type = store_upload(request, storage, key, request.content_type)
        notify_blob_stored(self.owner(), self.channel(), key, size, content_type, source="upload",
                           principal=principal, credential=credential_of(request))
        return json_response(StoredWire(True, key), status_code=status.HTTP_201_CREATED)

    def delete(self, request: Request, key: str, app_id: str | None = None) -> HttpResponse:
        storage = self._storage(key)
        storage.delete(key)
        return HttpResponse(status=204)


T = TypeVar("T")


def _decoded(decode: Callable[[bytes], T], body: bytes) -> T:
    """A JSON body decoded; 400 ``invalid_json`` when it is not JSON, 400 naming the member that breaks a rule."""
    try:
        return decode(body)
    except MalformedJSONError:
        raise InvalidRequest("Body is not valid JSON.", code="invalid_json", field="body") from None


def _json_body(request: Request, type_: type[T]) -> T:
    return _decoded(lambda body: decode_body(body, type_), read_body(request) or b"{}")


def direct_url(request: Request, owner: Any, key: str, method: str, content_type: str | None = None) -> str:
    token = signing.dumps({"o": owner.pk, "k": key, "m": method, "c": content_type}, salt=DIRECT_SALT)
    match = request._request.resolver_match
    name = f"{match.namespace}:direct" if match and match.namespace else "direct"
    return request.build_absolute_uri(reverse(name, kwargs={"token": token}))


class PresignPutView(SyncAPIView):
    """``POST files/presign {key, contentType?}``: a URL to PUT the bytes to directly."""

    def post(self, request: Request, app_id: str | None = None) -> HttpResponse:
        body = _json_body(request, PresignRequestWire)
        key = body.key
        validate_key(key, self.channel())
        content_type = checked_content_type(body.content_type, "contentType")
        storage = DjangoObjectStorage(self.owner())
        url = (storage.url(key, method="PUT", content_type=content_type if isinstance(content_type, str) else None)
               or direct_url(request, self.owner(), key, "PUT", content_type))
        return json_response(UrlWire(url))


class PresignGetView(SyncAPIView):
    """``GET files/<key>/presign``: a URL to GET the bytes directly; 404 when absent.

    No key ends with ``/presign`` (a reserved segment), so this route is never a
    file's: PUT and DELETE here are 405.
    """

    def get(self, request: Request, key: str, app_id: str | None = None) -> HttpResponse:
        validate_key(key, self.channel())
        storage = DjangoObjectStorage(self.owner())
        if not storage.has(key):
            raise BlobNotFound()
        url = storage.url(key, method="GET") or direct_url(request, self.owner(), key, "GET")
        return json_response(UrlWire(url))

    def head(self, request: Request, key: str, app_id: str | None = None) -> HttpResponse:
        return self.get(request, key, app_id)  # HEAD mirrors GET, here the presign


class ConfirmView(SyncAPIView):
    """``POST files/confirm {key}``: ``{"ok": true}`` once the blob is present and hash-correct."""

    def post(self, request: Request, app_id: str | None = None) -> HttpResponse:
        key = _json_body(request, ConfirmRequestWire).key
        validate_key(key, self.channel())
        storage = DjangoObjectStorage(self.owner())
        stream = storage.open(key)
        if stream is None:
            raise BlobNotFound()
        expected = expected_sha256(None, key)
        digest = hashlib.sha256()
        size = 0
        try:
            while chunk := stream.read(CHUNK_SIZE):
                digest.update(chunk)
                size += len(chunk)
        finally:
            stream.close()
        if expected is not None and not _hmac.compare_digest(digest.hexdigest(), expected):
            storage.delete(key)  # bytes uploaded directly that do not match their key
            raise BlobIntegrityError(f"blob at {key!r} does not hash to its key; removed")
        from ..models import Blob

        defaults: dict[str, Any] = {"size_bytes": size, "sha256": digest.hexdigest()}
        # Bytes PUT straight to S3 never passed through put(): the Content-Type is on the
        # object (signed into the presigned URL), so keep it, or GET/HEAD would lose it.
        stored_type = getattr(stream, "content_type", None)
        if stored_type:
            defaults["content_type"] = stored_type
        known = Blob.objects.filter(owner_id=storage.owner_id, key=key).values_list("sha256", "size_bytes").first()
        blob, _ = Blob.objects.update_or_create(owner_id=storage.owner_id, key=key, defaults=defaults)
        if known != (digest.hexdigest(), size):
            # Bytes this server had not stored itself (a PUT straight to S3): announce them here.
            # Bytes that came through PUT files/<key> or a signed URL of this server were announced then.
            notify_blob_stored(self.owner(), self.channel(), key, size, blob.content_type or None, source="confirm",
                               principal=request.auth, credential=credential_of(request))
        return json_response(OkWire(True))


class UrlAlreadyUsed(SyncAPIException):
    status_code = status.HTTP_410_GONE
    default_detail = "This upload URL was already used; ask for a new one with POST files/presign."
    default_code = "url_used"


class DirectBlobView(ProtocolErrors, APIView):
    """The target of this server's own signed URLs (file-system storage): the token is the credential."""

    authentication_classes: list[Any] = []
    permission_classes: list[Any] = []
    parser_classes: list[Any] = []
    throttle_classes = [FilesRateThrottle]

    def _claims(self, token: str, method: str) -> dict[str, Any]:
        try:
            claims = signing.loads(token, salt=DIRECT_SALT, max_age=sync_settings.PRESIGN_EXPIRES_SECONDS)
        except signing.BadSignature:
            raise BlobNotFound("Unknown or expired URL.") from None
        if claims.get("m") != method:
            raise BlobNotFound("This URL is not valid for this method.")
        return claims

    def _storage(self, claims: dict[str, Any]) -> DjangoObjectStorage:
        return DjangoObjectStorage(int(claims["o"]))

    def get(self, request: Request, token: str) -> HttpResponse:
        claims = self._claims(token, "GET")
        storage = self._storage(claims)
        stream = storage.open(claims["k"])
        if stream is None:
            raise BlobNotFound()
        response = FileResponse(stream, content_type=storage.content_type(claims["k"]) or "application/octet-stream")
        response["Content-Length"] = str(_stream_size(stream, storage, claims["k"]))
        return response

    def put(self, request: Request, token: str) -> HttpResponse:
        claims = self._claims(token, "PUT")
        # Single use: a URL that leaked (a log, a proxy) cannot overwrite the blob again until it expires.
        used = f"starkeep_sync:direct-put:{hashlib.sha256(token.encode()).hexdigest()}"
        cache = caches[sync_settings.REPLAY_CACHE_ALIAS]
        if not cache.add(used, 1, timeout=sync_settings.PRESIGN_EXPIRES_SECONDS + 5):
            raise UrlAlreadyUsed()
        storage = self._storage(claims)
        key = claims["k"]
        try:
            size, content_type = store_upload(request, storage, key, claims.get("c") or request.content_type)
        except BaseException:
            cache.delete(used)  # nothing was stored: the client may try again with the same URL
            raise
        owner = get_user_model()._default_manager.filter(pk=storage.owner_id).first()
        if owner is not None:
            parts = key.split("/")
            channel = parts[1] if parts[0] == "apps" and len(parts) > 1 else DRIVE_APP_ID
            notify_blob_stored(owner, channel, key, size, content_type, source="presigned")
        return json_response(OkWire(True), status_code=201)


class HealthView(ProtocolErrors, APIView):
    """``GET health``: database and storage reachability. No credentials needed."""

    authentication_classes: list[Any] = []
    permission_classes: list[Any] = []
    throttle_classes = [HealthRateThrottle]

    def get(self, request: Request, app_id: str | None = None) -> HttpResponse:
        db_ok = storage_ok = True
        try:
            with synced_db().cursor() as cur:
                cur.execute("SELECT 1")
        except Exception:
            logger.exception("health: database unreachable")
            db_ok = False
        try:
            get_blob_storage().exists(f"{sync_settings.STORAGE_PREFIX}/.health")
        except Exception:
            logger.exception("health: storage unreachable")
            storage_ok = False
        ok = db_ok and storage_ok
        return json_response(HealthWire("ok" if ok else "degraded", db_ok, storage_ok), status_code=200 if ok else 503)


class NoRouteView(ProtocolErrors, APIView):
    """Whatever no route matches under our prefixes: a JSON 404 for every method, not the project's HTML page."""

    schema = None  # not an operation of the OpenAPI schema
    authentication_classes: list[Any] = []
    permission_classes: list[Any] = []
    throttle_classes = [HealthRateThrottle]

    def http_method_not_allowed(self, request: Request, *args: Any, **kwargs: Any) -> HttpResponse:
        raise RouteNotFound()

    options = http_method_not_allowed


__all__ = [
    "ConfirmView",
    "DirectBlobView",
    "ExchangeView",
    "FileView",
    "HealthView",
    "NoRouteView",
    "PresignGetView",
    "PresignPutView",
    "SyncError",
]
