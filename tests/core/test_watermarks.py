"""Watermark vector helpers."""

from __future__ import annotations

from dataclasses import dataclass

from starkeep_sync.core.hlc import ZERO_HLC, HLCTimestamp
from starkeep_sync.core.watermarks import (
    advance_watermark,
    advance_watermarks,
    is_lower_somewhere,
    merge_watermarks,
    select_unseen,
    watermark_for,
)

A1 = HLCTimestamp(1000, 0, "A")
A2 = HLCTimestamp(1000, 1, "A")
A3 = HLCTimestamp(2000, 0, "A")
B1 = HLCTimestamp(500, 0, "B")
B2 = HLCTimestamp(3000, 0, "B")


@dataclass
class Item:
    name: str
    updated_at: HLCTimestamp


def test_watermark_for_defaults_to_zero() -> None:
    w = {"A": A2}
    assert watermark_for(w, "A") == A2
    assert watermark_for(w, "B") == ZERO_HLC
    assert watermark_for({}, "") == ZERO_HLC


def test_advance_moves_up_and_returns_a_copy() -> None:
    w = {"A": A1, "B": B1}
    out = advance_watermark(w, A3)
    assert out == {"A": A3, "B": B1}
    assert w == {"A": A1, "B": B1}  # input untouched
    assert out is not w


def test_advance_many_takes_each_nodes_highest_and_never_moves_down() -> None:
    w = {"A": A2, "B": B2}
    out = advance_watermarks(w, [A3, A1, B1, HLCTimestamp(7, 0, "C")])
    assert out == {"A": A3, "B": B2, "C": HLCTimestamp(7, 0, "C")}
    assert w == {"A": A2, "B": B2}
    assert advance_watermarks({}, []) == {}


def test_advance_adds_unknown_node() -> None:
    assert advance_watermark({}, B1) == {"B": B1}


def test_advance_never_moves_down() -> None:
    w = {"A": A3}
    out = advance_watermark(w, A1)
    assert out == {"A": A3}
    assert out is not w
    assert advance_watermark(w, A3) == {"A": A3}


def test_advance_by_counter() -> None:
    assert advance_watermark({"A": A1}, A2) == {"A": A2}


def test_merge_is_per_node_maximum() -> None:
    a = {"A": A3, "B": B1}
    b = {"A": A1, "B": B2, "C": HLCTimestamp(1, 0, "C")}
    merged = merge_watermarks(a, b)
    assert merged == {"A": A3, "B": B2, "C": HLCTimestamp(1, 0, "C")}
    assert merge_watermarks(b, a) == merged
    assert a == {"A": A3, "B": B1}
    assert b == {"A": A1, "B": B2, "C": HLCTimestamp(1, 0, "C")}


def test_merge_with_empty() -> None:
    a = {"A": A1}
    assert merge_watermarks(a, {}) == a
    assert merge_watermarks({}, a) == a
    assert merge_watermarks(a, {}) is not a


def test_select_unseen_filters_per_node_and_sorts() -> None:
    items = [
        Item("a3", A3),
        Item("b2", B2),
        Item("a1", A1),
        Item("b1", B1),
        Item("a2", A2),
        Item("c", HLCTimestamp(1, 0, "C")),
    ]
    got = select_unseen(items, {"A": A1, "B": B2})
    assert [i.name for i in got] == ["c", "a2", "a3"]


def test_select_unseen_with_empty_watermarks_returns_all_in_hlc_order() -> None:
    items = [Item("b2", B2), Item("a1", A1), Item("b1", B1)]
    assert [i.name for i in select_unseen(items, {})] == ["b1", "a1", "b2"]


def test_select_unseen_is_strictly_above() -> None:
    assert select_unseen([Item("a1", A1)], {"A": A1}) == []


def test_select_unseen_custom_key() -> None:
    got = select_unseen([("x", A3), ("y", A1)], {}, hlc_of=lambda t: t[1])
    assert got == [("y", A1), ("x", A3)]


def test_is_lower_somewhere() -> None:
    old = {"A": A2, "B": B1}
    assert not is_lower_somewhere({"A": A2, "B": B1}, old)
    assert not is_lower_somewhere({"A": A3, "B": B2, "C": A1}, old)
    assert is_lower_somewhere({"A": A1, "B": B2}, old)
    assert is_lower_somewhere({"A": A2}, old)  # B vanished
    assert not is_lower_somewhere({}, {})
