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
        layout, rows_all, eq_all, m_all, st_all, prev_all = iso
        ok = None  # None: every isolated scope open
        if not all_acct:
            ok = self.has_acct[rows_all]
        for sym, slots, o0, o1 in layout if self._closed_iso else ():
            closed = self._closed_iso.get(sym)
            if closed is not None:  # an isolated scope stays open when its account's cross scope closed
                if ok is None:
                    ok = np.ones(len(rows_all), bool)
                ok[o0:o1] &= ~closed[slots]
        if ok is not None:
            st_all = st_all * ok.view(np.int8)
            prev_all = prev_all * ok.view(np.int8)
        # a row's isolated scopes are in several symbols: maximum.at, over the states > 0 only
        # (a comparison first: np.flatnonzero of int8 is ~4× slower than of a boolean array)
        nz = np.flatnonzero(st_all > 0)
        np.maximum.at(worst, rows_all[nz], st_all[nz])
        if not prev_done:
            nz = np.flatnonzero(prev_all > 0)
            np.maximum.at(worst_prev, rows_all[nz], prev_all[nz])
        liq_all = st_all == 2
        n_liq = int(np.count_nonzero(liq_all))
        if not n_liq:
            liq_all = None
        res.scopes += len(rows_all) if ok is None else int(ok.sum())
        res.scopes_liquidation += n_liq
        res.scopes_margin_call += int(np.count_nonzero(st_all == 1))
        sh_all = m_all - eq_all
        np.maximum(sh_all, 0.0, out=sh_all)
        bd_all = np.negative(eq_all)
        np.maximum(bd_all, 0.0, out=bd_all)
        if ok is not None:
            sh_all[~ok] = 0.0
            bd_all[~ok] = 0.0
        # per symbol: its settle price, and the sums in symbol order (the same partial sums)
        for sym, slots, o0, o1 in layout:
            if want_liquidated:
                liq_slots[sym] = slots[liq_all[o0:o1]] if liq_all is not None else slots[:0]
            p = float(price[idx.symbols[sym].asset_col])
            if math.isnan(p):
                unpriced += (o1 - o0) if ok is None else int(ok[o0:o1].sum())
                continue
            sh, bd = sh_all[o0:o1], bd_all[o0:o1]
            if p != 1.0:
                sh *= p
                bd *= p
            shortfall += float(sh.sum())
            bad_debt += float(bd.sum())
            if liq_all is not None:
                liq_bad += float(bd[liq_all[o0:o1]].sum())
            if k and len(sh):
                for i in _top_rows(sh + bd, k):
                    j = o0 + i
                    cand.append({"account_id": ids[int(rows_all[j])], "scope": sym, "state": STATES[int(st_all[j])],
                                 "equity": float(eq_all[j] * p), "maintenance_margin": float(m_all[j] * p),
                                 "shortfall": float(sh[i]), "bad_debt": float(bd[i])})
        if static_prev and not prev_done:
            self._worst_prev = worst_prev  # (read only from here on)
        res.accounts = self.n_acct
        res.liquidation, res.entering_liquidation = self._ids_pair(worst == 2, worst_prev < 2)
        res.margin_call, res.entering_margin_call = self._ids_pair(worst == 1, worst_prev < 1)
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


