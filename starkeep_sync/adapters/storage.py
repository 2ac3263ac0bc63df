"""Blob storage over Django's storage API (file system, django-storages S3, ...).

Every key lives under ``<STORAGE_PREFIX>/<owner pk>/`` so owners never share
bytes. Writes go to a temporary file first (next to the blob on a file system,
then renamed over it), so a stream that fails (integrity mismatch, dropped
connection) stores nothing, and memory stays bounded whatever the blob size.

A storage that fails (a full disk, a lost mount, S3 out of reach) raises
:class:`StorageFull` or :class:`StorageUnavailable`, which the API answers
with 507 or 503 and the protocol's JSON error body, never a bare 500.
"""

from __future__ import annotations

import contextlib
import errno
import hashlib
import logging
import os
import tempfile
from collections.abc import Iterator
from typing import IO, Any

from django.core.exceptions import SuspiciousFileOperation
from django.core.files import File
from django.core.files.storage import FileSystemStorage, Storage, storages
from django.db import connections, router

from ..conf import sync_settings
from ..core.blobs import CHUNK_SIZE, PipelinedSha256
from ..core.constants import LOGGER_NAME
from ..core.exceptions import BlobIntegrityError, InvalidKeyError, SyncError
from ..core.keys import check_key_syntax, expected_sha256
from ..core.protocols import StoredObject
from ..models import Blob


class _SpooledUpload(File):
    """A finished temporary file; FileSystemStorage moves it into place (atomic rename)."""

    def __init__(self, path: str, content_type: str | None) -> None:
        super().__init__(open(path, "rb"), name=os.path.basename(path))
        self._path = path
        self.content_type = content_type

    def temporary_file_path(self) -> str:
        return self._path


logger = logging.getLogger(LOGGER_NAME)

#: Prefix of the temporary files an upload is written to next to its blob (see ``starkeep_sync_sweep_uploads``).
UPLOAD_TEMP_PREFIX = ".upload-"

#: Seconds a client is asked to wait (``Retry-After``) when the blob storage is out of reach.
STORAGE_RETRY_AFTER_SECONDS = 30


class BlobTooLarge(BlobIntegrityError):
    """More bytes arrived than the size limit (or remaining quota) allows; nothing stored."""

    code = "payload_too_large"
    status = 413


class StorageFull(SyncError):
    """The blob storage has no room left (ENOSPC, EDQUOT); nothing of the blob is kept."""

    code = "insufficient_storage"
    status = 507


class StorageUnavailable(SyncError):
    """The blob storage failed or is out of reach (an I/O error, S3 unreachable); worth retrying later."""

    code = "storage_unavailable"
    status = 503
    retry_after = STORAGE_RETRY_AFTER_SECONDS


_FULL = frozenset({errno.ENOSPC, errno.EDQUOT})


def _s3_outage_types() -> tuple[type[BaseException], ...]:
    try:
        from botocore.exceptions import ConnectionError as BotoConnectionError
        from botocore.exceptions import HTTPClientError
    except ImportError:  # no S3 extra installed: no S3 errors to expect
        return ()
    return (BotoConnectionError, HTTPClientError)


def storage_fault(err: BaseException) -> SyncError | None:
    """The API error for a failure of the blob storage itself, or ``None`` if ``err`` is not one."""
    if isinstance(err, (SyncError, FileNotFoundError)):
        return None  # our own errors, and "not there" (a race with a delete), keep their meaning
    if isinstance(err, OSError) and err.errno in _FULL:
        return StorageFull("The server's blob storage is full; nothing of this blob was stored. "
                           "Its operator has to free space or raise the storage quota.")
    if isinstance(err, (OSError, *_s3_outage_types())) or _s3_status(err) >= 500:
        return StorageUnavailable(f"The server's blob storage is unavailable ({type(err).__name__}); "
                                  "nothing of this blob was stored. Try again later.")
    return None


def _s3_status(err: BaseException) -> int:
    """The HTTP status of a botocore ``ClientError`` (S3 answered 500/503 SlowDown, ...), else 0."""
    response = getattr(err, "response", None)
    if not isinstance(response, dict):
        return 0
    status = response.get("ResponseMetadata", {}).get("HTTPStatusCode")
    return status if isinstance(status, int) else 0


#: What a file system answers for a name that holds no blob: absent, a directory, under a file, too long.
_ABSENT_ERRNOS = frozenset({errno.ENOENT, errno.EISDIR, errno.ENOTDIR, errno.ENAMETOOLONG})


@contextlib.contextmanager
def _storage_faults(action: str) -> Iterator[None]:
    """Turn a failure of the storage (not of the request) into :class:`StorageFull` / :class:`StorageUnavailable`.

    The original error goes to the log with its traceback, for the operator;
    the client gets the short message.
    """
    try:
        yield
    except Exception as err:
        fault = storage_fault(err)
        if fault is None:
            raise
        logger.error("blob storage failed while %s: %s", action, err, exc_info=True)
        raise fault from err


def _copy_hashing(data: bytes | IO[bytes], out: IO[bytes], max_bytes: int | None) -> tuple[str, int]:
    """Write ``data`` to ``out`` in ``CHUNK_SIZE`` pieces, hashing each once; ``(sha256, size)``.

    The hash runs on a helper thread while the next piece is read and written.
    """
    if isinstance(data, (bytes, bytearray, memoryview)):
        digest = hashlib.sha256()
        size = len(data)
        if max_bytes is not None and size > max_bytes:
            raise BlobTooLarge(f"blob is larger than {max_bytes} bytes")
        digest.update(data)
        with _storage_faults("writing a blob"):
            out.write(data)
        return digest.hexdigest(), size
    pipelined = PipelinedSha256()
    try:
        size = 0
        while chunk := data.read(CHUNK_SIZE):
            size += len(chunk)
            if max_bytes is not None and size > max_bytes:
                raise BlobTooLarge(f"blob is larger than {max_bytes} bytes")
            pipelined.update(chunk)
            # Only the write is the storage's: a failing read is the client's body, not a storage fault.
            with _storage_faults("writing a blob"):
                out.write(chunk)
        return pipelined.hexdigest(), size
    finally:
        pipelined.close()


def get_blob_storage() -> Storage:
    return storages[sync_settings.STORAGE_ALIAS]


class DjangoObjectStorage:
    """The core's ``ObjectStorage`` for one owner over a Django storage."""

    def __init__(self, owner: Any, storage: Storage | None = None, prefix: str | None = None) -> None:
        self.owner_id = owner.pk if hasattr(owner, "pk") else int(owner)
        self.storage = storage if storage is not None else get_blob_storage()
        base = sync_settings.STORAGE_PREFIX if prefix is None else prefix
        self.prefix = f"{base.strip('/')}/{self.owner_id}/" if base else f"{self.owner_id}/"

    def name_for(self, key: str) -> str:
        check_key_syntax(key)
        return self.prefix + key

    def _fs_problem(self, name: str) -> tuple[str, int] | None:
        """Why ``name`` cannot be a blob on a file-system backend, with the status to answer, else ``None``.

        Object stores hold ``a/b`` and ``a/b/c`` side by side and take long segments; a
        file system cannot (``b`` would be a file and a directory) nor does it take a
        segment over 255 bytes, and its errors would otherwise be a 500.
        """
        try:
            path = self.storage.path(name)
        except NotImplementedError:
            return None  # no local paths: an object store
        parts = name.split("/")
        if any(len(part.encode()) > 255 for part in parts):
            return "has a segment longer than 255 bytes", 400
        if os.path.isdir(path):
            return "is the prefix of other keys", 409
        for i in range(len(self.prefix.rstrip("/").split("/")) + 1, len(parts)):
            if os.path.isfile(self.storage.path("/".join(parts[:i]))):
                return "extends another key", 409
        return None

    def put(self, key: str, data: bytes | IO[bytes], content_type: str | None = None,
            *, max_bytes: int | None = None, sha256: str | None = None) -> str:
        """Store ``data``; returns the sha256 of what was stored.

        The bytes are hashed once, on their way to a temporary file; with ``sha256``
        given, a mismatch raises :class:`BlobIntegrityError` and nothing is kept, and
        more than ``max_bytes`` raises :class:`BlobTooLarge`. On a file-system storage
        the temporary file sits next to the blob and is renamed over it (atomic, so
        readers never see the key missing or half written); elsewhere it is uploaded
        from disk, so memory stays bounded whatever the blob size.
        """
        name = self.name_for(key)
        problem = self._fs_problem(name)
        if problem:
            reason, status = problem
            raise InvalidKeyError(f"key {key[:100]!r} {reason} on this server's file storage",
                                  code="key_conflict" if status == 409 else "invalid_key", status=status)
        s3 = self._s3_stream_location(name)
        final = self._local_path(name) if s3 is None else None
        with _storage_faults("making room for a blob"):
            if final is not None:
                self._make_parent(final)
            fd, path = tempfile.mkstemp(prefix=UPLOAD_TEMP_PREFIX if final else "starkeep-",
                                        dir=os.path.dirname(final) if final else None)
        try:
            tmp = os.fdopen(fd, "wb")
            try:
                hexdigest, size = _copy_hashing(data, tmp, max_bytes)
                with _storage_faults("writing a blob"):
                    tmp.close()  # flushes the last bytes: a full disk may only show here
            finally:
                if not tmp.closed:
                    with contextlib.suppress(OSError):  # already failing; that error is the one to report
                        tmp.close()
            if sha256 is not None and hexdigest != sha256.lower():
                raise BlobIntegrityError(f"blob bytes hash to {hexdigest}, expected {sha256.lower()}; nothing stored")
            with _storage_faults("storing a blob"):
                if final is not None:
                    mode = self.storage.file_permissions_mode  # type: ignore[attr-defined]
                    if mode is not None:
                        os.chmod(path, mode)
                    os.replace(path, final)
                else:
                    self._save_spooled(name, key, path, content_type, hexdigest, size)
        finally:
            # Gone already once renamed into place; a file that cannot be removed is left to the sweep command.
            with contextlib.suppress(OSError):
                os.unlink(path)
        Blob.objects.record(self.owner_id, key, content_type or "", size, hexdigest)
        return hexdigest

    def _local_path(self, name: str) -> str | None:
        """The file a plain ``FileSystemStorage`` keeps ``name`` in, else ``None`` (go through ``save``)."""
        # A subclass that changes how files are written (encryption, ...) goes through save().
        if not isinstance(self.storage, FileSystemStorage) or type(self.storage)._save is not FileSystemStorage._save:
            return None
        try:
            return self.storage.path(name)
        except (NotImplementedError, SuspiciousFileOperation):
            return None

    def _make_parent(self, path: str) -> None:
        parent = os.path.dirname(path)
        mode = self.storage.directory_permissions_mode  # type: ignore[attr-defined]
        if mode is None:
            os.makedirs(parent, exist_ok=True)
            return
        # As FileSystemStorage.save() does: the configured mode, not the umask, decides.
        old_umask = os.umask(0)
        try:
            os.makedirs(parent, mode, exist_ok=True)
        finally:
            os.umask(old_umask)

    def _save_spooled(self, name: str, key: str, path: str, content_type: str | None, hexdigest: str,
                      size: int) -> None:
        """Hand a finished temporary file to an S3 or other non-local storage."""
        upload = _SpooledUpload(path, content_type)
        try:
            if self._s3_stream_location(name) is not None:
                saved = self._upload_to_s3(name, upload)
            elif self._holds_same(name, key, hexdigest, size):
                # A hash-named key already stored with these very bytes (devices pushing
                # the same blob at once, a retry): keep that copy. Replacing it (delete,
                # then save) leaves a moment without the blob, in which concurrent
                # HEAD/GET requests fail and a concurrent save collides: 500s.
                saved = name
            else:
                if self.storage.exists(name):
                    self.storage.delete(name)
                saved = self.storage.save(name, upload)
        finally:
            upload.close()
        if saved != name:  # a backend that renamed instead of overwriting
            self.storage.delete(saved)
            if not self._holds_same(name, key, hexdigest, size):  # else: the same bytes won a race
                raise OSError(f"storage refused to write {name!r} in place (got {saved!r})")

    def _holds_same(self, name: str, key: str, sha256: str, size: int) -> bool:
        """Whether a hash-named key whose name is ``sha256`` is stored already, at full size."""
        if expected_sha256(None, key) != sha256:
            return False
        try:
            return bool(self.storage.exists(name)) and self.storage.size(name) == size
        except OSError:
            return False

    def content_type(self, key: str) -> str | None:
        # Once per GET and HEAD: a plain statement, not a queryset compiled each time.
        connection = connections[router.db_for_read(Blob)]
        q = connection.ops.quote_name
        with connection.cursor() as cursor:
            cursor.execute(
                f"SELECT {q('content_type')} FROM {q(Blob._meta.db_table)} "
                f"WHERE {q('owner_id')} = %s AND {q('key')} = %s",
                [self.owner_id, key],
            )
            row = cursor.fetchone()
        return (row[0] or None) if row else None

    def size(self, key: str) -> int:
        name = self.name_for(key)
        with _storage_faults("reading a blob's size"):
            return self.storage.size(name)

    def get(self, key: str) -> StoredObject | None:
        stream = self.open(key)
        if stream is None:
            return None
        try:
            data = stream.read()
        finally:
            stream.close()
        return StoredObject(data, self.content_type(key), len(data))

    def open(self, key: str) -> IO[bytes] | None:
        """A binary stream of the blob (caller closes it), or ``None`` when absent.

        On S3 the stream is the object's HTTP body, and carries the object's
        ``content_type`` and ``size``.
        """
        name = self.name_for(key)
        s3 = self._s3_stream_location(name)
        if s3 is not None:
            # S3Storage.open() downloads the whole object into a SpooledTemporaryFile
            # whose default max_memory_size (0) never rolls over to disk: a large blob
            # would sit in memory whole before its first byte is served. Stream the
            # GetObject body instead.
            from s3transfer.constants import ALLOWED_DOWNLOAD_ARGS  # installed with boto3

            client, params = s3
            # SSE-C keys and the like, as S3Storage.open() sends them.
            extra = {k: v for k, v in self.storage.get_object_parameters(params["Key"]).items()  # type: ignore[attr-defined]
                     if k in ALLOWED_DOWNLOAD_ARGS}
            try:
                with _storage_faults("opening a blob"):
                    response = client.get_object(**params, **extra)
            except Exception as err:
                if _is_s3_not_found(err):
                    return None
                raise
            body = response["Body"]
            body.content_type = response.get("ContentType")
            body.size = response.get("ContentLength")  # spares GET a HEAD request for its Content-Length
            return body  # type: ignore[no-any-return]
        try:
            return self.storage.open(name, "rb")  # type: ignore[return-value]
        except OSError as err:
            if err.errno in _ABSENT_ERRNOS:
                return None
            # A failing disk or a lost mount is an outage (503), not a missing blob (404).
            with _storage_faults("opening a blob"):
                raise
        except Exception as err:  # backends raise their own "not found" errors
            if "404" in str(err) or "NoSuchKey" in str(err) or "Not Found" in str(err):
                return None
            raise

    def has(self, key: str) -> bool:
        name = self.name_for(key)
        # A directory (the prefix of other keys on a file system) is not a blob.
        with _storage_faults("looking a blob up"):
            return self.storage.exists(name) and not self._fs_problem(name)

    def delete(self, key: str) -> None:
        if self.has(key):
            with _storage_faults("deleting a blob"):
                self.storage.delete(self.name_for(key))
        Blob.objects.filter(owner_id=self.owner_id, key=key).delete()

    def url(self, key: str, *, method: str = "GET", expire: int | None = None,
            content_type: str | None = None) -> str | None:
        """A direct URL for ``method`` when the backend can presign (S3), else ``None``.

        A PUT URL signs ``content_type`` when given, so S3 keeps it on the object
        (the uploader must send that same ``Content-Type``).
        """
        s3 = self._s3_location(self.name_for(key))
        if s3 is None:
            return None
        client, params = s3
        expire = expire or sync_settings.PRESIGN_EXPIRES_SECONDS
        op = "put_object" if method == "PUT" else "get_object"
        if method == "PUT" and content_type:
            params["ContentType"] = content_type
        return client.generate_presigned_url(op, Params=params, ExpiresIn=expire, HttpMethod=method)

    def _s3_location(self, name: str) -> tuple[Any, dict[str, Any]] | None:
        """``(boto3 client, {"Bucket", "Key"})`` of ``name`` on an S3 backend, else ``None``."""
        if not (hasattr(self.storage, "bucket") and hasattr(self.storage, "connection")):
            return None
        from storages.utils import clean_name

        # The object key exactly as S3Storage.save() wrote it (clean_name, then location).
        object_key = self.storage._normalize_name(clean_name(name))  # type: ignore[attr-defined]
        return self.storage.connection.meta.client, {"Bucket": self.storage.bucket_name, "Key": object_key}

    def _s3_stream_location(self, name: str) -> tuple[Any, dict[str, Any]] | None:
        """Like :meth:`_s3_location`, but ``None`` where S3Storage gzips objects: those
        go through its own save/open, which compress and decompress them."""
        if getattr(self.storage, "gzip", False):
            return None
        return self._s3_location(name)

    def _upload_to_s3(self, name: str, upload: _SpooledUpload) -> str:
        """Upload the spooled file by path, with the parameters S3Storage.save() would send.

        S3Storage.save() hands boto3 a file object, and s3transfer reads each part of a
        file object into memory (10 threads x 8 MiB by default: ~110 MiB per upload);
        given a path it reads the parts from disk as it sends them. A PUT replaces the
        object in place, so there is no delete first (no moment without the old blob).
        """
        location = self._s3_location(name)
        assert location is not None
        client, target = location
        params = self.storage._get_write_parameters(target["Key"], upload)  # type: ignore[attr-defined]
        client.upload_file(upload.temporary_file_path(), target["Bucket"], target["Key"],
                           ExtraArgs=params, Config=self.storage.transfer_config)  # type: ignore[attr-defined]
        return name

    def clear(self) -> None:
        """Delete every blob of this owner (a wipe)."""
        for key in list(Blob.objects.filter(owner_id=self.owner_id).values_list("key", flat=True)):
            self.delete(key)


def _is_s3_not_found(err: Exception) -> bool:
    response = getattr(err, "response", None)
    if not isinstance(response, dict):
        return False
    code = str(response.get("Error", {}).get("Code", ""))
    status = response.get("ResponseMetadata", {}).get("HTTPStatusCode")
    return code in ("404", "NoSuchKey", "NotFound") or status == 404
