"""Synchronous in-process change notifications (PROTOCOL §7b)."""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable
from dataclasses import dataclass, field

from .constants import (
    BLOB_RESIDENT,
    ITEM_REJECTED,
    LOCAL_CHANGE_RECORDED,
    LOCAL_DATA_SYNCED,
    LOGGER_NAME,
    REMOTE_UPDATE_AVAILABLE,
)
from .hlc import HLCTimestamp

logger = logging.getLogger(LOGGER_NAME)

EVENT_TYPES = (REMOTE_UPDATE_AVAILABLE, LOCAL_DATA_SYNCED, LOCAL_CHANGE_RECORDED, BLOB_RESIDENT, ITEM_REJECTED)


@dataclass(frozen=True, slots=True)
class ChangeEvent:
    event_type: str
    record_ids: list[str] = field(default_factory=list)
    timestamp: HLCTimestamp | None = None
    origin_app_id: str | None = None

    def __post_init__(self) -> None:
        if self.event_type not in EVENT_TYPES:
            raise ValueError(f"unknown event type {self.event_type!r}; expected one of {EVENT_TYPES}")


Listener = Callable[[ChangeEvent], None]


class ChangeNotifier:
    def __init__(self) -> None:
        self._listeners: list[Listener] = []
        self._lock = threading.Lock()

    def subscribe(self, listener: Listener) -> Callable[[], None]:
        """Add ``listener``; returns a callable that removes it (idempotent)."""
        with self._lock:
            self._listeners.append(listener)

        def unsubscribe() -> None:
            with self._lock:
                if listener in self._listeners:
                    self._listeners.remove(listener)

        return unsubscribe

    def emit(self, event: ChangeEvent) -> None:
        with self._lock:
            listeners = list(self._listeners)
        for listener in listeners:
            try:
                listener(event)
            except Exception:  # a listener must never break the round
                logger.exception("change listener %r raised on %s; skipped", listener, event.event_type)


def create_change_notifier() -> ChangeNotifier:
    return ChangeNotifier()
