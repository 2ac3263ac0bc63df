"""``manage.py starkeep_sweep_uploads``: leftover ``.upload-*`` files of killed uploads go, nothing else does."""

from __future__ import annotations

import os
import time
from io import StringIO
from pathlib import Path
from typing import Any

import pytest
from django.core.files.base import ContentFile
from django.core.files.storage import storages
from django.core.management import CommandError, call_command

from starkeep_sync.adapters import DjangoObjectStorage
from tests.factories import make_user

from .support import drive_key

DAY = 24 * 3600


def sweep(*args: str) -> str:
    out = StringIO()
    call_command("starkeep_sweep_uploads", *args, stdout=out)
    return out.getvalue()


def make_file(path: Path, size: int, age_seconds: float) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(b"\0" * size)
    then = time.time() - age_seconds
    os.utime(path, (then, then))
    return path


@pytest.fixture
def media(settings: Any) -> Path:
    return Path(settings.STORAGES["default"]["OPTIONS"]["location"])


@pytest.fixture
def tree(media: Path) -> dict[str, Path]:
    """Under the prefix: two stale leftovers, a fresh one (an upload in progress) and an old blob; one outside."""
    blob_dir = media / "starkeep" / "1" / "shared" / "image" / "ab"
    return {
        "stale": make_file(blob_dir / ".upload-k3j4h5g6", 1000, 2 * DAY),
        "stale_deep": make_file(media / "starkeep" / "2" / "apps" / "notes" / "syncable" / ".upload-zzzz1111", 24,
                                30 * DAY),
        "fresh": make_file(blob_dir / ".upload-n0w1n0w1", 500, 60),
        "blob": make_file(blob_dir / ("ab" * 32), 4000, 90 * DAY),
        "outside": make_file(media / "other-app" / ".upload-notours1", 7, 90 * DAY),
    }


def test_dry_run_lists_and_keeps(tree: dict[str, Path]) -> None:
    out = sweep("--dry-run")
    assert f"would remove {tree['stale']}" in out and f"would remove {tree['stale_deep']}" in out
    assert "Would remove 2 leftover upload file(s)" in out and "(1024 bytes)" in out
    assert all(p.exists() for p in tree.values())


def test_sweep_removes_only_stale_leftovers_under_the_prefix(tree: dict[str, Path]) -> None:
    out = sweep()
    assert "Removed 2 leftover upload file(s), 1.0 KiB (1024 bytes), older than 24 h" in out
    assert not tree["stale"].exists() and not tree["stale_deep"].exists()
    assert tree["fresh"].exists() and tree["blob"].exists() and tree["outside"].exists()
    assert "Removed 0 leftover" in sweep()


def test_older_than_sets_the_age(tree: dict[str, Path]) -> None:
    out = sweep("--older-than", "72")  # only the 30-day-old one
    assert "Removed 1 leftover upload file(s)" in out and "(24 bytes)" in out
    assert not tree["stale_deep"].exists() and tree["stale"].exists()
    sweep("--older-than", "0.001")  # 3.6 s: the minute-old one too
    assert not tree["fresh"].exists() and tree["blob"].exists()


@pytest.mark.parametrize("hours", ["0", "-3"])
def test_older_than_must_be_positive(hours: str) -> None:
    with pytest.raises(CommandError, match="positive"):
        sweep("--older-than", hours)


def test_bad_hours_are_refused_by_the_parser() -> None:
    with pytest.raises(CommandError, match="invalid float"):
        sweep("--older-than", "a day")


def test_no_blob_folder_yet(media: Path) -> None:
    assert "Removed 0 leftover upload file(s)" in sweep()


@pytest.mark.django_db
def test_a_real_upload_leaves_nothing_to_sweep_and_a_killed_one_does(media: Path) -> None:
    storage = DjangoObjectStorage(make_user("sweeper"))
    data = b"photo bytes"

    class Killed(Exception):
        pass

    class DiesMidway:
        """A body whose reading stops the worker, as a SIGKILL would, after the first bytes."""

        def __init__(self) -> None:
            self.sent = False

        def read(self, size: int = -1) -> bytes:
            if self.sent:
                raise Killed()
            self.sent = True
            return data

    storage.put(drive_key(data), data, "image/jpeg")
    with pytest.raises(Killed):
        storage.put(drive_key(b"other"), DiesMidway(), "image/jpeg")  # type: ignore[arg-type]
    # The adapter removes its temp file on any error it sees; a kill gives it no chance, so make one the way
    # it does (the same prefix, next to the blob) and age it.
    assert list(media.rglob(".upload-*")) == []
    orphan = make_file(Path(storage.storage.path(storage.name_for(drive_key(data)))).parent / ".upload-killed01",
                       len(data), 2 * DAY)
    assert "Removed 1 leftover upload file(s)" in sweep()
    assert not orphan.exists() and storage.has(drive_key(data))


def test_storages_without_local_paths_are_walked_with_listdir(settings: Any) -> None:
    settings.STORAGES = {**settings.STORAGES,
                         "default": {"BACKEND": "django.core.files.storage.InMemoryStorage"}}
    storage = storages["default"]
    for name in ("starkeep/1/shared/image/ab/.upload-aaaa1111", "starkeep/3/.upload-bbbb2222",
                 "starkeep/1/shared/image/ab/" + "ab" * 32, "elsewhere/.upload-cccc3333"):
        storage.save(name, ContentFile(b"12345"))
    time.sleep(0.3)
    out = sweep("--older-than", "0.00005")  # 0.18 s
    assert "Removed 2 leftover upload file(s), 10 B (10 bytes)" in out and "default:starkeep" in out
    assert not storage.exists("starkeep/1/shared/image/ab/.upload-aaaa1111")
    assert not storage.exists("starkeep/3/.upload-bbbb2222")
    assert storage.exists("starkeep/1/shared/image/ab/" + "ab" * 32) and storage.exists("elsewhere/.upload-cccc3333")
