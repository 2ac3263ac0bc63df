"""``manage.py starkeep_sync`` against a live server (same database, another owner), and ``starkeep_status``."""

from __future__ import annotations

import hashlib
import socket
from io import StringIO
from typing import Any

import pytest
from django.core.management import CommandError, call_command
from django.db import connection

from starkeep_sync import HLCClock, create_data_record, shared_object_key
from starkeep_sync.adapters import DjangoObjectStorage, OrmAppSource, OrmDatabaseAdapter
from starkeep_sync.models import PeerSyncState
from tests.factories import make_token, make_user, register_app

pytestmark = pytest.mark.django_db(transaction=True)


def seed(owner: Any, node: str, n: int, prefix: str) -> None:
    clock = HLCClock(node)
    db, storage = OrmDatabaseAdapter(owner), DjangoObjectStorage(owner)
    for i in range(n):
        data = f"{prefix}-{i}".encode()
        digest = hashlib.sha256(data).hexdigest()
        key = shared_object_key("image/png", digest)
        storage.put(key, data, "image/png")
        db.put(create_data_record(clock, type="image/png", origin_app_id="t", content_hash=digest,
                                  object_storage_key=key, size_bytes=len(data), id=f"{prefix}{i}"))


def sync(*args: str) -> str:
    out = StringIO()
    call_command("starkeep_sync", *args, stdout=out, stderr=StringIO())
    return out.getvalue()


@pytest.fixture
def setup(live_server: Any) -> dict[str, Any]:
    edge, cloud = make_user("edge-alice"), make_user("alice")
    token = make_token(cloud)
    seed(edge, "edge", 5, "e")
    seed(cloud, "phone", 3, "c")
    return {"url": live_server.url, "edge": edge, "cloud": cloud, "token": token}


def base_args(s: dict[str, Any]) -> list[str]:
    return ["--url", s["url"], "--user", "edge-alice", "--token", s["token"], "--node-id", "edge"]


def held(owner: Any) -> dict[str, bool]:
    storage = DjangoObjectStorage(owner)
    return {r.id: storage.has(r.object_storage_key) for r in OrmDatabaseAdapter(owner).all()}


def test_until_done_syncs_records_and_blobs_both_ways(setup: dict[str, Any]) -> None:
    out = sync(*base_args(setup), "--until-done", "--page-limit", "2")
    assert held(setup["edge"]) == held(setup["cloud"]) == {k: True for k in
                                                           [f"e{i}" for i in range(5)] + [f"c{i}" for i in range(3)]}
    assert "Synced starkeep-drive" in out and "8 items" in out
    assert setup["token"] not in out
    assert "/" in out.splitlines()[0]  # pending from the server gives a done/total bar
    again = sync(*base_args(setup), "--until-done")
    assert "0 items" in again


def test_interrupted_run_resumes_without_duplicates(setup: dict[str, Any]) -> None:
    first = sync(*base_args(setup), "--once", "--page-limit", "2")
    assert "1 round(s)" in first
    state = PeerSyncState.objects.get(owner=setup["edge"])
    assert state.peer_watermarks  # progress persisted per (url, channel)
    assert len(held(setup["cloud"])) < 8 or len(held(setup["edge"])) < 8
    rest = sync(*base_args(setup), "--page-limit", "2")
    total = int(first.split("round(s), ")[1].split(" items")[0]) + int(rest.split("round(s), ")[1].split(" items")[0])
    assert total == 8  # every record moved exactly once across both runs
    assert held(setup["edge"]) == held(setup["cloud"])


def test_watch_runs_cycles(setup: dict[str, Any]) -> None:
    out = sync(*base_args(setup), "--watch", "--no-live", "--interval", "0.01", "--max-cycles", "2")
    assert "Synced" in out and len(held(setup["cloud"])) == 8


def test_watch_is_live_unless_told_otherwise(setup: dict[str, Any], monkeypatch: pytest.MonkeyPatch) -> None:
    from starkeep_sync.management.commands import starkeep_sync as command

    seen: list[bool] = []

    class Recording(command.SyncSupervisor):
        def __init__(self, *args: Any, **kwargs: Any) -> None:
            seen.append(kwargs["live"])
            super().__init__(*args, **{**kwargs, "live": False})  # the cycles only: no long-poll left behind

    monkeypatch.setattr(command, "SyncSupervisor", Recording)
    sync(*base_args(setup), "--watch", "--interval", "0.01", "--max-cycles", "1")
    sync(*base_args(setup), "--watch", "--no-live", "--interval", "0.01", "--max-cycles", "1")
    assert seen == [True, False]


def test_per_app_channel(setup: dict[str, Any]) -> None:
    register_app("notes", {"notes": ["id"]})
    from starkeep_sync import AppSyncableRowEntry

    clock = HLCClock("edge")
    OrmAppSource(setup["edge"]).applier.apply(
        AppSyncableRowEntry(clock.now(), "notes", "notes", "insert", {"id": "n1", "body": "hi"}))
    sync(*base_args(setup), "--channel", "notes", "--until-done")
    rows = OrmAppSource(setup["cloud"]).rows("notes", "notes")
    assert [(r["id"], r["body"]) for r in rows] == [("n1", "hi")]


def test_token_from_environment(setup: dict[str, Any], monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("STARKEEP_SYNC_TOKEN", setup["token"])
    out = sync("--url", setup["url"], "--user", "edge-alice", "--node-id", "edge")
    assert "Synced" in out


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.parametrize("args, message", [
    (["--user", "edge-alice", "--node-id", "edge"], "No credentials"),
    (["--user", "nobody", "--token", "t"], "No user 'nobody'"),
    (["--user", "edge-alice", "--token", "t", "--page-limit", "0"], "--page-limit"),
    (["--user", "edge-alice", "--token", "t", "--channel", "unregistered"], "not registered"),
])
def test_bad_arguments(setup: dict[str, Any], args: list[str], message: str) -> None:
    with pytest.raises(CommandError, match=message):
        sync("--url", setup["url"], *args)


def test_bad_url_scheme(setup: dict[str, Any]) -> None:
    with pytest.raises(CommandError, match="http"):
        sync("--url", "ftp://x", "--user", "edge-alice", "--token", "t")


def test_wrong_token_fails_with_server_message(setup: dict[str, Any]) -> None:
    with pytest.raises(CommandError, match=r"401|Invalid or revoked token"):
        sync("--url", setup["url"], "--user", "edge-alice", "--token", "skt_wrong", "--node-id", "edge")
    assert "Invalid or revoked token" in PeerSyncState.objects.get(owner=setup["edge"]).last_error


def test_unreachable_server_fails_cleanly(setup: dict[str, Any]) -> None:
    url = f"http://127.0.0.1:{free_port()}"
    with pytest.raises(CommandError, match="failed"):
        sync("--url", url, "--user", "edge-alice", "--token", "t", "--node-id", "edge", "--timeout", "2")


def test_status_shows_counts_coverage_staged_and_peers(setup: dict[str, Any]) -> None:
    sync(*base_args(setup), "--until-done")
    # A record whose blob is gone here is staged.
    rec = OrmDatabaseAdapter(setup["edge"]).get("c0")
    assert rec is not None
    DjangoObjectStorage(setup["edge"]).delete(rec.object_storage_key)
    out = StringIO()
    call_command("starkeep_status", "--user", "edge-alice", stdout=out)
    text = out.getvalue()
    assert "8 records (0 deleted), 1 staged" in text
    assert "edge@" in text and "phone@" in text
    assert f"peer {setup['url']} [starkeep-drive] as edge" in text
    out = StringIO()
    call_command("starkeep_status", "--user", "alice", stdout=out)
    assert "served: " in out.getvalue()
    with pytest.raises(CommandError):
        call_command("starkeep_status", "--user", "ghost", stdout=StringIO())


def test_runs_until_done_by_default(setup: dict[str, Any]) -> None:
    out = sync(*base_args(setup), "--page-limit", "2")
    assert len(held(setup["edge"])) == len(held(setup["cloud"])) == 8
    assert "8 items" in out and "More is left" not in out


def test_once_runs_one_round_and_says_what_is_left(setup: dict[str, Any]) -> None:
    out = sync(*base_args(setup), "--once", "--page-limit", "2")
    assert "1 round(s)" in out
    # The cloud holds 3 records for edge; a page of 2 leaves 1, which the server counts (pending).
    assert "More is left: 1 item(s) still to pull from the server" in out
    assert "Run again without --once" in out
    sync(*base_args(setup))
    assert "More is left" not in sync(*base_args(setup), "--once")


def test_once_and_watch_are_exclusive(setup: dict[str, Any]) -> None:
    with pytest.raises(CommandError, match="not allowed with"):
        sync(*base_args(setup), "--once", "--watch")


def test_a_failure_mid_run_says_what_is_left(setup: dict[str, Any], monkeypatch: pytest.MonkeyPatch) -> None:
    from starkeep_sync.core.engine import SyncEngine
    from starkeep_sync.core.exceptions import SyncTransportError

    real = SyncEngine.exchange
    calls = []

    def fail_second_round(self: SyncEngine) -> Any:
        calls.append(1)
        if len(calls) == 2:
            raise SyncTransportError("connection reset by peer", code="connection_error")
        return real(self)

    monkeypatch.setattr(SyncEngine, "exchange", fail_second_round)
    with pytest.raises(CommandError) as info:
        sync(*base_args(setup), "--page-limit", "2")
    message = str(info.value)
    assert "failed after 1 round(s)" in message and "connection reset by peer" in message
    assert "More is left: 1 item(s) still to pull" in message and "again to resume" in message


def test_node_id_of_another_writer_on_the_remote_is_refused(setup: dict[str, Any]) -> None:
    # Writes the remote made under its own node id (the default NODE_ID of both instances).
    seed(setup["cloud"], "cloud", 2, "s")
    args = ["--url", setup["url"], "--user", "edge-alice", "--token", setup["token"]]
    with pytest.raises(CommandError, match=r"node id 'cloud'.*same node id.*--node-id") as info:
        sync(*args, "--node-id", "cloud")
    assert "last-write-wins" in str(info.value)
    # Refused before the answer was applied: nothing of the remote's came in.
    assert set(held(setup["edge"])) == {f"e{i}" for i in range(5)}
    sync(*args, "--node-id", "edge")  # another id syncs
    assert len(held(setup["edge"])) == 10


def test_a_known_shared_node_id_is_refused_before_any_request(setup: dict[str, Any]) -> None:
    from starkeep_sync.core.hlc import HLCClock as Clock

    url = f"http://127.0.0.1:{free_port()}"  # nothing listens: a request would fail with "cannot reach"
    ahead = Clock("edge").now()
    PeerSyncState.objects.create(owner=setup["edge"], peer_url=url, channel="starkeep-drive", node_id="edge",
                                 peer_watermarks={"edge": [ahead.wall_time + 60_000, 0, "edge"]})
    with pytest.raises(CommandError, match="node id 'edge'") as info:
        sync("--url", url, "--user", "edge-alice", "--token", "t", "--node-id", "edge")
    assert "cannot reach" not in str(info.value)


def test_lazy_blobs_wait_in_the_database_and_eager_run_fetches_them_side_by_side(setup: dict[str, Any]) -> None:
    out = sync(*base_args(setup), "--blobs", "lazy", "--transfer-concurrency", "3")
    edge_held = held(setup["edge"])
    assert [rid for rid, here in sorted(edge_held.items()) if not here] == ["c0", "c1", "c2"]
    state = PeerSyncState.objects.get(owner=setup["edge"])
    assert sorted(state.staged_blobs.values_list("item_id", flat=True)) == ["c0", "c1", "c2"]
    assert "3 blob(s) staged" in out

    status = StringIO()
    call_command("starkeep_status", "--user", "edge-alice", stdout=status)
    assert "staged blobs: 3" in status.getvalue()

    # The default (eager) run fetches them from the staged set; on PostgreSQL (tier 2) on transfer threads
    # with their own database connections (the local blobs are recorded through the ORM). On SQLite the
    # command moves one blob at a time by default: it takes one writer at a time.
    again = sync(*base_args(setup), *([] if connection.vendor == "sqlite" else ["--transfer-concurrency", "3"]))
    assert held(setup["edge"]) == {rid: True for rid in edge_held}
    assert not state.staged_blobs.exists()
    assert "downloading blobs: 3/3" in again and "staged" not in again


def test_strict_fails_on_a_blob_the_remote_refuses_for_good(setup: dict[str, Any], settings: Any) -> None:
    settings.STARKEEP_SYNC = {**settings.STARKEEP_SYNC, "MAX_BLOB_BYTES": 2}  # every seeded blob is 3 bytes
    with pytest.raises(CommandError, match=r"5 item\(s\) rejected by the peer.*413.*Everything else is synced"):
        sync(*base_args(setup), "--strict")
    state = PeerSyncState.objects.get(owner=setup["edge"])
    assert state.rejected_items.count() == 5
    status = StringIO()
    call_command("starkeep_status", "--user", "edge-alice", stdout=status)
    assert "rejected by the peer: e0" in status.getvalue()
