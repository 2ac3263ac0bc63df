"""``python -m bench --compare OLD``: this checkout and another one, taking turns in one run.

Each checkout runs its own ``python -m bench`` (its own code on both sides: the
device in the bench process, the server under gunicorn) one workload group and
database at a time, the two checkouts alternating (which goes first alternates
too), so both share the machine's load. The table pairs each row of the two
runs: ``new/old`` is how much faster this checkout is (old / new for a
latency), and a row more than 5% slower is a ``slower``.
"""

from __future__ import annotations

import statistics
import subprocess
import sys
import tempfile
from collections.abc import Sequence
from pathlib import Path

from bench.machine import ROOT
from bench.server import log

#: Workload groups run as one bench call: 1-3 share their data, so they run together.
GROUPS = ((0,), (1, 2, 3), (4,), (5,), (6,))
#: A row slower than this (new speed / old speed) is flagged.
SLOWER = 0.95

Key = tuple[str, str, str, str]  # (#, workload, db, N)


def parse_table(text: str) -> list[tuple[Key, str, str, str]]:
    """``(key, unit, ours, raw line)`` of each row of a ``python -m bench`` table."""
    out = []
    for line in text.splitlines():
        if not line.startswith("| ") or line.startswith("| #"):
            continue
        cells = [c.strip() for c in line.strip().strip("|").split(" | ")]
        if len(cells) < 6:
            continue
        out.append(((cells[0], cells[1], cells[2], cells[3]), cells[4], cells[5], line))
    return out


def number(text: str) -> float | None:
    try:
        return float(text.replace(",", ""))
    except ValueError:
        return None


def run_checkout(python: str, root: Path, args: Sequence[str], out: Path) -> str:
    done = subprocess.run([python, "-m", "bench", *args, "--out", str(out)], cwd=root, capture_output=True,
                          text=True)
    if done.returncode != 0:
        raise RuntimeError(f"bench in {root} failed:\n{done.stderr[-4000:]}")
    return out.read_text()


def compare(old_root: Path, old_python: str, sizes: str, dbs: Sequence[str], selected: set[int],
            rounds: int) -> tuple[list[str], list[str]]:
    """Run both checkouts in turns; the comparison table's lines, and this checkout's own rows (last round)."""
    sides = {"new": (sys.executable, ROOT), "old": (old_python, old_root)}
    samples: dict[str, dict[Key, list[float]]] = {"new": {}, "old": {}}
    units: dict[Key, str] = {}
    order: list[Key] = []
    own: dict[Key, str] = {}
    turn = 0
    with tempfile.TemporaryDirectory(prefix="starkeep-compare-") as tmp:
        for r in range(rounds):
            for group in GROUPS:
                only = [w for w in group if w in selected]
                if not only:
                    continue
                for db in (["memory"] if only == [0] else dbs):
                    args = ["--sizes", sizes, "--only", ",".join(map(str, only))]
                    if db != "memory":
                        args += ["--db", db]
                    for side in (("new", "old") if turn % 2 == 0 else ("old", "new")):
                        python, root = sides[side]
                        log(f"compare round {r + 1}/{rounds}: {side} checkout, workloads {args[3]} on {db}")
                        text = run_checkout(python, root, args, Path(tmp) / f"{side}.md")
                        for key, unit, ours, line in parse_table(text):
                            if key not in units:
                                units[key] = unit
                                order.append(key)
                            value = number(ours)
                            if value is not None:
                                samples[side].setdefault(key, []).append(value)
                            if side == "new":
                                own[key] = line
                    turn += 1
    dbs_order = ["memory", "sqlite", "postgres"]
    order.sort(key=lambda k: (int(k[0]), dbs_order.index(k[2]) if k[2] in dbs_order else 3))  # stable
    lines = ["| # | workload | db | N | unit | old | new | new/old | result |",
             "|---|---|---|---|---|---:|---:|---:|---|"]
    for key in order:
        old, new = samples["old"].get(key), samples["new"].get(key)
        unit = units[key]
        cells = [*key, unit]
        if not old or not new:
            lines.append("| " + " | ".join([*cells, "-", "-", "-", "skipped"]) + " |")
            continue
        o, n = statistics.median(old), statistics.median(new)
        faster = o / n if unit.startswith("ms") else n / o  # above 1: this checkout is faster
        verdict = "slower" if faster < SLOWER else "ok"
        lines.append("| " + " | ".join([*cells, _fmt(o), _fmt(n), f"{faster:.2f}x", verdict]) + " |")
    return lines, [own[k] for k in order if k in own]


def _fmt(x: float) -> str:
    if x >= 100:
        return f"{x:,.0f}"
    if x >= 10:
        return f"{x:,.1f}"
    if x >= 1:
        return f"{x:.2f}"
    return f"{x:.3f}"


def git_revision(root: Path) -> str:
    try:
        return subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=root, capture_output=True, text=True,
                              timeout=10).stdout.strip() or "unknown"
    except (OSError, subprocess.SubprocessError):
        return "unknown"
