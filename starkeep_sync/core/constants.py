"""Names shared by the requester and the responder, the client and the server.

Kept in one module so the HTTP client, the DRF views and the core engine can
never disagree on a route, a header or a reserved name.
"""

from __future__ import annotations

#: App id of the Drive channel, which carries shared records only.
DRIVE_APP_ID = "starkeep-drive"

#: The reserved app table whose rows carry a blob (AR rows).
FILE_RECORDS_TABLE = "_starkeep_sync_records"

#: Columns of a ``_starkeep_sync_records`` row.
FILE_RECORDS_COLUMNS = (
    "id",
    "object_storage_key",
    "content_hash",
    "mime_type",
    "size_bytes",
    "original_filename",
    "origin_app_id",
    "created_at",
    "updated_at",
    "deleted_at",
)

#: Bookkeeping columns every stored app row carries.
UPDATED_AT = "updated_at"
DELETED_AT = "deleted_at"
NODE_ID = "node_id"

# Routes, relative to a channel base (``<root>`` or ``<root>/apps/<app_id>``).
EXCHANGE_PATH = "/sync/exchange"
FILES_PATH = "/files/"
PRESIGN_PUT_PATH = "/files/presign"
CONFIRM_PATH = "/files/confirm"
HEALTH_PATH = "/health"
CHANGES_PATH = "/sync/changes"

# Starkeep app-signature headers (PROTOCOL §8).
HEADER_APP_ID = "X-Starkeep-App-Id"
HEADER_APP_SIG = "X-Starkeep-App-Sig"
HEADER_APP_TS = "X-Starkeep-App-Ts"
HEADER_KEY_ID = "X-Starkeep-Key-Id"

# Request policy defaults (PROTOCOL §6), the same in process and over HTTP.
#: Page size when a request names no ``limit``.
DEFAULT_PAGE_LIMIT = 1000
#: Largest page a responder answers; a larger ``limit`` is clamped to it.
MAX_PAGE_LIMIT = 10_000
#: Most records plus app rows one request may carry.
MAX_ITEMS_PER_REQUEST = 10_000
#: What a responder does with app rows of an app or table it does not know:
#: "halt" their node for the round (the reference's behaviour), or "reject" the request whole.
UNKNOWN_ROWS_POLICIES = ("halt", "reject")

#: Default bound for the clock skew guard: 24 hours in milliseconds.
DEFAULT_MAX_SKEW_MS = 86_400_000

#: Largest values that fit the serialized HLC form.
MAX_WALL_TIME = 16**12 - 1
MAX_COUNTER = 16**4 - 1
MAX_NODE_ID_LENGTH = 128

# Change-notification event types (PROTOCOL §7b).
REMOTE_UPDATE_AVAILABLE = "remote-update-available"
LOCAL_DATA_SYNCED = "local-data-synced"
LOCAL_CHANGE_RECORDED = "local-change-recorded"
#: Beyond the reference (PROTOCOL §5c): the blobs of these ids landed here.
BLOB_RESIDENT = "blob-resident"
#: Beyond the reference (PROTOCOL §5c): the peer refused these ids' blobs for good.
ITEM_REJECTED = "item-rejected"

LOGGER_NAME = "starkeep_sync"
