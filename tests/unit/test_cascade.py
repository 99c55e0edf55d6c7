"""Liquidation cascades (streams/margin/cascade.py): the impact model and the rounds,
with the arithmetic written out."""
from __future__ import annotations

import asyncio
from decimal import Decimal

import pytest

from streams.margin.cascade import Cascade, ImpactModel, round_sig, run_cascade, run_cascade_async
from streams.margin.stress import BookStress, Scenario, evaluate_books
from tests.unit.conftest import collateral, fill, mark
from tests.unit.test_stress import build, random_events, shock

D = Decimal


def test_impact_model_arithmetic():
    # | symbol  | L (signed notional) | depth     | move = −L/depth (clamped ±0.5) | mark 100 → round12(100·(1+move)) |
    # | BTCUSDT | +59700              | 1,000,000 | −0.0597                        | 94.03                            |
    # | ETHUSDT | −20000 (shorts)     | 50,000,000| +0.0004                        | 100.04                           |
    # | SOLUSDT | +9,000,000          | 10,000,000| −0.9 → −0.5                    | 50                               |
    # | XRPUSDT | 0                   |           | 0: not moved                   |                                  |
    m = ImpactModel(depth=(("BTCUSDT", D(1_000_000)), ("SOLUSDT", D(10_000_000))))
    marks = {s: D(100) for s in ("BTCUSDT", "ETHUSDT", "SOLUSDT", "XRPUSDT")}
    new, moves = m.next_marks(marks, {"BTCUSDT": 59700.0, "ETHUSDT": -20000.0, "SOLUSDT": 9e6, "XRPUSDT": 0.0})
    assert moves == {"BTCUSDT": D("-0.0597"), "ETHUSDT": D("0.0004"), "SOLUSDT": D("-0.5")}
    assert new == {"BTCUSDT": D("94.03"), "ETHUSDT": D("100.04"), "SOLUSDT": D("50")}
    # impact 2 doubles the move
    assert ImpactModel(impact=D(2)).move("X", 1e6) == D("-0.04")
    assert round_sig(D("52984.66960849")) == D("52984.6696085")


# Three accounts long BTCUSDT (c = 0.001; tier N < 250000: mmr 0.005, amount 50), depth
# 1,000,000 USDT, impact 1:
#
# | acct | USDT     | long      | liquidation when (equity ≤ MM)                 |
# | A    | 548.5    | 1 BTC     | 548.5 + m − 60000 ≤ 0.005·m − 50  ⇔ m ≤ 59700   |
# | B    | 610.625  | 1 BTC     | ⇔ m ≤ 59637.56…                                  |
# | E    | 10000    | 2 BTC     | 10000 + 2(m − 60000) ≤ 0.01·m − 50 ⇔ m ≤ 54949.7…|
#
# | round | mark (round12)  | closed | sold notional          | move            | shortfall         | bad debt      |
# | 1     | 59700 (−0.5 %)  | A      | 1 × 59700              | −0.0597         | 0 (equity = MM)   | 0             |
# | 2     | 56135.91        | B      | 1 × 56135.91           | −0.05613591     | 230.67955+3253.465| 3253.465      |
# | 3     | 52984.6696085   | E      | 2 × 52984.6696085      | −0.105969339217 | 479.846696085 + 4030.660783 | 4030.660783 |
# | 4     | 47369.9191815   | —      | fixed point            |                 | 0                 | 0             |
#
# m2 = 59700 × (1 − 0.0597) = 56135.91; m3 = 56135.91 × (1 − 0.05613591) = 52984.66960849… →
# 52984.6696085; B at m2: equity 610.625 − 3864.09 = −3253.465, MM 0.005·56135.91 − 50 = 230.67955;
# E at m3: equity 10000 + 2·(−7015.3303915) = −4030.660783, MM 0.005·105969.339217 − 50 = 479.846696085.
# Totals: shortfall 3484.14455 + 4510.50747908 = 7994.65202908; bad debt 7284.125783.
def cascade_events() -> list:
    return [mark("BTCUSDT", 60000, 1),
            collateral("a", "A", "USDT", "548.5", 2), fill("a1", "A", "BTCUSDT", "buy", 1000, 60000, 3),
            collateral("b", "B", "USDT", "610.625", 2), fill("b1", "B", "BTCUSDT", "buy", 1000, 60000, 3),
            collateral("e", "E", "USDT", "10000", 2), fill("e1", "E", "BTCUSDT", "buy", 2000, 60000, 3)]


MODEL = ImpactModel(depth=(("BTCUSDT", D(1_000_000)),))


def local(eng):
    return lambda sc, closed: BookStress(eng).evaluate(sc, closed, want_liquidated=True)


@pytest.mark.parametrize("exact", [False, True])
def test_cascade_rounds(exact):
    eng = build(cascade_events())
    ev = (lambda sc, closed: BookStress(eng).evaluate(sc, closed, exact=exact, want_liquidated=True))
    rep = run_cascade(ev, shock("BTCUSDT=-0.5%"), MODEL, 10).report("USDT")
    rows = [(r["round"], r["marks"]["BTCUSDT"], r["accounts_liquidated"], r["liquidated_notional"].get("BTCUSDT"),
             r["moves"].get("BTCUSDT"), r["shortfall"], r["bad_debt"]) for r in rep["rounds"]]
    assert rows == [
        (1, "59700", ["A"], "59700", "-0.0597", "0", "0"),
        (2, "56135.91", ["B"], "56135.91", "-0.05613591", "3484.14455", "3253.465"),
        (3, "52984.6696085", ["E"], "105969.339217", "-0.105969339217", "4510.50747908", "4030.660783"),
        (4, "47369.9191815", [], None, None, "0", "0"),
    ]
    assert rep["converged"] is True
    assert rep["accounts_liquidation"] == ["A", "B", "E"] and rep["accounts_margin_call"] == []
    assert rep["shortfall"] == "7994.65202908" and rep["bad_debt"] == "7284.125783"
    assert rep["marks"] == {"BTCUSDT": "59700"} and rep["final_marks"] == {"BTCUSDT": "47369.9191815"}
    assert [c["account_id"] for c in rep["top"]] == ["E", "B"]


def test_round_limit():
    eng = build(cascade_events())
    rep = run_cascade(local(eng), shock("BTCUSDT=-0.5%"), MODEL, 2).report("USDT")
    assert [r["round"] for r in rep["rounds"]] == [1, 2]
    assert rep["converged"] is False
    assert rep["accounts_liquidation"] == ["A", "B"]
    assert rep["shortfall"] == "3484.14455"


def test_no_liquidation_is_a_fixed_point_at_once():
    eng = build(cascade_events())
    rep = run_cascade(local(eng), shock("BTCUSDT=+1%"), MODEL, 10).report("USDT")
    assert len(rep["rounds"]) == 1 and rep["converged"] and rep["accounts_liquidation"] == []


def test_shorts_push_up():
    """A short liquidated buys: the price rises. S: 100 USDT, short 1 BTC @ 60000 → liquidated at
    60100 (+0.1666 %: equity 0, MM 250.5); buys 60100 of notional → move +0.0601 with depth 1e6."""
    eng = build([mark("BTCUSDT", 60000, 1), collateral("s", "S", "USDT", "100", 2),
                 fill("s1", "S", "BTCUSDT", "sell", 1000, 60000, 3)])
    rep = run_cascade(local(eng), shock("BTCUSDT=60100"), MODEL, 10).report("USDT")
    assert rep["rounds"][0]["liquidated_notional"] == {"BTCUSDT": "-60100"}
    assert rep["rounds"][0]["moves"] == {"BTCUSDT": "0.0601"}
    assert rep["rounds"][1]["marks"] == {"BTCUSDT": "63712.01"}  # 60100 × 1.0601


def test_fan_out_over_books_equals_one_book():
    """The same loop over two books (as the HTTP coordinator fans out) = over one."""
    events = random_events(11, 120)
    marks, rest = events[:4], events[4:]
    accts = sorted({e.account_id for e in rest})
    half = set(accts[1::2])
    e1 = build(marks + [e for e in rest if e.account_id in half])
    e2 = build(marks + [e for e in rest if e.account_id not in half])
    whole = build(events)
    model = ImpactModel(default_depth=D(200_000))
    sc = shock("BTCUSDT=-3% ETHUSDT=-3%")
    a = run_cascade(lambda s, c: evaluate_books([BookStress(e1), BookStress(e2)], s, c, want_liquidated=True),
                    sc, model, 10).report("USDT")
    b = run_cascade(local(whole), sc, model, 10).report("USDT")
    assert len(b["rounds"]) > 2  # it cascades
    for ra, rb in zip(a["rounds"], b["rounds"]):
        assert ra["marks"] == rb["marks"] and ra["accounts_liquidated"] == rb["accounts_liquidated"]
    assert a["accounts_liquidation"] == b["accounts_liquidation"]
    assert float(a["shortfall"]) == pytest.approx(float(b["shortfall"]), rel=1e-9)

    async def ev(s, c):
        await asyncio.sleep(0)
        return BookStress(whole).evaluate(s, c, want_liquidated=True)

    c = asyncio.run(run_cascade_async(ev, sc, model, 10)).report("USDT")
    assert c["rounds"] == b["rounds"] and c["shortfall"] == b["shortfall"]


def test_cascade_state_machine():
    c = Cascade(Scenario(), MODEL, 1)
    sc, closed = c.next_round()
    assert closed == []
    with pytest.raises(ValueError):
        Cascade(Scenario(), MODEL, 0)
