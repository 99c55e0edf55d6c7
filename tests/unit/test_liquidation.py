"""Liquidation price and liquidation order plan (streams/margin/liquidation.py).

Hand-computed tables first (the arithmetic is in the comments), then hypothesis
properties checked against an independent exact Decimal evaluation of E − MM written
here from the CONTRACT's definitions (not the solver's coefficients).
"""
from __future__ import annotations

import math
from decimal import ROUND_FLOOR, Decimal, localcontext

import pytest
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st

from streams.margin.events import TierSpec
from streams.margin.instruments import TierTable
from streams.margin.liquidation import (
    DEFAULT_QTY_QUANTUM,
    LiquidationScope,
    Order,
    PlanPosition,
    liquidation_orders,
    liquidation_price,
)

D = Decimal


def tiers(*rows) -> TierTable:
    """rows: (max_notional | None, mmr, amount | None) — amounts all given or all None."""
    return TierTable.from_specs(
        [
            TierSpec(None if b is None else D(str(b)), D(str(r)), None if a is None else D(str(a)))
            for b, r, a in rows
        ]
    )


def scope(**kw) -> LiquidationScope:
    base = dict(
        kind="linear",
        qty=1.0,
        contract_size=1.0,
        entry=20000.0,
        mark=20000.0,
        tiers=tiers((None, "0.005", None)),
        settle_net_other=400.0,
        settle_price=1.0,
        settle_haircut=0.0,
        other_equity=0.0,
        other_mm=0.0,
    )
    base.update(kw)
    return LiquidationScope(**base)


# --------------------------------------------------------------------------------------
# Independent exact evaluation of E(x) − MM(x)
# --------------------------------------------------------------------------------------


def exact_f(s: LiquidationScope, x) -> tuple[Decimal, Decimal]:
    """(E(x) − MM(x), Σ|terms|) in exact-enough Decimal (prec 80) for a float/Decimal x."""
    with localcontext() as ctx:
        ctx.prec = 80
        x = D(x)
        q, c, e = D(s.qty), D(s.contract_size), D(s.entry)
        S, P, h = D(s.settle_net_other), D(s.settle_price), D(s.settle_haircut)
        if s.settle_linked:
            P = x
        if s.kind == "inverse":
            upnl_terms = [q * c / e, -q * c / x]
            N = abs(q) * c / x
        else:
            upnl_terms = [q * c * x, -q * c * e]
            N = abs(q) * c * x
        n = S + sum(upnl_terms)
        w = (1 - h) if n > 0 else D(1)
        settle_value = n * P * w
        linked = [D(net) * x * ((1 - D(hj)) if net > 0 else 1) for net, hj in s.linked]
        # Tier lookup written out here: first tier with N < max_notional.
        tier = s.tiers.tiers[-1]
        for t in s.tiers.tiers:
            if t.max_notional is None or N < t.max_notional:
                tier = t
                break
        mm_pos = N * tier.mmr - tier.maintenance_amount
        mm = D(s.other_mm) + D(s.linked_mm) * x + P * mm_pos
        E = D(s.other_equity) + settle_value + sum(linked, D(0))
        scale = (
            abs(D(s.other_equity))
            + abs(S * P)
            + sum(abs(t * P) for t in upnl_terms)
            + sum(abs(v) for v in linked)
            + abs(D(s.other_mm))
            + abs(D(s.linked_mm) * x)
            + abs(P * N * tier.mmr)
            + abs(P * tier.maintenance_amount)
        )
        return E - mm, scale


def close(a: float, b: float, rel: float = 1e-12) -> bool:
    return abs(a - b) <= rel * max(abs(a), abs(b))


# --------------------------------------------------------------------------------------
# Hand-computed liquidation prices
# --------------------------------------------------------------------------------------

T_ONE = tiers((None, "0.005", None))
# Two tiers, derived amounts: amount_1 = 0 + 10000·(0.05 − 0.01) = 400.
T_TWO = tiers((10000, "0.01", None), (None, "0.05", None))

HAND_CASES = [
    pytest.param(
        # Isolated linear long, one tier: E = 400 + 1·(x − 20000), MM = 0.005·x
        # 400 + x − 20000 = 0.005x  →  0.995x = 19600  →  x = 19698.4924623115577…
        scope(),
        19600 / 0.995,
        id="linear-long-isolated",
    ),
    pytest.param(
        # Isolated linear short q = −2 at 1000, margin 100, mmr 1%:
        # E = 100 − 2(x − 1000) = 2100 − 2x, MM = 0.01·2x = 0.02x
        # 2100 − 2x = 0.02x → x = 2100/2.02 = 1039.60396…
        scope(qty=-2.0, entry=1000.0, mark=1000.0, settle_net_other=100.0, tiers=tiers((None, "0.01", None))),
        2100 / 2.02,
        id="linear-short-isolated",
    ),
    pytest.param(
        # Long 1 at 20000, margin 11000, T_TWO. At the mark N = 20000 → tier 1:
        #   tier-1 root: 11000 + x − 20000 = 0.05x − 400 → 0.95x = 8600 → x = 9052.6
        #   but there N = 9052.6 < 10000 is tier 0, so not a root of the real function.
        # Tier 0 (x < 10000): 11000 + x − 20000 = 0.01x → 0.99x = 9000 → x = 9090.9090…
        scope(tiers=T_TWO, settle_net_other=11000.0),
        9000 / 0.99,
        id="linear-long-crosses-into-lower-tier",
    ),
    pytest.param(
        # Short 1 at 5000, margin 6000, T_TWO. Tier 0: 6000 − (x − 5000) = 0.01x → x = 11000/1.01
        #   = 10891 > 10000: outside tier 0. Tier 1: 11000 − x = 0.05x − 400 → 1.05x = 11400
        #   → x = 10857.142857… (N ≥ 10000 ✓).
        scope(qty=-1.0, entry=5000.0, mark=5000.0, tiers=T_TWO, settle_net_other=6000.0),
        11400 / 1.05,
        id="linear-short-crosses-into-higher-tier",
    ),
    pytest.param(
        # Cross: USDT balance 1000 + other USDT positions' uPnL −200 → settle_net_other 800;
        # BTC collateral 0.1·30000·(1 − 0.05) = 2850 held fixed; other MM 150.
        # ETHUSDT long 10 at 2000, mmr 1%: E = 2850 + 800 + 10(x − 2000), MM = 150 + 0.1x
        # 3650 + 10x − 20000 = 150 + 0.1x → 9.9x = 16500 → x = 1666.666…
        scope(
            qty=10.0,
            entry=2000.0,
            mark=2000.0,
            tiers=tiers((None, "0.01", None)),
            settle_net_other=800.0,
            other_equity=2850.0,
            other_mm=150.0,
        ),
        16500 / 9.9,
        id="cross-with-other-collateral",
    ),
    pytest.param(
        # Haircut kink: settle asset h = 0.1, net 5000, long 1 at 50000, mmr 1%, other 2000.
        # n(x) = 5000 + x − 50000 > 0 iff x > 45000.
        #   n > 0 piece: 2000 + 0.9(x − 45000) = 0.01x → 0.89x = 38500 → x = 43258 < 45000 ✗
        #   n ≤ 0 piece: 2000 + (x − 45000) = 0.01x → 0.99x = 43000 → x = 43434.3434… ✓
        scope(
            entry=50000.0,
            mark=50000.0,
            tiers=tiers((None, "0.01", None)),
            settle_net_other=5000.0,
            settle_haircut=0.1,
            other_equity=2000.0,
        ),
        43000 / 0.99,
        id="haircut-kink",
    ),
    pytest.param(
        # Inverse long 60000 contracts × 1 USD at 50000, isolated 0.12 BTC, mmr 0.5%:
        # E = 0.12 + 60000(1/50000 − 1/x) = 1.32 − 60000/x, MM = 0.005·60000/x = 300/x
        # 1.32 = 60300/x → x = 45681.8181…
        scope(kind="inverse", qty=60000.0, entry=50000.0, mark=50000.0, settle_net_other=0.12),
        60300 / 1.32,
        id="inverse-long",
    ),
    pytest.param(
        # Inverse short: E = 0.12 − 60000(1/50000 − 1/x) = −1.08 + 60000/x, MM = 300/x
        # 59700/x = 1.08 → x = 55277.777…
        scope(kind="inverse", qty=-60000.0, entry=50000.0, mark=50000.0, settle_net_other=0.12),
        59700 / 1.08,
        id="inverse-short",
    ),
    pytest.param(
        # Inverse with two tiers (BTC notional bound 1, mmr 1% then 5%, amount_1 = 1·0.04):
        # long 40000 contracts × 1 USD at 40000, margin 0.2 BTC; N = 40000/x.
        # At the mark N = 1 → tier 1 (N < 1 false). Going down N grows: stays tier 1.
        # E = 0.2 + 1 − 40000/x, MM = 0.05·40000/x − 0.04 → 1.24 = 42000/x → x = 33870.967…
        scope(
            kind="inverse",
            qty=40000.0,
            entry=40000.0,
            mark=40000.0,
            settle_net_other=0.2,
            tiers=tiers((1, "0.01", None), (None, "0.05", None)),
        ),
        42000 / 1.24,
        id="inverse-long-tier",
    ),
    pytest.param(
        # Inverse short crossing DOWN into tier 0 as x rises (N = 40000/x falls below 1):
        # short 40000 at 40000, margin 0.3 BTC. Tier 1 (x ≤ 40000 only) is left at once.
        # Tier 0: 0.3 − 40000(1/40000 − 1/x) = 0.01·40000/x → −0.7 + 40000/x = 400/x
        #   → x = 39600/0.7 = 56571.428…
        scope(
            kind="inverse",
            qty=-40000.0,
            entry=40000.0,
            mark=40000.0,
            settle_net_other=0.3,
            tiers=tiers((1, "0.01", None), (None, "0.05", None)),
        ),
        39600 / 0.7,
        id="inverse-short-lower-tier",
    ),
    pytest.param(
        # Inverse BTCUSD settled in BTC, BTC priced by this very mark (settle_linked), cross,
        # USDT 1000 held fixed: E = 1000 + x·(0.1 + 50000(1/50000 − 1/x)) = 1000 + 1.1x − 50000
        # MM = x·0.005·50000/x = 250 → 1.1x = 49250 → x = 44772.7272…
        scope(
            kind="inverse",
            qty=500.0,
            contract_size=100.0,
            entry=50000.0,
            mark=50000.0,
            settle_net_other=0.1,
            other_equity=1000.0,
            settle_linked=True,
        ),
        49250 / 1.1,
        id="inverse-settle-linked",
    ),
    pytest.param(
        # Inverse long 100 × 1 USD at 100, no margin, mmr 0, plus linked collateral 0.0001
        # units priced by this mark: f = 0.0001x + 1 − 100/x → 0.0001x² + x − 100 = 0
        # → x = 200/(1 + √1.04) = 99.01951359278…  (numeric path)
        scope(
            kind="inverse",
            qty=100.0,
            entry=100.0,
            mark=100.0,
            settle_net_other=0.0,
            tiers=tiers((None, "0", None)),
            linked=((0.0001, 0.0),),
        ),
        200 / (1 + math.sqrt(1.04)),
        id="inverse-linked-numeric",
    ),
    pytest.param(
        # Linear long 1 at 100 with ETH collateral priced by this mark, 0.5 net, 20% haircut:
        # E = 10 + (x − 100) + 0.5·0.8·x, MM = 0.01x → 1.39x = 90 → x = 64.748…
        scope(
            entry=100.0,
            mark=100.0,
            tiers=tiers((None, "0.01", None)),
            settle_net_other=10.0,
            linked=((0.5, 0.2),),
        ),
        90 / 1.39,
        id="linear-linked-closed-form",
    ),
    pytest.param(
        # Explicit amounts, MM drops across the bound going up (tier0 5%/0, tier1 6%/300):
        # long 1 at 12000, margin 2400. Tier 1 (x ≥ 10000): f = 0.94x − 9300 > 0 down to 10000
        # (f = 100 there). Just below 10000 (tier 0): f = 0.95x − 9600 → −100 < 0.
        # E − MM changes sign across the jump: the bound 10000 is the liquidation price.
        scope(
            entry=12000.0,
            mark=12000.0,
            settle_net_other=2400.0,
            tiers=tiers((10000, "0.05", "0"), (None, "0.06", "300")),
        ),
        10000.0,
        id="explicit-amounts-jump-long",
    ),
    pytest.param(
        # Explicit amounts, MM jumps up from 100 to 500 at N = 10000 (tier0 1%/0, tier1 5%/0):
        # short 1 at 9000, margin 1300. Tier 0: f = 10300 − 1.01x → 200 at x → 10000⁻ (root
        # 10198 lies outside). At x = 10000 (tier 1): f = 1300 − 1000 − 500 = −200.
        scope(
            qty=-1.0,
            entry=9000.0,
            mark=9000.0,
            settle_net_other=1300.0,
            tiers=tiers((10000, "0.01", "0"), (None, "0.05", "0")),
        ),
        10000.0,
        id="explicit-amounts-jump-short",
    ),
    pytest.param(
        # Already under water: long 1 at 100, mark 90, margin 5: E = 5 − 10 = −5 ≤ MM = 0.9
        # → the position is liquidatable now: the current mark.
        scope(entry=100.0, mark=90.0, settle_net_other=5.0, tiers=tiers((None, "0.01", None))),
        90.0,
        id="already-under-water",
    ),
]


@pytest.mark.parametrize("s, expected", HAND_CASES)
def test_hand_computed_liquidation_price(s, expected):
    p = liquidation_price(s)
    assert p is not None
    assert close(p, expected, 1e-12), (p, expected)
    f, scale = exact_f(s, p)
    assert abs(f) <= D("1e-9") * scale or p in (10000.0, s.mark)


NONE_CASES = [
    pytest.param(scope(qty=0.0), id="flat"),
    pytest.param(
        # Fully collateralized long: margin 100 = q·e. E = 100 + (x − 100) = x, MM = 0.01x:
        # E − MM = 0.99x > 0 for every x > 0 — the only root is 0, not positive.
        scope(entry=100.0, mark=100.0, settle_net_other=100.0, tiers=tiers((None, "0.01", None))),
        id="fully-collateralized-long",
    ),
    pytest.param(
        # Short 1 hedged by 2 units of collateral priced by the same mark:
        # E = 50 − (x − 100) + 2x = 150 + x, MM = 0.01x → increasing, never 0 above the mark.
        scope(
            qty=-1.0,
            entry=100.0,
            mark=100.0,
            settle_net_other=50.0,
            tiers=tiers((None, "0.01", None)),
            linked=((2.0, 0.0),),
        ),
        id="short-hedged-by-linked-collateral",
    ),
    pytest.param(
        # Inverse short with margin ≥ maximum loss: q = −100 × 1 USD at 100, margin 1 coin:
        # E = 1 − 100(1/100 − 1/x) = 100/x, MM = 1/x → 99/x > 0 for all x.
        scope(
            kind="inverse",
            qty=-100.0,
            entry=100.0,
            mark=100.0,
            settle_net_other=1.0,
            tiers=tiers((None, "0.01", None)),
        ),
        id="inverse-short-overcollateralized",
    ),
]


@pytest.mark.parametrize("s", NONE_CASES)
def test_no_liquidation_price(s):
    assert liquidation_price(s) is None


def test_mark_exactly_on_a_tier_bound():
    # N(m) = 10000 exactly → tier 1 at the mark (N < 10000 false). Long 1 at 10000,
    # margin 120, tiers 5%/0 then 6%/300 (explicit): f(m) = 120 − (600 − 300) < 0?
    # 120 − 300 = −180 ≤ 0 → liquidatable now.
    s = scope(
        entry=10000.0, mark=10000.0, settle_net_other=120.0, tiers=tiers((10000, "0.05", "0"), (None, "0.06", "300"))
    )
    assert liquidation_price(s) == 10000.0
    # With margin 400: f(m) = 400 − 300 = 100 > 0 but just below (tier 0):
    # 400 + x − 10000 − 0.05x → −100 at x = 10000⁻: the mark itself is the edge.
    s = scope(
        entry=10000.0, mark=10000.0, settle_net_other=400.0, tiers=tiers((10000, "0.05", "0"), (None, "0.06", "300"))
    )
    assert liquidation_price(s) == 10000.0


def test_deterministic():
    s = scope(
        kind="inverse",
        qty=123.0,
        entry=101.0,
        mark=99.0,
        settle_net_other=0.3,
        tiers=tiers((2, "0.01", None), (None, "0.02", None)),
        linked=((0.01, 0.1),),
    )
    assert len({liquidation_price(s) for _ in range(5)}) == 1


# --------------------------------------------------------------------------------------
# Property: the returned price is the edge of the liquidation region seen from the mark
# --------------------------------------------------------------------------------------


@st.composite
def scopes(draw):
    kind = draw(st.sampled_from(["linear", "inverse"]))
    sign = draw(st.sampled_from([1, -1]))
    qty = sign * draw(st.integers(1, 100000)) / 1000.0
    c = draw(st.sampled_from([1.0, 0.01, 10.0] if kind == "linear" else [1.0, 10.0, 100.0]))
    mark = draw(st.integers(10, 10**6)) / 10.0
    entry = mark * draw(st.floats(0.85, 1.15))
    n_mark = abs(qty) * c * mark if kind == "linear" else abs(qty) * c / mark
    # Tier bounds placed around the notional so that crossings happen.
    k = draw(st.integers(1, 4))
    factors = sorted(set(draw(st.lists(st.sampled_from([0.3, 0.6, 0.9, 1.1, 1.5, 2.5, 4.0]), min_size=k - 1, max_size=k - 1))))
    bounds = []
    for fct in factors:
        b = max(1, round(n_mark * fct, 6)) if n_mark * fct >= 1 else round(n_mark * fct, 9)
        if b > 0 and (not bounds or b > bounds[-1]):
            bounds.append(b)
    mmrs = sorted(draw(st.lists(st.sampled_from(["0.001", "0.005", "0.01", "0.025", "0.05", "0.1", "0.2"]), min_size=len(bounds) + 1, max_size=len(bounds) + 1)))
    explicit = draw(st.booleans())
    rows = []
    for i, r in enumerate(mmrs):
        b = bounds[i] if i < len(bounds) else None
        if explicit:
            lower = bounds[i - 1] if i > 0 else 0
            amt = 0 if i == 0 else round(draw(st.floats(0, 1)) * lower * float(r), 6)
            rows.append((b, r, amt))
        else:
            rows.append((b, r, None))
    table = tiers(*rows)
    settle_linked = kind == "inverse" and draw(st.booleans()) or (kind == "linear" and draw(st.integers(0, 9)) == 0)
    P = 1.0 if draw(st.booleans()) else draw(st.sampled_from([0.5, 2.0, 30000.0]))
    h = draw(st.sampled_from([0.0, 0.0, 0.05, 0.3]))
    # Everything in valuation units ~ the position's notional value V.
    V = n_mark * (mark if settle_linked else P)
    unit = mark if settle_linked else P  # valuation price of one settle unit at the mark
    # Mostly healthy scopes (margin 2%..150% of the notional); sometimes a negative net.
    S = draw(st.one_of(st.floats(0.02, 1.5), st.floats(-0.5, 0.02))) * V / unit
    if S < 0 and h == 0:
        S = abs(S)
    oe = draw(st.sampled_from([0.0, 0.0, 1.0])) * draw(st.floats(0, 1)) * V
    om = draw(st.sampled_from([0.0, 0.0, 1.0])) * draw(st.floats(0, 0.2)) * V
    linked = tuple(
        (draw(st.floats(-0.5, 0.5)) * V / mark, draw(st.sampled_from([0.0, 0.1])))
        for _ in range(draw(st.sampled_from([0, 0, 1, 2])))
    )
    lmm = draw(st.sampled_from([0.0, 0.0, 0.01])) * V / mark
    return LiquidationScope(
        kind=kind,
        qty=qty,
        contract_size=c,
        entry=entry,
        mark=mark,
        tiers=table,
        settle_net_other=S,
        settle_price=P,
        settle_haircut=h,
        other_equity=oe,
        other_mm=om,
        linked=linked,
        settle_linked=settle_linked,
        linked_mm=lmm,
    )


def _near_tier_breakpoint(s: LiquidationScope, x: float) -> bool:
    """x within 1e-9 (relative) of a mark at which N(x) equals a tier bound."""
    aqc = abs(s.qty) * s.contract_size
    for t in s.tiers.tiers:
        if t.max_notional is None or t.max_notional <= 0:
            continue
        b = float(t.max_notional)
        xb = aqc / b if s.kind == "inverse" else b / aqc
        if abs(xb - x) <= 1e-9 * x:
            return True
    return False


def _scan(lo: float, hi: float, n: int, geometric: bool):
    if geometric:
        r = hi / lo
        return [lo * r ** (i / n) for i in range(1, n)]
    return [lo + (hi - lo) * i / n for i in range(1, n)]


@settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(scopes())
def test_property_edge_of_liquidation_region(s):
    p = liquidation_price(s)
    m = s.mark
    long = s.qty > 0
    tol = D("1e-9")
    f_m, scale_m = exact_f(s, m)
    if p is None:
        assert f_m > -tol * scale_m
        # Nothing ≤ 0 on a fine geometric scan of the adverse side (6 decades).
        pts = _scan(m * 1e-6, m, 1200, True) if long else _scan(m, m * 1e6, 1200, True)
        for x in pts:
            f, scale = exact_f(s, x)
            assert f > -tol * scale, ("missed root", x)
        return
    assert p > 0
    if p == m:
        assert f_m <= tol * scale_m or _near_tier_breakpoint(s, m)  # liquidatable now
        return
    assert (p < m) if long else (p > m)
    assert f_m > -tol * scale_m
    # (b) p is a root to 1e-9 of the terms — or a tier bound across which E − MM jumps
    # from > 0 to ≤ 0 (explicit amounts): then E − MM ≤ 0 at p or just beyond it.
    f_p, scale_p = exact_f(s, p)
    if not abs(f_p) <= tol * scale_p:
        assert _near_tier_breakpoint(s, p), ("not a root", p, f_p / scale_p)
        beyond = p * (1 - 1e-12) if long else p * (1 + 1e-12)
        f_b, scale_b = exact_f(s, beyond)
        assert min(f_p / scale_p, f_b / scale_b) <= tol
    # (a) no root strictly between the mark and p: a fine scan, plus the point just before p.
    pts = _scan(min(m, p), max(m, p), 1000, False)
    pts.append(p * (1 + 1e-9) if long else p * (1 - 1e-9))
    for x in pts:
        f, scale = exact_f(s, x)
        assert f > -tol * scale, ("earlier root", x, p)


# --------------------------------------------------------------------------------------
# Liquidation order plan: hand-computed
# --------------------------------------------------------------------------------------


def pos(symbol, qty, mark, tiers_, step=None, c="1", kind="linear", sp="1") -> PlanPosition:
    return PlanPosition(
        symbol=symbol,
        qty=D(qty),
        mark=D(mark),
        contract_size=D(c),
        kind=kind,
        tiers=tiers_,
        qty_step=None if step is None else D(step),
        settle_price=D(sp),
    )


T1 = tiers((None, "0.01", None))
T05 = tiers((None, "0.005", None))
TARGET = D("0.75")  # call_level 0.8 − recovery_band 0.05


def test_plan_single_partial_rounded_up_to_step():
    # BTC long 10 at mark 20000, mmr 1%: MM(r) = 0.01·20000·r = 200r; MM(10) = 2000.
    # equity 2400 → target·equity = 0.75·2400 = 1800. Need 200r < 1800 → r < 9 → x > 1.
    # step 0.3: x ∈ {0.9 → r 9.1, MM 1820 ✗; 1.2 → r 8.8, MM 1760 ✓} → 1.2
    orders = liquidation_orders([pos("BTCUSDT", "10", "20000", T1, "0.3")], D("2400"), TARGET)
    assert orders == [Order("BTCUSDT", "sell", D("1.2"), D("20000"))]


def test_plan_equality_steps_up_one_qty_step():
    # Same, step 0.5: x = 1 leaves r = 9 → MM = 1800 = target·equity: not strictly below
    # → one more step: x = 1.5 (r 8.5, MM 1700).
    orders = liquidation_orders([pos("BTCUSDT", "10", "20000", T1, "0.5")], D("2400"), TARGET)
    assert orders == [Order("BTCUSDT", "sell", D("1.5"), D("20000"))]


def test_plan_nothing_when_already_below_target():
    # MM 2000 < 0.75·3000 = 2250 → no order.
    assert liquidation_orders([pos("BTCUSDT", "10", "20000", T1, "0.5")], D("3000"), TARGET) == []


def test_plan_largest_contributor_first():
    # BTC long 1 at 20000, 1% → MM 200; ETH short 10 at 1000, 0.5% → MM 50. Total 250.
    # equity 300 → target 225. BTC first (200 > 50): others 50, need 200r < 175
    # → r < 0.875 → x > 0.125 → step 0.001: x = 0.126 (r 0.874, MM 174.8; total 224.8 < 225).
    positions = [pos("ETHUSDT", "-10", "1000", T05, "0.1"), pos("BTCUSDT", "1", "20000", T1, "0.001")]
    orders = liquidation_orders(positions, D("300"), TARGET)
    assert orders == [Order("BTCUSDT", "sell", D("0.126"), D("20000"))]


def test_plan_first_closed_fully_then_second_partially():
    # Same book, equity 60 → target 45. BTC: others 50 ≥ 45 — even closing all BTC is not
    # enough → close 1 (all). Total 50. ETH: 5r < 45 → r < 9 → x > 1 → step 0.1: 1.1.
    positions = [pos("ETHUSDT", "-10", "1000", T05, "0.1"), pos("BTCUSDT", "1", "20000", T1, "0.001")]
    orders = liquidation_orders(positions, D("60"), TARGET)
    assert orders == [
        Order("BTCUSDT", "sell", D("1"), D("20000")),
        Order("ETHUSDT", "buy", D("1.1"), D("1000")),
    ]


def test_plan_ties_by_symbol():
    # BBB and AAA both MM 100 (10 × 1000 × 1%). equity 200 → target 150; total 200.
    # AAA first (tie → symbol ascending): others 100, need 10r < 50 → r < 5 → x > 5 → 6.
    positions = [pos("BBB", "10", "1000", T1, "1"), pos("AAA", "10", "1000", T1, "1")]
    assert liquidation_orders(positions, D("200"), TARGET) == [Order("AAA", "sell", D("6"), D("1000"))]


def test_plan_equity_not_positive_closes_everything():
    # equity ≤ 0: every position closes fully, largest contributor first (even one with MM 0).
    zero = tiers((None, "0", None))
    positions = [
        pos("ZZZ", "3", "10", zero, "1"),  # MM 0
        pos("ETHUSDT", "-10", "1000", T05, "0.1"),  # MM 50
        pos("BTCUSDT", "1", "20000", T1, "0.001"),  # MM 200
        pos("FLAT", "0", "5", T1, "1"),  # q = 0: skipped
    ]
    for equity in (D("0"), D("-5")):
        assert liquidation_orders(positions, equity, TARGET) == [
            Order("BTCUSDT", "sell", D("1"), D("20000")),
            Order("ETHUSDT", "buy", D("10"), D("1000")),
            Order("ZZZ", "sell", D("3"), D("10")),
        ]


def test_plan_capped_at_abs_qty():
    # B long 1.05 at 1000, 1%: MM_B(r) = 10r, MM_B(1.05) = 10.5. A short 8 at 100, 1%:
    # MM_A(r) = 0.01·100·r = r, MM_A(8) = 8. Total 18.5; equity 10 → target 7.5.
    # B first (10.5 > 8): others = 8 ≥ 7.5, so no remainder of B is enough → close all of
    # B: 1.05, capped at |q| (the grid would say 1.1). Total 8. A: r < 7.5 → x > 0.5
    # → step 0.01: x = 0.51 (r 7.49, total 7.49 < 7.5).
    positions = [pos("B", "1.05", "1000", T1, "0.1"), pos("A", "-8", "100", T1, "0.01")]
    orders = liquidation_orders(positions, D("10"), TARGET)
    assert orders == [Order("B", "sell", D("1.05"), D("1000")), Order("A", "buy", D("0.51"), D("100"))]


def test_plan_no_qty_step_uses_1e_8():
    # BTC long 1 at 20000, 1% → 200r; equity 200 → target 150 → r < 0.75 → x > 0.25
    # → smallest multiple of 1e-8 above 0.25: 0.25000001.
    orders = liquidation_orders([pos("BTCUSDT", "1", "20000", T1)], D("200"), TARGET)
    assert DEFAULT_QTY_QUANTUM == D("1e-8")
    assert orders == [Order("BTCUSDT", "sell", D("0.25000001"), D("20000"))]


def test_plan_inverse_and_settle_price():
    # BTCUSD inverse long 1000 × 100 USD at 50000: N = r·100/50000 BTC, mmr 0.5%,
    # BTC at 50000 USDT: MM value = r·0.002·0.005·50000 = 0.5r; MM(1000) = 500.
    # equity 600 → target 450 → r < 900 → x > 100 → step 1: 101.
    p = pos("BTCUSD", "1000", "50000", T05, "1", c="100", kind="inverse", sp="50000")
    assert liquidation_orders([p], D("600"), TARGET) == [Order("BTCUSD", "sell", D("101"), D("50000"))]


def test_plan_explicit_amounts_jump():
    # Tiers (explicit): N < 10000: 5%, 0; else 6%, 300. Long 12 at 1000: N = 12000,
    # MM = 720 − 300 = 420. equity 400, target 0.725 → 290.
    #   tier 1 (r ≥ 10): 60r − 300 < 290 → r < 9.83 — no r ≥ 10 (r = 10: MM 300 ≥ 290).
    #   tier 0 (r < 10): 50r < 290 → r < 5.8 → step 0.5: r 5.5, x = 6.5 (MM 275).
    t = tiers((10000, "0.05", "0"), (None, "0.06", "300"))
    assert liquidation_orders([pos("X", "12", "1000", t, "0.5")], D("400"), D("0.725")) == [
        Order("X", "sell", D("6.5"), D("1000"))
    ]


def test_plan_explicit_amounts_prefers_higher_tier():
    # Same tiers; target 0.8·400 = 320: tier 1: 60r − 300 < 320 → r < 10.33 → r = 10 (x = 2)
    # MM(10) = 300 < 320 ✓ — though everything just below r = 10 (MM 50r ≈ 500) fails.
    t = tiers((10000, "0.05", "0"), (None, "0.06", "300"))
    assert liquidation_orders([pos("X", "12", "1000", t, "0.5")], D("400"), D("0.8")) == [
        Order("X", "sell", D("2.0"), D("1000"))
    ]


# --------------------------------------------------------------------------------------
# Liquidation order plan: properties
# --------------------------------------------------------------------------------------


def _mm_after(positions, closes) -> Decimal:
    """Exact Σ MM_pos(remaining)·settle_price, tiers looked up here (not by the solver)."""
    total = D(0)
    for p in positions:
        r = abs(p.qty) - closes.get(p.symbol, D(0))
        if r == 0:
            continue
        n = r * p.contract_size * p.mark if p.kind == "linear" else r * p.contract_size / p.mark
        tier = next(t for t in p.tiers.tiers if t.max_notional is None or n < t.max_notional)
        total += (n * tier.mmr - tier.maintenance_amount) * p.settle_price
    return total


@st.composite
def books(draw):
    n = draw(st.integers(1, 3))
    symbols = draw(st.lists(st.sampled_from(["AAA", "BBB", "CCC", "DDD"]), min_size=n, max_size=n, unique=True))
    positions = []
    for sym in symbols:
        kind = draw(st.sampled_from(["linear", "inverse"]))
        step = draw(st.sampled_from([None, "0.001", "0.1", "1", "0.25"]))
        qty = D(draw(st.integers(1, 5000))) / D(draw(st.sampled_from([1, 10, 100, 1000])))
        if draw(st.booleans()):
            qty = -qty
        mark = D(draw(st.integers(1, 10**6))) / D(10)
        c = D(draw(st.sampled_from(["1", "0.01", "100"])))
        size_n = abs(qty) * c * mark if kind == "linear" else abs(qty) * c / mark
        nb = draw(st.integers(0, 3))
        fcts = sorted(set(draw(st.lists(st.sampled_from(["0.2", "0.5", "0.9", "1.2", "3"]), min_size=nb, max_size=nb))))
        bounds = [(size_n * D(f)).quantize(D("1e-6")) for f in fcts]
        bounds = [b for i, b in enumerate(bounds) if b > 0 and (i == 0 or b > bounds[i - 1])]
        mmrs = sorted(draw(st.lists(st.sampled_from(["0", "0.004", "0.01", "0.05", "0.1"]), min_size=len(bounds) + 1, max_size=len(bounds) + 1)))
        explicit = draw(st.booleans())
        rows = []
        for i, r in enumerate(mmrs):
            b = bounds[i] if i < len(bounds) else None
            if explicit:
                lower = bounds[i - 1] if i > 0 else D(0)
                rows.append((b, r, (lower * D(r) * D(draw(st.sampled_from(["0", "0.3", "1", "1.5"])))).quantize(D("1e-6"))))
            else:
                rows.append((b, r, None))
        sp = D(draw(st.sampled_from(["1", "1", "30000", "0.5"])))
        positions.append(pos(sym, str(qty), str(mark), tiers(*rows), step, str(c), kind, str(sp)))
    total_mm = _mm_after(positions, {})
    eq_factor = D(draw(st.integers(-200, 2000))) / D(1000)
    equity = (abs(total_mm) * eq_factor).quantize(D("1e-6")) if total_mm else D(draw(st.integers(-5, 5)))
    return positions, equity


@settings(max_examples=300, deadline=None)
@given(books())
def test_property_plan(book):
    positions, equity = book
    with localcontext() as ctx:
        ctx.prec = 80
        orders = liquidation_orders(positions, equity, TARGET)
        by_symbol = {p.symbol: p for p in positions}
        live = [p for p in positions if p.qty != 0]
        contrib = {p.symbol: _mm_after([p], {}) for p in live}
        ranked = sorted(live, key=lambda p: (-contrib[p.symbol], p.symbol))
        for o in orders:
            p = by_symbol[o.symbol]
            assert o.side == ("sell" if p.qty > 0 else "buy")
            assert o.mark_price == p.mark
            assert 0 < o.qty <= abs(p.qty)
            step = p.qty_step or DEFAULT_QTY_QUANTUM
            assert o.qty == abs(p.qty) or (o.qty / step) == (o.qty / step).to_integral_value()
        if equity <= 0:
            assert [(o.symbol, o.qty) for o in orders] == [(p.symbol, abs(p.qty)) for p in ranked]
            return
        target = TARGET * equity
        # Execution order follows the ranking (a prefix of it, minus zero contributors).
        assert [o.symbol for o in orders] == [p.symbol for p in ranked[: len(orders)]]
        closes = {o.symbol: o.qty for o in orders}
        after = _mm_after(positions, closes)
        if _mm_after(positions, {}) < target:
            assert orders == []
            return
        assert after < target  # ratio strictly below call_level − recovery_band, exactly
        # Every order but the last is a full close (a partial one would have sufficed).
        for o in orders[:-1]:
            assert o.qty == abs(by_symbol[o.symbol].qty)
        # Minimality of the last order: closing less (one qty_step less, and every smaller
        # grid amount when the grid is small) does NOT bring the ratio below target.
        last = orders[-1]
        p = by_symbol[last.symbol]
        step = p.qty_step or DEFAULT_QTY_QUANTUM
        below = (last.qty / step).to_integral_value(rounding=ROUND_FLOOR)
        if below * step == last.qty:
            below -= 1  # previous grid point strictly below the order
        candidates = [below * step] if below >= 0 else []
        if below <= 2000:
            candidates = [j * step for j in range(0, int(below) + 1)]
        for x in candidates:
            trial = dict(closes)
            trial[last.symbol] = x
            assert _mm_after(positions, trial) >= target, ("not minimal", last, x)
