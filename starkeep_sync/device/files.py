"""A device's blobs as plain files in a folder (the object storage of the SQLite device store)."""

from __future__ import annotations

import logging
import os
import tempfile
import time
from pathlib import Path
from typing import IO

from ..core.blobs import CHUNK_SIZE
from ..core.constants import LOGGER_NAME
from ..core.keys import check_key_syntax
from ..core.protocols import StoredObject

logger = logging.getLogger(LOGGER_NAME)

PART_PREFIX = ".part-"
#: A part file not written to for this long was left by a writer that died (a killed device): every
#: write moves its mtime, so a live transfer, however slow, keeps its part file younger than this.
STALE_PART_SECONDS = 3600.0


class FileSystemObjectStorage:
    """Blobs as files under ``root`` (key = relative path); writes land by atomic rename.

    Opening it removes part files left by a killed writer (idle over ``stale_part_seconds``; ``None``
    keeps them).
    """

    def __init__(self, root: str | os.PathLike[str],
                 stale_part_seconds: float | None = STALE_PART_SECONDS) -> None:
        self.root = Path(root)
        self.root.mkdir(parents=True, exist_ok=True)
        self._root = str(self.root)
        if stale_part_seconds is not None:
            self.sweep_parts(stale_part_seconds)

    def sweep_parts(self, idle_seconds: float = STALE_PART_SECONDS) -> int:
        """Remove part files not written to for ``idle_seconds``; return how many."""
        cutoff = time.time() - idle_seconds
        removed = 0
        for folder, _dirs, files in os.walk(self.root):
            for name in files:
                if not name.startswith(PART_PREFIX):
                    continue
                path = os.path.join(folder, name)
                try:
                    if os.stat(path).st_mtime < cutoff:
                        os.unlink(path)
                        removed += 1
                except FileNotFoundError:
                    pass  # its writer finished or another sweep took it
        if removed:
            logger.info("removed %d part file(s) left by an interrupted write under %s", removed, self.root)
        return removed

    def _path(self, key: str) -> Path:
        check_key_syntax(key)
        return self.root / key

    def put(self, key: str, data: bytes | IO[bytes], content_type: str | None = None) -> None:
        path = self._path(key)
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=PART_PREFIX)
        try:
            with os.fdopen(fd, "wb") as out:
                if isinstance(data, (bytes, bytearray, memoryview)):
                    out.write(data)
                else:
                    while chunk := data.read(CHUNK_SIZE):
                        out.write(chunk)
            os.replace(tmp, path)
        except BaseException:
            os.unlink(tmp)
            raise
        if content_type:
            path.with_name(path.name + ".content-type").write_text(content_type)

    def _content_type(self, path: Path) -> str | None:
        ct = path.with_name(path.name + ".content-type")
        return ct.read_text() if ct.exists() else None

    def get(self, key: str) -> StoredObject | None:
        path = self._path(key)
        if not path.is_file():
            return None
        data = path.read_bytes()
        return StoredObject(data, self._content_type(path), len(data))

    def open(self, key: str) -> IO[bytes] | None:
        path = self._path(key)
        try:
            return open(path, "rb")
        except FileNotFoundError:
            return None

    def has(self, key: str) -> bool:
        # A string path, not pathlib: asked once per pulled file-backed record; 10,000 absent keys
        # took 87 ms with ``Path.is_file`` against 53 ms (medians of 7, same run).
        check_key_syntax(key)
        return os.path.isfile(os.path.join(self._root, key))

    def delete(self, key: str) -> None:
        path = self._path(key)
        path.unlink(missing_ok=True)
        path.with_name(path.name + ".content-type").unlink(missing_ok=True)

    def keys(self) -> list[str]:
        return sorted(
            p.relative_to(self.root).as_posix() for p in self.root.rglob("*")
            if p.is_file() and not p.name.endswith(".content-type") and not p.name.startswith(PART_PREFIX)
        )

    def clear(self) -> None:
        for key in self.keys():
            self.delete(key)
