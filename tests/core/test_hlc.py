"""Hybrid logical clock: ordering, serialized form and the clock rules of PROTOCOL §1."""

from __future__ import annotations

import itertools
import random
import threading

import msgspec
import pytest

from starkeep_sync import ClockSkewError
from starkeep_sync.constants import DEFAULT_MAX_SKEW_MS, MAX_COUNTER, MAX_NODE_ID_LENGTH, MAX_WALL_TIME
from starkeep_sync.hlc import (
    ZERO_HLC,
    ClockState,
    HLCClock,
    HLCTimestamp,
    WireHLC,
    WireRuleError,
    compare_hlc,
    deserialize_hlc,
    hlc_to_wire,
    max_hlc,
    node_id_problem,
    serialize_hlc,
)


class FakeWallClock:
    """A settable millisecond clock."""

    def __init__(self, ms: int) -> None:
        self.ms = ms

    def __call__(self) -> int:
        return self.ms


def make_clock(
    pt: int, node: str = "nodeA", **kwargs: object
) -> tuple[HLCClock, FakeWallClock]:
    wall = FakeWallClock(pt)
    return HLCClock(node, wall_clock=wall, **kwargs), wall  # type: ignore[arg-type]


# -- ordering ------------------------------------------------------------------


def test_zero_hlc_is_all_zero_and_empty_node() -> None:
    assert ZERO_HLC == HLCTimestamp(0, 0, "")
    assert ZERO_HLC < HLCTimestamp(0, 0, "a")


@pytest.mark.parametrize(
    ("lower", "higher"),
    [
        (HLCTimestamp(1000, 5, "z"), HLCTimestamp(1001, 0, "a")),  # wall time first
        (HLCTimestamp(1000, 1, "z"), HLCTimestamp(1000, 2, "a")),  # then counter
        (HLCTimestamp(1000, 1, "a"), HLCTimestamp(1000, 1, "b")),  # then node id
        (HLCTimestamp(1000, 0, "cloud"), HLCTimestamp(1000, 0, "local")),
        (HLCTimestamp(0xFF, 0, "n"), HLCTimestamp(0x100, 0, "n")),
    ],
)
def test_order_is_wall_then_counter_then_larger_node(lower: HLCTimestamp, higher: HLCTimestamp) -> None:
    assert lower < higher
    assert compare_hlc(lower, higher) == -1
    assert compare_hlc(higher, lower) == 1
    assert max_hlc(lower, higher) == higher
    assert max_hlc(higher, lower) == higher


def test_tie_break_local_beats_cloud() -> None:
    local = HLCTimestamp(5000, 3, "local")
    cloud = HLCTimestamp(5000, 3, "cloud")
    assert compare_hlc(local, cloud) == 1
    assert max_hlc(cloud, local) is local
    assert max_hlc(local, cloud) is local


def test_compare_equal_is_zero_and_max_of_equal_returns_first() -> None:
    a = HLCTimestamp(7, 7, "n")
    b = HLCTimestamp(7, 7, "n")
    assert compare_hlc(a, b) == 0
    assert max_hlc(a, b) is a


def test_compare_accepts_plain_tuples() -> None:
    assert compare_hlc((1, 0, "a"), HLCTimestamp(1, 0, "b")) == -1  # type: ignore[arg-type]


def test_sorting_follows_hlc_order() -> None:
    items = [
        HLCTimestamp(2, 0, "a"),
        HLCTimestamp(1, 9, "b"),
        HLCTimestamp(1, 9, "a"),
        HLCTimestamp(1, 0, "z"),
    ]
    assert sorted(items) == [
        HLCTimestamp(1, 0, "z"),
        HLCTimestamp(1, 9, "a"),
        HLCTimestamp(1, 9, "b"),
        HLCTimestamp(2, 0, "a"),
    ]


# -- serialized form -------------------------------------------------------------


def test_serialize_matches_documented_example() -> None:
    assert serialize_hlc(HLCTimestamp(1000, 0, "nodeA")) == "0000000003e8:0000:nodeA"
    assert serialize_hlc(HLCTimestamp(0xABCDEF, 0xBEEF, "n")) == "000000abcdef:beef:n"


@pytest.mark.parametrize(
    "hlc",
    [
        ZERO_HLC,
        HLCTimestamp(1000, 0, "nodeA"),
        HLCTimestamp(MAX_WALL_TIME, MAX_COUNTER, "local"),
        HLCTimestamp(1_700_000_000_000, 42, "device-01_x.y"),
        HLCTimestamp(1, 1, "ünïcode"),
    ],
)
def test_serialize_deserialize_round_trip(hlc: HLCTimestamp) -> None:
    text = serialize_hlc(hlc)
    back = deserialize_hlc(text)
    assert back == hlc
    assert isinstance(back, HLCTimestamp)
    assert serialize_hlc(back) == text


def test_serialize_refuses_values_that_do_not_fit() -> None:
    with pytest.raises(ValueError):
        serialize_hlc(HLCTimestamp(MAX_WALL_TIME + 1, 0, "n"))
    with pytest.raises(ValueError):
        serialize_hlc(HLCTimestamp(-1, 0, "n"))
    with pytest.raises(ValueError):
        serialize_hlc(HLCTimestamp(0, MAX_COUNTER + 1, "n"))
    with pytest.raises(ValueError):
        serialize_hlc(HLCTimestamp(0, -1, "n"))


@pytest.mark.parametrize("node", ["a:b", "a\nb", "a\x00", "\x7f", ":"])
def test_serialize_refuses_node_ids_that_would_not_parse_back(node: str) -> None:
    with pytest.raises(ValueError):
        serialize_hlc(HLCTimestamp(1000, 0, node))


def test_string_order_equals_hlc_order() -> None:
    rng = random.Random(1234)
    nodes = ["", "a", "b", "cloud", "local", "local2", "nodeA", "nodeB", "Z", "z"]
    hlcs = {
        HLCTimestamp(
            rng.choice([0, 1, 15, 16, 255, 256, 4095, 4096, 1_700_000_000_000, MAX_WALL_TIME]),
            rng.choice([0, 1, 15, 16, 255, 256, MAX_COUNTER]),
            rng.choice(nodes),
        )
        for _ in range(400)
    }
    by_hlc = sorted(hlcs)
    by_string = sorted(hlcs, key=serialize_hlc)
    assert by_string == by_hlc
    for a, b in itertools.pairwise(by_hlc):
        assert serialize_hlc(a) < serialize_hlc(b)


@pytest.mark.parametrize(
    "bad",
    [
        "0000000003E8:0000:nodeA",  # uppercase wall
        "0000000003e8:00AB:nodeA",  # uppercase counter
        "00000003e8:0000:nodeA",  # 10 wall digits
        "000000003e8:0000:nodeA",  # 11 wall digits
        "00000000003e8:0000:nodeA",  # 13 wall digits
        "0000000003e8:000:nodeA",  # 3 counter digits
        "0000000003e8:00000:nodeA",  # 5 counter digits
        "0000000003e8:0000",  # missing node part
        "0000000003e8",  # wall only
        ":0000:nodeA",  # missing wall
        "0000000003e8::nodeA",  # missing counter
        "",
        "0000000003e8:0000:node:A",  # extra separator
        "0000000003e8:0000:nodeA\n",  # trailing newline
        " 0000000003e8:0000:nodeA",  # leading space
        "0000000003e8:000g:nodeA",  # non-hex
        "-000000003e8:0000:nodeA",
        "0000000003e8-0000-nodeA",
    ],
)
def test_deserialize_rejects_malformed_strings_naming_the_input(bad: str) -> None:
    with pytest.raises(ValueError) as info:
        deserialize_hlc(bad)
    assert repr(bad) in str(info.value)


@pytest.mark.parametrize("bad", [None, 1000, b"0000000003e8:0000:nodeA", ("a",), 1.5])
def test_deserialize_rejects_non_strings(bad: object) -> None:
    with pytest.raises(ValueError) as info:
        deserialize_hlc(bad)  # type: ignore[arg-type]
    assert type(bad).__name__ in str(info.value)


# -- clock rules ------------------------------------------------------------------


@pytest.mark.parametrize("node", ["", "dev:1", "dev\n1", "dev\x7f", "n" * (MAX_NODE_ID_LENGTH + 1), None])
def test_clock_refuses_node_ids_the_wire_and_serialized_form_refuse(node: object) -> None:
    with pytest.raises(ValueError):
        HLCClock(node)  # type: ignore[arg-type]


def test_every_issued_timestamp_serializes_and_parses_back() -> None:
    node = "n" * MAX_NODE_ID_LENGTH
    clock, _ = make_clock(1000, node=node)
    ts = clock.now()
    assert deserialize_hlc(serialize_hlc(ts)) == ts


def test_now_uses_physical_time_when_it_advances() -> None:
    clock, wall = make_clock(1000)
    assert clock.now() == HLCTimestamp(1000, 0, "nodeA")
    wall.ms = 1005
    assert clock.now() == HLCTimestamp(1005, 0, "nodeA")
    assert clock.state == ClockState(1005, 0)


def test_now_increments_counter_when_physical_time_stalls_or_goes_back() -> None:
    clock, wall = make_clock(1000)
    assert clock.now() == (1000, 0, "nodeA")
    assert clock.now() == (1000, 1, "nodeA")
    wall.ms = 900  # wall clock stepped backwards
    assert clock.now() == (1000, 2, "nodeA")
    assert clock.state == ClockState(1000, 2)
    wall.ms = 1001
    assert clock.now() == (1001, 0, "nodeA")


def test_send_is_now() -> None:
    clock, _ = make_clock(2000)
    assert clock.send() == HLCTimestamp(2000, 0, "nodeA")
    assert clock.send() == HLCTimestamp(2000, 1, "nodeA")
    assert clock.now() == HLCTimestamp(2000, 2, "nodeA")


def test_receive_physical_time_ahead_of_both() -> None:
    clock, _wall = make_clock(1000, initial_state=(900, 7))
    got = clock.receive(HLCTimestamp(950, 3, "nodeB"))
    assert got == HLCTimestamp(1000, 0, "nodeA")
    assert clock.state == ClockState(1000, 0)


def test_receive_remote_ahead_of_local() -> None:
    clock, _ = make_clock(1000, initial_state=(1000, 4))
    got = clock.receive(HLCTimestamp(1500, 7, "nodeB"))
    assert got == HLCTimestamp(1500, 8, "nodeA")
    assert clock.state == ClockState(1500, 8)


def test_receive_remote_wall_equal_to_physical_time_is_not_the_first_rule() -> None:
    # pt > last_wall but pt == remote.wall: rule 2 applies, not (pt, 0).
    clock, _ = make_clock(1500, initial_state=(1000, 0))
    assert clock.receive(HLCTimestamp(1500, 3, "nodeB")) == HLCTimestamp(1500, 4, "nodeA")


@pytest.mark.parametrize(
    ("local_counter", "remote_counter", "expected"),
    [(5, 2, 6), (2, 9, 10), (4, 4, 5)],
)
def test_receive_same_wall_takes_max_counter_plus_one(
    local_counter: int, remote_counter: int, expected: int
) -> None:
    clock, _ = make_clock(999, initial_state=(1000, local_counter))
    got = clock.receive(HLCTimestamp(1000, remote_counter, "nodeB"))
    assert got == HLCTimestamp(1000, expected, "nodeA")
    assert clock.state == ClockState(1000, expected)


def test_receive_remote_behind_local_increments_local_counter() -> None:
    clock, _ = make_clock(999, initial_state=(1000, 5))
    got = clock.receive(HLCTimestamp(800, 40, "nodeB"))
    assert got == HLCTimestamp(1000, 6, "nodeA")


def test_receive_physical_time_equal_to_last_wall_and_remote_behind() -> None:
    clock, _ = make_clock(1000, initial_state=(1000, 5))
    assert clock.receive(HLCTimestamp(900, 0, "nodeB")) == HLCTimestamp(1000, 6, "nodeA")


def test_receive_result_is_above_both_inputs() -> None:
    rng = random.Random(99)
    for _ in range(300):
        last = (rng.randint(0, 50), rng.randint(0, 20))
        clock, wall = make_clock(rng.randint(0, 60), initial_state=last)
        remote = HLCTimestamp(rng.randint(0, 60), rng.randint(0, 20), "nodeB")
        got = clock.receive(remote)
        assert got.node_id == "nodeA"
        assert (got.wall_time, got.counter) > last
        assert (got.wall_time, got.counter) > (remote.wall_time, remote.counter)
        assert got.wall_time >= wall.ms


def test_seeded_clock_never_goes_backwards() -> None:
    clock, wall = make_clock(1000, initial_state=ClockState(5000, 3))
    assert clock.state == ClockState(5000, 3)
    assert clock.now() == HLCTimestamp(5000, 4, "nodeA")
    assert clock.receive(HLCTimestamp(100, 0, "nodeB")) == HLCTimestamp(5000, 5, "nodeA")
    wall.ms = 6000
    assert clock.now() == HLCTimestamp(6000, 0, "nodeA")


def test_seeded_from_plain_tuple() -> None:
    clock, _ = make_clock(10, initial_state=(20, 0))
    assert clock.now() == HLCTimestamp(20, 1, "nodeA")


def test_restarted_clock_continues_above_everything_issued() -> None:
    persisted: list[ClockState] = []
    clock, _wall = make_clock(1000, on_tick=persisted.append)
    issued = [clock.now() for _ in range(5)]
    issued.append(clock.receive(HLCTimestamp(3000, 9, "nodeB")))
    # Restart with the wall clock behind what was issued.
    restarted, _ = make_clock(500, initial_state=persisted[-1])
    nxt = restarted.now()
    assert all(nxt > ts for ts in issued)


def test_clock_is_strictly_monotonic_under_erratic_wall_clock() -> None:
    rng = random.Random(7)
    clock, wall = make_clock(10_000)
    prev = ZERO_HLC
    for _ in range(2000):
        wall.ms = 10_000 + rng.randint(-50, 50)
        if rng.random() < 0.3:
            ts = clock.receive(HLCTimestamp(10_000 + rng.randint(-60, 60), rng.randint(0, 5), "peer"))
        else:
            ts = clock.now()
        assert ts > prev
        prev = ts


def test_on_tick_receives_every_new_state() -> None:
    ticks: list[ClockState] = []
    clock, _wall = make_clock(1000, on_tick=ticks.append)
    clock.now()
    clock.now()
    clock.receive(HLCTimestamp(2000, 4, "nodeB"))
    assert ticks == [ClockState(1000, 0), ClockState(1000, 1), ClockState(2000, 5)]
    assert all(isinstance(t, ClockState) for t in ticks)
    assert ticks[-1] == clock.state


# -- skew guard ----------------------------------------------------------------------


def test_default_skew_bound_is_24_hours() -> None:
    assert DEFAULT_MAX_SKEW_MS == 24 * 60 * 60 * 1000
    clock, _ = make_clock(1000)
    assert clock.max_skew_ms == DEFAULT_MAX_SKEW_MS


def test_receive_refuses_timestamp_beyond_skew_and_does_not_move_clock() -> None:
    ticks: list[ClockState] = []
    clock, _ = make_clock(1_000_000, initial_state=(999_000, 3), on_tick=ticks.append)
    before = clock.state
    far = HLCTimestamp(1_000_000 + DEFAULT_MAX_SKEW_MS + 1, 0, "evil")
    with pytest.raises(ClockSkewError) as info:
        clock.receive(far)
    assert "evil" in str(info.value)
    assert clock.state == before
    assert ticks == []
    # The clock still works normally afterwards.
    assert clock.now() == HLCTimestamp(1_000_000, 0, "nodeA")


def test_receive_accepts_timestamp_exactly_at_skew_bound() -> None:
    clock, _ = make_clock(1000, max_skew_ms=500)
    assert clock.receive(HLCTimestamp(1500, 0, "nodeB")) == HLCTimestamp(1500, 1, "nodeA")
    with pytest.raises(ClockSkewError):
        clock.receive(HLCTimestamp(1501 + 500, 0, "nodeB"))
    assert clock.state == ClockState(1500, 1)


def test_skew_error_is_a_value_error_with_a_code() -> None:
    clock, _ = make_clock(0, max_skew_ms=10)
    with pytest.raises(ValueError) as info:
        clock.receive(HLCTimestamp(11, 0, "x"))
    assert isinstance(info.value, ClockSkewError)
    assert info.value.code == "clock_skew"


def test_skew_guard_can_be_disabled() -> None:
    clock, _ = make_clock(0, max_skew_ms=None)
    far = HLCTimestamp(DEFAULT_MAX_SKEW_MS * 10, 2, "x")
    assert clock.receive(far) == HLCTimestamp(far.wall_time, 3, "nodeA")


def test_observe_moves_only_when_needed_and_still_checks_skew() -> None:
    clock, _ = make_clock(1000, initial_state=(1000, 5), max_skew_ms=100)
    clock.observe(HLCTimestamp(900, 0, "nodeB"))
    assert clock.state == ClockState(1000, 5)
    clock.observe(HLCTimestamp(1050, 2, "nodeB"))
    assert clock.state == ClockState(1050, 3)
    with pytest.raises(ClockSkewError):
        clock.observe(HLCTimestamp(1101, 0, "nodeB"))
    assert clock.state == ClockState(1050, 3)


# -- counter overflow ----------------------------------------------------------------


def test_now_counter_overflow_borrows_next_millisecond() -> None:
    clock, _ = make_clock(1000, initial_state=(1000, MAX_COUNTER - 1))
    assert clock.now() == HLCTimestamp(1000, MAX_COUNTER, "nodeA")
    nxt = clock.now()
    assert nxt == HLCTimestamp(1001, 0, "nodeA")
    assert clock.state == ClockState(1001, 0)
    serialize_hlc(nxt)  # still fits the serialized form
    # Physical time catching up to the borrowed ms keeps counting up.
    assert clock.now() == HLCTimestamp(1001, 1, "nodeA")


def test_receive_counter_overflow_borrows_next_millisecond() -> None:
    ticks: list[ClockState] = []
    clock, _ = make_clock(1000, on_tick=ticks.append)
    got = clock.receive(HLCTimestamp(2000, MAX_COUNTER, "nodeB"))
    assert got == HLCTimestamp(2001, 0, "nodeA")
    assert got > HLCTimestamp(2000, MAX_COUNTER, "nodeB")
    assert ticks == [ClockState(2001, 0)]


def test_receive_same_wall_overflow_borrows() -> None:
    clock, _ = make_clock(0, initial_state=(3000, 10))
    got = clock.receive(HLCTimestamp(3000, MAX_COUNTER, "nodeB"))
    assert got == HLCTimestamp(3001, 0, "nodeA")


def test_concurrent_now_issues_unique_timestamps() -> None:
    clock, _ = make_clock(1000)
    results: list[HLCTimestamp] = []
    lock = threading.Lock()

    def worker() -> None:
        local = [clock.now() for _ in range(500)]
        with lock:
            results.extend(local)

    threads = [threading.Thread(target=worker) for _ in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(results) == 4000
    assert len(set(results)) == 4000
    assert tuple(max(results)[:2]) == tuple(clock.state)


# -- one node-id rule, one wire form --------------------------------------------------------------


@pytest.mark.parametrize(("node", "problem"), [
    ("n", None), ("n" * MAX_NODE_ID_LENGTH, None), ("a b.c~", None),
    ("", "must not be empty"), ("n" * (MAX_NODE_ID_LENGTH + 1), f"must be at most {MAX_NODE_ID_LENGTH} characters"),
    ("a:b", "must not contain ':'"), ("a\x00", "must not contain control characters"),
    ("a\n", "must not contain control characters"), ("a\x7f", "must not contain control characters"),
    (5, "must be a string"), (None, "must be a string"),
])
def test_node_id_problem_is_the_one_rule(node: object, problem: str | None) -> None:
    assert node_id_problem(node) == problem
    assert node_id_problem(node) == problem  # the same once a valid id is remembered


def test_wire_hlc_round_trips_a_timestamp_and_keeps_tuple_order() -> None:
    ts = HLCTimestamp(MAX_WALL_TIME, MAX_COUNTER, "nodeA")
    wire = WireHLC.of(ts)
    assert msgspec.json.encode(wire) == b'{"wallTime":281474976710655,"counter":65535,"nodeId":"nodeA"}'
    back = msgspec.json.decode(msgspec.json.encode(wire), type=WireHLC).timestamp()
    assert back == ts and type(back) is HLCTimestamp and back > HLCTimestamp(MAX_WALL_TIME, MAX_COUNTER, "node")
    assert hlc_to_wire(ts) == msgspec.to_builtins(wire)


def test_wire_hlc_refuses_a_node_id_the_rule_refuses() -> None:
    with pytest.raises(msgspec.ValidationError, match="nodeId: must not contain ':'") as info:
        msgspec.json.decode(b'{"wallTime":1,"counter":0,"nodeId":"a:b"}', type=WireHLC)
    assert isinstance(info.value.__cause__, WireRuleError) and info.value.__cause__.member == "nodeId"


def test_serialize_still_refuses_a_bad_node_after_a_good_one() -> None:
    assert serialize_hlc(HLCTimestamp(1, 0, "fine")) == "000000000001:0000:fine"
    assert serialize_hlc(HLCTimestamp(1, 0, "")) == "000000000001:0000:"  # ZERO_HLC's node serializes
    with pytest.raises(ValueError):
        serialize_hlc(HLCTimestamp(1, 0, "fi:ne"))
