"""Result rows, targets and the markdown table."""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass

WORKLOADS = {
    0: "in-process engine (memory adapters)",
    1: "initial push over HTTP",
    2: "initial pull over HTTP",
    3: "no-op round over HTTP",
    4: "app rows (AW) over HTTP",
    5: "blobs device -> server -> device",
    6: "server under concurrency",
    7: "live changes (ASGI)",
    8: "lazy blob policy: metadata of file-backed records",
}


@dataclass
class Target:
    """A goal for one row: ``check(row)`` says pass or miss; ``text`` is what the table shows."""

    text: str
    check: Callable[[Row], bool]


@dataclass
class Row:
    workload: int
    what: str
    db: str
    n: str
    unit: str
    ours: float | None
    baseline: float | None = None
    baseline_name: str = ""
    #: Ratio shown in the table; by default ours / baseline.
    ratio: float | None = None
    reference: str = ""
    targets: tuple[Target, ...] = ()
    note: str = ""

    def __post_init__(self) -> None:
        if self.ratio is None and self.ours is not None and self.baseline:
            self.ratio = self.ours / self.baseline

    @property
    def verdict(self) -> str:
        if self.ours is None:
            return "skipped"
        if not self.targets:
            return "-"
        return "pass" if all(t.check(self) for t in self.targets) else "miss"


def at_least(value: float, text: str | None = None) -> Target:
    return Target(text or f">= {fmt(value)}", lambda r: r.ours is not None and r.ours >= value)


def at_most(value: float, text: str | None = None) -> Target:
    return Target(text or f"<= {fmt(value)}", lambda r: r.ours is not None and r.ours <= value)


def ratio_at_least(value: float, text: str) -> Target:
    return Target(text, lambda r: r.ratio is not None and r.ratio >= value)


def ratio_at_most(value: float, text: str) -> Target:
    return Target(text, lambda r: r.ratio is not None and r.ratio <= value)


def fmt(x: float | None) -> str:
    if x is None:
        return "-"
    if x >= 100:
        return f"{x:,.0f}"
    if x >= 10:
        return f"{x:,.1f}"
    if x >= 1:
        return f"{x:.2f}"
    return f"{x:.3f}"


def _cell(text: str) -> str:
    return text.replace("|", "\\|")


def render(rows: Iterable[Row], machine: dict[str, str], title: str, notes: Iterable[str] = ()) -> str:
    rows = list(rows)
    out = [f"# {title}", "", "Machine:", ""]
    out += [f"- {k}: {v}" for k, v in machine.items()]
    out += [
        "",
        "| # | workload | db | N | unit | ours | baseline | ratio | reference | target | result |",
        "|---|---|---|---|---|---:|---:|---:|---:|---|---|",
    ]
    for r in rows:
        baseline = f"{fmt(r.baseline)} ({r.baseline_name})" if r.baseline is not None else "-"
        ours = fmt(r.ours) if r.ours is not None else (r.note or "skipped")
        ratio = f"{r.ratio:.2f}x" if r.ratio is not None else "-"
        target = "; ".join(t.text for t in r.targets) or "-"
        out.append("| " + " | ".join(_cell(c) for c in (
            str(r.workload), r.what, r.db, r.n, r.unit, ours, baseline, ratio, r.reference or "-", target,
            r.verdict,
        )) + " |")
    notes = list(notes)
    if notes:
        out += ["", "Notes:", ""]
        out += [f"- {n}" for n in notes]
    return "\n".join(out) + "\n"
