"""Stress evaluation (streams/margin/stress/): hand-computed tables, parsing, and the
exactness test — stress on a book equals what the engine decides when the same marks
actually arrive."""
from __future__ import annotations

import random
from decimal import Decimal

import numpy as np
import pytest

from streams.margin.reference import MarginConfig, STATES, evaluate_exact
from streams.margin.stress import (
    BookStress,
    Scenario,
    StressError,
    StressResult,
    evaluate_books,
    grid_scenarios,
    parse_grid,
    parse_shock,
    parse_shock_arg,
)
from tests.unit.conftest import collateral, fill, iso_move, mark, new_engine

D = Decimal


def shock(text: str) -> Scenario:
    return Scenario(tuple(parse_shock_arg(t) for t in text.split()))


# --------------------------------------------------------------------------------------
# The hand-computed book
# --------------------------------------------------------------------------------------
# BTCUSDT: linear, c = 0.001, tiers N < 50000: mmr 0.004 (amount 0); N < 250000: mmr 0.005,
# amount 50000 × (0.005 − 0.004) = 50. ETHUSDT: c = 0.01, N < 100000: mmr 0.005.
#
# | acct | scope      | book                                              |
# |------|------------|---------------------------------------------------|
# | A    | cross      | 548.5 USDT, long 1000 BTCUSDT @ 60000 (1 BTC)     |
# | B    | cross      | 610.625 USDT, long 1000 BTCUSDT @ 60000           |
# | C    | BTCUSDT iso| margin 400, short 500 BTCUSDT @ 60000 (0.5 BTC)   |
# | D    | cross      | 100 USDT, short 100 ETHUSDT @ 3000 (1 ETH)        |
#
# A, B at mark m: N = m, uPnL = m − 60000, MM = 0.005·m − 50 (m ≥ 50000).
# C at m: N = 0.5·m, uPnL = −0.5·(m − 60000), MM = 0.004·N (N < 50000) or 0.005·N − 50.
#
# | BTCUSDT      | A equity / MM        | A state | B equity / MM         | B state     | C equity / MM    | C state |
# |--------------|----------------------|---------|-----------------------|-------------|------------------|---------|
# | 60000 (now)  | 548.5 / 250          | healthy | 610.625 / 250         | healthy     | 400 / 120        | healthy |
# | 59700 (−0.5%)| 248.5 / 248.5 (=)    | liq.    | 310.625 / 248.5 (0.8) | margin_call | 550 / 119.4      | healthy |
# | 59400 (−1%)  | −51.5 / 247          | liq.    | 10.625 / 247          | liq.        | 700 / 118.8      | healthy |
# | 69000 (+15%) | 9548.5 / 295         | healthy | 9610.625 / 295        | healthy     | −4100 / 138      | liq.    |
#
# shortfall = Σ max(0, MM − equity), bad debt = Σ max(0, −equity):
# −0.5 %: 0 and 0 (A sits exactly on equity = MM); −1 %: (247 + 51.5) + (247 − 10.625) = 534.875
# and 51.5; +15 %: 138 + 4100 = 4238 and 4100. D (ETH, unshocked): equity 100, MM 15, healthy.
TABLE = [
    ("BTCUSDT=-0.5%", {"BTCUSDT": "59700"}, ["A"], ["B"], "0", "0"),
    ("BTCUSDT=-1%", {"BTCUSDT": "59400"}, ["A", "B"], [], "534.875", "51.5"),
    ("BTCUSDT=69000", {"BTCUSDT": "69000"}, ["C"], [], "4238", "4100"),
    ("BTCUSDT=+15%", {"BTCUSDT": "69000"}, ["C"], [], "4238", "4100"),
    ("ETHUSDT=-50%", {"ETHUSDT": "1500"}, [], [], "0", "0"),
]


def table_events() -> list:
    return [
        mark("BTCUSDT", 60000, 1), mark("ETHUSDT", 3000, 1),
        collateral("a", "A", "USDT", "548.5", 2), fill("a1", "A", "BTCUSDT", "buy", 1000, 60000, 3),
        collateral("b", "B", "USDT", "610.625", 2), fill("b1", "B", "BTCUSDT", "buy", 1000, 60000, 3),
        collateral("c", "C", "USDT", "400", 2), iso_move("c0", "C", "USDT", "400", "BTCUSDT", 3),
        fill("c1", "C", "BTCUSDT", "sell", 500, 60000, 4, mode="isolated"),
        collateral("d", "D", "USDT", "100", 2), fill("d1", "D", "ETHUSDT", "sell", 100, 3000, 3),
    ]


def build(events, cfg: MarginConfig | None = None):
    eng = new_engine(cfg)
    for ev in events:
        eng.apply(ev)
    return eng


@pytest.mark.parametrize("exact", [False, True])
@pytest.mark.parametrize("text,marks,liq,call,shortfall,bad_debt", TABLE)
def test_table(text, marks, liq, call, shortfall, bad_debt, exact):
    eng = build(table_events())
    sc = shock(text)
    rep = BookStress(eng).evaluate(sc, exact=exact).report("USDT", sc.label())
    assert rep["marks"] == marks
    assert rep["accounts_liquidation"] == liq
    assert rep["accounts_margin_call"] == call
    assert rep["entering_liquidation"] == liq
    assert rep["shortfall"] == shortfall
    assert rep["bad_debt"] == bad_debt
    assert rep["accounts"] == 4 and rep["scopes"] == 5  # C: its cross scope and the isolated one


def test_boundary_is_decided_exactly():
    """A at 59700 sits on equity = MM and B on ratio = 0.8: the float screen flags them and
    the exact reference decides."""
    eng = build(table_events())
    res = BookStress(eng).evaluate(shock("BTCUSDT=-0.5%"))
    assert res.exact_checks >= 2
    assert res.liquidation == ["A"] and res.margin_call == ["B"]


def test_top_contributors():
    eng = build(table_events())
    res = BookStress(eng, top=5).evaluate(shock("BTCUSDT=-1%"))
    top = res.report("USDT")["top"]
    # A: shortfall 298.5 (MM 247 − equity −51.5); B: 236.375
    assert [(c["account_id"], c["scope"], c["shortfall"], c["bad_debt"]) for c in top] == [
        ("A", "cross", "298.5", "51.5"), ("B", "cross", "236.375", "0")]
    assert top[0]["equity"] == "-51.5" and top[0]["maintenance_margin"] == "247"


def test_engine_untouched():
    eng = build(table_events())
    idx = eng.index
    before = (idx.cross_state.copy(), {s: (c.mm.copy(), c.upnl.copy(), c.iso_state.copy(), c.mark)
                                        for s, c in idx.symbols.items()}, dict(eng.market.marks), idx.price.copy())
    bs = BookStress(eng)
    for sc in grid_scenarios((), parse_grid([4, 8, 12, 16])) + [shock("BTCUSDT=-1%")]:
        bs.evaluate(sc, want_liquidated=True)
        bs.evaluate(sc, exact=True)
    assert np.array_equal(before[0], idx.cross_state)
    for s, (mm, upnl, st, m) in before[1].items():
        c = idx.symbols[s]
        assert np.array_equal(mm, c.mm) and np.array_equal(upnl, c.upnl) and np.array_equal(st, c.iso_state)
        assert c.mark == m or (m != m and c.mark != c.mark)
    assert before[2] == eng.market.marks and np.array_equal(before[3], idx.price, equal_nan=True)


# --------------------------------------------------------------------------------------
# Parsing
# --------------------------------------------------------------------------------------
def test_parse_shocks():
    # | text            | relative | value   | applied to 60000 |
    # | BTCUSDT=-15%    | yes      | −0.15   | 51000            |
    # | BTCUSDT=+2.5%   | yes      | 0.025   | 61500            |
    # | BTCUSDT=51234.5 | no       | 51234.5 | 51234.5          |
    for text, rel, value, applied in [("BTCUSDT=-15%", True, "-0.15", "51000"), ("BTCUSDT=+2.5%", True, "0.025", "61500"),
                                      ("BTCUSDT=51234.5", False, "51234.5", "51234.5")]:
        s = parse_shock_arg(text)
        assert (s.symbol, s.relative, s.value) == ("BTCUSDT", rel, D(value))
        assert s.apply(D(60000)) == D(applied)
    for bad, needle in [("BTCUSDT", "SYMBOL="), ("=5%", "SYMBOL="), ("BTCUSDT=-100%", "above -100%"),
                        ("BTCUSDT=abc", "not a number"), ("BTCUSDT=0", "> 0"), ("BTCUSDT=nan%", "finite")]:
        with pytest.raises(StressError) as ei:
            parse_shock_arg(bad)
        assert needle in ei.value.message and ei.value.field.startswith("--shock")


def test_grid_moves():
    assert parse_grid([4, 8, 12, 16]) == [D(x) / 100 for x in (-16, -12, -8, -4, 0, 4, 8, 12, 16)]
    assert parse_grid(["5%"]) == [D("-0.05"), D(0), D("0.05")]
    for bad in ([100], ["x"], [True], [-1]):
        with pytest.raises(StressError) as ei:
            parse_grid(bad)
        assert ei.value.field.startswith("grid") and ei.value.message.startswith("grid[0]")


def test_unknown_symbol_and_no_mark():
    eng = build(table_events())
    with pytest.raises(StressError, match="unknown symbol") as ei:
        BookStress(eng).evaluate(shock("NOPE=-5%"))
    assert ei.value.field == "shocks.NOPE"
    with pytest.raises(StressError, match="no mark"):
        BookStress(eng).evaluate(shock("BTCUSD=-5%"))  # an instrument never marked
    # an absolute shock of an unmarked symbol is fine
    assert BookStress(eng).evaluate(shock("BTCUSD=50000")).marks == {"BTCUSD": "50000"}


def test_grid_of_every_symbol():
    """move −8 %: BTCUSDT 55200, ETHUSDT 2760: A and B lose 4800 → liquidation; D (short 1 ETH)
    gains 240: healthy. +8 %: 64800, 3240: C (short 0.5 BTC, margin 400) loses 2400 and D loses
    240 > its 100 USDT → both liquidation. Scenario order is the grid's."""
    eng = build(table_events())
    scs = grid_scenarios((), parse_grid([8]))
    bs = BookStress(eng)
    res = [bs.evaluate(s) for s in scs]
    assert [r.marks for r in res] == [{"BTCUSDT": "55200", "ETHUSDT": "2760"}, {},
                                      {"BTCUSDT": "64800", "ETHUSDT": "3240"}]
    assert res[0].liquidation == ["A", "B"] and res[2].liquidation == ["C", "D"]


# --------------------------------------------------------------------------------------
# Exactness: stress = the engine when the marks arrive
# --------------------------------------------------------------------------------------
MARKS0 = {"BTCUSDT": "60000", "ETHUSDT": "3000", "BTCUSD": "60010", "ETHUSD": "2999"}


def random_events(seed: int, n: int = 80) -> list:
    """Marks, then accounts with USDT (and some BTC/ETH) collateral and 1–4 positions over the
    standard market, a third isolated; leverage up to ~40× so shocks of a few % liquidate."""
    rng = random.Random(seed)
    evs = [mark(s, p, 1) for s, p in MARKS0.items()]
    ts = 10
    for i in range(n):
        a = f"acct-{i:03d}"
        ts += 1
        evs.append(collateral(f"{a}-d", a, "USDT", f"{rng.uniform(50, 5000):.2f}", ts))
        if rng.random() < 0.3:
            evs.append(collateral(f"{a}-b", a, "BTC", f"{rng.uniform(0.001, 0.2):.5f}", ts))
        if rng.random() < 0.15:
            evs.append(collateral(f"{a}-e", a, "ETH", f"{rng.uniform(0.01, 2):.4f}", ts))
        for j, sym in enumerate(rng.sample(list(MARKS0), rng.randint(1, 4))):
            side = rng.choice(["buy", "sell"])
            price = D(MARKS0[sym]) * D(str(round(rng.uniform(0.98, 1.02), 4)))
            if sym in ("BTCUSD", "ETHUSD"):
                qty = rng.randint(1, 400)
            elif sym == "BTCUSDT":
                qty = rng.randint(10, 3000)
            else:
                qty = rng.randint(10, 3000)
            mode = "isolated" if rng.random() < 0.33 else "cross"
            if mode == "isolated":
                settle = {"BTCUSDT": "USDT", "ETHUSDT": "USDT", "BTCUSD": "BTC", "ETHUSD": "ETH"}[sym]
                amt = "0.02" if settle != "USDT" else f"{rng.uniform(20, 600):.2f}"
                evs.append(collateral(f"{a}-f{j}", a, settle, amt, ts))
                evs.append(iso_move(f"{a}-i{j}", a, settle, amt, sym, ts))
            evs.append(fill(f"{a}-x{j}", a, sym, side, qty, price, ts, mode=mode))
    return evs


def engine_view(eng) -> dict:
    """What the engine holds: cross state and isolated states per account, worst state,
    shortfall and bad debt (from the exact reference at the engine's marks)."""
    idx = eng.index
    out = {}
    sf = bd = D(0)
    for a, st in eng.accounts.items():
        r = idx.row_of[a]
        scopes = {"cross": STATES[int(idx.cross_state[r])]}
        for sym, p in st.book.positions.items():
            if p.isolated:
                col = idx.symbols[sym]
                scopes[sym] = STATES[int(col.iso_state[col.slot_of[r]])]
        out[a] = scopes
        v = evaluate_exact(st.book, eng.market)
        sf += max(D(0), v.cross.mm - v.cross.equity)
        bd += max(D(0), -v.cross.equity)
        for sym, sv in v.isolated.items():
            price = eng.market.asset_price(eng.market.instruments[sym].settle_asset)
            sf += max(D(0), sv.mm - sv.equity) * price
            bd += max(D(0), -sv.equity) * price
    return {"scopes": out, "shortfall": float(sf), "bad_debt": float(bd)}


def worst_lists(view: dict) -> tuple[list, list]:
    rank = {"healthy": 0, "margin_call": 1, "liquidation": 2}
    liq, call = [], []
    for a, scopes in view["scopes"].items():
        w = max(scopes.values(), key=rank.get)
        (liq if w == "liquidation" else call if w == "margin_call" else []).append(a)
    return sorted(liq), sorted(call)


def liquidated_scopes(view: dict) -> list:
    return sorted((a, s) for a, scopes in view["scopes"].items() for s, st in scopes.items() if st == "liquidation")


def check_against_engine(events, scenario: Scenario, cfg: MarginConfig | None = None):
    eng = build(events, cfg)
    before = worst_lists(engine_view(eng))
    bs = BookStress(eng)
    res = bs.evaluate(scenario, want_liquidated=True)
    exact = bs.evaluate(scenario, exact=True, want_liquidated=True)
    # the same marks actually arrive, one tick per symbol
    live = build(events, cfg)
    ts = 10_000_000
    for sym, m in scenario.resolve(live.market).items():
        ts += 1
        live.apply(mark(sym, m, ts))
    view = engine_view(live)
    liq, call = worst_lists(view)
    for r in (res, exact):
        assert r.liquidation == liq
        assert r.margin_call == call
        assert r.entering_liquidation == sorted(set(liq) - set(before[0]))
        assert r.entering_margin_call == sorted(set(call) - set(before[0]) - set(before[1]))
        assert r.liquidated == liquidated_scopes(view)
        assert r.shortfall == pytest.approx(view["shortfall"], rel=1e-9, abs=1e-9)
        assert r.bad_debt == pytest.approx(view["bad_debt"], rel=1e-9, abs=1e-9)
        assert r.scopes == sum(len(s) for s in view["scopes"].values())
    assert res.liquidated_notional.keys() == exact.liquidated_notional.keys()
    for k, v in res.liquidated_notional.items():
        assert v == pytest.approx(exact.liquidated_notional[k], rel=1e-9)
    return res, liq, call


SINGLE = ["BTCUSDT=-0.5%", "BTCUSDT=-1%", "BTCUSDT=-3%", "BTCUSDT=-6%", "BTCUSDT=+4%", "ETHUSDT=-8%",
          "ETHUSDT=+10%", "BTCUSD=-5%", "BTCUSD=+7%", "ETHUSD=-9%", "BTCUSDT=55555.5"]


@pytest.mark.parametrize("text", SINGLE)
def test_stress_equals_engine_single_symbol(text):
    """Any single-symbol shock, default settings (hysteresis on): lists, scopes, totals equal."""
    events = table_events() + random_events(7)
    res, liq, call = check_against_engine(events, shock(text))
    assert liq or call or text.startswith("BTCUSDT=+")  # the scenarios do something


@pytest.mark.parametrize("seed", [1, 2])
@pytest.mark.parametrize("move", [-12, -6, 6, 12])
def test_stress_equals_engine_grid(seed, move):
    """Every symbol moved at once. Ticks arrive one by one in the engine: with
    recovery_band = 0 the states do not depend on the order the marks arrive in."""
    cfg = MarginConfig(recovery_band=D(0))
    sc = Scenario((), D(move) / 100)
    res, liq, call = check_against_engine(random_events(seed), sc, cfg)
    assert liq


def test_multi_symbol_shock_equals_engine():
    cfg = MarginConfig(recovery_band=D(0))
    check_against_engine(table_events() + random_events(3), shock("BTCUSDT=-4% ETHUSDT=-7% BTCUSD=-4%"), cfg)


def test_partitions_merge_like_one_book():
    """Two engines holding halves of the accounts merge to the one-engine answer."""
    events = random_events(5)
    marks = events[:4]
    accts = sorted({e.account_id for e in events[4:]})
    half = set(accts[::2])
    e1 = build(marks + [e for e in events[4:] if e.account_id in half])
    e2 = build(marks + [e for e in events[4:] if e.account_id not in half])
    whole = build(events)
    for sc in grid_scenarios((), parse_grid([5, 10])):
        a = evaluate_books([BookStress(e1), BookStress(e2)], sc, want_liquidated=True)
        b = BookStress(whole).evaluate(sc, want_liquidated=True)
        wa, wb = StressResult.from_wire(a.to_wire()), b
        for k in ("liquidation", "margin_call", "entering_liquidation", "entering_margin_call", "liquidated",
                  "accounts", "scopes", "scopes_liquidation", "scopes_margin_call", "marks"):
            assert getattr(wa, k) == getattr(wb, k), k
        assert wa.shortfall == pytest.approx(wb.shortfall, rel=1e-12)
        assert [c["account_id"] for c in wa.top] == [c["account_id"] for c in wb.top]


def test_top_rows_sampled_bound_picks_the_partitions_set():
    """``_top_rows`` cuts large arrays by a sampled bound; the set must be the plain
    partition's whenever that set is unique (ties at the k-th score take the full path)."""
    from streams.margin.stress.columns import _top_rows

    def plain(score, k):
        pos = np.flatnonzero(score > 0)
        if len(pos) > k:
            pos = pos[np.argpartition(-score[pos], k - 1)[:k]]
        return sorted(pos.tolist())

    rng = np.random.default_rng(5)
    for trial in range(40):
        n = int(rng.integers(3000, 40000))
        score = rng.normal(size=n) * 10.0 ** int(rng.integers(-3, 6))
        if trial % 4 == 1:
            score = np.round(score, 1)  # many ties
        if trial % 4 == 2:
            score[rng.integers(0, n, 50)] = np.nan
        if trial % 4 == 3:
            score = -np.abs(score)  # nothing positive
            score[rng.integers(0, n, 3)] = 1.0
        got = sorted(_top_rows(score, 10))
        if trial % 4 == 1:  # tied at the 10th: the same scores, if not the same rows
            assert sorted(score[got].tolist()) == sorted(score[plain(score, 10)].tolist())
        else:
            assert got == plain(score, 10)
