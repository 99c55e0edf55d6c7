"""Remembered ids and when they are forgotten (streams/margin/dedup.py).

Rule: an id (account a, ts t) is forgotten once t < T(a) − window, T(a) the
greatest ts of a's ids so far. The tables below write the cutoff out; the
property test checks the engine against a model that recomputes the rule from
scratch after every event, and a rebuild from the changelog at every cut point.
"""
from __future__ import annotations

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from streams.margin.dedup import RememberedIds, decode_value, encode_value
from streams.margin.engine import APPLIED, DUPLICATE
from streams.margin.reference import MarginConfig
from tests.unit.conftest import collateral, new_engine
from tests.unit.test_records import run_with_restarts, step


def k(account, ident):
    return f"{account}\x1fcollateral\x1f{ident}"


# --------------------------------------------------------------------------------------
# the rule, written out (window 100 ms)
# --------------------------------------------------------------------------------------
def test_forgets_below_latest_minus_window():
    ids = RememberedIds(100)
    assert ids.remember("a", k("a", "e0"), "f0", 0) == []       # T = 0, cutoff −100
    assert ids.remember("a", k("a", "e50"), "f50", 50) == []    # T = 50, cutoff −50
    assert ids.remember("a", k("a", "e120"), "f120", 120) == [k("a", "e0")]  # T = 120, cutoff 20: 0 < 20
    assert ids.remember("a", k("a", "e90"), "f90", 90) == []    # late but 90 ≥ 20: kept
    assert ids.remember("a", k("a", "e10"), "f10", 10) == [k("a", "e10")]  # 10 < 20: out on arrival
    assert ids.latest_ts("a") == 120 and len(ids) == 3
    assert ids.get(k("a", "e50")) == "f50" and ids.get(k("a", "e0")) is None
    # the boundary: t = T − window is kept (strictly below is forgotten)
    assert ids.remember("a", k("a", "e150"), "f150", 150) == []  # cutoff 50: 50 is not < 50
    assert ids.remember("a", k("a", "e151"), "f151", 151) == [k("a", "e50")]  # cutoff 51


def test_each_account_runs_on_its_own_event_time():
    ids = RememberedIds(100)
    ids.remember("a", k("a", "old"), "f", 0)
    ids.remember("b", k("b", "far"), "f", 10**15)  # a wrong clock far ahead: b's own business
    assert k("a", "old") in ids and ids.latest_ts("a") == 0


def test_restore_applies_the_rule_and_keeps_legacy_values_one_more_window():
    ids = RememberedIds(100)
    ids.restore([
        (k("a", "x"), encode_value("fx", 10, "a")),    # 10 < 500 − 100: forgotten
        (k("a", "y"), encode_value("fy", 500, "a")),
        (k("a", "legacy"), "fl"),                        # no ts: counts as T(a) = 500
        (k("b", "legacy"), "fb"),                        # legacy values only: T = undated_ts
    ], undated_ts=300)
    assert sorted(ids.items()) == [(k("a", "legacy"), "fl"), (k("a", "y"), "fy"), (k("b", "legacy"), "fb")]
    assert ids.latest_ts("a") == 500
    assert ids.remember("a", k("a", "z"), "fz", 601) == [k("a", "legacy"), k("a", "y")]  # cutoff 501
    assert ids.latest_ts("b") == 300
    assert ids.remember("b", k("b", "n"), "fn", 400) == []  # cutoff 300: the legacy id stays
    assert ids.remember("b", k("b", "m"), "fm", 401) == [k("b", "legacy")]


def test_values_name_the_account_even_when_it_holds_the_separator():
    account = "desk\x1fcollateral\x1f7"
    value = encode_value("0123456789abcdef", 42, account)
    assert decode_value(value) == ("0123456789abcdef", 42, account)
    assert decode_value("0123456789abcdef") == ("0123456789abcdef", None, None)
    ids = RememberedIds(100)
    ids.restore([(k(account, "e"), value), (k("desk", "e"), encode_value("ff", 1000, "desk"))])
    assert ids.latest_ts(account) == 42 and ids.latest_ts("desk") == 1000 and len(ids) == 2


def test_window_must_be_positive():
    try:
        RememberedIds(0)
    except ValueError as err:
        assert "window_ms" in str(err)
    else:
        raise AssertionError("a window of 0 was accepted")


# --------------------------------------------------------------------------------------
# in the engine: redeliveries, tombstones
# --------------------------------------------------------------------------------------
def test_engine_redelivery_inside_and_outside_the_window():
    eng = new_engine(MarginConfig(status_interval_ms=0, id_window_ms=100))
    dep = collateral("d1", "a", "USDT", "10", 1000)
    assert eng.apply(dep).outcome == APPLIED
    assert eng.take_dirty()[1] == {k("a", "d1"): encode_value(eng.seen.get(k("a", "d1")), 1000, "a")}
    assert eng.apply(collateral("d2", "a", "USDT", "1", 1100)).outcome == APPLIED  # cutoff 1000: kept
    assert eng.apply(dep).outcome == DUPLICATE
    eng.take_dirty()
    assert eng.apply(collateral("d3", "a", "USDT", "1", 1101)).outcome == APPLIED  # cutoff 1001: d1 goes
    dirty = eng.take_dirty()[1]
    assert dirty[k("a", "d1")] is None and dirty[k("a", "d3")] is not None  # a tombstone, a new record
    # the contract's limit: past the window a redelivery is applied again
    assert eng.apply(dep).outcome == APPLIED
    # ... and, being outside the window on arrival, is not remembered (its record: a tombstone)
    assert k("a", "d1") not in eng.seen and eng.take_dirty()[1] == {k("a", "d1"): None}
    assert str(eng.accounts["a"].book.balances["USDT"]) == "22"  # 10 + 1 + 1 + 10


def test_engine_batch_keeps_the_tombstone_of_an_id_forgotten_then_applied_again():
    # the worker reads take_dirty() once per batch: d1 forgotten by d3, then redelivered
    # outside the window, must leave a tombstone, not its earlier record (seen on the broker)
    eng = new_engine(MarginConfig(status_interval_ms=0, id_window_ms=100))
    d1 = collateral("d1", "a", "USDT", "10", 1000)
    eng.apply(d1)
    eng.take_dirty()
    eng.apply(collateral("d3", "a", "USDT", "1", 1101))  # forgets d1 ...
    assert eng.apply(d1).outcome == APPLIED              # ... which comes again, in the same batch
    dirty = eng.take_dirty()[1]
    assert dirty[k("a", "d1")] is None and dirty[k("a", "d3")] is not None


# --------------------------------------------------------------------------------------
# property: the engine against the rule recomputed from scratch, across restarts
# --------------------------------------------------------------------------------------
@st.composite
def deposit_logs(draw):
    """Deposits of two accounts with jumpy times and redeliveries of earlier ones."""
    events = []
    for n in range(draw(st.integers(1, 40))):
        if events and draw(st.integers(0, 3)) == 0:
            events.append(draw(st.sampled_from(events)))  # a redelivery, same content
            continue
        account = draw(st.sampled_from(["a", "b"]))
        ts = draw(st.integers(0, 400))
        events.append(collateral(f"d{n}", account, "USDT", "1", ts))
    return events


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(deposit_logs(), st.lists(st.integers(0, 60), min_size=1, max_size=4))
def test_engine_matches_the_rule_and_restarts_agree(events, cuts):
    window = 50
    cfg = MarginConfig(status_interval_ms=0, id_window_ms=window)
    engine, results, _ = run_with_restarts(events, {c % (len(events) + 1) for c in cuts}, cfg)
    # the model: every applied (account, id, ts), and the rule recomputed over all of them
    applied: dict[tuple[str, str], int] = {}
    latest: dict[str, int] = {}
    for ev, got in zip(events, results):
        key = (ev.account_id, ev.event_id)
        remembered = key in applied and applied[key] >= latest[ev.account_id] - window
        assert got[1] == (DUPLICATE if remembered else APPLIED), (ev, got[1])
        if not remembered:
            applied[key] = ev.ts
            latest[ev.account_id] = max(latest.get(ev.account_id, ev.ts), ev.ts)
    want = {k(a, i) for (a, i), ts in applied.items() if ts >= latest[a] - window}
    assert {key for key, _ in engine.seen.items()} == want


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(deposit_logs(), st.lists(st.booleans(), min_size=40, max_size=40))
def test_changelog_written_in_batches_equals_the_remembered_ids(events, persist_after):
    # the worker takes the dirty records once per batch, not once per event
    eng = new_engine(MarginConfig(status_interval_ms=0, id_window_ms=50))
    table: dict[str, str] = {}

    def persist():
        for key, value in eng.take_dirty()[1].items():
            if value is None:
                table.pop(key, None)
            else:
                table[key] = value

    for ev, flush in zip(events, persist_after):
        step(eng, ev)
        if flush:
            persist()
    persist()
    assert table == dict(eng.seen.dated_items())
