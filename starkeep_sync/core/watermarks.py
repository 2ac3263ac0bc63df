"""Per-node watermark vectors: ``{node_id: HLCTimestamp}``."""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping
from typing import TypeVar

from .hlc import ZERO_HLC, HLCTimestamp

Watermarks = dict[str, HLCTimestamp]
T = TypeVar("T")


def watermark_for(w: Mapping[str, HLCTimestamp], node_id: str) -> HLCTimestamp:
    """The watermark for ``node_id``, ``ZERO_HLC`` when the node is unknown."""
    return w.get(node_id, ZERO_HLC)


def advance_watermark(w: Mapping[str, HLCTimestamp], hlc: HLCTimestamp) -> Watermarks:
    """A copy of ``w`` with ``hlc.node_id`` moved up to ``hlc`` (never down)."""
    out = dict(w)
    current = out.get(hlc.node_id)
    if current is None or hlc > current:
        out[hlc.node_id] = hlc
    return out


def advance_watermarks(w: Mapping[str, HLCTimestamp], hlcs: Iterable[HLCTimestamp]) -> Watermarks:
    """A copy of ``w`` with each node moved up to the highest of ``hlcs`` for it (never down)."""
    return raise_watermarks(dict(w), hlcs)


def raise_watermarks(w: Watermarks, hlcs: Iterable[HLCTimestamp]) -> Watermarks:
    """``w`` itself, each node moved up to the highest of ``hlcs`` for it (never down).

    In place, for a coverage summary raised on every write (the memory adapters).
    """
    for hlc in hlcs:
        current = w.get(hlc[2])
        if current is None or hlc > current:
            w[hlc[2]] = hlc
    return w


def merge_watermarks(
    a: Mapping[str, HLCTimestamp], b: Mapping[str, HLCTimestamp]
) -> Watermarks:
    """Per-node maximum of two vectors."""
    out = dict(a)
    for node, hlc in b.items():
        current = out.get(node)
        if current is None or hlc > current:
            out[node] = hlc
    return out


def select_unseen(
    items: Iterable[T],
    w: Mapping[str, HLCTimestamp],
    hlc_of: Callable[[T], HLCTimestamp] = lambda item: item.updated_at,  # type: ignore[attr-defined]
) -> list[T]:
    """Items whose HLC is above ``w`` for their node, in HLC order."""
    unseen = []
    for item in items:
        hlc = hlc_of(item)
        if hlc > w.get(hlc.node_id, ZERO_HLC):
            unseen.append(item)
    unseen.sort(key=hlc_of)
    return unseen


def is_lower_somewhere(new: Mapping[str, HLCTimestamp], old: Mapping[str, HLCTimestamp]) -> bool:
    """True when ``new`` is below ``old`` for at least one node (the peer lost data)."""
    return any(new.get(node, ZERO_HLC) < hlc for node, hlc in old.items())


def node_floor_bound(node: str, floor: HLCTimestamp) -> tuple[str, HLCTimestamp]:
    """``(op, bound)`` such that a row of ``node`` is above ``floor`` iff ``updated_at op bound``.

    ``floor`` may carry another node's id (a page cut); the bound is rewritten
    onto ``node`` so the comparison is between two serialized HLCs of the same
    node, which sort the same under any collation.
    """
    if floor[2] == node:
        return ">", floor
    same_point = HLCTimestamp(floor[0], floor[1], node)
    # At equal (wall, counter) the larger node id is the later HLC.
    return (">=" if node > floor[2] else ">"), same_point
