"""The partition fold (streams/margin/engine.py) through ``PartitionEngine.apply``.

The market of most tests: LIN, linear, settled in USDT, c = 1, one tier mmr = 10 %.
One account holds 1 LIN long @ 100 (cross) on B USDT, so at mark m::

    equity = B + (m − 100)      MM = 0.1·m      ratio = 0.1·m / (B + m − 100)
"""
from __future__ import annotations

import math
from decimal import Decimal

import pytest

from streams.margin.engine import DUPLICATE, STALE, APPLIED, current_status
from streams.margin.errors import (
    CONFLICTING_DUPLICATE,
    MARGIN_MODE_CONFLICT,
    PARAMS_CONFLICT,
    UNKNOWN_ASSET,
    UNKNOWN_INSTRUMENT,
    InputRejected,
)
from streams.margin.reference import MarginConfig, evaluate_exact
from tests.unit.conftest import (
    asset,
    collateral,
    fill,
    instrument,
    iso_move,
    mark,
    new_engine,
    outputs_of,
    snapshot,
)

D = Decimal
LIN = instrument("LIN", "linear", "USDT", "1", ((None, "0.1"),), ts=0)
OTHER = instrument("OTH", "linear", "USDT", "1", ((None, "0.1"),), ts=0)


def lin_engine(**cfg):
    cfg.setdefault("status_interval_ms", 0)
    return new_engine(MarginConfig(**cfg), params=[LIN, OTHER, asset("BTC", "BTCUSDT", "0.05")])


def funded(eng, balance, acct="a", ts=1):
    eng.apply(collateral(f"dep-{acct}", acct, "USDT", balance, ts))
    eng.apply(fill(f"open-{acct}", acct, "LIN", "buy", 1, 100, ts))
    return eng


def calls(result):
    return [(o.value["scope"], o.value["from"], o.value["to"]) for o in outputs_of(result, "margin-calls")]


def status(result):
    s = outputs_of(result, "margin-status")
    assert len(s) <= 1
    return s[0].value if s else None


# --------------------------------------------------------------------------------------
# duplicates
# --------------------------------------------------------------------------------------
def test_duplicate_fill_same_content_is_ignored():
    eng = lin_engine()
    funded(eng, 1000)
    before = eng.accounts["a"].book.to_record()
    res = eng.apply(fill("open-a", "a", "LIN", "buy", 1, 100, 1))
    assert res.outcome == DUPLICATE and res.outputs == []
    assert eng.accounts["a"].book.to_record() == before
    # a numerically equal decimal spelled differently is the same content
    res = eng.apply(fill("open-a", "a", "LIN", "buy", "1.0", "100.00", 1))
    assert res.outcome == DUPLICATE


def test_duplicate_with_different_content_is_rejected():
    eng = lin_engine()
    funded(eng, 1000)
    before = eng.accounts["a"].book.to_record()
    with pytest.raises(InputRejected) as ei:
        eng.apply(fill("open-a", "a", "LIN", "buy", 2, 100, 1))
    assert ei.value.code == CONFLICTING_DUPLICATE and ei.value.field == "fill_id"
    assert (ei.value.account_id, ei.value.cause_id) == ("a", "open-a")
    assert eng.accounts["a"].book.to_record() == before
    with pytest.raises(InputRejected) as ei:
        eng.apply(collateral("dep-a", "a", "USDT", 999, 1))
    assert ei.value.code == CONFLICTING_DUPLICATE and ei.value.field == "event_id"
    eng.apply(snapshot("s1", "a", 2, {"USDT": 5}))
    with pytest.raises(InputRejected) as ei:
        eng.apply(snapshot("s1", "a", 2, {"USDT": 6}))
    assert ei.value.code == CONFLICTING_DUPLICATE and ei.value.field == "snapshot_id"
    assert eng.apply(snapshot("s1", "a", 2, {"USDT": 5})).outcome == DUPLICATE


def test_conflicting_duplicate_precedence_mode_conflict_wins():
    eng = lin_engine()
    funded(eng, 1000)
    with pytest.raises(InputRejected) as ei:  # new content would also be a margin_mode_conflict
        eng.apply(fill("open-a", "a", "LIN", "buy", 1, 100, 1, mode="isolated"))
    assert ei.value.code == MARGIN_MODE_CONFLICT


def test_ids_are_per_account():
    eng = lin_engine()
    funded(eng, 1000, "a")
    res = eng.apply(collateral("dep-a", "b", "USDT", 5, 2))  # same event_id, other account
    assert res.outcome == APPLIED
    assert eng.accounts["b"].book.balances == {"USDT": D(5)}


# --------------------------------------------------------------------------------------
# stale marks
# --------------------------------------------------------------------------------------
def test_stale_marks_seq_rule():
    eng = lin_engine()
    assert eng.apply(mark("LIN", 100, 1000, seq=5)).outcome == APPLIED
    assert eng.apply(mark("LIN", 101, 2000, seq=5)).outcome == STALE  # seq ≤ last seq (ts larger: irrelevant)
    assert eng.apply(mark("LIN", 102, 3000, seq=4)).outcome == STALE
    assert eng.market.marks["LIN"] == D(100)
    assert eng.apply(mark("LIN", 103, 10, seq=6)).outcome == APPLIED  # seq wins over an older ts
    assert eng.market.marks["LIN"] == D(103)


def test_stale_marks_ts_rule():
    eng = lin_engine()
    assert eng.apply(mark("LIN", 100, 1000)).outcome == APPLIED
    assert eng.apply(mark("LIN", 101, 1000)).outcome == STALE  # ts ≤ last ts
    assert eng.apply(mark("LIN", 101, 999)).outcome == STALE
    assert eng.apply(mark("LIN", 102, 1001)).outcome == APPLIED
    # one side without seq: the ts rule applies
    assert eng.apply(mark("LIN", 103, 1001, seq=1)).outcome == STALE
    assert eng.apply(mark("LIN", 104, 1002, seq=1)).outcome == APPLIED
    assert eng.apply(mark("LIN", 105, 1002)).outcome == STALE
    assert eng.market.marks["LIN"] == D(104)
    # staleness is per symbol
    assert eng.apply(mark("OTH", 1, 5)).outcome == APPLIED


# --------------------------------------------------------------------------------------
# unknown references
# --------------------------------------------------------------------------------------
@pytest.mark.parametrize("event,code,field", [
    (fill("f", "a", "NOPE", "buy", 1, 1, 1), UNKNOWN_INSTRUMENT, "symbol"),
    (fill("f", "a", "LIN", "buy", 1, 1, 1, fee="1", fee_asset="DOGE"), UNKNOWN_ASSET, "fee_asset"),
    (collateral("c", "a", "DOGE", 1, 1), UNKNOWN_ASSET, "asset"),
    (iso_move("c", "a", "USDT", 1, "NOPE", 1), UNKNOWN_INSTRUMENT, "symbol"),
    (snapshot("s", "a", 1, {"USDT": 1}, [("NOPE", 1, 1)]), UNKNOWN_INSTRUMENT, "positions.0.symbol"),
    (snapshot("s", "a", 1, {"DOGE": 1}), UNKNOWN_ASSET, "balances.DOGE"),
])
def test_unknown_instrument_and_asset(event, code, field):
    eng = lin_engine()
    with pytest.raises(InputRejected) as ei:
        eng.apply(event)
    assert (ei.value.code, ei.value.field, ei.value.account_id) == (code, field, "a")
    assert "a" not in eng.accounts and not eng.seen


def test_known_asset_without_price_is_accepted():
    eng = lin_engine()
    res = eng.apply(collateral("c", "a", "BTC", 1, 1))  # BTC has a record, no BTCUSDT mark yet
    assert status(res)["unpriced_assets"] == ["BTC"] and status(res)["equity"] == "0"


# --------------------------------------------------------------------------------------
# hysteresis
# --------------------------------------------------------------------------------------
def test_hysteresis_enter_stay_leave():
    # B = 21.25: ratio(m) = 0.1m/(m − 78.75)
    eng = funded(lin_engine(), "21.25")
    # m = 92: 9.2/13.25 = 0.6943 -> healthy, no transition
    assert calls(eng.apply(mark("LIN", 92, 10))) == []
    # m = 90: MM 9, equity 11.25 -> ratio exactly 0.8 -> enter margin_call (≥)
    res = eng.apply(mark("LIN", 90, 20))
    assert calls(res) == [("cross", "healthy", "margin_call")]
    mc = outputs_of(res, "margin-calls")[0].value
    assert (mc["margin_ratio"], mc["equity"], mc["maintenance_margin"], mc["currency"]) == ("0.8", "11.25", "9", "USDT")
    # m = 90.5: 9.05/11.75 = 0.7702 -> stays (≥ 0.75)
    assert calls(eng.apply(mark("LIN", "90.5", 30))) == []
    assert int(eng.index.cross_state[0]) == 1
    # m = 90.8: 9.08/12.05 = 0.7535 -> stays
    assert calls(eng.apply(mark("LIN", "90.8", 40))) == []
    # m = 91: 9.1/12.25 = 0.7429 < 0.75 -> leaves
    assert calls(eng.apply(mark("LIN", 91, 50))) == [("cross", "margin_call", "healthy")]
    # back to 0.7702 from healthy: no entry (below 0.8)
    assert calls(eng.apply(mark("LIN", "90.5", 60))) == []
    assert int(eng.index.cross_state[0]) == 0


def test_hysteresis_exactly_at_lower_level_stays():
    # B = 22: ratio(m) = 0.1m/(m − 78); m = 89: 8.9/11 = 0.809 -> margin_call;
    # m = 90: 9/12 = 0.75 exactly -> stays; m = 90.1: 9.01/12.1 = 0.7446 -> leaves
    eng = funded(lin_engine(), 22)
    assert calls(eng.apply(mark("LIN", 89, 10))) == [("cross", "healthy", "margin_call")]
    assert calls(eng.apply(mark("LIN", 90, 20))) == []
    assert calls(eng.apply(mark("LIN", "90.1", 30))) == [("cross", "margin_call", "healthy")]


# --------------------------------------------------------------------------------------
# liquidation episodes
# --------------------------------------------------------------------------------------
def liqs(result):
    return [(o.value["scope"], o.value["episode"], o.value["step"]) for o in outputs_of(result, "liquidations")]


def test_liquidation_episode_and_steps():
    eng = funded(lin_engine(), 22)  # ratio(m) = 0.1m/(m − 78)
    # m = 86: equity 8, MM 8.6 -> equity ≤ MM: liquidation (from healthy, straight)
    res = eng.apply(mark("LIN", 86, 10))
    assert calls(res) == [("cross", "healthy", "liquidation")]
    assert liqs(res) == [("cross", 1, 1)]
    lq = outputs_of(res, "liquidations")[0].value
    assert (lq["equity"], lq["maintenance_margin"], lq["shortfall"], lq["currency"]) == ("8", "8.6", "0", "USDT")
    assert lq["orders"] and lq["orders"][0]["symbol"] == "LIN" and lq["orders"][0]["side"] == "sell"
    assert lq["event_id"] == "liquidations:a:cross:mark-prices:LIN@10"
    # a mark that keeps it in liquidation, positions unchanged: no new step
    res = eng.apply(mark("LIN", "85.5", 11))
    assert calls(res) == [] and liqs(res) == []
    # a fill while in liquidation that keeps it there: step 2
    # buy 0.1 @ 85.5: q 1.1, uPnL at 85.5 = 1.1*85.5 − (100 + 8.55) = −14.5, equity 7.5, MM 9.405
    res = eng.apply(fill("add", "a", "LIN", "buy", "0.1", "85.5", 12))
    assert calls(res) == [] and liqs(res) == [("cross", 1, 2)]
    # collateral that does not change positions while still in liquidation: no step
    res = eng.apply(collateral("d1", "a", "USDT", "0.5", 13))
    assert liqs(res) == []
    # leaving: a deposit of 100 -> equity 108, ratio 0.087 -> healthy; margin-calls out, no liquidation
    res = eng.apply(collateral("d2", "a", "USDT", 100, 14))
    assert calls(res) == [("cross", "liquidation", "healthy")] and liqs(res) == []
    # next entry: withdraw it again -> episode 2, step 1
    res = eng.apply(collateral("w", "a", "USDT", -100, 15, reason="withdrawal"))
    assert calls(res) == [("cross", "healthy", "liquidation")]
    assert liqs(res) == [("cross", 2, 1)]


def test_liquidation_from_margin_call_and_back():
    eng = funded(lin_engine(), 22)
    assert calls(eng.apply(mark("LIN", 88, 10))) == [("cross", "healthy", "margin_call")]  # 8.8/10 = 0.88
    res = eng.apply(mark("LIN", 86, 11))
    assert calls(res) == [("cross", "margin_call", "liquidation")] and liqs(res) == [("cross", 1, 1)]
    # m = 88 again: equity 10 > MM 8.8 -> out of liquidation; ratio 0.88 -> margin_call
    res = eng.apply(mark("LIN", 88, 12))
    assert calls(res) == [("cross", "liquidation", "margin_call")] and liqs(res) == []


def test_isolated_scope_liquidation():
    # isolated: margin 20, long 1 @ 100, mmr 10%: equity = 20 + (m − 100), MM = 0.1 m
    # at the fill (mark = fill price 100): equity 20, MM 10 -> healthy
    # m = 90: equity 10, MM 9 -> ratio 0.9 -> margin_call of scope LIN
    # m = 88: equity 8, MM 8.8 -> liquidation of scope LIN, currency USDT; the cross scope stays healthy
    eng = lin_engine()
    eng.apply(collateral("d", "a", "USDT", 1000, 1))
    eng.apply(iso_move("m", "a", "USDT", 20, "LIN", 1))
    assert calls(eng.apply(fill("f", "a", "LIN", "buy", 1, 100, 1, mode="isolated"))) == []
    assert calls(eng.apply(mark("LIN", 90, 4, seq=2))) == [("LIN", "healthy", "margin_call")]
    res = eng.apply(mark("LIN", 88, 5, seq=3))
    assert calls(res) == [("LIN", "margin_call", "liquidation")]
    assert liqs(res) == [("LIN", 1, 1)]
    lq = outputs_of(res, "liquidations")[0].value
    assert lq["currency"] == "USDT" and lq["event_id"] == "liquidations:a:LIN:mark-prices:LIN:3"
    assert outputs_of(res, "margin-calls")[0].value["event_id"] == "margin-calls:a:LIN:mark-prices:LIN:3"
    st = status(res)
    assert st["state"] == "healthy" and st["worst_state"] == "liquidation"
    assert st["positions"][0]["state"] == "liquidation"
    # topping up the isolated margin by 10 (no position change): equity 18, MM 8.8, ratio 0.489 -> healthy
    res = eng.apply(iso_move("m2", "a", "USDT", 10, "LIN", 6))
    assert calls(res) == [("LIN", "liquidation", "healthy")] and liqs(res) == []


# --------------------------------------------------------------------------------------
# margin-status throttling
# --------------------------------------------------------------------------------------
def test_status_throttled_by_interval():
    eng = lin_engine(status_interval_ms=1000)
    # t=0 deposit: first status of the account, emitted
    assert status(eng.apply(collateral("d", "a", "USDT", 22, 0))) is not None
    # t=0 fill: positions changed, but within 1 s of the last status: held
    assert eng.apply(fill("f", "a", "LIN", "buy", 1, 100, 0)).outputs == []
    # t=500: ratio moves 10/22=0.4545 -> 9.9/21=0.4714 (≥ 0.01), still within 1 s: held
    assert eng.apply(mark("LIN", 99, 500)).outputs == []
    # t=1000: a later input emits the held change: m = 99.5 -> 9.95/21.5 = 0.462790697674...
    st = status(eng.apply(mark("LIN", "99.5", 1000)))
    assert st is not None and st["ts"] == 1000 and st["margin_ratio"] == "0.462790697674"
    assert st["positions"][0]["qty"] == "1"
    # t=1500: a state change emits at once (margin-calls and status) although < 1 s
    res = eng.apply(mark("LIN", 88, 1500))  # 8.8/10 = 0.88
    assert calls(res) == [("cross", "healthy", "margin_call")]
    assert status(res)["state"] == "margin_call" and status(res)["ts"] == 1500
    # t=1600: ratio moves 0.88 -> 8.9/11 = 0.809 (≥ 0.01) without a state change: held
    assert eng.apply(mark("LIN", 89, 1600)).outputs == []
    # t=3000: ratio moved < 0.01 since the last emitted (0.88 -> 8.81/10.1 = 0.87228): nothing to emit
    assert eng.apply(mark("LIN", "88.1", 3000)).outputs == []
    # t=4000: moved ≥ 0.01 and interval passed: emitted
    assert status(eng.apply(mark("LIN", "89", 4000)))["margin_ratio"] == "0.809090909091"


def test_status_interval_zero_emits_every_change():
    eng = lin_engine(status_interval_ms=0)
    assert status(eng.apply(collateral("d", "a", "USDT", 22, 0))) is not None
    assert status(eng.apply(fill("f", "a", "LIN", "buy", 1, 100, 0))) is not None
    assert status(eng.apply(mark("LIN", 99, 1)))["margin_ratio"] == "0.471428571429"  # 9.9/21
    assert status(eng.apply(mark("LIN", 98, 2)))["margin_ratio"] == "0.49"  # 9.8/20
    assert eng.apply(mark("LIN", "98.001", 3)).outputs == []  # ratio moved < 0.01: not a change worth a status


def test_status_not_emitted_for_untouched_accounts():
    eng = funded(lin_engine(), 22, "a")
    eng.apply(collateral("d", "b", "USDT", 1, 1))
    res = eng.apply(mark("LIN", 80, 10))  # a: 8/2 -> ratio 4; b holds no LIN
    assert {o.key for o in res.outputs} == {"a"}


# --------------------------------------------------------------------------------------
# ids
# --------------------------------------------------------------------------------------
def test_event_id_format_and_cause():
    eng = lin_engine()
    res = eng.apply(collateral("dep", "a", "USDT", 22, 1))
    v = status(res)
    assert v["event_id"] == "margin-status:a:account:collateral:dep"
    assert v["cause"] == {"topic": "collateral", "id": "dep", "ts": 1} and v["ts"] == 1
    assert v["schema_version"] == 1 and "decided_at" not in v
    v = status(eng.apply(fill("f-1", "a", "LIN", "buy", 1, 100, 2)))
    assert v["event_id"] == "margin-status:a:account:fills:f-1"
    # marks: SYMBOL:seq, or SYMBOL@ts without seq
    res = eng.apply(mark("LIN", 88, 3, seq=42))
    assert [o.value["event_id"] for o in res.outputs] == [
        "margin-calls:a:cross:mark-prices:LIN:42", "margin-status:a:account:mark-prices:LIN:42"]
    assert res.outputs[0].value["cause"] == {"topic": "mark-prices", "id": "LIN:42", "ts": 3}
    res = eng.apply(mark("LIN", 100, 4))
    assert [o.value["event_id"] for o in res.outputs] == [
        "margin-calls:a:cross:mark-prices:LIN@4", "margin-status:a:account:mark-prices:LIN@4"]
    v = status(eng.apply(snapshot("snap", "a", 5, {"USDT": 1})))
    assert v["event_id"] == "margin-status:a:account:account-snapshots:snap"


def test_same_input_same_ids():
    def run():
        eng = funded(lin_engine(), 22)
        return [o for ev in (mark("LIN", 86, 5), fill("x", "a", "LIN", "buy", 1, 86, 6)) for o in eng.apply(ev).outputs]
    a, b = run(), run()
    assert a == b and len({o.value["event_id"] for o in a}) == len(a)


# --------------------------------------------------------------------------------------
# risk-params
# --------------------------------------------------------------------------------------
def test_risk_params_tier_change_reevaluates_holders():
    eng = funded(lin_engine(), 22, "a")
    funded(eng, 1000, "b")
    eng.apply(collateral("d", "c", "USDT", 5, 1))  # holds nothing
    eng.apply(mark("LIN", 100, 2))
    # mmr 10% -> 20%: a: MM 20, equity 22 -> ratio 0.909 -> margin_call; b: 20/1000 healthy
    new = instrument("LIN", "linear", "USDT", "1", ((None, "0.2"),), ts=50)
    res = eng.apply(new)
    assert [(o.key, o.value["scope"], o.value["to"]) for o in outputs_of(res, "margin-calls")] == [("a", "cross", "margin_call")]
    mc = outputs_of(res, "margin-calls")[0].value
    assert mc["cause"] == {"topic": "risk-params", "id": new.cause_id, "ts": 50} and mc["ts"] == 50
    assert mc["event_id"] == f"margin-calls:a:cross:risk-params:{new.cause_id}"
    assert new.cause_id.startswith("LIN@") and len(new.cause_id) == 4 + 12
    assert "c" not in {o.key for o in res.outputs}
    # a params record without ts: its outputs carry the latest event time of the partition
    res = eng.apply(instrument("LIN", "linear", "USDT", "1", ((1000, "0.1"), (None, "0.5"))))
    mc = outputs_of(res, "margin-calls")[0].value  # a: N = 100 < 1000 -> tier 0: MM = 10, 10/22 -> healthy
    assert (mc["from"], mc["to"], mc["ts"]) == ("margin_call", "healthy", 50)


def test_asset_haircut_change_reevaluates_exposed():
    eng = lin_engine()
    eng.apply(mark("BTCUSDT", 1000, 1))
    eng.apply(collateral("d", "a", "BTC", "0.022", 2))  # 22 USDT before haircut, 20.9 after 5 %
    eng.apply(fill("f", "a", "LIN", "buy", 1, 100, 2))  # MM 10 -> ratio 10/20.9 = 0.478
    res = eng.apply(asset("BTC", "BTCUSDT", "0.5", ts=3))  # equity 11 -> ratio 0.909
    assert calls(res) == [("cross", "healthy", "margin_call")]


def test_params_conflict():
    eng = funded(lin_engine(), 22)
    for bad in (instrument("LIN", "inverse", "USDT", "1"), instrument("LIN", "linear", "BTC", "1"),
                instrument("LIN", "linear", "USDT", "2")):
        with pytest.raises(InputRejected) as ei:
            eng.apply(bad)
        assert ei.value.code == PARAMS_CONFLICT
    assert eng.market.instruments["LIN"].contract_size == 1 and eng.market.instruments["LIN"].kind == "linear"


# --------------------------------------------------------------------------------------
# core bugs found while writing these tests (see the report)
# --------------------------------------------------------------------------------------
def test_mark_before_instrument_params_is_used():
    """A mark of a symbol that arrives before its risk-params record must be the mark
    of positions opened later (CONTRACT: 'mark m (until the symbol's first mark, this
    position's last fill price)'). Exact: mark 100, fill 1 @ 90 on 10 USDT:
    equity = 10 + (100 − 90) = 20, MM = 0.1·100 = 10, ratio 0.5 -> healthy."""
    eng = new_engine(MarginConfig(status_interval_ms=0), params=[])
    eng.apply(mark("NEW", 100, 1))
    eng.apply(instrument("NEW", "linear", "USDT", "1", ((None, "0.1"),)))
    eng.apply(collateral("c", "a", "USDT", 10, 2))
    res = eng.apply(fill("f", "a", "NEW", "buy", 1, 90, 3))
    vals = evaluate_exact(eng.accounts["a"].book, eng.market)
    assert (vals.cross.equity, vals.cross.mm) == (D(20), D(10))
    assert calls(res) == []  # the engine used the fill price 90: equity 10, MM 9, ratio 0.9 -> margin_call
    assert status(res)["equity"] == "20"


def test_flat_isolated_inverse_slot_before_first_mark_has_finite_values():
    """An isolated margin move to an inverse symbol with no position and no mark yet
    creates a flat slot with last price 0; its notional/uPnL/MM must be 0, not NaN."""
    eng = new_engine(MarginConfig(status_interval_ms=0))
    eng.apply(collateral("c", "a", "BTC", 1, 1))
    res = eng.apply(iso_move("m", "a", "BTC", "0.5", "BTCUSD", 2))
    p = status(res)["positions"][0]
    assert (p["notional"], p["unrealized_pnl"], p["maintenance_margin"]) == ("0", "0", "0")


def test_current_status_matches_values():
    eng = funded(lin_engine(), 22)
    eng.apply(mark("LIN", 90, 5))
    out = current_status(eng, "a", {"topic": "query", "id": "q", "ts": 5})
    v = out.value
    # equity 22 − 10 = 12, MM 9, ratio 0.75, IM = MM (imr = mmr), free = 3
    assert (v["equity"], v["maintenance_margin"], v["margin_ratio"], v["initial_margin"], v["free_collateral"]) == \
        ("12", "9", "0.75", "9", "3")
    assert math.isclose(float(v["positions"][0]["unrealized_pnl"]), -10.0)
