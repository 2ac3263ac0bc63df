"""starkeep_sync: the Starkeep sync protocol in Python.

The pure-Python protocol core lives in ``starkeep_sync.core`` (with the device
stores in ``starkeep_sync.device`` and the HTTP client in ``starkeep_sync.client``)
and never imports Django; its public names are re-exported here. The Django
app around it (``starkeep_sync.apps``, ``models``, ``adapters``, ``api``, ...)
is only imported by Django itself.
"""

from .client import HttpObjectStorage, create_http_sync_transport
from .core.blobs import (
    FileSyncEngine,
    FileSyncManifest,
    TransferFailure,
    create_file_sync_engine,
)
from .core.constants import (
    BLOB_RESIDENT,
    DRIVE_APP_ID,
    FILE_RECORDS_TABLE,
    ITEM_REJECTED,
    LOCAL_CHANGE_RECORDED,
    LOCAL_DATA_SYNCED,
    REMOTE_UPDATE_AVAILABLE,
)
from .core.engine import ExchangeResult, SyncEngine, create_sync_engine
from .core.exceptions import (
    BlobIntegrityError,
    ClockSkewError,
    InvalidKeyError,
    ItemsRejected,
    SyncError,
    SyncTransportError,
    WireFormatError,
)
from .core.hlc import (
    ZERO_HLC,
    ClockState,
    HLCClock,
    HLCTimestamp,
    compare_hlc,
    deserialize_hlc,
    max_hlc,
    serialize_hlc,
)
from .core.notifier import ChangeEvent, ChangeNotifier, create_change_notifier
from .core.protocols import RecordPage, ScanPage, StoredObject
from .core.records import (
    AppSyncableNamespace,
    AppSyncableRowEntry,
    AppSyncableTableInfo,
    DataRecord,
    create_data_record,
    shared_object_key,
)
from .core.residency import RecordResidency, residency_of
from .core.responder import SyncResponder, create_in_process_sync_transport
from .core.staged import RejectedItem, RetryPolicy, StagedBlob
from .core.state import SqliteSyncStateStore, create_sqlite_sync_state_store
from .core.transfers import TransferProgress
from .core.watermarks import advance_watermark, merge_watermarks, select_unseen, watermark_for
from .core.wire import SyncExchangeRequest, SyncExchangeResponse

__version__ = "0.1.0"

__all__ = [
    "BLOB_RESIDENT",
    "DRIVE_APP_ID",
    "FILE_RECORDS_TABLE",
    "ITEM_REJECTED",
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
    "ItemsRejected",
    "RecordPage",
    "RecordResidency",
    "RejectedItem",
    "RetryPolicy",
    "ScanPage",
    "SqliteSyncStateStore",
    "StagedBlob",
    "StoredObject",
    "SyncEngine",
    "SyncError",
    "SyncExchangeRequest",
    "SyncExchangeResponse",
    "SyncResponder",
    "SyncTransportError",
    "TransferFailure",
    "TransferProgress",
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
