"""The paging layer itself, on a store made of plain lists: which nodes it reads, how much, and the cut."""

from __future__ import annotations

from collections.abc import Collection, Iterator
from typing import Any

import pytest

from starkeep_sync.core import paging
from starkeep_sync.core.hlc import HLCTimestamp, serialize_hlc

from .contract import hlc

pytestmark = pytest.mark.nodb

Item = tuple[HLCTimestamp, str]


class ListStore:
    """Per node, ``(hlc, id)`` in HLC order; records every read the layer asks for."""

    def __init__(self, items: list[Item]) -> None:
        self.by_node: dict[str, list[Item]] = {}
        for item in sorted(items):
            self.by_node.setdefault(item[0][2], []).append(item)
        self.coverage = {node: rows[-1][0] for node, rows in self.by_node.items()}
        self.reads: list[tuple[str, HLCTimestamp, int | None, int]] = []
        self.taken = 0

    def read(self, node: str, floor: HLCTimestamp, limit: int | None,
             skip: Collection[tuple[Any, HLCTimestamp]]) -> Iterator[Item]:
        self.reads.append((node, floor, limit, len(skip)))
        drop = {(i, h) for i, h in skip}
        n = 0
        for h, i in self.by_node.get(node, ()):
            if h > floor and (i, h) not in drop and (limit is None or n < limit):
                n += 1
                self.taken += 1
                yield h, i


def key(item: Item) -> HLCTimestamp:
    return item[0]


def items_of(nodes: str, per_node: int) -> list[Item]:
    return [(hlc(i, node), f"{node}{i}") for node in nodes for i in range(per_node)]


def test_a_covered_requester_reads_nothing() -> None:
    store = ListStore(items_of("abc", 5))
    assert paging.page_since(store.coverage, store.coverage, store.read, key, 10) == ([], False)
    assert store.reads == []
    assert paging.count_since(store.coverage, store.coverage, lambda n, f: 1 / 0) == 0  # type: ignore[arg-type]


def test_only_nodes_with_news_are_read_each_for_limit_plus_one() -> None:
    store = ListStore(items_of("abc", 5))
    watermarks = {"a": hlc(4, "a"), "b": hlc(1, "b")}
    page, more = paging.page_since(store.coverage, watermarks, store.read, key, 3)
    assert [i for _, i in page] == ["c0", "c1", "b2"] and more is True
    assert sorted((node, limit) for node, _, limit, _ in store.reads) == [("b", 4), ("c", 4)]
    # The merge is lazy: the page, one past it, and the head the merge holds of each other stream.
    assert store.taken <= 4 + 1


def test_the_cursor_floor_of_another_node_breaks_ties_by_node_id() -> None:
    store = ListStore(items_of("abc", 3))  # a0 b0 c0 a1 b1 c1 ... share (wall, counter)
    page, more = paging.page_since(store.coverage, {}, store.read, key, 4)
    assert [i for _, i in page] == ["a0", "b0", "c0", "a1"] and more
    rest, more = paging.page_since(store.coverage, {}, store.read, key, 10, cursor=serialize_hlc(page[-1][0]))
    assert [i for _, i in rest] == ["b1", "c1", "a2", "b2", "c2"] and not more


def test_excluded_items_go_to_their_node_only_and_do_not_count() -> None:
    store = ListStore(items_of("ab", 3))
    gone = [(f"a{i}", hlc(i, "a")) for i in range(3)]
    page, more = paging.page_since(store.coverage, {}, store.read, key, 3, exclude=gone)
    assert [i for _, i in page] == ["b0", "b1", "b2"] and more is False
    assert sorted((node, n) for node, _, _, n in store.reads) == [("a", 3), ("b", 0)]


def test_skip_floor_can_spare_a_node_its_read() -> None:
    store = ListStore(items_of("ab", 3))
    gone = [(f"a{i}", hlc(i, "a")) for i in range(3)]
    page, _ = paging.page_since(store.coverage, {}, store.read, key, 10, exclude=gone,
                                skip_floor=lambda node, floor, skip: max(h for _, h in skip))
    assert [i for _, i in page] == ["b0", "b1", "b2"]
    assert [node for node, *_ in store.reads] == ["b"]


def test_merge_page_cuts_exactly() -> None:
    a, b = [1, 4, 6], [2, 3, 5]
    assert paging.merge_page([a, b, []], int, 6) == ([1, 2, 3, 4, 5, 6], False)
    assert paging.merge_page([a, b], int, 5) == ([1, 2, 3, 4, 5], True)
    assert paging.merge_page([], int, 5) == ([], False)
    assert paging.merge_page([iter(a)], int, None) == ([1, 4, 6], False)


def test_coverage_bump_is_the_highest_per_node() -> None:
    assert paging.coverage_bump([hlc(3, "a"), hlc(1, "a"), hlc(2, "b"), hlc(2, "b", 1)]) == {
        "a": hlc(3, "a"), "b": hlc(2, "b", 1)}
    assert paging.count_since({"a": hlc(3, "a"), "b": hlc(2, "b")}, {"a": hlc(3, "a")}, lambda n, f: 7) == 7
