"""The ``BlobStateStore`` contract (PROTOCOL §5c), written once and run on every requester state store.

:class:`BlobStateContract` holds the behaviour; each store's class provides
``store`` (a fresh, empty store) and ``reopen`` (a callable giving a *new* store
object over the same backing state: a new connection for SQLite, a new
``OrmSyncStateStore.for_peer`` for the ORM) and ``sibling`` (another namespace /
peer in the same backing state, which must not see anything of ``store``).

The ORM class runs on whichever database the run uses (SQLite in tier 1,
PostgreSQL in tier 2, selected by ``STARKEEP_TEST_DATABASE_URL`` as for
``test_orm.py``); the memory and SQLite classes are ``nodb``.
"""

from __future__ import annotations

import sqlite3
import threading
from collections.abc import Callable, Iterator
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest

from starkeep_sync.core.hlc import HLCTimestamp
from starkeep_sync.core.protocols import BlobStateStore
from starkeep_sync.core.staged import RejectedItem, StagedBlob, ref_of
from starkeep_sync.core.state import MemorySyncStateStore, SqliteSyncStateStore
from starkeep_sync.core.wire import MAX_HASH_LENGTH, MAX_NAME_LENGTH, MAX_STORAGE_KEY_LENGTH

from .contract import hlc

KEY_A = "shared/image/aa/" + "aa" * 32
KEY_B = "shared/image/bb/" + "bb" * 32
KEY_C = "shared/video/cc/" + "cc" * 32


def ref(rid: str) -> str:
    return ref_of(("r", rid))


def entry(rid: str, key: str = KEY_A, *, size: int = 10, wanted: bool = True, attempts: int = 0,
          next_attempt: float = 0.0, last_error: str = "", mime: str | None = "image/jpeg") -> StagedBlob:
    return StagedBlob(ref(rid), rid, key, key.rsplit("/", 1)[1], size, mime, wanted, attempts, next_attempt,
                      last_error)


def rejected(rid: str, at: float, *, wall: int = 1, reason: str = "too large", key: str = KEY_A) -> RejectedItem:
    return RejectedItem(ref(rid), rid, hlc(wall, "phone", counter=3), key, reason, at)


def by_ref(entries: list[StagedBlob]) -> dict[str, StagedBlob]:
    return {e.ref: e for e in entries}


class BlobStateContract:
    """Behaviour every ``BlobStateStore`` must show."""

    def test_is_a_blob_state_store(self, store: BlobStateStore) -> None:
        assert isinstance(store, BlobStateStore)
        assert store.staged_blobs() == []
        assert store.staged_totals() == (0, 0)
        assert store.rejected_items() == []
        assert store.remote_keys_known([KEY_A]) == set()

    # -- the staged set ----------------------------------------------------------------

    def test_a_staged_entry_comes_back_field_for_field(self, store: BlobStateStore) -> None:
        e = entry("r1", size=1234, mime=None, wanted=False)
        app_row = StagedBlob(ref_of(("a", "notes", "_starkeep_sync_records", "ü-1")), "ü-1",
                             "apps/notes/syncable/" + "dd" * 32, "dd" * 32, 7, "application/octet-stream")
        store.stage_blobs([e, app_row])
        assert by_ref(store.staged_blobs()) == {e.ref: e, app_row.ref: app_row}
        assert store.staged_for([app_row.ref, ref("absent")]) == [app_row]

    def test_the_longest_values_the_wire_allows_are_kept_whole(self, store: BlobStateStore) -> None:
        # Whatever a record may carry on the wire (PROTOCOL §4) must fit in the staged set and the rejected items.
        key = "shared/image/ab/" + "a" * (MAX_STORAGE_KEY_LENGTH - len("shared/image/ab/"))
        long_hash = "sha512-" + "f" * (MAX_HASH_LENGTH - len("sha512-"))
        mime = "image/" + "x" * (MAX_NAME_LENGTH - len("image/"))
        rid = "r" * MAX_NAME_LENGTH
        e = StagedBlob(ref(rid), rid, key, long_hash, 2**40, mime, True, 0, 0.0, "")
        store.stage_blobs([e])
        assert store.staged_blobs() == [e]
        assert store.staged_totals() == (1, 2**40)
        store.remember_remote_keys([key])
        assert store.remote_keys_known([key]) == {key}
        item = RejectedItem(ref(rid), rid, HLCTimestamp(2**47, 65535, "n" * 128), key, "reason " * 400, 1.5)
        store.reject_items([item])
        assert store.rejected_items() == [item]

    def test_restaging_the_same_key_keeps_attempts_backoff_and_error(self, store: BlobStateStore) -> None:
        store.stage_blobs([entry("r1")])
        store.update_staged([entry("r1", attempts=3, next_attempt=500.0, last_error="OSError: down")])
        # The same metadata arrives again (a relay, a replay): a fresh entry for the same blob.
        store.stage_blobs([entry("r1")])
        (got,) = store.staged_blobs()
        assert (got.attempts, got.next_attempt, got.last_error, got.wanted) == (3, 500.0, "OSError: down", True)

    def test_restaging_the_same_key_takes_the_new_metadata_and_keeps_only_the_history(
        self, store: BlobStateStore
    ) -> None:
        # E.g. the record's MIME type was corrected without touching its bytes: the fetched blob must be
        # stored with the new one. Only attempts, backoff, error and wantedness are the entry's own history.
        store.stage_blobs([entry("r1", size=10, mime="image/jpeg")])
        store.update_staged([entry("r1", size=10, mime="image/jpeg", attempts=2, next_attempt=50.0,
                                   last_error="HTTP 503")])
        store.stage_blobs([entry("r1", size=12, mime="image/png")])
        assert store.staged_blobs() == [entry("r1", size=12, mime="image/png", attempts=2, next_attempt=50.0,
                                              last_error="HTTP 503")]
        assert store.staged_totals() == (1, 12)

    def test_restaging_the_same_key_keeps_it_wanted_and_a_wanted_restage_wants_a_lazy_one(
        self, store: BlobStateStore
    ) -> None:
        store.stage_blobs([entry("wanted"), entry("lazy", KEY_B, wanted=False)])
        store.stage_blobs([entry("wanted", wanted=False), entry("lazy", KEY_B, wanted=True)])
        got = by_ref(store.staged_blobs())
        assert got[ref("wanted")].wanted is True
        assert got[ref("lazy")].wanted is True

    def test_restaging_another_key_starts_afresh(self, store: BlobStateStore) -> None:
        store.stage_blobs([entry("r1", KEY_A, size=10)])
        store.update_staged([entry("r1", KEY_A, size=10, attempts=4, next_attempt=900.0, last_error="boom")])
        store.stage_blobs([entry("r1", KEY_B, size=99, wanted=False)])
        (got,) = store.staged_blobs()
        assert got == entry("r1", KEY_B, size=99, wanted=False)
        assert store.staged_totals() == (1, 99)

    def test_one_entry_per_ref(self, store: BlobStateStore) -> None:
        store.stage_blobs([entry("r1", KEY_A), entry("r2", KEY_A)])  # two records, one blob
        store.stage_blobs([entry("r1", KEY_B)])
        assert sorted((e.item_id, e.key) for e in store.staged_blobs()) == [("r1", KEY_B), ("r2", KEY_A)]

    def test_due_entries_are_wanted_and_due_soonest_first_within_the_limit(self, store: BlobStateStore) -> None:
        store.stage_blobs([entry("late", next_attempt=20.0), entry("soon", next_attempt=5.0),
                           entry("at", next_attempt=10.0), entry("now", next_attempt=0.0),
                           entry("lazy", wanted=False, next_attempt=0.0)])
        assert [e.item_id for e in store.staged_blobs(due_at=10.0)] == ["now", "soon", "at"]  # at or before
        assert [e.item_id for e in store.staged_blobs(due_at=10.0, limit=2)] == ["now", "soon"]
        assert [e.item_id for e in store.staged_blobs(due_at=9.999)] == ["now", "soon"]
        assert [e.item_id for e in store.staged_blobs(due_at=-1.0)] == []
        assert [e.item_id for e in store.staged_blobs(due_at=1e18)] == ["now", "soon", "at", "late"]
        # Without due_at: every entry, lazy ones too.
        assert sorted(e.item_id for e in store.staged_blobs()) == ["at", "late", "lazy", "now", "soon"]
        assert len(store.staged_blobs(limit=3)) == 3

    def test_a_lazy_entry_is_never_due_until_it_is_wanted(self, store: BlobStateStore) -> None:
        store.stage_blobs([entry("lazy", wanted=False)])
        assert store.staged_blobs(due_at=1e18) == []
        store.update_staged([entry("lazy", wanted=True, next_attempt=0.0)])
        assert [e.item_id for e in store.staged_blobs(due_at=0.0)] == ["lazy"]

    def test_update_staged_stores_attempts_backoff_error_and_wantedness(self, store: BlobStateStore) -> None:
        store.stage_blobs([entry("r1", size=42)])
        store.update_staged([entry("r1", size=42, attempts=2, next_attempt=77.5, last_error="x" * 1500,
                                   wanted=False)])
        assert store.staged_blobs() == [entry("r1", size=42, attempts=2, next_attempt=77.5, last_error="x" * 1500,
                                              wanted=False)]

    def test_update_staged_ignores_an_entry_superseded_by_another_key_and_one_not_staged(
        self, store: BlobStateStore
    ) -> None:
        store.stage_blobs([entry("r1", KEY_A)])
        stale = store.staged_blobs()[0]
        store.stage_blobs([entry("r1", KEY_B)])  # a newer version of r1 names another blob
        # A fetch of the old blob that was running meanwhile reports its failure.
        store.update_staged([replace(stale, attempts=1, next_attempt=60.0, last_error="late failure"),
                             entry("gone", attempts=1)])
        assert store.staged_blobs() == [entry("r1", KEY_B)]

    def test_unstage_removes_those_refs_only(self, store: BlobStateStore) -> None:
        store.stage_blobs([entry("r1"), entry("r2", KEY_B), entry("r3", KEY_C)])
        store.unstage_blobs([ref("r1"), ref("r3"), ref("never-staged")])
        assert [e.item_id for e in store.staged_blobs()] == ["r2"]
        assert store.staged_for([ref("r1"), ref("r2")]) == [entry("r2", KEY_B)]
        store.unstage_blobs([])
        assert store.staged_totals() == (1, 10)

    def test_staged_totals_count_entries_and_declared_bytes(self, store: BlobStateStore) -> None:
        store.stage_blobs([entry("r1", size=100), entry("r2", KEY_B, size=23, wanted=False),
                           entry("r3", KEY_C, size=0)])
        assert store.staged_totals() == (3, 123)
        store.unstage_blobs([ref("r1")])
        assert store.staged_totals() == (2, 23)

    def test_many_refs_in_one_call(self, store: BlobStateStore) -> None:
        # More than one statement's worth of parameters (the SQL stores batch by 500).
        entries = [entry(f"r{i:04d}", size=1) for i in range(1203)]
        store.stage_blobs(entries)
        assert store.staged_totals() == (1203, 1203)
        assert len(store.staged_for([e.ref for e in entries])) == 1203
        store.update_staged([replace(e, attempts=1, next_attempt=5.0) for e in entries[:1100]])
        assert len(store.staged_blobs(due_at=1.0)) == 103
        store.unstage_blobs([e.ref for e in entries[:1201]])
        assert sorted(e.item_id for e in store.staged_blobs()) == ["r1201", "r1202"]

    # -- keys the peer holds ----------------------------------------------------------------

    def test_remote_keys_remember_known_and_forget_some(self, store: BlobStateStore) -> None:
        store.remember_remote_keys([KEY_A, KEY_B])
        store.remember_remote_keys([KEY_B, KEY_C])  # again: no error, no duplicate
        assert store.remote_keys_known([KEY_A, KEY_C, "shared/x/y/" + "ee" * 32]) == {KEY_A, KEY_C}
        store.forget_remote_keys([KEY_A, "never-known"])
        assert store.remote_keys_known([KEY_A, KEY_B, KEY_C]) == {KEY_B, KEY_C}
        assert store.remote_keys_known([]) == set()

    def test_forgetting_all_remote_keys(self, store: BlobStateStore) -> None:
        many = [f"shared/image/{i:02x}/{i:064x}" for i in range(1100)]
        store.remember_remote_keys(many)
        assert store.remote_keys_known(many) == set(many)
        store.forget_remote_keys(many[:600])
        assert store.remote_keys_known(many) == set(many[600:])
        store.forget_remote_keys()
        assert store.remote_keys_known(many) == set()

    # -- rejected items ------------------------------------------------------------------------

    def test_rejected_items_are_listed_oldest_first(self, store: BlobStateStore) -> None:
        second, first = rejected("r2", at=20.0, wall=2), rejected("r1", at=10.0, reason="HTTP 413: over 1 MiB")
        store.reject_items([second, first])
        assert store.rejected_items() == [first, second]

    def test_a_later_rejection_of_the_same_ref_replaces_the_earlier(self, store: BlobStateStore) -> None:
        store.reject_items([rejected("r1", at=10.0, wall=1), rejected("r2", at=20.0)])
        newer = rejected("r1", at=30.0, wall=9, reason="quota", key=KEY_B)
        store.reject_items([newer])
        assert store.rejected_items() == [rejected("r2", at=20.0), newer]
        assert isinstance(newer.hlc, HLCTimestamp) and store.rejected_items()[1].hlc == newer.hlc

    def test_clear_rejected(self, store: BlobStateStore) -> None:
        store.reject_items([rejected("r1", at=1.0), rejected("r2", at=2.0), rejected("r3", at=3.0)])
        store.clear_rejected([ref("r1"), ref("r3"), ref("never")])
        assert [r.item_id for r in store.rejected_items()] == ["r2"]
        store.clear_rejected([])
        assert [r.item_id for r in store.rejected_items()] == ["r2"]

    # -- isolation and durability -------------------------------------------------------------

    def test_another_namespace_sees_nothing(self, store: BlobStateStore, sibling: BlobStateStore) -> None:
        store.stage_blobs([entry("r1")])
        store.remember_remote_keys([KEY_A])
        store.reject_items([rejected("r1", at=1.0)])
        assert (sibling.staged_blobs(), sibling.staged_totals(), sibling.rejected_items()) == ([], (0, 0), [])
        assert sibling.remote_keys_known([KEY_A]) == set()
        sibling.forget_remote_keys()
        sibling.unstage_blobs([ref("r1")])
        sibling.clear_rejected([ref("r1")])
        assert store.remote_keys_known([KEY_A]) == {KEY_A}
        assert [e.item_id for e in store.staged_blobs()] == ["r1"]
        assert [r.item_id for r in store.rejected_items()] == ["r1"]


class ThreadSafetyContract:
    """For stores a test can call from several threads (not the ORM one: the Django test database is
    bound to the test's own connection)."""

    def test_safe_to_call_from_several_threads(self, store: BlobStateStore) -> None:
        errors: list[BaseException] = []

        def work(n: int) -> None:
            try:
                mine = [entry(f"t{n}-{i}", f"shared/image/{n:02x}/{n:02x}{i:062x}", size=1) for i in range(150)]
                store.stage_blobs(mine)
                store.remember_remote_keys([e.key for e in mine])
                store.update_staged([replace(e, attempts=1) for e in mine[:50]])
                store.unstage_blobs([e.ref for e in mine[100:]])
                store.reject_items([rejected(f"t{n}", at=float(n))])
            except BaseException as err:  # reported by the main thread
                errors.append(err)

        threads = [threading.Thread(target=work, args=(n,)) for n in range(8)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        assert errors == []
        assert store.staged_totals() == (800, 800)
        assert sum(e.attempts for e in store.staged_blobs()) == 400
        assert len(store.rejected_items()) == 8


class DurabilityContract:
    """For stores that outlive their object (not the memory one, lost with the process by design)."""

    def test_a_reopened_store_sees_the_same_state(self, store: BlobStateStore,
                                                  reopen: Callable[[], BlobStateStore]) -> None:
        store.stage_blobs([entry("r1", size=5), entry("lazy", KEY_B, size=7, wanted=False)])
        store.update_staged([entry("r1", size=5, attempts=2, next_attempt=123.25, last_error="HTTP 503")])
        store.remember_remote_keys([KEY_A, KEY_C])
        store.reject_items([rejected("r9", at=42.5)])
        again = reopen()
        assert again is not store
        assert by_ref(again.staged_blobs()) == {
            ref("r1"): entry("r1", size=5, attempts=2, next_attempt=123.25, last_error="HTTP 503"),
            ref("lazy"): entry("lazy", KEY_B, size=7, wanted=False),
        }
        assert again.staged_totals() == (2, 12)
        assert [e.item_id for e in again.staged_blobs(due_at=200.0)] == ["r1"]
        assert again.remote_keys_known([KEY_A, KEY_B, KEY_C]) == {KEY_A, KEY_C}
        assert again.rejected_items() == [rejected("r9", at=42.5)]
        # And the other way round: what the new object writes, the old one reads.
        again.unstage_blobs([ref("r1")])
        assert [e.item_id for e in store.staged_blobs()] == ["lazy"]


@pytest.mark.nodb
class TestMemoryBlobState(BlobStateContract, ThreadSafetyContract):

    @pytest.fixture
    def store(self) -> MemorySyncStateStore:
        return MemorySyncStateStore()

    @pytest.fixture
    def sibling(self) -> MemorySyncStateStore:
        return MemorySyncStateStore()

    @pytest.fixture
    def reopen(self) -> Callable[[], BlobStateStore]:
        return MemorySyncStateStore


@pytest.mark.nodb
class TestSqliteBlobState(BlobStateContract, ThreadSafetyContract, DurabilityContract):
    @pytest.fixture
    def path(self, tmp_path: Path) -> Path:
        return tmp_path / "state.db"

    @pytest.fixture
    def connections(self) -> Iterator[list[sqlite3.Connection]]:
        opened: list[sqlite3.Connection] = []
        yield opened
        for conn in opened:
            conn.close()

    def _open(self, path: Path, opened: list[sqlite3.Connection], namespace: str) -> SqliteSyncStateStore:
        conn = sqlite3.connect(str(path), check_same_thread=False)
        opened.append(conn)
        return SqliteSyncStateStore(conn, namespace)

    @pytest.fixture
    def store(self, path: Path, connections: list[sqlite3.Connection]) -> SqliteSyncStateStore:
        return self._open(path, connections, "https://cloud.example/drive")

    @pytest.fixture
    def sibling(self, store: SqliteSyncStateStore, path: Path,
                connections: list[sqlite3.Connection]) -> SqliteSyncStateStore:
        return self._open(path, connections, "https://cloud.example/notes")

    @pytest.fixture
    def reopen(self, store: SqliteSyncStateStore, path: Path,
               connections: list[sqlite3.Connection]) -> Callable[[], BlobStateStore]:
        return lambda: self._open(path, connections, store.namespace)


@pytest.mark.django_db
class TestOrmBlobState(BlobStateContract, DurabilityContract):
    PEER = "https://cloud.example/sync"

    @pytest.fixture
    def owner(self, db: None) -> Any:
        from tests.factories import make_user

        return make_user("owner")

    @pytest.fixture
    def store(self, owner: Any) -> BlobStateStore:
        from starkeep_sync.adapters.state import OrmSyncStateStore

        return OrmSyncStateStore.for_peer(owner, self.PEER, "starkeep-drive", "laptop")

    @pytest.fixture
    def sibling(self, owner: Any) -> BlobStateStore:
        from starkeep_sync.adapters.state import OrmSyncStateStore
        from tests.factories import make_user

        # Another channel of the same owner, and the same channel of another owner.
        other_channel = OrmSyncStateStore.for_peer(owner, self.PEER, "notes", "laptop")
        other_owner = OrmSyncStateStore.for_peer(make_user("someone-else"), self.PEER, "starkeep-drive", "laptop")
        return _Both(other_channel, other_owner)

    @pytest.fixture
    def reopen(self, owner: Any) -> Callable[[], BlobStateStore]:
        from starkeep_sync.adapters.state import OrmSyncStateStore

        return lambda: OrmSyncStateStore.for_peer(owner, self.PEER, "starkeep-drive", "laptop")


class _Both:
    """Two stores asked the same questions; each answer must agree (for the isolation test)."""

    def __init__(self, a: Any, b: Any) -> None:
        self.a, self.b = a, b

    def __getattr__(self, name: str) -> Any:
        def both(*args: Any, **kwargs: Any) -> Any:
            first = getattr(self.a, name)(*args, **kwargs)
            second = getattr(self.b, name)(*args, **kwargs)
            assert first == second, (name, first, second)
            return first
        return both
