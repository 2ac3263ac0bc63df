"""The device's file-system blob storage: part files left by a killed writer are swept, live ones kept."""

from __future__ import annotations

import io
import os
import time
from pathlib import Path

import pytest

from starkeep_sync.device.files import PART_PREFIX, STALE_PART_SECONDS, FileSystemObjectStorage

KEY = "shared/image/ab/abcdef"


def _part(folder: Path, name: str, age: float) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / f"{PART_PREFIX}{name}"
    path.write_bytes(b"half a blob")
    then = time.time() - age
    os.utime(path, (then, then))
    return path


def test_opening_the_storage_removes_part_files_a_killed_writer_left(tmp_path: Path) -> None:
    FileSystemObjectStorage(tmp_path).put(KEY, b"landed")
    stale = _part(tmp_path / "shared/image/ab", "dead", STALE_PART_SECONDS + 60)
    deep = _part(tmp_path / "shared/video/cd", "dead2", STALE_PART_SECONDS * 10)
    live = _part(tmp_path / "shared/image/ab", "live", 5)  # another process is writing it right now

    storage = FileSystemObjectStorage(tmp_path)
    assert not stale.exists() and not deep.exists()
    assert live.exists()
    assert storage.keys() == [KEY] and storage.open(KEY).read() == b"landed"  # type: ignore[union-attr]


def test_the_sweep_can_be_turned_off_and_run_by_hand(tmp_path: Path) -> None:
    stale = _part(tmp_path / "shared/image/ab", "dead", STALE_PART_SECONDS + 60)
    storage = FileSystemObjectStorage(tmp_path, stale_part_seconds=None)
    assert stale.exists()
    assert storage.sweep_parts(idle_seconds=10) == 1 and not stale.exists()
    assert storage.sweep_parts(idle_seconds=10) == 0


def test_a_write_that_fails_part_way_leaves_no_part_file(tmp_path: Path) -> None:
    storage = FileSystemObjectStorage(tmp_path)

    class Broken(io.RawIOBase):
        def readable(self) -> bool:
            return True

        def read(self, size: int = -1) -> bytes:
            raise OSError("the source went away")

    with pytest.raises(OSError, match="went away"):
        storage.put(KEY, Broken())
    assert not storage.has(KEY)
    assert [p.name for p in tmp_path.rglob("*") if p.is_file()] == []
