"""Django adapters implementing the core's protocols (ORM records and rows, storage blobs)."""

from .orm import OrmApplier, OrmAppSource, OrmDatabaseAdapter, OrmNamespaceStore
from .state import OrmSyncStateStore
from .storage import DjangoObjectStorage

__all__ = [
    "DjangoObjectStorage",
    "OrmAppSource",
    "OrmApplier",
    "OrmDatabaseAdapter",
    "OrmNamespaceStore",
    "OrmSyncStateStore",
]
