"""``BookStress``: one engine's book evaluated at a scenario's marks, read-only (see the
package docstring)."""
from __future__ import annotations

import math
from bisect import bisect_right
from itertools import compress

import numpy as np

from ..reference import STATE_CODE, STATES, Market, evaluate_exact, next_state, position_values
from .columns import _decide, _Sym
from .results import CROSS, DEFAULT_TOP, StressResult
from .scenarios import Scenario
from .totals import _Totals


class BookStress(_Totals):
    """Stress evaluation over one engine's book, read-only (see the package docstring).

    Build it for one request (a grid, a cascade): it keeps per-symbol constants (q·c, q·c·e,
    |q|·c, …), the row sums of unshocked symbols at the book's marks and the masks of closed
    scopes, all derived from the engine as it was. Build a new one after the engine changed.
    """

    def __init__(self, engine, top: int = DEFAULT_TOP) -> None:
        self.engine = engine
        self.idx = idx = engine.index
        self.top = top
        self.n = n = len(idx.ids)
        ids = idx.ids[:n]
        self.ids = ids
        accounts = engine.accounts
        self._all_acct = len(accounts) == n
        if self._all_acct:  # every row is an account (rows are only made for accounts)
            self.has_acct = np.ones(n, bool)
        else:
            self.has_acct = np.fromiter((a in accounts for a in ids), bool, n) if n else np.zeros(0, bool)
        self.n_acct = int(self.has_acct.sum())
        # sorted id lists without sorting strings per scenario: the rows in id order, once
        ids_list = list(ids)
        if ids_list == sorted(ids_list):  # (rows made in id order: no permutation)
            self._order = None
            self._ids_sorted = ids_list
        else:
            order = sorted(range(n), key=ids.__getitem__)
            self._order = np.array(order, np.int64)
            self._ids_sorted = [ids[i] for i in order]
        self._syms: dict[str, _Sym] = {}
        self._base: dict[str, tuple] = {}
        self._gross: dict[int, np.ndarray] = {}
        self._worst_prev = None
        self._closed_src = None
        self._closed_done = 0
        self._closed_rows = np.zeros(n, bool)
        self._closed_iso: dict[str, np.ndarray] = {}
        self._iso_lay = None

    def _sym(self, name: str) -> _Sym:
        s = self._syms.get(name)
        if s is None:
            s = self._syms[name] = _Sym(self.idx.symbols[name], self.n)
        return s

    def _ids_where(self, mask: np.ndarray) -> list[str]:
        m = mask if self._order is None else mask[self._order]
        if 3 * int(np.count_nonzero(m)) > len(m):  # many: itertools.compress over the mask's bytes
            return list(compress(self._ids_sorted, m.view(np.uint8).tobytes()))
        ids = self._ids_sorted
        return [ids[i] for i in np.flatnonzero(m).tolist()]

    def _ids_pair(self, mask: np.ndarray, sub: np.ndarray) -> tuple[list[str], list[str]]:
        """``_ids_where(mask)`` and ``_ids_where(mask & sub)``: the second list picked from the
        first (its ids were just touched, and most are usually kept) instead of another scan
        of every row's id."""
        first = self._ids_where(mask)
        if not first:
            return first, []
        m, s = (mask, sub) if self._order is None else (mask[self._order], sub[self._order])
        keep = s[np.flatnonzero(m)]
        k = int(np.count_nonzero(keep))
        if k == len(first):
            return first, first.copy()
        if 16 * (len(first) - k) < len(first):  # a few left out: the runs between them, sliced
            out: list[str] = []
            at = 0
            for j in np.flatnonzero(~keep).tolist():
                out += first[at:j]
                at = j + 1
            out += first[at:]
            return first, out
        if 3 * k > len(first):
            return first, list(compress(first, keep.view(np.uint8).tobytes()))
        return first, [first[i] for i in np.flatnonzero(keep).tolist()]

    def _asset_gross(self, a: int) -> np.ndarray:
        """Σ|terms| of every row's cross positions settled in asset ``a``, at the book's marks."""
        got = self._gross.get(a)
        if got is None:
            got = np.zeros(self.n)
            for sym in self.idx.settle_symbols.get(a, ()):
                if self.idx.symbols[sym].n:
                    s = self._sym(sym)
                    got += self._bincount(s, s.col.gross[: s.n])
            self._gross[a] = got
        return got

    def _bincount(self, s: _Sym, w: np.ndarray) -> np.ndarray:
        """Σ ``w`` of each row's cross slots of ``s``."""
        if s.identity():  # one slot per row, in row order: the sum is 0.0 + the slot's value
            out = w + 0.0
            out[s.iso_slots] = 0.0
            return out
        return np.bincount(s.rows_x, w, minlength=self.n + 1)[: self.n]

    # -- closed scopes (a cascade's earlier rounds) ----------------------------------------
    def _apply_closed(self, closed) -> None:
        """Masks of the closed scopes; incremental when ``closed`` is the same list as the last
        call's, grown (what :class:`~.cascade.Cascade` passes)."""
        if closed is None:
            closed = ()
        if closed is not self._closed_src or len(closed) < self._closed_done:
            self._closed_rows[:] = False
            self._closed_iso = {}
            self._closed_src = closed
            self._closed_done = 0
        row_of = self.idx.row_of
        n = self.n
        for account_id, scope in closed[self._closed_done:]:
            r = row_of.get(account_id)
            if r is None or r >= n:
                continue
            if scope == CROSS:
                self._closed_rows[r] = True
            else:
                col = self.idx.symbols.get(scope)
                slot = col.slot_of.get(r) if col is not None else None
                if slot is not None and slot < col.n:
                    mask = self._closed_iso.get(scope)
                    if mask is None:
                        mask = self._closed_iso[scope] = np.zeros(col.n, bool)
                    mask[slot] = True
        self._closed_done = len(closed)

    # -- the evaluation -------------------------------------------------------------------
    def evaluate(self, scenario: Scenario, closed=None, exact: bool = False,
                 want_liquidated: bool = False) -> StressResult:
        """``scenario`` over this book. ``closed``: (account_id, scope) pairs already closed
        (a cascade's earlier rounds), left out. ``want_liquidated``: list the scopes in
        liquidation and the signed notional of their positions per symbol."""
        eng = self.engine
        market = eng.market
        marks_d = scenario.resolve(market)
        smarket = Market(market.instruments, market.assets, {**market.marks, **marks_d}, market.valuation_currency)
        idx = self.idx
        marks_f = {s: float(m) for s, m in marks_d.items()}
        price = idx.price.copy()  # asset prices at the scenario's marks
        for a_name, rec in market.assets.items():
            a = idx.asset_col.get(a_name)
            if a is not None and rec.price_symbol in marks_f:
                price[a] = marks_f[rec.price_symbol]
        self._apply_closed(closed)
        # symbol -> (x or None, cross rows' uPnL, MM (None when shocked: BookStress._sums computes
        #            them), rows with a near-tier cross slot or None, isolated slots' uPnL, MM,
        #            near-tier flags or None, cross rows whose tier cache fails or None), see _Sym.values
        vals: dict[str, tuple] = {}
        for sym, col in idx.symbols.items():
            if col.n:
                if sym in marks_f:
                    vals[sym] = self._sym(sym).values(marks_f[sym])
                else:
                    vals[sym] = self._unshocked(sym)
        cross_prev = idx.cross_state[: self.n].copy()
        if exact:
            c_eq, c_mm, c_state, iso = self._exact(smarket, cross_prev)
            ex = self.n_acct + len(iso[1])
        else:
            c_eq, c_mm, c_state, iso, ex = self._floats(vals, marks_f, price, cross_prev, smarket)
        return self._result(marks_d, smarket, vals, price, c_eq, c_mm, c_state, cross_prev, iso, ex,
                            want_liquidated)

    def _unshocked(self, sym: str) -> tuple:
        """``_Sym.values`` of a symbol at the book's mark: the index's values (cached)."""
        got = self._base.get(sym)
        if got is None:
            s = self._sym(sym)
            col, n = s.col, s.n
            hit = np.flatnonzero(col.near_tier[:n])
            rx = s.rows_x[hit]
            rx = rx[rx < self.n]
            sl = s.iso_slots
            nt = col.near_tier[sl]
            got = self._base[sym] = (None, self._bincount(s, col.upnl[:n]), self._bincount(s, col.mm[:n]),
                                     rx if len(rx) else None, col.upnl[sl], col.mm[sl], nt if nt.any() else None, None)
        return got

    def _cross_syms(self, a: int) -> list[str]:
        """The symbols settled in asset ``a`` with cross positions (in the index's order)."""
        out = []
        for sym in self.idx.settle_symbols.get(a, ()):
            col = self.idx.symbols[sym]
            if col.n and len(self._sym(sym).iso_slots) != col.n:
                out.append(sym)
        return out

    def _floats(self, vals, marks_f, price, cross_prev, smarket):
        idx = self.idx
        n = self.n
        cfg = self.engine.cfg
        equity, mm, state, near = self._cross(vals, marks_f, price, cross_prev)
        near &= ~self._closed_rows
        return self._floats_rest(vals, marks_f, price, cross_prev, smarket, equity, mm, state, near)

    def _cross(self, vals, marks_f, price, cross_prev):
        """The cross scopes: equity, MM, float state and near screen of every row."""
        idx = self.idx
        n = self.n
        equity = np.zeros(n)
        mm = np.zeros(n)
        gross = np.zeros(n)
        near_rows = np.zeros(n + 1, bool)
        for a in range(len(idx.assets)):
            bal = idx.bal[a, :n]
            g = np.abs(bal)
            # Σ|terms| for the screen: at most F_max × their sum at the book's marks, F_max the
            # largest growth factor of a shocked symbol (``_Sym.factor``) — a wider tolerance than
            # the engine's, never a narrower one; exact sums for symbols with no mark yet
            f_max = 1.0
            g_terms = None
            syms = []
            for sym in idx.settle_symbols.get(a, ()):
                col = idx.symbols[sym]
                if not col.n:
                    continue
                s = self._sym(sym)
                if len(s.iso_slots) == col.n:
                    continue  # no cross position
                g_terms = self._asset_gross(a)
                v = vals[sym]
                x, near = v[0], v[3]
                if x is not None:
                    f = s.factor(marks_f[sym])
                    if f is None:  # Σ|q|c·(m + e) (linear) or Σ|q|c·(1/e + 1/m) (inverse)
                        g += s._dense()[2] * x
                        g += s.aqe_parts()[0]
                    else:
                        f_max = max(f_max, f)
                syms.append((s, v))
                if near is not None:
                    near_rows[near] = True
            net, m = self._sums(bal, syms) if syms else (bal.copy(), None)
            if g_terms is not None:
                g += g_terms * f_max if f_max != 1.0 else g_terms
            p = float(price[a])
            if math.isnan(p):
                continue  # unpriced: valued 0, its MM not counted (as the engine does)
            h = float(idx.haircut[a])
            if p == 1.0 and h == 0.0:
                equity += net
            else:
                # net·P·(1 − h) where net > 0, else net·P: the factor from a 2-entry table (the
                # same products as np.where's, without its cost on mixed signs: ~20× here)
                fac = np.take(np.array([p, p * (1.0 - h)]), (net > 0).view(np.uint8))
                fac *= net
                equity += fac
            if p != 1.0:
                g *= p
                if m is not None:
                    m *= p
            gross += g
            if m is not None:
                mm += m
                gross += m
        state, near = _decide(idx, equity, mm, gross, cross_prev)
        near |= near_rows[:n]
        return equity, mm, state, near

    def _sums(self, bal, syms):
        """Σ of the cross uPnL (``bal`` + …) and Σ MM of the rows over ``syms`` (settled in one
        asset), in the index's symbol order; a shocked symbol's values go through two scratch
        arrays (no row-length arrays allocated per symbol and scenario)."""
        n = self.n
        net = None  # bal + the first symbol's (= bal.copy() += …)
        m = np.empty(n)
        tu = tm = None
        first = True
        for s, v in syms:
            if v[0] is None:  # unshocked: the book's row sums
                if first:
                    net = np.add(bal, v[1])
                else:
                    net += v[1]
                if first:
                    np.copyto(m, v[2])
                else:
                    m += v[2]
            else:
                if tu is None:
                    tu, tm = np.empty(n), np.empty(n)
                s.cross_into(v[0], tu, m if first else tm, v[7])
                if first:
                    net = np.add(bal, tu)
                else:
                    net += tu
                if not first:
                    m += tm
            first = False
        return net, m

    def _floats_rest(self, vals, marks_f, price, cross_prev, smarket, equity, mm, state, near):
        idx = self.idx
        cfg = self.engine.cfg
        ex = 0
        accounts = self.engine.accounts
        for r in np.flatnonzero(near).tolist():
            st = accounts.get(self.ids[r])
            if st is None:
                continue
            v = evaluate_exact(st.book, smarket)
            state[r] = STATE_CODE[next_state(STATES[int(cross_prev[r])], v.cross.equity, v.cross.mm, cfg)]
            ex += 1
        lay = self._iso_layout()
        layout, rows_all, prev_all = lay[0], lay[1], lay[2]
        margin_all, absm_all, gross0_all = lay[3:]
        k = len(rows_all)
        eq_all, g_all = np.empty(k), np.empty(k)
        m_all = np.empty(k)
        extra = []  # (o0, o1, near-tier flags or None, closed mask or None)
        for sym, slots, o0, o1 in layout:
            s = self._sym(sym)
            x, _, _, _, upnl, mmv, nt = vals[sym][:7]
            np.add(upnl, margin_all[o0:o1], out=eq_all[o0:o1])
            m_all[o0:o1] = mmv
            f = s.factor(marks_f[sym]) if sym in marks_f else 1.0
            g = g_all[o0:o1]
            if f is None:
                g[:] = absm_all[o0:o1] + s.isod[2] * x + s.aqe_parts()[1]
            else:
                if f != 1.0:
                    np.multiply(gross0_all[o0:o1], f, out=g)
                else:
                    g[:] = gross0_all[o0:o1]
                g += absm_all[o0:o1]
            closed = self._closed_iso.get(sym)
            if nt is not None or closed is not None:
                extra.append((o0, o1, nt, None if closed is None else closed[slots]))
        # every isolated scope of every symbol at once: one screen and decision
        st_all, near = _decide(idx, eq_all, m_all, g_all, prev_all)
        for o0, o1, nt, closed in extra:
            if nt is not None:
                near[o0:o1] |= nt
            if closed is not None:
                near[o0:o1] &= ~closed
        hits = np.flatnonzero(near)
        if len(hits):
            starts = [o0 for _, _, o0, _ in layout]
            for j in hits.tolist():
                sym, slots, o0, _ = layout[bisect_right(starts, j) - 1]
                col = idx.symbols[sym]
                sl = int(slots[j - o0])
                acct = accounts.get(self.ids[int(col.rows[sl])])
                if acct is None:
                    continue
                pos = acct.book.positions[sym]
                pv = position_values(pos, col.inst, smarket.mark_for(pos))
                st_all[j] = STATE_CODE[next_state(STATES[int(prev_all[j])], pos.isolated_margin + pv.upnl, pv.mm, cfg)]
                ex += 1
        return equity, mm, state, (layout, rows_all, eq_all, m_all, st_all, prev_all), ex

    def _iso_layout(self):
        """The isolated slots of every symbol laid end to end (index order): [(symbol, slots,
        start, stop)], their rows, current states, margins, |margins| and Σ|terms| at the
        book's marks — once per BookStress, so that a scenario screens, decides and totals
        them in a few passes instead of ~40 small ones per symbol."""
        if self._iso_lay is None:
            layout, parts = [], []
            o = 0
            for sym, col in self.idx.symbols.items():
                if not col.n:
                    continue
                s = self._sym(sym)
                if not len(s.iso_slots):
                    continue
                layout.append((sym, s.iso_slots, o, o + len(s.iso_slots)))
                o += len(s.iso_slots)
                margin, abs_margin, gross0, prev = s.iso_consts()
                parts.append((s.iso_rows, prev, margin, abs_margin, gross0))
            cat = [np.concatenate([p[i] for p in parts]) if parts else np.zeros(0, dt)
                   for i, dt in enumerate((np.int64, np.int8, float, float, float))]
            self._iso_lay = (layout, *cat)
        return self._iso_lay

    def _exact(self, smarket, cross_prev):
        """Every scope with the exact reference (Decimal), as float arrays."""
        idx = self.idx
        n = self.n
        cfg = self.engine.cfg
        equity = np.zeros(n)
        mm = np.zeros(n)
        state = np.zeros(n, np.int8)
        iso_vals: dict[str, dict[int, tuple]] = {}
        for r in range(n):
            st = self.engine.accounts.get(self.ids[r])
            if st is None:
                continue
            v = evaluate_exact(st.book, smarket)
            equity[r] = float(v.cross.equity)
            mm[r] = float(v.cross.mm)
            state[r] = STATE_CODE[next_state(STATES[int(cross_prev[r])], v.cross.equity, v.cross.mm, cfg)]
            for sym, sv in v.isolated.items():
                col = idx.symbols[sym]
                s = col.slot_of[r]
                prev = int(col.iso_state[s])
                iso_vals.setdefault(sym, {})[s] = (float(sv.equity), float(sv.mm),
                                                   STATE_CODE[next_state(STATES[prev], sv.equity, sv.mm, cfg)], prev)
        layout, parts = [], []
        o = 0
        for sym, d in iso_vals.items():  # (in the order met, as the totals have always been summed)
            slots = self._sym(sym).iso_slots
            layout.append((sym, slots, o, o + len(slots)))
            o += len(slots)
            parts.append([d[s] for s in slots.tolist()])
        rows = [r for p in parts for r in p]
        rows_all = np.concatenate([self._sym(sym).iso_rows for sym, *_ in layout]) if layout else np.zeros(0, np.int64)
        iso = (layout, rows_all, np.array([x[0] for x in rows], float), np.array([x[1] for x in rows], float),
               np.array([x[2] for x in rows], np.int8), np.array([x[3] for x in rows], np.int8))
        return equity, mm, state, iso


def evaluate_books(books: list[BookStress], scenario: Scenario, closed=None, exact: bool = False,
                   want_liquidated: bool = False, top: int = DEFAULT_TOP) -> StressResult:
    """``scenario`` over several books, merged."""
    return StressResult.merge([b.evaluate(scenario, closed, exact, want_liquidated) for b in books], top)


