"""What the columnar index computes from its arrays: cross-scope equity, MM and ratios
(:class:`CrossEval`), isolated scopes, the near-threshold screen, the float decisions and
which rows are due a margin-status."""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np

from .. import kernels

if TYPE_CHECKING:
    from .columns import SymbolColumn


@dataclass
class CrossEval:
    """Float values of the cross scope of the evaluated rows.

    ``state`` (the float decision, before the exact fallback for ``near`` rows) is
    set when ``evaluate_cross`` was given the previous states; ``ratio`` is MM/equity
    (0 when MM = 0, NaN for null)."""

    rows: np.ndarray
    equity: np.ndarray
    mm: np.ndarray
    gross: np.ndarray
    unpriced: np.ndarray  # bool: some asset with a nonzero net has no price
    near: np.ndarray  # bool: too close to a threshold to decide in floats
    ratio: np.ndarray | None = None
    state: np.ndarray | None = None



class CrossEvaluation:
    """The evaluation methods of :class:`~streams.margin.kernels.ColumnarIndex` (its base
    class, kept in a module of its own). They read the arrays the index keeps (``bal``,
    ``pk``, ``price``, ``haircut``, ``ntc``, ``emit_ts``, ``emit_ratio``, ``book_dirty``)
    and its levels (``call_level``, ``lower_level``, ``_lowest_level``)."""

    def evaluate_cross(self, rows, prev: np.ndarray | None = None, sorted_unique: bool = False,
                       want_gross: bool = True) -> CrossEval:
        """Equity, MM, ratio and the near-threshold screen of the cross scope of ``rows``
        (and, given their previous states ``prev``, the float decision). ``sorted_unique``:
        the caller vouches that ``rows`` ascend strictly (saves a pass). ``want_gross=False``:
        Σ|terms| (for the screen) is not kept in the result.

        ``net_a = bal_a + Σ uPnL``; ``value_a = net_a·P_a·(1 − h_a)`` if net_a > 0 else
        ``net_a·P_a``; equity = Σ value_a; MM = Σ MM_pos·P_settle. Unpriced assets count 0.
        """
        rows = np.asarray(rows, np.int64)
        k = len(rows)
        if k <= kernels.SMALL:
            return self._evaluate_cross_small(rows, prev)
        out = _CrossOut(k, prev is not None, want_gross)
        if sorted_unique:
            lo, hi = int(rows[0]), int(rows[-1]) + 1
        else:
            lo, hi = int(rows.min()), int(rows.max()) + 1
        span = hi - lo
        if 4 * k >= span:
            # dense: evaluate the whole run lo:hi through views, then pick the rows
            whole = k == span and (sorted_unique or bool(np.all(rows[1:] > rows[:-1])))
            res = out if whole else _CrossOut(span, prev is not None, want_gross)
            sprev = None
            if prev is not None:
                if whole:
                    sprev = prev
                else:
                    sprev = np.zeros(span, np.int8)
                    sprev[rows - lo] = prev
            for b, e in kernels.blocks(lo, hi):
                take = _SliceTake(b, e)
                self._cross_block(take, e - b, None if sprev is None else sprev[b - lo:e - lo], res, b - lo)
            if not whole:
                out.pick(res, rows - lo)
        else:
            for b, e in kernels.blocks(0, k):
                take = _IndexTake(rows[b:e])
                self._cross_block(take, e - b, None if prev is None else prev[b:e], out, b)
        return out.result(rows)

    def _cross_block(self, take, kb: int, prev_b, out: "_CrossOut", at: int) -> None:
        """One block of ``evaluate_cross``, written into ``out[at:at + kb]``; the formulas
        and their order are those of the scalar path ``_cross_one``."""
        sl = slice(at, at + kb)
        equity, mm, unpriced = out.equity[sl], out.mm[sl], out.unpriced[sl]
        gross = out.gross[sl] if out.gross is not None else np.empty(kb)
        equity.fill(0.0)
        mm.fill(0.0)
        gross.fill(0.0)
        unpriced.fill(False)
        bal_all = take(self.bal)
        for a in range(len(self.assets)):
            bal = bal_all[a]  # may be a view of self.bal: never written
            m = None
            pk = self.pk.get(a)
            # rows past the block's largest count hold +0.0 only: adding them is a no-op
            used = int(take(pk.cnt).max()) if pk is not None else 0
            if used:
                U, M, G = take(pk.U[:used]), take(pk.M[:used]), take(pk.G[:used])
                net = bal + U[0]
                # MM sums start from +0.0; 0.0 + M[0] is M[0] (no entry is -0.0: N·mmr − amount
                # and the 0.0 of N = 0 are never -0.0), so the first add is skipped
                m = M[0] if used == 1 else M[0] + M[1]  # (M[0] is then read-only)
                g = np.abs(bal)
                g += G[0]
                for j in range(1, used):  # fixed order: the sums are reproducible bit for bit
                    np.add(net, U[j], out=net)
                    if j > 1:
                        np.add(m, M[j], out=m)
                    np.add(g, G[j], out=g)
            else:
                net = bal
                g = np.abs(bal)
            p = float(self.price[a])
            if math.isnan(p):
                unpriced |= net != 0
                continue
            h = float(self.haircut[a])
            if p == 1.0 and h == 0.0:  # x·1.0 is x: the same bits without the products
                equity += net
                gross += g
                if m is not None:
                    mm += m
                    gross += m
            else:
                f = p * (1.0 - h)
                if f == p:
                    equity += net * p
                elif 0.0 <= f <= p:
                    # = where(net > 0, net·f, net·p): with 0 ≤ f ≤ p the smaller product is
                    # the one for net's sign (rounding is monotone; zeros and NaN alike)
                    equity += np.minimum(net * f, net * p)
                else:
                    equity += np.where(net > 0, net * f, net * p)
                g *= p
                gross += g
                if m is not None:
                    m = m * p
                    mm += m
                    gross += m
        near = out.near[sl]
        np.greater(take(self.ntc), 0, out=near)
        state = None
        if prev_b is not None:
            state = out.state[sl]
            state.fill(0)
        # Screen and decision. A row with equity > 0 and MM < L·equity − tol for the lowest
        # level L (of 1, call_level, call_level − band; 0 < L ≤ 1) is far below every
        # threshold: none of _near's tests can hold (each difference MM − level·equity is
        # at most MM − L·equity, in floats too: rounding is monotone) and decide() gives
        # healthy. The others (few) take the full formulas.
        rest = self._not_quiet(equity, mm, gross)
        e, mmr, g = (equity, mm, gross) if rest is None else (equity[rest], mm[rest], gross[rest])
        if rest is None or len(rest):
            nr = self._near(e, mmr, g)
            if rest is None:
                near |= nr
            else:
                near[rest] |= nr
            if state is not None:
                pv = prev_b if rest is None else prev_b[rest]
                st = self.decide(e, mmr, pv)
                if rest is None:
                    state[:] = st
                else:
                    state[rest] = st
        ratio = out.ratio[sl]
        with np.errstate(divide="ignore", invalid="ignore"):
            np.divide(mm, equity, out=ratio)  # MM/equity where equity > 0 (0 where MM = 0)
        # equity ≤ 0 (or NaN): 0 where MM = 0, else null — such rows are never quiet
        fix = np.flatnonzero(~(equity > 0)) if rest is None else rest[~(equity[rest] > 0)]
        if len(fix):
            ratio[fix] = np.where(mm[fix] == 0, 0.0, np.nan)

    def _cross_one(self, r: int) -> tuple[float, float, float, bool]:
        """Equity, MM, Σ|terms| and unpriced of one row, in Python floats (same bits)."""
        equity = mm = gross = 0.0
        unpriced = False
        bal_all = self.bal[:, r].tolist()
        price = self.price.tolist()
        haircut = self.haircut.tolist()
        for a in range(len(self.assets)):
            net = bal_all[a]
            g = abs(net)
            m = None
            pk = self.pk.get(a)
            used = int(pk.cnt[r]) if pk is not None else 0
            if used:
                us = pk.U[:used, r].tolist()
                ms = pk.M[:used, r].tolist()
                gs = pk.G[:used, r].tolist()
                m = 0.0
                for j in range(used):
                    net += us[j]
                    m += ms[j]
                    g += gs[j]
            p = price[a]
            if p != p:
                if net != 0:
                    unpriced = True
                continue
            h = haircut[a]
            equity += net * (p * (1.0 - h)) if net > 0 else net * p
            gross += g * p
            if m is not None:
                mm += m * p
                gross += m * p
        return equity, mm, gross, unpriced

    def _evaluate_cross_small(self, rows: np.ndarray, prev) -> CrossEval:
        k = len(rows)
        out = _CrossOut(k, prev is not None)
        for i, r in enumerate(rows.tolist()):
            equity, mm, gross, unpriced = self._cross_one(r)
            out.equity[i] = equity
            out.mm[i] = mm
            out.gross[i] = gross
            out.unpriced[i] = unpriced
            out.near[i] = self.near_one(equity, mm, gross) or self.ntc[r] > 0
            out.ratio[i] = 0.0 if mm == 0 else (mm / equity if equity > 0 else math.nan)
            if prev is not None:
                out.state[i] = self.decide_one(equity, mm, int(prev[i]))
        return out.result(rows)

    def status_due(self, rows: np.ndarray, ratio: np.ndarray, ts: int, step: float, interval: int,
                   sorted_unique: bool = False) -> np.ndarray:
        """Which ``rows`` (with current ratios ``ratio``, NaN = null) are due a margin-status:
        never sent one, or — the book changed or the ratio moved by ≥ ``step`` (to or
        from null counts) — and ``interval`` ms of event time have passed since the last."""
        k = len(rows)
        out = np.empty(k, bool)
        if k <= kernels.SMALL:
            for i, r in enumerate(rows.tolist()):
                et = int(self.emit_ts[r])
                x, last = float(ratio[i]), float(self.emit_ratio[r])
                if x != x or last != last:
                    moved = (x != x) != (last != last)
                else:
                    moved = abs(x - last) >= step
                never = et < 0
                out[i] = (never or bool(self.book_dirty[r]) or moved) and (never or ts - et >= interval)
            return out
        lo = int(rows[0])
        contiguous = sorted_unique and int(rows[-1]) - lo + 1 == k
        for b, e in kernels.blocks(0, k):
            sel = slice(lo + b, lo + e) if contiguous else rows[b:e]
            et = self.emit_ts[sel]
            last = self.emit_ratio[sel]
            x = ratio[b:e]
            with np.errstate(invalid="ignore"):
                d = x - last
                np.abs(d, out=d)
                moved = d >= step
            nan = np.isnan(d)
            if nan.any():  # a null ratio on either side: moved iff exactly one is null
                i = np.flatnonzero(nan)
                moved[i] = np.isnan(x[i]) != np.isnan(last[i])
            never = et < 0
            moved |= never
            moved |= self.book_dirty[sel]
            allowed = (ts - et) >= interval
            allowed |= never
            np.logical_and(moved, allowed, out=out[b:e])
        return out

    def _near(self, equity: np.ndarray, mm: np.ndarray, gross: np.ndarray) -> np.ndarray:
        tol = kernels.NEAR * (gross + np.abs(equity) + mm)
        return (
            (np.abs(equity - mm) <= tol)
            | (np.abs(mm - self.call_level * equity) <= tol)
            | (np.abs(mm - self.lower_level * equity) <= tol)
            | (np.abs(equity) <= tol) & (mm > 0)
        )

    def near_one(self, equity: float, mm: float, gross: float) -> bool:
        """``_near`` of one scope, in Python floats."""
        tol = kernels.NEAR * (gross + abs(equity) + mm)
        return (abs(equity - mm) <= tol or abs(mm - self.call_level * equity) <= tol
                or abs(mm - self.lower_level * equity) <= tol or (abs(equity) <= tol and mm > 0))

    def decide(self, equity: np.ndarray, mm: np.ndarray, prev: np.ndarray) -> np.ndarray:
        """Float state decision (0 healthy, 1 margin_call, 2 liquidation) with hysteresis."""
        if len(equity) <= kernels.SMALL:
            return np.array([self.decide_one(e, m, p) for e, m, p in zip(equity.tolist(), mm.tolist(), prev.tolist())],
                            np.int8)
        liq = (mm > 0) & (equity <= mm)
        pos_eq = equity > 0
        call = pos_eq & (mm > 0) & (mm >= self.call_level * equity)
        stay = pos_eq & (mm > 0) & (prev > 0) & (mm >= self.lower_level * equity)
        return np.where(liq, 2, np.where(call | stay, 1, 0)).astype(np.int8)

    def decide_one(self, equity: float, mm: float, prev: int) -> int:
        if mm > 0 and equity <= mm:
            return 2
        if equity > 0 and mm > 0 and (mm >= self.call_level * equity or (prev > 0 and mm >= self.lower_level * equity)):
            return 1
        return 0

    def evaluate_isolated(self, col: SymbolColumn, slots: np.ndarray, prev: np.ndarray | None = None):
        """Equity (margin + uPnL), MM and near screen of isolated positions ``slots``; given
        their previous states ``prev``, also the float decision (a fourth array)."""
        slots = np.asarray(slots)
        k = len(slots)
        if k <= kernels.SMALL:
            equity, mm, near = np.zeros(k), np.zeros(k), np.zeros(k, bool)
            state = np.zeros(k, np.int8)
            for i, s in enumerate(slots.tolist()):
                margin = float(col.iso_margin[s])
                e = margin + float(col.upnl[s])
                m = float(col.mm[s])
                equity[i], mm[i] = e, m
                near[i] = self.near_one(e, m, abs(margin) + float(col.gross[s])) or bool(col.near_tier[s])
                if prev is not None:
                    state[i] = self.decide_one(e, m, int(prev[i]))
            return (equity, mm, near) if prev is None else (equity, mm, near, state)
        margin = col.iso_margin[slots]
        equity = margin + col.upnl[slots]
        mm = col.mm[slots]
        gross = np.abs(margin)
        gross += col.gross[slots]
        near = col.near_tier[slots]
        state = np.zeros(k, np.int8)
        # the quiet rows (see _cross_block) are healthy and not near; the rest take the formulas
        rest = self._not_quiet(equity, mm, gross)
        e, m, g = (equity, mm, gross) if rest is None else (equity[rest], mm[rest], gross[rest])
        if rest is None or len(rest):
            nr = self._near(e, m, g)
            if rest is None:
                near |= nr
            else:
                near[rest] |= nr
            if prev is not None:
                state[slice(None) if rest is None else rest] = self.decide(e, m, prev if rest is None else prev[rest])
        return (equity, mm, near) if prev is None else (equity, mm, near, state)

    def _not_quiet(self, equity: np.ndarray, mm: np.ndarray, gross: np.ndarray) -> np.ndarray | None:
        """Indices of the scopes that are not quiet (None: all of them; see _cross_block)."""
        lo = self._lowest_level
        if lo is None:
            return None
        tol = gross + equity
        tol += mm
        tol *= kernels.NEAR  # = NEAR·(gross + |equity| + MM) where equity > 0
        quiet = lo * equity
        quiet -= mm
        quiet = quiet > tol
        quiet &= equity > 0
        np.logical_not(quiet, out=quiet)
        return np.flatnonzero(quiet)


class _SliceTake:
    """Block columns ``b:e`` of a (…, rows) array: a view."""

    __slots__ = ("sl",)

    def __init__(self, b: int, e: int) -> None:
        self.sl = slice(b, e)

    def __call__(self, a: np.ndarray) -> np.ndarray:
        return a[..., self.sl]


class _IndexTake:
    """Block columns ``idx`` of a (…, rows) array: a C-contiguous gather."""

    __slots__ = ("idx",)

    def __init__(self, idx: np.ndarray) -> None:
        self.idx = idx

    def __call__(self, a: np.ndarray) -> np.ndarray:
        return np.take(a, self.idx, axis=-1)


class _CrossOut:
    __slots__ = ("equity", "mm", "gross", "unpriced", "near", "ratio", "state")

    def __init__(self, k: int, with_state: bool, with_gross: bool = True) -> None:
        self.equity = np.empty(k)
        self.mm = np.empty(k)
        self.gross = np.empty(k) if with_gross else None
        self.unpriced = np.empty(k, bool)
        self.near = np.empty(k, bool)
        self.ratio = np.empty(k)
        self.state = np.empty(k, np.int8) if with_state else None

    def pick(self, src: "_CrossOut", idx: np.ndarray) -> None:
        for name in self.__slots__:
            a = getattr(self, name)
            if a is not None:
                np.take(getattr(src, name), idx, out=a)

    def result(self, rows: np.ndarray) -> CrossEval:
        return CrossEval(rows, self.equity, self.mm, self.gross, self.unpriced, self.near, self.ratio, self.state)


def ratio_of(equity: float, mm: float) -> float | None:
    """MM / equity; None when equity ≤ 0 < MM; 0 when MM = 0 (floats)."""
    if mm == 0:
        return 0.0
    if equity <= 0:
        return None
    return mm / equity
