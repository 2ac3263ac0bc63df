"""starkeep_sync: the Starkeep sync protocol in Python.

This package's top level is the pure-Python protocol core; it never imports
Django. The Django app lives in the same package (``starkeep_sync.apps``,
``starkeep_sync.models``, ``starkeep_sync.api``) and is only imported by
Django itself.
"""

from .blobs import (
    FileSyncEngine,
    FileSyncManifest,
    TransferFailure,
    create_file_sync_engine,
)
from .client import HttpObjectStorage, create_http_sync_transport
from .constants import (
    DRIVE_APP_ID,
    FILE_RECORDS_TABLE,
    LOCAL_CHANGE_RECORDED,
    LOCAL_DATA_SYNCED,
    REMOTE_UPDATE_AVAILABLE,
)
from .engine import ExchangeResult, SyncEngine, create_sync_engine
from .exceptions import (
    BlobIntegrityError,
    ClockSkewError,
    InvalidKeyError,
    SyncError,
    SyncTransportError,
    WireFormatError,
)
from .hlc import (
    ZERO_HLC,
    ClockState,
    HLCClock,
    HLCTimestamp,
    compare_hlc,
    deserialize_hlc,
    max_hlc,
    serialize_hlc,
)
from .notifier import ChangeEvent, ChangeNotifier, create_change_notifier
from .protocols import RecordPage, ScanPage, StoredObject
from .records import (
    AppSyncableNamespace,
    AppSyncableRowEntry,
    AppSyncableTableInfo,
    DataRecord,
    create_data_record,
    shared_object_key,
)
from .residency import RecordResidency, residency_of
from .responder import SyncResponder, create_in_process_sync_transport
from .state import SqliteSyncStateStore, create_sqlite_sync_state_store
from .watermarks import advance_watermark, merge_watermarks, select_unseen, watermark_for
from .wire import SyncExchangeRequest, SyncExchangeResponse

__version__ = "0.1.0"

__all__ = [
    "DRIVE_APP_ID",
    "FILE_RECORDS_TABLE",
    "LOCAL_CHANGE_RECORDED",
    "LOCAL_DATA_SYNCED",
    "REMOTE_UPDATE_AVAILABLE",
    "ZERO_HLC",
    "AppSyncableNamespace",
    "AppSyncableRowEntry",
    "AppSyncableTableInfo",
    "BlobIntegrityError",
    "ChangeEvent",
    "ChangeNotifier",
    "ClockSkewError",
    "ClockState",
    "DataRecord",
    "ExchangeResult",
    "FileSyncEngine",
    "FileSyncManifest",
    "HLCClock",
    "HLCTimestamp",
    "HttpObjectStorage",
    "InvalidKeyError",
    "RecordPage",
    "RecordResidency",
    "ScanPage",
    "SqliteSyncStateStore",
    "StoredObject",
    "SyncEngine",
    "SyncError",
    "SyncExchangeRequest",
    "SyncExchangeResponse",
    "SyncResponder",
    "SyncTransportError",
    "TransferFailure",
    "WireFormatError",
    "advance_watermark",
    "compare_hlc",
    "create_change_notifier",
    "create_data_record",
    "create_file_sync_engine",
    "create_http_sync_transport",
    "create_in_process_sync_transport",
    "create_sqlite_sync_state_store",
    "create_sync_engine",
    "deserialize_hlc",
    "max_hlc",
    "merge_watermarks",
    "residency_of",
    "select_unseen",
    "serialize_hlc",
    "shared_object_key",
    "watermark_for",
]
