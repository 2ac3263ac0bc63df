"""Remove the ``.upload-*`` temporary files that uploads cut short (a killed worker) left in the blob storage."""

from __future__ import annotations

import os
import time
from collections.abc import Iterator
from datetime import timedelta
from typing import Any

from django.core.files.storage import FileSystemStorage, Storage
from django.core.management.base import BaseCommand, CommandError, CommandParser
from django.utils import timezone

from starkeep_sync.adapters.storage import UPLOAD_TEMP_PREFIX, get_blob_storage
from starkeep_sync.conf import sync_settings
from starkeep_sync.management.commands.starkeep_sync import human_bytes

#: A leftover found: ``(name shown, size in bytes, remove it)``.
Leftover = tuple[str, int, Any]


def _local_root(storage: Storage, prefix: str) -> str | None:
    """The folder to walk on a file system; ``None`` elsewhere (InMemoryStorage has ``path()`` but no files)."""
    if not isinstance(storage, FileSystemStorage):
        return None
    try:
        return storage.path(prefix)
    except NotImplementedError:
        return None


def _walk_local(root: str, cutoff: float) -> Iterator[Leftover]:
    for directory, _, files in os.walk(root):
        for name in files:
            if not name.startswith(UPLOAD_TEMP_PREFIX):
                continue
            path = os.path.join(directory, name)
            try:
                stat = os.stat(path)
            except FileNotFoundError:
                continue  # its upload just finished (renamed) or another sweep took it
            if stat.st_mtime < cutoff:
                yield path, stat.st_size, lambda p=path: os.unlink(p)


def _walk_storage(storage: Storage, prefix: str, cutoff: Any) -> Iterator[Leftover]:
    directories = [prefix]
    while directories:
        directory = directories.pop()
        subdirectories, files = storage.listdir(directory)
        directories.extend(f"{directory}/{d}" if directory else d for d in subdirectories)
        for name in files:
            if not name.startswith(UPLOAD_TEMP_PREFIX):
                continue
            full = f"{directory}/{name}" if directory else name
            if storage.get_modified_time(full) < cutoff:
                yield full, storage.size(full), lambda n=full: storage.delete(n)


class Command(BaseCommand):
    help = (
        "Remove leftover '.upload-*' temporary files under the blob storage's STORAGE_PREFIX: an upload "
        "is written to such a file and renamed over its blob, so a worker killed mid-upload leaves one "
        "behind for good. Only files older than --older-than hours are touched, so uploads in progress are safe."
    )

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument("--older-than", type=float, default=24.0, metavar="HOURS",
                            help="Only files last written more than this many hours ago (default: 24).")
        parser.add_argument("--dry-run", action="store_true", help="List what would be removed; remove nothing.")

    def handle(self, *args: Any, **options: Any) -> None:
        hours = options["older_than"]
        if not hours > 0:
            raise CommandError("--older-than must be a positive number of hours (an upload may be in progress).")
        storage = get_blob_storage()
        prefix = sync_settings.STORAGE_PREFIX.strip("/")
        root = _local_root(storage, prefix)
        if root is not None:
            where = root
            found = _walk_local(root, time.time() - hours * 3600) if os.path.isdir(root) else iter(())
        else:
            where = f"{sync_settings.STORAGE_ALIAS}:{prefix or '/'}"
            found = _walk_storage(storage, prefix, timezone.now() - timedelta(hours=hours))
        count = size = 0
        for name, nbytes, remove in found:
            if options["dry_run"]:
                self.stdout.write(f"would remove {name} ({human_bytes(nbytes)})")
            else:
                try:
                    remove()
                except FileNotFoundError:
                    continue
            count += 1
            size += nbytes
        verb = "Would remove" if options["dry_run"] else "Removed"
        self.stdout.write(self.style.SUCCESS(
            f"{verb} {count} leftover upload file(s), {human_bytes(size)} ({size} bytes), "
            f"older than {hours:g} h, under {where}."))
