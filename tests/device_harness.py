"""Scenario fixture variant whose local side is the plain-Python sqlite device store."""

from __future__ import annotations

import dataclasses
from pathlib import Path

from starkeep_sync.device.sqlite import SqliteDeviceStore
from tests.harness import NOTES_NAMESPACE, OTHER_NAMESPACE, Pair, Side, memory_pair


def sqlite_device_pair(tmp: Path) -> Pair:
    pair = memory_pair()
    store = SqliteDeviceStore(tmp / "device.db", tmp / "blobs", namespaces=[NOTES_NAMESPACE, OTHER_NAMESPACE])
    local = Side("local", pair.local.time, store.database, store.storage, store.app_source)
    return dataclasses.replace(pair, local=local)
