"""``python -m bench --sizes tiny`` runs end to end and writes a row for every workload."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent

EXPECTED = [
    ("0", "initial push"), ("0", "initial pull"), ("0", "no-op round"), ("0", "push with 1 KiB blobs"),
    ("1", "initial push"), ("2", "initial pull"), ("3", "no-op round"), ("4", "app rows push"),
    ("4", "app rows pull"), ("5", "blob push"), ("5", "blob pull"), ("5", "blob device -> server -> device"),
    ("6", "devices push at once"),
    ("7", "write -> visible on another device, p50"), ("7", "write -> visible on another device, p95"),
    ("7", "no-op round under ASGI"), ("7", "under ASGI vs WSGI"), ("7", "worker RSS with idle long-polls"),
    ("7", "worker threads with idle long-polls"),
    ("7", "no-op round beside idle long-polls"),
]


def test_bench_tiny_sqlite_writes_the_table(tmp_path: Path) -> None:
    out = tmp_path / "r.md"
    done = subprocess.run(
        [sys.executable, "-m", "bench", "--sizes", "tiny", "--db", "sqlite", "--out", str(out),
         "--workdir", str(tmp_path / "work")],
        cwd=ROOT, capture_output=True, text=True, timeout=180,
    )
    assert done.returncode == 0, done.stderr[-4000:]
    text = out.read_text()
    assert text == done.stdout  # what is printed is what is written
    for key in ("- date:", "- cores:", "- memory:", "- python:"):
        assert key in text
    rows = [[c.strip() for c in line.strip("|").split("|")] for line in text.splitlines()
            if line.startswith("| ") and not line.startswith("| #")]
    assert rows and all(len(r) == 11 for r in rows)
    for workload, what in EXPECTED:
        matching = [r for r in rows if r[0] == workload and what in r[1]]
        assert matching, f"no row for workload {workload} {what!r}"
        for r in matching:
            if workload == "6":
                assert r[2] == "sqlite" and r[5] == "PostgreSQL only" and r[10] == "skipped"
            else:
                float(r[5].replace(",", ""))  # a measured number
                assert r[10] in ("pass", "miss", "-")
    http = [r for r in rows if r[0] in "123457"]
    assert http and all(r[2] == "sqlite" for r in http)


def test_bench_compare_pairs_the_rows_of_two_checkouts(tmp_path: Path) -> None:
    # This checkout compared with itself: every row of workload 0 appears once, with old, new and new/old.
    out = tmp_path / "c.md"
    done = subprocess.run(
        [sys.executable, "-m", "bench", "--sizes", "tiny", "--only", "0", "--compare", str(ROOT),
         "--compare-python", sys.executable, "--out", str(out)],
        cwd=ROOT, capture_output=True, text=True, timeout=180,
    )
    assert done.returncode == 0, done.stderr[-4000:]
    text = out.read_text()
    assert "## Old vs new (same run)" in text and "- old revision:" in text
    compared = text.split("## Old vs new (same run)", 1)[1].split("## This checkout", 1)[0]
    rows = [[c.strip() for c in line.strip("|").split("|")] for line in compared.splitlines()
            if line.startswith("| ") and not line.startswith("| #")]
    assert len(rows) == 11 and all(r[0] == "0" and r[2] == "memory" for r in rows)
    for r in rows:
        float(r[5].replace(",", "")), float(r[6].replace(",", ""))  # old and new measured
        assert r[7].endswith("x") and r[8] in ("ok", "slower")
