"""The admin shows the server-as-requester's staged set and rejected items, read-only (PROTOCOL §5c)."""

from __future__ import annotations

from typing import Any

import pytest
from django.test import Client

from starkeep_sync.adapters import OrmSyncStateStore
from starkeep_sync.core.hlc import HLCTimestamp
from starkeep_sync.core.staged import RejectedItem, StagedBlob, ref_of
from starkeep_sync.models import PeerStagedBlob

pytestmark = pytest.mark.django_db


def test_peer_state_page_lists_staged_blobs_and_rejected_items_read_only(admin_client: Client, alice: Any) -> None:
    state = OrmSyncStateStore.for_peer(alice, "https://cloud.example", "starkeep-drive", "edge-1")
    state.stage_blobs([StagedBlob(ref_of(("r", "photo-1")), "photo-1", "shared/image/ab/" + "a" * 64, "a" * 64,
                                  2048, "image/jpeg", attempts=3, last_error="HTTP 503 from GET")])
    state.reject_items([RejectedItem(ref_of(("r", "video-9")), "video-9", HLCTimestamp(1, 0, "edge-1"),
                                     "shared/video/cd/" + "c" * 64, "HTTP 413: blob too large", 1.0)])

    listing = admin_client.get("/admin/starkeep_sync/peersyncstate/")
    assert listing.status_code == 200
    assert "staged blobs" in listing.content.decode().lower()

    page = admin_client.get(f"/admin/starkeep_sync/peersyncstate/{state.state.pk}/change/")
    text = page.content.decode()
    assert page.status_code == 200
    assert "photo-1" in text and "HTTP 503 from GET" in text
    assert "video-9" in text and "HTTP 413: blob too large" in text
    # Read-only: posting the page changes nothing.
    admin_client.post(f"/admin/starkeep_sync/peersyncstate/{state.state.pk}/change/", {})
    assert PeerStagedBlob.objects.get().attempts == 3
