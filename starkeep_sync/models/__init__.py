from .credentials import AppSecret, DeviceToken
from .namespaces import AppNamespace, AppTable
from .records import AppRow, Blob, FileRecord, NodeCoverage, SharedRecord
from .state import ChannelActivity, PeerRejectedItem, PeerRemoteKey, PeerStagedBlob, PeerSyncState, ServerClock

__all__ = [
    "AppNamespace",
    "AppRow",
    "AppSecret",
    "AppTable",
    "Blob",
    "ChannelActivity",
    "DeviceToken",
    "FileRecord",
    "NodeCoverage",
    "PeerRejectedItem",
    "PeerRemoteKey",
    "PeerStagedBlob",
    "PeerSyncState",
    "ServerClock",
    "SharedRecord",
]
