"""Persist + restore (streams/margin/records.py): a worker rebuilt from its changelog
continues bit-identically.

:class:`Changelog` does what ``streams/agents/accounts.py::persist`` does after every
input — read ``take_dirty()``, write the account records of the dirty accounts, the
seen ids, the marks record when the globals changed and the params record when the
params version moved — through a JSON round trip (the adapter uses orjson). Engine B
is rebuilt like ``build_processor`` does: a fresh seeded engine + ``records.restore``
with the accounts sorted by id. Then A and B get the same remaining inputs and must
give identical outputs (every value; ``decided_at`` is not part of engine outputs),
identical outcomes and rejections, and bitwise-identical float arrays.
"""
from __future__ import annotations

import copy

import numpy as np
import orjson
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from streams.margin import records
from streams.margin.engine import PartitionEngine
from streams.margin.errors import InputRejected
from streams.margin.reference import MarginConfig
from tests.unit.conftest import (
    asset,
    collateral,
    fill,
    instrument,
    iso_move,
    mark,
    snapshot,
    standard_params,
)
from tests.unit.test_kernels_paths import assert_same_values, forced
from tests.unit.test_kernels_vs_reference import scenarios

CFG = MarginConfig(status_interval_ms=1000)


def _json(x):
    return orjson.loads(orjson.dumps(x))


class Changelog:
    """The changelog-backed tables of one partition, written like the adapter does."""

    def __init__(self, engine: PartitionEngine) -> None:
        self.accounts: dict[str, dict] = {}
        self.seen: dict[str, str] = {}
        self.marks: dict | None = None
        self.params: dict | None = None
        self.params_version = engine.params_version  # as build_processor: seeded params aren't written

    def persist(self, engine: PartitionEngine) -> None:
        accounts, seen, globals_changed = engine.take_dirty()
        for account_id in accounts:
            self.accounts[account_id] = _json(records.account_record(engine, account_id))
        for key, value in seen.items():
            if value is None:  # forgotten: a tombstone
                self.seen.pop(key, None)
            else:
                self.seen[key] = value
        if globals_changed:
            self.marks = _json(records.marks_record(engine))
        if engine.params_version != self.params_version:
            self.params = _json(records.params_record(engine))
            self.params_version = engine.params_version

    def snapshot(self) -> "Changelog":
        return copy.deepcopy(self)

    def rebuild(self, cfg: MarginConfig, seed) -> PartitionEngine:
        eng = PartitionEngine(cfg)
        eng.seed_params(seed)
        records.restore(eng, self.params, self.marks, sorted(self.accounts.items()), sorted(self.seen.items()))
        eng.take_dirty()
        return eng


def step(engine: PartitionEngine, ev):
    try:
        res = engine.apply(ev)
        return ("ok", res.outcome, res.outputs)
    except InputRejected as err:
        return ("rejected", err.code, err.field, err.account_id, err.cause_id, err.ts)


def assert_same_state(a: PartitionEngine, b: PartitionEngine) -> None:
    assert set(a.accounts) == set(b.accounts)
    assert a.last_ts == b.last_ts and a.mark_meta == b.mark_meta and a.market.marks == b.market.marks
    assert dict(a.seen.dated_items()) == dict(b.seen.dated_items())
    ids = sorted(a.accounts)
    if not ids:
        return
    ra = np.array([a.index.row_of[i] for i in ids])
    rb = np.array([b.index.row_of[i] for i in ids])
    ea, eb = a.index.evaluate_cross(ra), b.index.evaluate_cross(rb)
    # bitwise: the sums run in the same column order
    assert ea.equity.tobytes() == eb.equity.tobytes()
    assert ea.mm.tobytes() == eb.mm.tobytes()
    assert np.array_equal(a.index.cross_state[ra], b.index.cross_state[rb])
    for i in ids:
        assert records.account_record(a, i) == records.account_record(b, i)


def run_with_restarts(events, cuts, cfg: MarginConfig = CFG, seed=()):
    """Run A over all events, persisting after each; at every cut k rebuild B from the
    tables as they were after event k−1 and run it over events[k:] next to A's results."""
    seed = list(seed)
    a = PartitionEngine(cfg)
    a.seed_params(seed)
    log = Changelog(a)
    log.persist(a)
    tables = {0: log.snapshot()}
    results = []
    for k, ev in enumerate(events, 1):
        results.append(step(a, ev))
        log.persist(a)
        if k in cuts:
            tables[k] = log.snapshot()
    compared = 0
    for k in sorted(set(cuts) | {0}):
        if k not in tables:
            continue
        b = tables[k].rebuild(cfg, seed)
        for j in range(k, len(events)):
            got = step(b, events[j])
            assert got == results[j], f"restart after {k} events: input {j} {events[j]!r} differs"
            compared += len(got[2]) if got[0] == "ok" else 1
        assert_same_state(a, b)
    return a, results, compared


# --------------------------------------------------------------------------------------
# random logs, random cut points
# --------------------------------------------------------------------------------------
@settings(max_examples=80, deadline=None, suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
@given(scenarios(), st.lists(st.integers(0, 10_000), min_size=1, max_size=5), st.sampled_from([0, 1000]),
       st.sampled_from([86_400_000, 7]))
def test_restart_from_changelog_continues_identically(events, cuts, interval, id_window_ms):
    # scenario times step by 1 ms: a 7 ms window forgets ids (and writes tombstones) all along
    cfg = MarginConfig(status_interval_ms=interval, id_window_ms=id_window_ms)
    run_with_restarts(events, {c % (len(events) + 1) for c in cuts}, cfg)


@settings(max_examples=30, deadline=None, suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
@given(scenarios(), st.lists(st.integers(0, 10_000), min_size=1, max_size=3))
def test_restart_with_seeded_params(events, cuts):
    # the start-up file seeds the params; the log may override them (risk-params inputs)
    run_with_restarts(events, {c % (len(events) + 1) for c in cuts}, CFG, seed=_seed_like(events))


def _seed_like(events):
    """The risk-params at the head of a generated log, used as the start-up seed too."""
    head = []
    for e in events:
        if e.topic != "risk-params":
            break
        head.append(e)
    return head


# --------------------------------------------------------------------------------------
# a hand-written log that carries every kind of state across the cut
# --------------------------------------------------------------------------------------
def handmade_log():
    # LIN: linear, USDT, c = 1, mmr 10 %. a: 22 USDT, 1 LIN @ 100 cross -> ratio(m) = 0.1m/(m − 78)
    # b: isolated LIN, margin 20 -> equity 20 + (m − 100), MM 0.1 m
    lin = instrument("LIN", "linear", "USDT", "1", ((None, "0.1"),), ts=0)
    return [
        lin,
        asset("BTC", "BTCUSDT", "0.05", ts=0),
        instrument("BTCUSD", "inverse", "BTC", "100", ((5, "0.005"), (None, "0.01")), ts=0),
        instrument("BTCUSDT", "linear", "USDT", "0.001", ((None, "0.005"),), ts=0),
        mark("BTCUSDT", 50000, 1, seq=1),
        collateral("d", "a", "USDT", 22, 1),
        fill("f1", "a", "LIN", "buy", 1, 100, 1),  # status held (within 1 s)
        collateral("d", "b", "USDT", 1000, 2),
        iso_move("m", "b", "USDT", 20, "LIN", 2),
        fill("f1", "b", "LIN", "buy", 1, 100, 2, mode="isolated"),
        collateral("btc", "c", "BTC", "0.01", 3),
        fill("inv", "c", "BTCUSD", "sell", 50, 50000, 3),
        mark("LIN", 99, 500),  # held ratio move
        mark("LIN", 88, 1500),  # a: margin_call; b: 8/8.8 -> liquidation (episode 1 step 1)
        mark("LIN", 86, 1600),  # a: liquidation
        mark("LIN", 86, 1600),  # stale (ts rule)
        fill("f2", "a", "LIN", "buy", "0.1", 86, 1700),  # a: step 2
        fill("f1", "a", "LIN", "buy", 1, 100, 1),  # duplicate
        mark("BTCUSDT", 60000, 1800, seq=1),  # stale (seq rule)
        mark("BTCUSDT", 60000, 1800, seq=2),  # c: short inverse loses, BTC value moves
        collateral("d2", "a", "USDT", 100, 1900),  # a: out of liquidation
        instrument("LIN", "linear", "USDT", "1", ((1000, "0.2"), (None, "0.3")), ts=2000),  # tiers change
        collateral("w", "a", "USDT", -100, 2100, reason="withdrawal"),  # a: episode 2
        mark("LIN", "86.5", 2200),
        snapshot("s", "c", 2300, {"USDT": 5, "BTC": "0.001"}, [("LIN", "-2", "90", "isolated", "3")]),
        mark("LIN", 89, 2400),
        collateral("d", "a", "USDT", 23, 1),  # conflicting duplicate (rejected)
        fill("f3", "b", "LIN", "buy", 1, 89, 4000, mode="cross"),  # margin_mode_conflict (rejected)
        mark("LIN", 95, 5000),
        mark("BTCUSDT", 40000, 5100, seq=3),
        iso_move("m2", "b", "USDT", 15, "LIN", 5200),
        mark("LIN", 70, 9000),
    ]


def test_handmade_log_every_cut_point():
    events = handmade_log()
    a, results, compared = run_with_restarts(events, set(range(len(events) + 1)))
    kinds = {o.topic for r in results if r[0] == "ok" for o in r[2]}
    assert kinds == {"margin-status", "margin-calls", "liquidations"}
    assert any(r[0] == "rejected" for r in results) and any(r[0] == "ok" and r[1] == "stale" for r in results)
    assert compared > 100  # outputs compared over all restarts


def test_restore_from_empty_tables_is_a_fresh_engine():
    events = handmade_log()
    a, results, _ = run_with_restarts(events, {0})
    fresh = PartitionEngine(CFG)
    assert [step(fresh, e) for e in events] == results


def test_records_are_plain_json():
    events = handmade_log()
    eng = PartitionEngine(CFG)
    for e in events:
        step(eng, e)
    for acct in eng.accounts:
        rec = records.account_record(eng, acct)
        assert _json(rec) == rec
    assert _json(records.marks_record(eng)) == records.marks_record(eng)
    assert _json(records.params_record(eng)) == records.params_record(eng)


def test_restart_after_mark_before_instrument():
    """A mark that precedes its instrument's risk-params: the restarted worker must
    continue like the one that never stopped (both should use the mark — see
    test_engine.py::test_mark_before_instrument_params_is_used)."""
    events = [mark("NEW", 100, 1),
              instrument("NEW", "linear", "USDT", "1", ((None, "0.1"),), ts=1),
              collateral("c", "a", "USDT", 10, 2),
              fill("f", "a", "NEW", "buy", 1, 90, 3),
              collateral("c2", "a", "USDT", 1, 2000)]
    run_with_restarts(events, {4}, MarginConfig(status_interval_ms=0))


def test_standard_params_seed_and_restart():
    events = [collateral("d", "a", "USDT", 500, 1), fill("f", "a", "BTCUSDT", "buy", 100, 50000, 1),
              mark("BTCUSDT", 48000, 10, seq=1), mark("BTCUSDT", 46000, 2000, seq=2),
              collateral("b", "a", "BTC", "0.001", 2100), mark("BTCUSDT", 45500, 4000, seq=3)]
    _, results, compared = run_with_restarts(events, {1, 2, 3, 4, 5}, CFG, seed=standard_params())
    assert compared > 5


# --------------------------------------------------------------------------------------
# the bulk restore (PartitionEngine.sync_rows / ColumnarIndex.load_symbol, pack_rows)
# against one _sync_row per account
# --------------------------------------------------------------------------------------
def rebuild_both(log: Changelog, cfg: MarginConfig, seed, forcing=(0, 2)):
    def one(bulk: bool) -> PartitionEngine:
        eng = PartitionEngine(cfg)
        eng.seed_params(seed)
        records.restore(eng, log.params, log.marks, sorted(log.accounts.items()), sorted(log.seen.items()), bulk=bulk)
        eng.take_dirty()
        return eng

    with forced(*forcing):  # every vectorized path of the bulk load, even for a few accounts
        bulk = one(True)
    return bulk, one(False)


def assert_bulk_equals_per_account(events, cuts, cfg=CFG, seed=(), forcing=(0, 2)):
    seed = list(seed)
    a = PartitionEngine(cfg)
    a.seed_params(seed)
    log = Changelog(a)
    log.persist(a)
    tables = {0: log.snapshot()}
    results = []
    for k, ev in enumerate(events, 1):
        results.append(step(a, ev))
        log.persist(a)
        if k in cuts:
            tables[k] = log.snapshot()
    for k, table in tables.items():
        b_bulk, b_rows = rebuild_both(table, cfg, seed, forcing)
        assert_same_values(b_bulk, b_rows)  # every array, bit for bit (same rows and slots)
        for j in range(k, len(events)):
            got = step(b_bulk, events[j])
            assert got == step(b_rows, events[j]) == results[j], f"restart after {k} events: input {j}"
        assert_same_values(b_bulk, b_rows)
        assert_same_state(a, b_bulk)


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
@given(scenarios(), st.lists(st.integers(0, 10_000), min_size=1, max_size=3), st.sampled_from([(0, 2), (0, 3), (4, 16384)]))
def test_bulk_restore_equals_per_account_restore(events, cuts, forcing):
    assert_bulk_equals_per_account(events, {c % (len(events) + 1) for c in cuts}, forcing=forcing)


def test_bulk_restore_handmade_log_every_cut_point():
    events = handmade_log()
    assert_bulk_equals_per_account(events, set(range(len(events) + 1)))


def test_bulk_restore_several_positions_per_settle_asset():
    # accounts holding two USDT-settled cross positions, BTC collateral and inverse
    # positions (cross and isolated): the packed order must be the column order
    from tests.unit.test_kernels_paths import scenarios_example

    events = list(scenarios_example())
    for forcing in ((0, 2), (0, 3), (4, 16384)):
        assert_bulk_equals_per_account(events, set(range(0, len(events) + 1, 3)), forcing=forcing)
