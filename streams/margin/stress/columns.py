"""Per-symbol constants and values of a stressed book (``_Sym``) and the float screen of
scopes (``_decide``), see the package docstring."""
from __future__ import annotations

import math

import numpy as np

def _top_rows(score: np.ndarray, k: int) -> list[int]:
    """Indices of the (at most) ``k`` largest positive scores (in no particular order).

    On a large array the candidates are first cut by a lower bound of the k-th largest: the
    k-th largest of a strided sample (every score of the top k is >= it), so the partition
    runs on a few hundred scores instead of every positive one. When the k-th largest is
    tied (the set of the top k is then not unique), the full partition decides as before."""
    n = len(score)
    if k and n > 256 * k:
        sub = score[:: n // (64 * k)]
        bound = np.partition(sub, len(sub) - k)[len(sub) - k]
        if bound > 0:
            c = np.flatnonzero(score >= bound)
            cs = score[c]
            part = np.argpartition(-cs, k - 1)[:k]
            if np.count_nonzero(cs >= cs[part].min()) == k:
                return c[part].tolist()
    pos = np.flatnonzero(score > 0)
    if len(pos) > k:
        pos = pos[np.argpartition(-score[pos], k - 1)[:k]]
    return pos.tolist()


def _decide(idx, equity, mm, gross, prev):
    """Float decision and near screen of scopes (``ColumnarIndex.decide``/``_near``), through
    the index's quiet-row prefilter for the screen: a scope with equity > 0 and MM < L·equity
    − tol (L the lowest level, at most 1) is healthy and far from every threshold, so only
    the others are screened. When they are many (over a quarter), the decision runs on every
    scope (``_states``: on a quiet scope it is healthy anyway), cheaper than gathering them
    and scattering their states back."""
    rest = idx._not_quiet(equity, mm, gross)
    if rest is None:
        return _states(idx, equity, mm, prev), idx._near(equity, mm, gross)
    near = np.zeros(len(equity), bool)
    if 4 * len(rest) > len(equity):
        state = _states(idx, equity, mm, prev)
        if len(rest):
            near[rest] = idx._near(equity[rest], mm[rest], gross[rest])
    else:  # few: on the gathered scopes only
        state = np.zeros(len(equity), np.int8)
        if len(rest):
            e, m = equity[rest], mm[rest]
            state[rest] = _states(idx, e, m, prev[rest])
            near[rest] = idx._near(e, m, gross[rest])
    return state, near


def _states(idx, equity, mm, prev):
    """``ColumnarIndex.decide`` (0 healthy, 1 margin_call, 2 liquidation, with hysteresis)
    on boolean arrays: its nested ``np.where`` over int64 costs ~50× more than these
    comparisons. liquidation: MM > 0 and equity <= MM; margin_call: equity > 0, MM > 0 and
    MM >= call·equity, or MM >= lower·equity from a state above healthy."""
    pos_m = mm > 0
    liq = equity <= mm
    liq &= pos_m
    call = mm >= idx.call_level * equity
    stay = mm >= idx.lower_level * equity
    stay &= prev > 0
    call |= stay
    call &= pos_m
    call &= equity > 0
    call |= liq
    out = call.view(np.int8) + liq.view(np.int8)  # (liquidation: 1 + 1)
    return out


class _Sym:
    """Per-symbol constants of a book (computed once per :class:`BookStress`).

    The cross positions are also laid out by row (``dense``): a column holds at most one slot
    per row, so the per-row sum of a cross quantity is the slot's own value and the row's
    uPnL and MM at a mark are computed on row-aligned arrays (q·c, q·c·e, |q|·c and the tier
    cache's mmr/amount; 0 for rows without a position) with the same float operations as the
    slots' — no scatter (``bincount``) per scenario. The isolated slots get their own gathered
    copies, and the tier-cache test (``t_lo < N < t_hi``) runs only on the slots whose cache
    bounds lie within a band of marks around the scenario's (``_cand``)."""

    __slots__ = ("col", "n", "n_rows", "rows_x", "iso_slots", "iso_rows", "aq", "iso", "dense", "isod", "iso_pos",
                 "cand", "dense_e", "aqe", "ident")

    def __init__(self, col, n_rows: int) -> None:
        n = col.n
        self.col = col
        self.n = n
        self.n_rows = n_rows
        iso = col.iso[:n]
        rows = col.rows[:n]
        self.iso_slots = np.flatnonzero(iso)
        self.rows_x = rows.copy()
        self.rows_x[self.iso_slots] = n_rows  # isolated slots sum into a spare row
        self.iso_rows = rows[self.iso_slots]
        self.aq = np.abs(col.qty[:n] * col.c)  # |q|·c of every slot
        self.iso = None
        self.dense = None
        self.isod = None
        self.iso_pos = None
        self.cand = None
        self.dense_e = None
        self.aqe = None
        self.ident = None

    def identity(self) -> bool:
        """Whether slot i is row i for every row (a book loaded in row order)."""
        if self.ident is None:
            n = self.n
            self.ident = n == self.n_rows and bool(np.array_equal(self.col.rows[:n], np.arange(n)))
        return self.ident

    def _dense(self):
        """Row-aligned q·c, q·c·e, |q|·c, mmr and amount of the cross slots (0 for a row
        without one; the same products as per slot), and the isolated slots' own."""
        if self.dense is None:
            col, n, c = self.col, self.n, self.col.c
            sl = self.iso_slots
            if self.identity():
                # slot i is row i (a book loaded in row order): the slots' arrays with the
                # isolated ones zeroed, no scatter of every slot
                qc = col.qty[:n] * c
                qc[sl] = 0.0
                qce = qc * col.entry[:n]
                qce[sl] = 0.0
                mmr, amt = col.t_mmr[:n].copy(), col.t_amt[:n].copy()
                mmr[sl] = 0
                amt[sl] = 0
                self.dense = (qc, qce, np.abs(qc), mmr, amt)
            else:
                xs = np.flatnonzero(self.rows_x < self.n_rows)
                rows = self.rows_x[xs]
                q, e, mmr, amt = (np.zeros(self.n_rows, a.dtype) for a in (col.qty, col.entry, col.t_mmr, col.t_amt))
                q[rows] = col.qty[:n][xs]
                e[rows] = col.entry[:n][xs]  # 1/entry for inverse contracts
                mmr[rows] = col.t_mmr[:n][xs]
                amt[rows] = col.t_amt[:n][xs]
                qc = q * c
                self.dense = (qc, qc * e, np.abs(qc), mmr, amt)
                self.dense_e = e
            iqc = col.qty[:n][sl] * c
            self.isod = (iqc, iqc * col.entry[:n][sl], np.abs(iqc), col.t_mmr[:n][sl], col.t_amt[:n][sl])
            pos = np.full(n, -1, np.int64)
            pos[sl] = np.arange(len(sl))
            self.iso_pos = pos
        return self.dense

    def aqe_parts(self):
        """|q|·c·e of the cross rows (row-aligned) and of the isolated slots (the Σ|terms| part
        of a symbol with no mark yet)."""
        if self.aqe is None:
            d = self._dense()
            if self.dense_e is None:  # (the row-aligned entries, not kept by the fast path)
                e = np.zeros(self.n_rows, self.col.entry.dtype)
                xs = np.flatnonzero(self.rows_x < self.n_rows)
                e[self.rows_x[xs]] = self.col.entry[: self.n][xs]
                self.dense_e = e
            self.aqe = (d[2] * self.dense_e, self.isod[2] * self.col.entry[: self.n][self.iso_slots])
        return self.aqe

    def _cand(self, x: float, xb: float):
        """Slots whose tier cache can fail at ``x`` (a superset: every slot with
        ``N = |q|c·x <= t_lo`` or ``>= t_hi``), with their |q|c, t_lo, t_hi. Computed for a
        band [lo, hi] of x (±25 % around x and the book's x) and reused while x stays in it."""
        c = self.cand
        if c is not None and c[0] <= x <= c[1]:
            return c[2]
        if not (x > 0):
            return None
        lo, hi = x / 1.25, x * 1.25
        if xb > 0:
            lo, hi = min(lo, xb / 1.25), max(hi, xb * 1.25)
        if c is not None:
            lo, hi = min(lo, c[0]), max(hi, c[1])
        col, n = self.col, self.n
        aq = self.aq
        with np.errstate(divide="ignore", invalid="ignore"):
            xlo = col.t_lo[:n] / aq
            xhi = col.t_hi[:n] / aq
        # N <= t_lo at some x >= lo needs t_lo/|q|c >= lo (to rounding); N >= t_hi at some
        # x <= hi needs t_hi/|q|c <= hi; the negated tests keep NaN (0/0) in
        m = ~(xlo < lo * (1 - 1e-9))
        m |= ~(xhi > hi * (1 + 1e-9))
        m |= aq == 0
        sl = np.flatnonzero(m)
        got = (sl, aq[sl], col.t_lo[:n][sl], col.t_hi[:n][sl])
        self.cand = (lo, hi, got)
        return got

    def values(self, mark: float):
        """The symbol at ``mark``: x (the mark, 1/mark for inverse contracts), two Nones (the
        cross rows' uPnL and MM are computed by ``cross_into``, in ``BookStress._sums``), the rows with a
        near-tier cross slot, the isolated slots' uPnL, MM and near-tier flags (None: none),
        and the cross rows whose tier cache fails with their MM (``fix``: rows, MM; None:
        none). The contract's formulas: linear N = |q|c·m, uPnL = qc·m − qc·e; inverse
        N = |q|c/m, uPnL = qc·(1/e) − qc/m; MM = N·mmr_k − amount_k for the tier k of N.

        The tier comes from the slot's tier cache in the index (``t_lo < N < t_hi``: the tier
        is certain and no bound is within NEAR, see ``SymbolColumn._compute_block``); the
        other slots take the index's full lookup (``SymbolColumn._tiers``: tier, MM and the
        engine's near-tier test). Nothing is written."""
        col = self.col
        self._dense()
        iqc, iqce, iaq, immr, iamt = self.isod
        m0 = col.mark
        if col.inverse:
            x = 1.0 / mark if mark > 0 else 0.0
            xb = 1.0 / m0 if m0 > 0 else math.nan
            iu = np.multiply(iqc, x)
            np.subtract(iqce, iu, out=iu)
        else:
            x = mark
            xb = m0
            iu = np.multiply(iqc, x)
            iu -= iqce
        imm = np.multiply(iaq, x)
        imm *= immr
        imm -= iamt
        cand = self._cand(x, xb)
        if cand is None:  # every slot
            sl, caq, clo, chi = np.arange(self.n), self.aq, col.t_lo[: self.n], col.t_hi[: self.n]
        else:
            sl, caq, clo, chi = cand
        near_rows = None
        iso_near = None
        fix = None
        if len(sl):
            nc = caq * x
            bad = nc <= clo
            bad |= nc >= chi
            hit = np.flatnonzero(bad)
            if len(hit):
                out = sl[hit]
                _, mm_o, near_o = col._tiers(nc[hit])
                rx = self.rows_x[out]
                xm = rx < self.n_rows
                if xm.all():
                    fix = (rx, mm_o)
                    if near_o.any():
                        near_rows = rx[near_o]
                else:
                    fix = (rx[xm], mm_o[xm])
                    ip = self.iso_pos[out[~xm]]
                    imm[ip] = mm_o[~xm]
                    nx = near_o[xm]
                    if nx.any():
                        near_rows = rx[xm][nx]
                    ni = near_o[~xm]
                    if ni.any():
                        iso_near = np.zeros(len(self.iso_slots), bool)
                        iso_near[ip[ni]] = True
        return x, None, None, near_rows, iu, imm, iso_near, fix

    def cross_into(self, x: float, u: np.ndarray, mm: np.ndarray, fix) -> None:
        """The cross rows' uPnL and MM at x into ``u`` and ``mm`` (see ``values``; ``fix``: its
        rows whose tier cache fails and their MM)."""
        qc, qce, aq, mmr, amt = self.dense
        np.multiply(qc, x, out=u)
        if self.col.inverse:
            np.subtract(qce, u, out=u)
        else:
            u -= qce
        np.multiply(aq, x, out=mm)
        mm *= mmr
        mm -= amt
        if fix is not None:
            mm[fix[0]] = fix[1]

    def iso_consts(self):
        """Isolated slots' margin, |margin|, Σ|terms| at the book's mark and current state
        (the same for every scenario of this BookStress)."""
        if self.iso is None:
            col, slots = self.col, self.iso_slots
            margin = col.iso_margin[slots]
            self.iso = (margin, np.abs(margin), col.gross[slots], col.iso_state[slots])
        return self.iso

    def factor(self, mark: float) -> float | None:
        """An upper bound F ≥ 1 of how much the position terms |q|c·(m + e) (linear) or
        |q|c·(1/e + 1/m) (inverse) can grow from the book's mark to ``mark``: max(m'/m, m/m');
        None when the symbol has no mark yet."""
        m = self.col.mark
        if not (m > 0) or not (mark > 0):
            return None
        return max(mark / m, m / mark) * (1.0 + 4e-16)

