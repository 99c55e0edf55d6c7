"""Liquidation price of a position, and the liquidation order plan of a scope.

Two pure functions, no I/O:

* :func:`liquidation_price` — the mark of a position's symbol at which its scope
  reaches ``equity = MM``, every other price held fixed (CONTRACT, "Margin
  definitions"). Floats: the value is rounded to 12 significant digits downstream and
  must agree with exact arithmetic to ~1e-9 relative to its terms.
* :func:`liquidation_orders` — the ``orders`` of a ``liquidations`` output (CONTRACT,
  "Output topics"): exact :class:`~decimal.Decimal`, because it is a decision.

Scope equity as a function of the mark ``x`` of the position's symbol::

    E(x)  = other_equity + V(settle_net_other + uPnL(x)) + Σ_j V_j(x)
    V(n)  = n·P·(1 − h) if n > 0 else n·P          (settle asset, price P, haircut h)
    V_j(x)= net_j·x·(1 − h_j) if net_j > 0 else net_j·x   (``linked`` collateral)
    uPnL  = q·c·(x − e)            (linear)     q·c·(1/e − 1/x)   (inverse)
    MM(x) = other_mm + linked_mm·x + P·(N(x)·mmr_k − amount_k)
    N(x)  = |q|·c·x                (linear)     |q|·c/x           (inverse)

with ``k`` the tier of ``N(x)`` (first tier with ``N < max_notional``), and ``P = x``
instead of ``settle_price`` when ``settle_linked`` (the settle asset is itself priced
by this symbol's mark, e.g. an inverse BTCUSD position settled in BTC when BTC's
``price_symbol`` is BTCUSD).
"""
from __future__ import annotations

import math
from bisect import bisect_right
from dataclasses import dataclass
from decimal import ROUND_FLOOR, ROUND_HALF_EVEN, Context, Decimal, localcontext
from typing import Sequence

from .instruments import CONTRACT_KINDS, TierTable

__all__ = [
    "LiquidationScope",
    "liquidation_price",
    "PlanPosition",
    "Order",
    "liquidation_orders",
    "DEFAULT_QTY_QUANTUM",
    "PLAN_PRECISION",
]

# ---------------------------------------------------------------------------
# Liquidation price
# ---------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class LiquidationScope:
    """What the engine knows of one position's scope, in floats (see the module docstring).

    ``settle_net_other``: net of the settle asset without this position's uPnL (cross:
    balance + uPnL of the *other* cross positions settled in it; isolated: the isolated
    margin). ``settle_price``/``settle_haircut``: P and h of the settle asset (isolated:
    1.0 and 0.0, the scope is in settle units). ``other_equity``: value of every other
    asset of the scope, held fixed. ``other_mm``: MM of the scope's other positions, in
    the valuation currency, held fixed. ``linked``: ``(net, haircut)`` of collateral
    assets priced by THIS symbol's mark, which move with it.

    Two optional fields complete the model for assets priced by this symbol's mark:
    ``settle_linked`` (the settle asset is one of them: ``P = x`` and ``settle_price`` is
    ignored) and ``linked_mm`` (MM, in units of such assets, of other positions settled
    in them — valued at ``x``, so ``linked_mm·x`` moves too; keep those out of
    ``other_mm``).
    """

    kind: str  # "linear" | "inverse"
    qty: float  # signed q
    contract_size: float  # c
    entry: float  # e
    mark: float  # m, current mark of this position's symbol
    tiers: TierTable
    settle_net_other: float
    settle_price: float
    settle_haircut: float
    other_equity: float
    other_mm: float
    linked: tuple[tuple[float, float], ...] = ()
    settle_linked: bool = False
    linked_mm: float = 0.0


def liquidation_price(s: LiquidationScope) -> float | None:
    """The mark ``p`` of this position's symbol at which its scope reaches ``E = MM``.

    ``p`` is the nearest point on the adverse side of the mark (``x < m`` for a long,
    ``x > m`` for a short, ``x > 0``) where ``E(x) − MM(x) ≤ 0``: the boundary of the
    liquidation region seen from the mark, i.e. ``sup{x < m : E(x) ≤ MM(x)}`` for a long
    and ``inf{x > m : E(x) ≤ MM(x)}`` for a short. Where ``E − MM`` is continuous this is
    its nearest root on the adverse side; where a tier table with explicit amounts
    makes MM jump across a tier bound and ``E − MM`` changes sign across that jump,
    it is the bound itself.

    Returns:
      * ``None`` when ``q = 0`` (or the inputs are degenerate: ``m ≤ 0``, ``c = 0``, an
        inverse ``e ≤ 0``), or when no such positive price exists (e.g. a fully
        collateralized long whose equity stays above MM down to 0, a short hedged by
        collateral priced by the same mark, an inverse short with margin ≥ its
        maximum loss);
      * the current mark ``m`` when the scope is already at or under water there
        (``E(m) ≤ MM(m)``): the position is liquidatable now, which is what an exchange
        UI shows — not the root that may lie on the *favourable* side. (This test is
        in floats; the scope's state is decided exactly elsewhere. Near the threshold
        both answers are within tolerance of ``m``.)

    Method: ``E − MM`` is smooth between breakpoints — the tier bounds
    (``x = B_k/(|q|·c)`` linear, ``x = |q|·c/B_k`` inverse) and the haircut kink of the
    settle asset (its net crosses 0). The pieces are walked from the mark in the
    adverse direction; on each, ``f(x) = c2·x² + c1·x + c0 + cm/x`` with constant
    coefficients, and the first root in the piece is taken:

      * linear in x (linear contract; linked collateral allowed): ``x = −c0/c1``;
      * linear in y = 1/x (inverse contract without linked assets): ``x = −cm/c0``;
      * otherwise (inverse with linked collateral, a linear contract with
        ``settle_linked``): ``x·f(x)`` is a cubic, split at its critical points into
        monotone stretches; the first stretch whose far end has ``f ≤ 0`` is bracketed
        (doubling/halving towards ∞/0 when unbounded) and bisected to adjacent floats
        (geometric midpoints across decades). Deterministic.
    """
    q = s.qty
    m = s.mark
    inverse = s.kind == "inverse"
    e = s.entry
    qc = q * s.contract_size
    # Degenerate inputs have no price (and would divide by zero below): flat position,
    # no mark yet, zero contract size, an inverse entry that is not positive.
    if qc == 0 or not m > 0 or (inverse and not e > 0):
        return None
    aqc = abs(qc)
    long = q > 0
    S = s.settle_net_other
    h = s.settle_haircut
    P = s.settle_price
    plinked = s.settle_linked
    oe = s.other_equity
    om = s.other_mm
    lmm = s.linked_mm
    lin_coef = 0.0  # Σ V_j(x)/x: linked nets are fixed, so their value is linear in x
    for net, hj in s.linked:
        lin_coef += net * (1.0 - hj) if net > 0 else net
    tiers = s.tiers
    bounds = tiers.bounds.tolist()
    mmrs = tiers.mmrs.tolist()
    amounts = tiers.amounts.tolist()
    last = len(bounds) - 1
    w_pos = 1.0 - h

    def tier(x: float) -> int:
        n = aqc / x if inverse else aqc * x
        k = bisect_right(bounds, n)  # first k with N < bound_k
        return k if k < last else last

    def weight(x: float) -> float:
        n = S + (qc * (1.0 / e - 1.0 / x) if inverse else qc * (x - e))
        return w_pos if n > 0 else 1.0

    def f(x: float, k: int, w: float) -> float:
        # E − MM on the piece of tier k and settle weight w, evaluated from the
        # definitions (not the coefficients) so that cancellation stays as small as
        # the terms themselves allow.
        if inverse:
            n = S + qc * (1.0 / e - 1.0 / x)
            notional = aqc / x
        else:
            n = S + qc * (x - e)
            notional = aqc * x
        p = x if plinked else P
        return oe + lin_coef * x + p * w * n - om - lmm * x - p * (notional * mmrs[k] - amounts[k])

    if f(m, tier(m), weight(m)) <= 0:
        return m

    # Breakpoints strictly on the adverse side, nearest first.
    brk: list[float] = []
    for b in bounds[:last]:
        if b > 0:
            xb = aqc / b if inverse else b / aqc
            if (0 < xb < m) if long else (xb > m):
                brk.append(xb)
    if h != 0:
        if inverse:
            d = 1.0 / e + S / qc
            xk = 1.0 / d if d > 0 else -1.0
        else:
            xk = e - S / qc
        if (0 < xk < m) if long else (m < xk < math.inf):
            brk.append(xk)
    if len(brk) > 1:
        brk = sorted(set(brk), reverse=long)
    brk.append(0.0 if long else math.inf)

    near = m
    for far in brk:
        if far == near:
            continue
        if far == 0.0:
            mid = near * 0.5
        elif far == math.inf:
            mid = near * 2.0
        else:
            mid = 0.5 * (near + far)
        k = tier(mid)
        w = weight(mid)
        if f(near, k, w) <= 0:
            # E − MM is > 0 at `near` (checked on the previous piece or at the mark)
            # but ≤ 0 just beyond it: MM jumps at this tier bound — the bound is the
            # edge of the liquidation region.
            return near
        r = _root_in_piece(near, far, long, f, k, w, _coefficients(
            inverse, plinked, qc, aqc, e, S, P, w, oe, om, lmm, lin_coef, mmrs[k], amounts[k]))
        if r is not None:
            return r
        near = far
    return None


def _coefficients(inverse, plinked, qc, aqc, e, S, P, w, oe, om, lmm, lin_coef, mmr, amount):
    """``(c2, c1, c0, cm)`` of ``f(x) = c2·x² + c1·x + c0 + cm/x`` on one piece."""
    c2 = 0.0
    c1 = lin_coef - lmm
    c0 = oe - om
    cm = 0.0
    if inverse:
        n0, n_inv = S + qc / e, -qc  # n(x) = n0 + n_inv/x
        if plinked:  # P = x: x·w·n(x) − x·(|q|c/x·mmr − amount)
            c1 += w * n0 + amount
            c0 += w * n_inv - aqc * mmr
        else:
            c0 += P * w * n0 + P * amount
            cm += P * w * n_inv - P * aqc * mmr
    else:
        n0, n1 = S - qc * e, qc  # n(x) = n0 + n1·x
        if plinked:
            c2 += w * n1 - aqc * mmr
            c1 += w * n0 + amount
        else:
            c1 += P * w * n1 - P * aqc * mmr
            c0 += P * w * n0 + P * amount
    return c2, c1, c0, cm


def _root_in_piece(near, far, long, f, k, w, coef):
    """First root of the piece function beyond ``near`` (where it is > 0) up to ``far``."""
    c2, c1, c0, cm = coef

    def inside(r: float) -> bool:
        # r in [near, far] seen in the adverse direction; r > 0.
        return (far <= r <= near and r > 0) if long else (near <= r <= far and r < math.inf)

    if c2 == 0 and cm == 0:
        # f = c1·x + c0: the root is ahead iff f decreases in the adverse direction.
        if (c1 > 0) if long else (c1 < 0):
            r = -c0 / c1
            if inside(r):
                return r
            # Float error when f(near) is tiny: the root is `near` itself.
            if (r > near) if long else (r < near):
                return near
        return None
    if c2 == 0 and c1 == 0:
        # f = c0 + cm·y with y = 1/x; adverse is y increasing for a long.
        if ((cm < 0) if long else (cm > 0)) and c0 != 0:
            r = -cm / c0
            if r > 0:
                if inside(r):
                    return r
                if (r > near) if long else (r < near):
                    return near
        return None
    return _numeric_root(near, far, long, f, k, w, c2, c1, c0, cm)


def _numeric_root(near, far, long, f, k, w, c2, c1, c0, cm):
    """Bracket and bisect the first root of ``f`` on ``(near, far]``.

    ``g(x) = x·f(x) = c2·x³ + c1·x² + c0·x + cm`` has the sign of ``f`` for ``x > 0``
    and is monotone between its critical points (roots of ``3c2·x² + 2c1·x + c0``), so
    each stretch between critical points holds at most one sign change.
    """
    lo, hi = (far, near) if long else (near, far)
    crit: list[float] = []
    a, b, c = 3.0 * c2, 2.0 * c1, c0
    if a == 0:
        if b != 0:
            crit.append(-c / b)
    else:
        disc = b * b - 4.0 * a * c
        if disc >= 0:
            sq = math.sqrt(disc)
            t = -0.5 * (b + math.copysign(sq, b))
            if t != 0:
                crit.append(t / a)
                crit.append(c / t)
            else:
                crit.append(0.0)
    ends = sorted({x for x in crit if lo < x < hi and x > 0}, reverse=long)
    ends.append(far)
    u = near
    for v in ends:
        if v == 0.0 or v == math.inf:
            # Sign of f near 0+ / +∞: the dominant coefficient.
            order = (cm, c0, c1, c2) if v == 0.0 else (c2, c1, c0, cm)
            sign = next((c for c in order if c != 0), 0.0)
            if sign >= 0:
                return None  # f stays > 0 on this last, monotone stretch
            # Bracket: walk geometrically towards the limit until f ≤ 0.
            x = u
            while True:
                nx = x * 0.5 if long else x * 2.0
                if nx == 0.0 or nx == math.inf:
                    return None  # no root representable in doubles
                if f(nx, k, w) <= 0:
                    return _bisect(x, nx, f, k, w)
                x = nx
        fv = f(v, k, w)
        if fv <= 0:
            return v if fv == 0 else _bisect(u, v, f, k, w)
        u = v
    return None


def _bisect(pos: float, neg: float, f, k, w) -> float:
    """Shrink ``[pos, neg]`` (f(pos) > 0 ≥ f(neg)) to adjacent doubles; return ``neg``."""
    for _ in range(2200):
        lo, hi = (pos, neg) if pos < neg else (neg, pos)
        # Geometric midpoints while the bracket spans more than a factor 4, so that
        # brackets reaching towards 0 or across decades shrink in ~60 steps.
        mid = math.sqrt(lo) * math.sqrt(hi) if lo > 0 and hi > 4.0 * lo else lo + 0.5 * (hi - lo)
        if mid <= lo or mid >= hi:
            break
        if f(mid, k, w) > 0:
            pos = mid
        else:
            neg = mid
    return neg


# ---------------------------------------------------------------------------
# Liquidation order plan
# ---------------------------------------------------------------------------

#: Quantum of a close quantity when the instrument has no ``qty_step``.
DEFAULT_QTY_QUANTUM = Decimal("1e-8")
#: Significant digits of the local decimal context of :func:`liquidation_orders`.
PLAN_PRECISION = 60


@dataclass(frozen=True, slots=True)
class PlanPosition:
    """A position of the scope being liquidated, exact.

    ``settle_price``: valuation price of the settle asset (an isolated scope is in
    settle units: 1).
    """

    symbol: str
    qty: Decimal  # signed
    mark: Decimal
    contract_size: Decimal
    kind: str  # "linear" | "inverse"
    tiers: TierTable
    qty_step: Decimal | None
    settle_price: Decimal


@dataclass(frozen=True, slots=True)
class Order:
    """One liquidation order: ``side`` "sell" closes a long, "buy" a short."""

    symbol: str
    side: str
    qty: Decimal
    mark_price: Decimal


def liquidation_orders(positions: Sequence[PlanPosition], equity: Decimal, target_ratio: Decimal) -> list[Order]:
    """Orders that, executed at mark, bring the scope to ``MM < target_ratio·equity``.

    ``target_ratio`` is ``call_level − recovery_band``; with ``equity > 0``,
    ``margin_ratio = MM/equity < target`` is the same as ``MM < target·equity``.

    Assumption: a close executes at the mark, so it realizes exactly the closed part's
    uPnL into the balance and equity is unchanged; fees are ignored. Only MM moves:
    ``MM_after = Σ MM_pos(remaining)·settle_price``, with
    ``MM_pos(r) = N(r)·mmr_k − amount_k`` (``N = r·c·m`` linear, ``r·c/m`` inverse;
    ``MM_pos(0) = 0``).

    Rule (CONTRACT, ``liquidations.orders``):
      * positions with ``q = 0`` are skipped;
      * ``equity ≤ 0``: every position is closed fully;
      * otherwise positions are taken by MM contribution ``MM_pos(|q|)·settle_price``
        descending, ties by symbol ascending. Before each: stop if ``Σ MM <
        target·equity`` already. Else close the smallest amount ``x`` — a multiple of
        ``qty_step`` (``DEFAULT_QTY_QUANTUM`` = 1e-8 when the instrument has none),
        capped at ``|q|`` — after which ``Σ MM < target·equity``; if none is enough,
        close it all and go on. A position whose contribution is ≤ 0 cannot lower MM
        by closing and is left alone (all later ones too: they are sorted).

    ``x`` is solved per tier in closed form, from the position's current tier
    downwards — within a tier MM is linear and nondecreasing in the remaining size,
    so the valid remaining sizes of a tier are an interval — and every candidate is
    verified with the exact MM (stepping one ``qty_step`` either way against
    rounding), so MM jumps of explicit tier amounts are handled too. Arithmetic is
    exact :class:`~decimal.Decimal`: terms in a local context of ``PLAN_PRECISION``
    digits (exact for linear contracts; an inverse notional ``r·c/m`` may not terminate),
    their sums and the comparison with the target in a context wide enough not to round
    them again.
    Orders come in execution order; ``qty`` is exact (not normalized).
    """
    with localcontext() as ctx:
        ctx.prec = PLAN_PRECISION
        ctx.rounding = ROUND_HALF_EVEN
        live = [p for p in positions if p.qty != 0]
        contrib = [_mm_value(p, abs(p.qty)) for p in live]
        order = sorted(range(len(live)), key=lambda i: (-contrib[i], live[i].symbol))
        if equity <= 0:
            return [_order(live[i], abs(live[i].qty)) for i in order]
        target = _WIDE.multiply(target_ratio, equity)
        current = list(contrib)  # MM value of each position as the plan goes
        orders: list[Order] = []
        for i in order:
            if _sum(current) < target:
                break
            if contrib[i] <= 0:
                break
            p = live[i]
            others = _sum(v for j, v in enumerate(current) if j != i)
            x = _smallest_close(p, others, target)
            orders.append(_order(p, x))
            current[i] = _mm_value(p, abs(p.qty) - x)
        return orders


# Sums and comparisons of MM values use a much wider context than the terms: the terms
# are exact for linear contracts (finite products), and an inverse term, rounded to
# PLAN_PRECISION digits, must not be rounded again when added to a term of another
# magnitude — otherwise a remainder exactly at the target could pass as below it.
_WIDE = Context(prec=4 * PLAN_PRECISION, rounding=ROUND_HALF_EVEN)


def _sum(values) -> Decimal:
    total = Decimal(0)
    for v in values:
        total = _WIDE.add(total, v)
    return total


def _order(p: PlanPosition, qty: Decimal) -> Order:
    return Order(p.symbol, "sell" if p.qty > 0 else "buy", qty, p.mark)


def _notional(p: PlanPosition, size: Decimal) -> Decimal:
    # Same expression (and evaluation order) as the contract kinds' notional.
    return CONTRACT_KINDS[p.kind].notional(size, p.contract_size, p.mark)


def _mm_value(p: PlanPosition, size: Decimal) -> Decimal:
    """``MM_pos(size)·settle_price`` (exact; 0 for size 0)."""
    if size == 0:
        return Decimal(0)
    return p.tiers.maintenance(_notional(p, size)) * p.settle_price


def _smallest_close(p: PlanPosition, others: Decimal, target: Decimal) -> Decimal:
    """Smallest close ``x`` on the ``qty_step`` grid (≤ |q|) with ``others + MM(|q|−x) < target``.

    ``|q|`` itself (close all) when no grid point leaves a remainder that is enough.
    """
    A = abs(p.qty)
    step = p.qty_step if p.qty_step is not None and p.qty_step > 0 else DEFAULT_QTY_QUANTUM
    j_max = (A / step).to_integral_value(rounding=ROUND_FLOOR)  # largest j with j·step ≤ |q|
    if j_max * step > A:  # guard against rounding of the quotient
        j_max -= 1

    def remaining(j: Decimal) -> Decimal:
        return A - j * step

    def ok(j: Decimal) -> bool:
        r = remaining(j)
        return r > 0 and _WIDE.add(others, _mm_value(p, r)) < target

    tiers = p.tiers.tiers
    sp = p.settle_price
    unit = _notional(p, Decimal(1))  # N per contract: N(r) = r·unit (up to rounding)
    if sp <= 0 or unit <= 0:
        return A
    budget = (target - others) / sp  # MM_pos(r) < budget
    top = p.tiers.index(_notional(p, A))
    for k in range(top, -1, -1):
        t = tiers[k]
        hi_r = t.max_notional / unit if t.max_notional is not None else None
        # Enough remaining sizes in tier k: r < up_r (MM is linear in r, slope ≥ 0).
        if t.mmr > 0:
            up_r = (budget + t.maintenance_amount) / (unit * t.mmr)
            if hi_r is not None and hi_r < up_r:
                up_r = hi_r
        elif -t.maintenance_amount < budget:
            up_r = hi_r
        else:
            continue
        if up_r is None or up_r > A:
            j = Decimal(0)
        else:
            j = ((A - up_r) / step).to_integral_value(rounding=ROUND_FLOOR) + 1
        # j is exact but for the rounding of two divisions, i.e. within one step of the
        # true answer for this tier. Verify with the exact MM on a small window around
        # it: the smallest j there whose remainder is in tier k and enough. (Within a
        # tier MM is monotone, so below the true answer nothing in the tier is enough.)
        for jj in (j - 2, j - 1, j, j + 1, j + 2):
            if 0 <= jj <= j_max and ok(jj) and p.tiers.index(_notional(p, remaining(jj))) == k:
                return jj * step
    return A
