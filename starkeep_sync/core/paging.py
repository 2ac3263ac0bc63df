"""One paging algorithm for every store: what lies above a per-node vector, in HLC order, cut exactly.

A store holds, per node, its items in HLC order, and a coverage summary (per
node, the highest HLC taken in). Answering "what is above this vector" is the
same everywhere (PROTOCOL §4, §6.3):

- per node, start above the requester's watermark (or above the page cursor,
  when that is higher);
- skip a node whose coverage is not above its start: it holds nothing there,
  and no row of it is read (a converged round reads no data at all);
- read at most ``limit + 1`` items of each remaining node (one indexed range
  query in SQL), leaving out the excluded ``(id, hlc)`` pairs;
- merge the per-node streams in HLC order and cut at ``limit``: the item
  past the cut is what makes ``hasMore`` exact.

Stores supply only the per-node read (:class:`NodeReader`) and the key that
gives an item's HLC (a parsed HLC, or a serialized one: both sort as HLCs do).
The same merge-and-cut joins the tables of an app channel (:func:`merge_page`).
"""

from __future__ import annotations

import heapq
from collections.abc import Callable, Collection, Hashable, Iterable, Mapping, Sequence
from itertools import islice
from typing import Any, Protocol, TypeVar

from .hlc import ZERO_HLC, HLCTimestamp, deserialize_hlc
from .watermarks import advance_watermarks

T = TypeVar("T")
T_co = TypeVar("T_co", covariant=True)
Watermarks = dict[str, HLCTimestamp]

#: ``(id, hlc)`` of an item not to be returned (a responder's echo); ``id`` is the store's identity of it.
Excluded = tuple[Hashable, HLCTimestamp]


class NodeReader(Protocol[T_co]):
    """The one primitive a store supplies: items of one node above a floor, in HLC order."""

    def __call__(self, node: str, floor: HLCTimestamp, limit: int | None,
                 skip: Collection[Excluded]) -> Iterable[T_co]:
        """Items of ``node`` whose HLC is above ``floor``, ascending, at most ``limit`` (``None``: all).

        ``floor`` may carry another node's id (a page cursor): compare whole
        HLCs, or see :func:`starkeep_sync.core.watermarks.node_floor_bound` for SQL.
        Items whose ``(id, hlc)`` is in ``skip`` (all of this node) are left
        out, and do not count towards ``limit``. May be lazy: the merge takes
        only what the page needs.
        """
        ...


class SkipFloor(Protocol):
    """Optional: move a node's floor past excluded items the store knows are all that lies there."""

    def __call__(self, node: str, floor: HLCTimestamp, skip: Collection[Excluded]) -> HLCTimestamp:
        """A floor at or above ``floor``; above it only if nothing but ``skip`` items lie in between."""
        ...


def start_points(coverage: Mapping[str, HLCTimestamp], watermarks: Mapping[str, HLCTimestamp],
                 after: HLCTimestamp | None = None) -> dict[str, HLCTimestamp]:
    """Per node with anything above its start: that start (the watermark, or ``after`` when higher).

    Nodes the requester already covers are left out, so the store never reads them.
    """
    out: dict[str, HLCTimestamp] = {}
    for node, top in coverage.items():
        floor = watermarks.get(node, ZERO_HLC)
        if after is not None and after > floor:
            floor = after
        if top > floor:
            out[node] = floor
    return out


def by_node(exclude: Iterable[Excluded] | None) -> dict[str, list[Excluded]]:
    """Excluded pairs grouped by the node of their HLC (an item only ever sits in its node's stream)."""
    out: dict[str, list[Excluded]] = {}
    for pair in exclude or ():
        out.setdefault(pair[1][2], []).append(pair)
    return out


def merge_page(streams: Sequence[Iterable[T]], key: Callable[[T], Any], limit: int | None) -> tuple[list[T], bool]:
    """Merge streams already in HLC order; the first ``limit`` items, and whether any lies beyond them."""
    streams = [s for s in streams if not (isinstance(s, list) and not s)]
    if not streams:
        return [], False
    merged: Iterable[T] = streams[0] if len(streams) == 1 else heapq.merge(*streams, key=key)
    if limit is None:
        return list(merged), False
    taken = list(islice(merged, limit + 1))
    if len(taken) > limit:
        return taken[:limit], True
    return taken, False


def page_since(
    coverage: Mapping[str, HLCTimestamp],
    watermarks: Mapping[str, HLCTimestamp],
    read: NodeReader[T],
    key: Callable[[T], Any],
    limit: int | None,
    cursor: str | HLCTimestamp | None = None,
    exclude: Iterable[Excluded] | None = None,
    skip_floor: SkipFloor | None = None,
) -> tuple[list[T], bool]:
    """Items above ``watermarks`` (and above ``cursor``) in HLC order, at most ``limit``; and whether more remain.

    ``coverage`` is the store's summary; ``read`` its per-node primitive;
    ``key`` an item's HLC (parsed or serialized). ``exclude`` pairs are never
    returned and ``hasMore`` stays exact. ``skip_floor``, when given, may
    raise a node's floor past its excluded items without reading them.
    """
    after = deserialize_hlc(cursor) if isinstance(cursor, str) else cursor
    skipped = by_node(exclude)
    fetch = None if limit is None else limit + 1
    streams: list[Iterable[T]] = []
    for node, floor in start_points(coverage, watermarks, after).items():
        skip = skipped.get(node, ())
        if skip and skip_floor is not None:
            floor = skip_floor(node, floor, skip)
            if coverage[node] <= floor:
                continue
        streams.append(read(node, floor, fetch, skip))
    return merge_page(streams, key, limit)


def count_since(coverage: Mapping[str, HLCTimestamp], watermarks: Mapping[str, HLCTimestamp],
                count_node: Callable[[str, HLCTimestamp], int]) -> int:
    """How many items lie above ``watermarks``: ``count_node(node, floor)`` for the nodes with any."""
    return sum(count_node(node, floor) for node, floor in start_points(coverage, watermarks).items())


def coverage_bump(hlcs: Iterable[HLCTimestamp]) -> Watermarks:
    """What a coverage summary must be raised to after taking in ``hlcs``: per node, the highest of them.

    Winners and LWW losers alike: both were taken in (PROTOCOL §4 ``responderWatermarks``).
    """
    return advance_watermarks({}, hlcs)


__all__ = [
    "Excluded",
    "NodeReader",
    "SkipFloor",
    "by_node",
    "count_since",
    "coverage_bump",
    "merge_page",
    "page_since",
    "start_points",
]
