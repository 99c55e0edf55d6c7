"""Totals of a stressed book's evaluation: shortfall, bad debt, accounts by worst state,
top contributors and the liquidated scopes' notionals (a mixin of ``BookStress``)."""
from __future__ import annotations

import math

import numpy as np

from ..numbers import fmt_decimal
from ..reference import STATES
from .columns import _top_rows
from .results import CROSS, StressResult, _top_key


class _Totals:
    """``BookStress._result`` and ``_liquidated`` (kept apart from the evaluation itself)."""

    def _result(self, marks_d, smarket, vals, price, c_eq, c_mm, c_state, cross_prev, iso, ex,
                want_liquidated) -> StressResult:
        idx = self.idx
        n = self.n
        ids = self.ids
        all_acct = self._all_acct
        any_closed = self._closed_done > 0 and bool(self._closed_rows.any())
        short = c_mm - c_eq
        np.maximum(short, 0.0, out=short)
        bad = np.negative(c_eq)
        np.maximum(bad, 0.0, out=bad)
        # the accounts' worst current state is the same for every scenario without masks: once
        static_prev = all_acct and not any_closed and not self._closed_iso
        prev_done = static_prev and self._worst_prev is not None
        if all_acct and not any_closed:  # the common case: no masks
            n_open = n
            worst_prev = self._worst_prev if prev_done else cross_prev.astype(np.int8)  # (a copy)
        else:
            open_rows = self.has_acct & ~self._closed_rows
            n_open = int(open_rows.sum())
            c_state = np.where(open_rows, c_state, 0).astype(np.int8)
            worst_prev = np.where(open_rows, cross_prev, 0).astype(np.int8)
            short[~open_rows] = 0.0
            bad[~open_rows] = 0.0
        worst = c_state.copy()
        liq_c = c_state == 2
        res = StressResult()
        res.scopes = n_open
        res.scopes_liquidation = int(np.count_nonzero(liq_c))
        res.scopes_margin_call = int(np.count_nonzero(c_state == 1))
        liq_bad = float(bad[liq_c].sum())
        k = self.top
        cand = []
        if k and n:
            for r in _top_rows(short + bad, k):
                cand.append({"account_id": ids[r], "scope": CROSS, "state": STATES[int(c_state[r])],
                             "equity": float(c_eq[r]), "maintenance_margin": float(c_mm[r]),
                             "shortfall": float(short[r]), "bad_debt": float(bad[r])})
        shortfall = float(short.sum())
        bad_debt = float(bad.sum())
        unpriced = 0
        liq_slots: dict[str, np.ndarray] = {}
        for sym, (slots, eq, m, st, prev) in iso.items():
            col = idx.symbols[sym]
            s = self._sym(sym)
            rows = s.iso_rows
            closed = self._closed_iso.get(sym)
            ok = None  # None: every slot open
            if not all_acct:
                ok = self.has_acct[rows]
            if closed is not None:  # an isolated scope stays open when its account's cross scope closed
                ok = ~closed[slots] if ok is None else ok & ~closed[slots]
            if ok is not None:
                st = np.where(ok, st, 0).astype(np.int8)
                prev = np.where(ok, prev, 0).astype(np.int8)
            # the rows of a column are distinct: a gather/scatter is the maximum.at
            worst[rows] = np.maximum(worst[rows], st)
            if not prev_done:
                worst_prev[rows] = np.maximum(worst_prev[rows], prev)
            liq = st == 2
            n_ok = len(slots) if ok is None else int(ok.sum())
            res.scopes += n_ok
            res.scopes_liquidation += int(np.count_nonzero(liq))
            res.scopes_margin_call += int(np.count_nonzero(st == 1))
            if want_liquidated:
                liq_slots[sym] = slots[liq]
            p = float(price[col.asset_col])
            if math.isnan(p):
                unpriced += n_ok
                continue
            sh = m - eq
            np.maximum(sh, 0.0, out=sh)
            bd = np.negative(eq)
            np.maximum(bd, 0.0, out=bd)
            if ok is not None:
                sh[~ok] = 0.0
                bd[~ok] = 0.0
            if p != 1.0:
                sh *= p
                bd *= p
            shortfall += float(sh.sum())
            bad_debt += float(bd.sum())
            liq_bad += float(bd[liq].sum())
            if k and len(sh):
                for i in _top_rows(sh + bd, k):
                    cand.append({"account_id": ids[int(rows[i])], "scope": sym, "state": STATES[int(st[i])],
                                 "equity": float(eq[i] * p), "maintenance_margin": float(m[i] * p),
                                 "shortfall": float(sh[i]), "bad_debt": float(bd[i])})
        if static_prev and not prev_done:
            self._worst_prev = worst_prev  # (read only from here on)
        res.accounts = int(self.has_acct.sum())
        res.liquidation = self._ids_where(worst == 2)
        res.margin_call = self._ids_where(worst == 1)
        res.entering_liquidation = self._ids_where((worst == 2) & (worst_prev < 2))
        res.entering_margin_call = self._ids_where((worst == 1) & (worst_prev < 1))
        res.shortfall = shortfall
        res.bad_debt = bad_debt
        res.liq_bad_debt = liq_bad
        res.unpriced_scopes = unpriced
        res.exact_checks = ex
        res.top = sorted(cand, key=_top_key)[:k]
        res.marks = {s: fmt_decimal(m) for s, m in sorted(marks_d.items())}
        res.all_marks = {s: fmt_decimal(m) for s, m in sorted(smarket.marks.items())}
        if want_liquidated:
            self._liquidated(res, liq_c, liq_slots, vals, price)
        return res

    def _liquidated(self, res: StressResult, liq_rows, liq_slots, vals, price) -> None:
        """Scopes in liquidation and the signed notional (valuation currency, + = sold) of
        their positions per symbol: the orders of closing them in full at the marks."""
        idx = self.idx
        ids = self.ids
        pairs = [(a, CROSS) for a in self._ids_where(liq_rows)]
        liq_x = np.append(liq_rows, False)  # the spare row of isolated slots: never
        notional: dict[str, float] = {}
        for sym, col in idx.symbols.items():
            if not col.n:
                continue
            s = self._sym(sym)
            sel = np.flatnonzero(liq_x[s.rows_x]) if liq_rows.any() else np.zeros(0, np.int64)
            iso_sel = liq_slots.get(sym)
            if iso_sel is not None and len(iso_sel):
                pairs.extend((ids[r], sym) for r in col.rows[iso_sel].tolist())
                sel = np.concatenate([sel, iso_sel])
            if not len(sel):
                continue
            x = vals[sym][0]
            if x is None:  # unshocked: the notional at the book's mark
                m = col.mark
                if math.isnan(m):
                    m = col.lastp[sel]
                x = (1.0 / m) if col.inverse else m
                nv_sel = s.aq[sel] * x
            else:
                nv_sel = s.aq[sel] * x
            p = float(price[col.asset_col])
            if math.isnan(p):
                continue
            signed = float(np.dot(np.sign(col.qty[sel]), nv_sel)) * p
            if signed:
                notional[sym] = notional.get(sym, 0.0) + signed
        pairs.sort()
        res.liquidated = pairs
        res.liquidated_notional = notional


