"""The kernels' three implementations agree bit for bit (streams/margin/kernels/).

``ColumnarIndex`` computes the same values three ways: blocks of contiguous rows or
slots (views), blocks of gathered rows (``np.take``), and plain Python floats for at
most ``SMALL`` rows/slots. Which one runs depends on how many rows an event touches,
so a worker, a replay and a rebuilt worker may take different ones for the same
account: they must give the same bits. Here the thresholds are forced (``SMALL = 0``:
never the scalar path; ``BLOCK = 2`` or ``3``: many blocks, both dense and gathered)
and every array of the index is compared with an engine running the defaults.

Also: the tier cache (``SymbolColumn._compute_block``) against a fresh lookup, the
quiet-row prefilter against the full screen and decision, and the fast 12-digit
formatter of ``status.py`` against ``numbers.fmt_sig``.
"""
from __future__ import annotations

import contextlib
import math
import random
from decimal import Decimal

import numpy as np
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from streams.margin import kernels
from streams.margin.engine import PartitionEngine
from streams.margin.errors import InputRejected
from streams.margin.instruments import Instrument
from streams.margin.numbers import fmt_sig
from streams.margin.reference import MarginConfig
from streams.margin.status import fmt_sig_float
from tests.unit.conftest import instrument
from tests.unit.test_kernels_vs_reference import run_and_compare, scenarios

CFG = MarginConfig(status_interval_ms=0)


@contextlib.contextmanager
def forced(small: int, block: int):
    old = kernels.SMALL, kernels.BLOCK
    kernels.SMALL, kernels.BLOCK = small, block
    try:
        yield
    finally:
        kernels.SMALL, kernels.BLOCK = old


def run(events, cfg=CFG):
    eng = PartitionEngine(cfg)
    results = []
    for ev in events:
        try:
            res = eng.apply(ev)
            results.append(("ok", res.outcome, res.outputs))
        except InputRejected as err:
            results.append(("rejected", err.code, err.field))
    return eng, results


def index_arrays(eng: PartitionEngine) -> dict:
    """Every array of the index that values depend on (bytes), by name."""
    idx = eng.index
    n = len(idx.ids)
    out = {
        "bal": idx.bal[:, :n].tobytes(), "ntc": idx.ntc[:n].tobytes(), "cross_state": idx.cross_state[:n].tobytes(),
        "price": idx.price.tobytes(), "haircut": idx.haircut.tobytes(),
    }
    for a, pk in idx.pk.items():
        out[f"cnt{a}"] = pk.cnt[:n].tobytes()
        for name in ("U", "M", "G"):
            out[f"{name}{a}"] = getattr(pk, name)[:, :n].tobytes()
    for sym, col in idx.symbols.items():
        k = col.n
        for name in col._ARRAYS:
            out[f"{sym}.{name}"] = getattr(col, name)[:k].tobytes()
        out[f"{sym}.slot_of"] = sorted(col.slot_of.items())
    return out


def assert_same_values(a: PartitionEngine, b: PartitionEngine) -> None:
    ia, ib = index_arrays(a), index_arrays(b)
    assert ia.keys() == ib.keys()
    for k in ia:
        assert ia[k] == ib[k], k
    n = len(a.index.ids)
    if n:
        rows = np.arange(n)
        ea, eb = a.index.evaluate_cross(rows), b.index.evaluate_cross(rows)
        for name in ("equity", "mm", "gross", "ratio", "near", "unpriced"):
            assert getattr(ea, name).tobytes() == getattr(eb, name).tobytes(), name


@settings(max_examples=120, deadline=None, suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
@given(scenarios(), st.sampled_from([(0, 2), (0, 3), (1, 2)]))
def test_vectorized_paths_equal_scalar_paths(events, forcing):
    a, ra = run(events)
    with forced(*forcing):
        b, rb = run(events)
        assert_same_values(a, b)
    assert ra == rb


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
@given(scenarios())
def test_vectorized_paths_equal_reference(events):
    # the engine vs the exact reference, event by event, with every vectorized path forced
    with forced(0, 2):
        run_and_compare(events)


def test_vectorized_paths_equal_scalar_paths_example():
    events = list(scenarios_example())
    a, ra = run(events)
    for forcing in ((0, 2), (0, 3), (1, 2)):
        with forced(*forcing):
            b, rb = run(events)
            assert_same_values(a, b)
        assert ra == rb


def test_evaluate_cross_row_orders_and_duplicates():
    events = list(scenarios_example())
    eng, _ = run(events)
    idx = eng.index
    n = len(idx.ids)
    rows = np.arange(n)
    base = idx.evaluate_cross(rows)
    rng = np.random.default_rng(3)
    for small, block in ((0, 2), (0, 3), (4, 16384)):
        with forced(small, block):
            for pick in (rows[::-1], rng.permutation(n), np.repeat(rows, 2), rows[[0, -1]], rows[1:2]):
                ce = idx.evaluate_cross(pick)
                assert ce.equity.tobytes() == base.equity[pick].tobytes()
                assert ce.mm.tobytes() == base.mm[pick].tobytes()
                assert ce.gross.tobytes() == base.gross[pick].tobytes()
                assert np.array_equal(ce.near, base.near[pick])


def scenarios_example():
    """A fixed log with several accounts, linear and inverse, cross and isolated."""
    from tests.unit.conftest import asset, collateral, fill, iso_move, mark

    yield asset("BTC", "BTCUSDT", "0.05")
    yield instrument("BTCUSDT", "linear", "USDT", "0.001", ((50000, "0.004"), (250000, "0.005"), (None, "0.01")))
    yield instrument("ETHUSDT", "linear", "USDT", "0.01", ((None, "0.005"),))
    yield instrument("BTCUSD", "inverse", "BTC", "100", ((5, "0.005"), (None, "0.01")))
    yield mark("BTCUSDT", 60000, 1)
    yield mark("BTCUSD", 60000, 1)
    for i in range(9):
        a = f"a{i}"
        yield collateral(f"d{i}", a, "USDT", 1000 + 137 * i, 2)
        if i % 3 == 0:
            yield collateral(f"b{i}", a, "BTC", "0.0%d" % (i + 1), 2)
        yield fill(f"f{i}", a, "BTCUSDT", "buy" if i % 2 else "sell", 100 + 10 * i, 60000 + 7 * i, 3)
        if i % 2:
            yield fill(f"g{i}", a, "ETHUSDT", "sell", 50 + i, 3000 - i, 3)
        if i % 4 == 1:
            yield iso_move(f"m{i}", a, "BTC", "0.01", "BTCUSD", 4)
            yield fill(f"h{i}", a, "BTCUSD", "buy", 3 + i, 59000, 4, mode="isolated")
        elif i % 4 == 2:
            yield fill(f"h{i}", a, "BTCUSD", "sell", 2 + i, 61000, 4)
    yield mark("BTCUSDT", 59000, 5)


# --------------------------------------------------------------------------------------
# tier cache
# --------------------------------------------------------------------------------------
def _column(kind="linear", rows=((1000, "0.01"), (5000, "0.02"), (None, "0.05"))):
    inst = Instrument.from_params(instrument("X", kind, "USDT", "1", rows))
    return kernels.SymbolColumn(inst, 0, 0)


@settings(max_examples=200, deadline=None)
@given(st.sampled_from(["linear", "inverse"]), st.lists(st.integers(-3000, 3000), min_size=1, max_size=12),
       st.lists(st.sampled_from([1.0, 1.0 + 1e-9, 1.0 - 1e-9, 1.0 + 5e-9, 1.0 - 5e-9, 1.0 + 4e-9, 0.999, 1.5, 0.5]),
                min_size=1, max_size=6))
def test_tier_cache_equals_fresh_lookup(kind, qtys, moves):
    bounds = (1000, 5000)
    col = _column(kind)
    col.reserve(len(qtys))
    for i, q in enumerate(qtys):
        col.put(i, float(q), 1.0 if kind == "linear" else 1.0, 1.0, False, 0.0, 0)
    # marks that put N exactly on, just inside and just outside the bounds
    for f in moves:
        for b in bounds:
            for q in qtys:
                if q == 0:
                    continue
                mark = b * f / abs(q) if kind == "linear" else abs(q) / (b * f)
                col.mark = mark
                col._compute_block(slice(0, col.n))  # the cached path
                got = [col.upnl[: col.n].copy(), col.mm[: col.n].copy(), col.near_tier[: col.n].copy(),
                       col.gross[: col.n].copy()]
                for s in range(col.n):  # a fresh lookup, slot by slot
                    n_, upnl_, mm_, gross_, near_, _ = col.values_one(s)
                    assert np.float64(col.notional_one(s)).tobytes() == np.float64(n_).tobytes()
                    assert got[0][s].tobytes() == np.float64(upnl_).tobytes(), (s, mark)
                    assert got[1][s].tobytes() == np.float64(mm_).tobytes(), (s, mark)
                    assert got[3][s].tobytes() == np.float64(gross_).tobytes(), (s, mark)
                    assert bool(got[2][s]) == near_, (s, mark, n_)


# --------------------------------------------------------------------------------------
# the quiet-row prefilter
# --------------------------------------------------------------------------------------
levels = st.sampled_from([(0.8, 0.05), (0.9, 0.2), (0.5, 0.0), (1.2, 0.1), (0.3, 0.3), (0.2, 0.5)])
finite = st.floats(-1e6, 1e6, allow_nan=False)


@settings(max_examples=300, deadline=None)
@given(levels, st.lists(st.tuples(finite, st.floats(0, 1e6), st.floats(0, 1e7),
                                  st.sampled_from([0.0, 1e-12, 1e-9, 2e-9, 1e-6, 0.01]), st.integers(0, 2)),
                        min_size=1, max_size=40))
def test_quiet_rows_are_healthy_and_not_near(lv, rows):
    idx = kernels.ColumnarIndex("USDT", *lv)
    # put MM near each level of equity on purpose
    eq = np.array([r[0] for r in rows])
    lvl = [1.0, lv[0], lv[0] - lv[1]]
    mm = np.array([abs(r[1]) if i % 2 else abs(e * lvl[r[4]] * (1 + r[3])) for i, (r, e) in enumerate(zip(rows, eq))])
    gross = np.array([r[2] for r in rows])
    prev = np.array([r[4] for r in rows], np.int8)
    rest = idx._not_quiet(eq, mm, gross)
    near = idx._near(eq, mm, gross)
    state = np.where((mm > 0) & (eq <= mm), 2,
                     np.where((eq > 0) & (mm > 0) & ((mm >= lv[0] * eq) | ((prev > 0) & (mm >= (lv[0] - lv[1]) * eq))), 1, 0))
    quiet = np.ones(len(eq), bool)
    if rest is not None:
        quiet[rest] = False
    else:
        quiet[:] = False
    assert not near[quiet].any()
    assert not state[quiet].any()


# --------------------------------------------------------------------------------------
# the 12-significant-digit formatter
# --------------------------------------------------------------------------------------
def test_fmt_sig_float_equals_fmt_sig():
    rng = random.Random(5)
    xs = [0.0, -0.0, 1.0, -1.0, 0.1, 1e-20, 1e20, 123456789012.5, 999999999999.5, 9.999999999995e-5,
          5e-324, 1.7976931348623157e308, math.nan, math.inf, -math.inf, None, 1234.5, 0.000123, 100.0, 1e11, 1e12]
    for _ in range(20000):
        xs.append(rng.uniform(-1, 1) * 10 ** rng.randint(-30, 30))
        xs.append(float(rng.randint(-10 ** 15, 10 ** 15)) / 10 ** rng.randint(0, 18))
    for x in xs:
        assert fmt_sig_float(x) == fmt_sig(x), x
    assert fmt_sig_float(float(Decimal("0.1"))) == "0.1"
