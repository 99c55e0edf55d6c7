"""What-if stress evaluation: every account re-evaluated on shocked marks, the engine untouched.

A :class:`Scenario` names marks: per-symbol shocks (relative, ``-15%`` → m·(1 − 0.15), or
an absolute price), then optionally a uniform relative ``move`` of every marked symbol
(the grid form: ±4/8/12/16 % gives 9 scenarios with 0), then absolute marks that override
both (what a cascade round sends). Marks of the other symbols stay as the book has them.
Collateral assets priced by a shocked symbol take the shocked mark as their price.

:class:`BookStress` evaluates one :class:`~streams.margin.engine.PartitionEngine` at a
scenario's marks, reading the engine's columnar index (``kernels.ColumnarIndex``) and
never writing it. Every scope is evaluated with the contract's formulas:

* position at mark m: linear ``N = |q|·c·m``, ``uPnL = q·c·(m − e)``; inverse
  ``N = |q|·c/m``, ``uPnL = q·c·(1/e − 1/m)``; ``MM = N·mmr_k − amount_k`` (tier k of N);
* cross: ``net_a = balance_a + Σ uPnL`` (cross positions settled in a),
  ``equity = Σ_a net_a·P_a·(1 − h_a)`` if net_a > 0 else ``net_a·P_a``,
  ``MM = Σ MM_pos·P_settle`` (unpriced assets count 0, as in the engine);
* isolated: ``equity = isolated_margin + uPnL``, ``MM = MM_pos`` (settle units, ×P_settle
  for the totals below);
* state: ``next_state(current state, equity, MM)`` — the scenario's marks are taken as
  arriving together, one evaluation from each scope's current state (hysteresis included).

Decisions are screened in floats (``ColumnarIndex.decide`` / ``_near``) and every scope the
screen flags near a threshold (or with a notional near a tier bound) is decided by the exact
reference (``reference.evaluate_exact`` in Decimal), like the engine does — so the states are
those of exact decimal arithmetic, i.e. those the engine reaches when the same marks arrive
(for a single-symbol scenario always; with several symbols ticking one by one the engine's
intermediate states can differ only inside the hysteresis band). ``exact=True`` evaluates
every scope with the reference instead (slow; boundary checks, tests, the bench baseline).

Reported, in the valuation currency (floats, within 1e-9 relative of exact):

* ``shortfall = Σ_scopes max(0, MM − equity)``, ``bad_debt = Σ_scopes max(0, −equity)``
  (isolated scopes ×P_settle; a scope whose settle asset has no price is counted in
  ``unpriced_scopes`` and not summed);
* accounts by worst scope state (``liquidation``, ``margin_call``) and those *entering*
  it (worse than their current worst state); the largest contributors (scopes by shortfall,
  then bad debt);
* for cascades: the scopes in liquidation and the signed notional of their positions per
  symbol (``+`` = sold: longs closed; valuation currency), see :mod:`.cascade`.

Results of several books (partitions, workers) merge with :meth:`StressResult.merge`;
``to_wire``/``from_wire`` give plain dicts of str/float/int/list for transport.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field
from decimal import Decimal, InvalidOperation

import numpy as np

from .numbers import fmt_decimal, fmt_sig
from .reference import (
    STATE_CODE,
    STATES,
    Market,
    evaluate_exact,
    next_state,
    position_values,
)

ZERO = Decimal(0)
ONE = Decimal(1)
CROSS = "cross"
DEFAULT_TOP = 10


class StressError(ValueError):
    """A bad stress request; ``field`` names the offending argument or body field."""

    def __init__(self, field_name: str, message: str) -> None:
        super().__init__(message)
        self.field = field_name
        self.message = message


# --------------------------------------------------------------------------------------
# Scenarios
# --------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Shock:
    """A shock of one symbol: ``relative`` (m·(1 + value), value > −1) or an absolute mark."""

    symbol: str
    value: Decimal
    relative: bool

    def apply(self, mark: Decimal | None) -> Decimal:
        if not self.relative:
            return self.value
        assert mark is not None
        return mark * (ONE + self.value)

    def text(self) -> str:
        if self.relative:
            return fmt_decimal(self.value * 100) + "%"
        return fmt_decimal(self.value)


def _decimal(text, field_name: str) -> Decimal:
    try:
        value = Decimal(str(text).strip())
    except (InvalidOperation, ValueError):
        raise StressError(field_name, f"{field_name}: not a number: {text!r}") from None
    if not value.is_finite():
        raise StressError(field_name, f"{field_name}: not a finite number: {text!r}")
    return value


def parse_shock(symbol: str, text, field_name: str = "shocks") -> Shock:
    """``"-15%"`` (relative, above −100 %) or an absolute price > 0 (``"51000"``)."""
    where = f"{field_name}.{symbol}"
    if not symbol:
        raise StressError(field_name, f"{field_name}: empty symbol")
    if isinstance(text, bool) or not isinstance(text, (str, int, float)):
        raise StressError(where, f"{where}: expected a string like '-15%' or a price, got {text!r}")
    s = str(text).strip()
    if s.endswith("%"):
        value = _decimal(s[:-1], where) / 100
        if value <= -1:
            raise StressError(where, f"{where}: a relative shock must be above -100%: {text!r}")
        return Shock(symbol, value, True)
    value = _decimal(s, where)
    if value <= 0:
        raise StressError(where, f"{where}: an absolute mark must be > 0: {text!r}")
    return Shock(symbol, value, False)


def parse_shock_arg(text: str, field_name: str = "--shock") -> Shock:
    """``SYMBOL=-15%`` or ``SYMBOL=51000`` (the CLI form)."""
    symbol, sep, value = text.partition("=")
    if not sep or not symbol.strip() or not value.strip():
        raise StressError(field_name, f"{field_name}: expected SYMBOL=-15% or SYMBOL=PRICE, got {text!r}")
    return parse_shock(symbol.strip(), value, field_name)


def parse_grid(values, field_name: str = "grid") -> list[Decimal]:
    """Grid steps in percent (``[4, 8, 12, 16]``) → the relative moves 0, ±4 %, … sorted."""
    moves = {ZERO}
    for i, v in enumerate(values):
        if isinstance(v, bool) or not isinstance(v, (str, int, float)):
            raise StressError(field_name, f"{field_name}[{i}]: expected a number of percent, got {v!r}")
        d = _decimal(str(v).rstrip("%"), f"{field_name}[{i}]")
        if not 0 <= d < 100:
            raise StressError(field_name, f"{field_name}[{i}]: a step must be in [0, 100) percent, got {v!r}")
        moves.add(d / 100)
        moves.add(-d / 100)
    return sorted(moves)


@dataclass(frozen=True)
class Scenario:
    """Marks to evaluate at: ``shocks``, then ``move`` (relative, every marked symbol), then
    the absolute ``marks`` (override)."""

    shocks: tuple[Shock, ...] = ()
    move: Decimal = ZERO
    marks: tuple[tuple[str, Decimal], ...] = ()
    name: str = ""

    def resolve(self, market: Market) -> dict[str, Decimal]:
        """The marks that differ from ``market``'s (symbol → Decimal), or ``StressError``."""
        out: dict[str, Decimal] = {}
        priced = {a.price_symbol for a in market.assets.values() if a.price_symbol}
        for sh in self.shocks:
            known = sh.symbol in market.instruments or sh.symbol in market.marks or sh.symbol in priced
            if not known:
                raise StressError(f"shocks.{sh.symbol}", f"shocks.{sh.symbol}: unknown symbol {sh.symbol!r}")
            base = market.marks.get(sh.symbol)
            if sh.relative and base is None:
                raise StressError(f"shocks.{sh.symbol}",
                                  f"shocks.{sh.symbol}: {sh.symbol} has no mark yet; give an absolute price")
            out[sh.symbol] = sh.apply(base)
        if self.move:
            f = ONE + self.move
            for sym, m in market.marks.items():
                out[sym] = out.get(sym, m) * f
        for sym, m in self.marks:
            out[sym] = m
        return out

    def label(self) -> str:
        if self.name:
            return self.name
        parts = [f"{s.symbol} {s.text()}" for s in self.shocks]
        if self.move:
            parts.append(f"all {'+' if self.move > 0 else ''}{fmt_decimal(self.move * 100)}%")
        if self.marks:
            parts.append(f"{len(self.marks)} mark(s) set")
        return ", ".join(parts) or "current marks"

    def to_wire(self) -> dict:
        return {"shocks": {s.symbol: s.text() for s in self.shocks}, "move": fmt_decimal(self.move),
                "marks": {s: fmt_decimal(m) for s, m in self.marks}, "name": self.name}

    @classmethod
    def from_wire(cls, d: dict) -> "Scenario":
        shocks = tuple(parse_shock(s, v) for s, v in (d.get("shocks") or {}).items())
        marks = tuple((s, _decimal(v, f"marks.{s}")) for s, v in (d.get("marks") or {}).items())
        return cls(shocks, _decimal(d.get("move") or "0", "move"), marks, d.get("name") or "")


def grid_scenarios(shocks: tuple[Shock, ...], moves: list[Decimal]) -> list[Scenario]:
    """One scenario per move: the shocks, then every marked symbol moved by it."""
    return [Scenario(tuple(shocks), mv, (), _grid_name(shocks, mv)) for mv in moves]


def _grid_name(shocks, mv: Decimal) -> str:
    base = ", ".join(f"{s.symbol} {s.text()}" for s in shocks)
    step = f"all {'+' if mv > 0 else ''}{fmt_decimal(mv * 100)}%"
    return f"{base}, then {step}" if base else step


# --------------------------------------------------------------------------------------
# Results
# --------------------------------------------------------------------------------------
@dataclass
class StressResult:
    """One scenario over some books (mergeable). Money in the valuation currency, floats."""

    marks: dict[str, str] = field(default_factory=dict)  # the scenario's marks that differ
    all_marks: dict[str, str] = field(default_factory=dict)  # every mark used
    accounts: int = 0
    scopes: int = 0
    liquidation: list[str] = field(default_factory=list)  # accounts, worst scope in liquidation
    margin_call: list[str] = field(default_factory=list)  # accounts, worst scope margin_call
    entering_liquidation: list[str] = field(default_factory=list)
    entering_margin_call: list[str] = field(default_factory=list)
    scopes_liquidation: int = 0
    scopes_margin_call: int = 0
    shortfall: float = 0.0
    bad_debt: float = 0.0
    liq_bad_debt: float = 0.0  # the part of bad_debt owed by scopes in liquidation
    unpriced_scopes: int = 0
    exact_checks: int = 0  # scopes decided by the exact reference
    top: list[dict] = field(default_factory=list)  # largest contributors
    liquidated: list[list[str]] = field(default_factory=list)  # [account_id, scope] in liquidation
    liquidated_notional: dict[str, float] = field(default_factory=dict)  # symbol -> signed notional

    @classmethod
    def merge(cls, results: list["StressResult"], top: int = DEFAULT_TOP) -> "StressResult":
        out = cls()
        for r in results:
            for k, v in r.marks.items():
                out.marks.setdefault(k, v)
            for k, v in r.all_marks.items():
                out.all_marks.setdefault(k, v)
            for name in ("accounts", "scopes", "scopes_liquidation", "scopes_margin_call", "shortfall",
                         "bad_debt", "liq_bad_debt", "unpriced_scopes", "exact_checks"):
                setattr(out, name, getattr(out, name) + getattr(r, name))
            for name in ("liquidation", "margin_call", "entering_liquidation", "entering_margin_call",
                         "liquidated", "top"):
                getattr(out, name).extend(getattr(r, name))
            for k, v in r.liquidated_notional.items():
                out.liquidated_notional[k] = out.liquidated_notional.get(k, 0.0) + v
        for name in ("liquidation", "margin_call", "entering_liquidation", "entering_margin_call"):
            setattr(out, name, sorted(set(getattr(out, name))))
        out.liquidated.sort()
        out.top = sorted(out.top, key=_top_key)[:top]
        return out

    def to_wire(self) -> dict:
        return {k: getattr(self, k) for k in self.__dataclass_fields__}

    @classmethod
    def from_wire(cls, d: dict) -> "StressResult":
        out = cls()
        for k in cls.__dataclass_fields__:
            if k in d:
                setattr(out, k, d[k])
        out.liquidated = [list(x) for x in out.liquidated]
        return out

    def report(self, currency: str, label: str = "") -> dict:
        """The JSON answer of one scenario (numbers as decimal strings, 12 significant digits)."""
        return {
            "scenario": label,
            "marks": dict(sorted(self.marks.items())),
            "currency": currency,
            "accounts": self.accounts,
            "scopes": self.scopes,
            "accounts_liquidation": self.liquidation,
            "accounts_margin_call": self.margin_call,
            "entering_liquidation": self.entering_liquidation,
            "entering_margin_call": self.entering_margin_call,
            "scopes_liquidation": self.scopes_liquidation,
            "scopes_margin_call": self.scopes_margin_call,
            "shortfall": fmt_sig(self.shortfall),
            "bad_debt": fmt_sig(self.bad_debt),
            "unpriced_scopes": self.unpriced_scopes,
            "exact_checks": self.exact_checks,
            "top": [_fmt_contributor(c) for c in self.top],
        }


def _top_key(c: dict):
    return (-c["shortfall"], -c["bad_debt"], c["account_id"], c["scope"])


def _fmt_contributor(c: dict) -> dict:
    out = dict(c)
    for k in ("equity", "maintenance_margin", "shortfall", "bad_debt"):
        out[k] = fmt_sig(c[k])
    return out


# --------------------------------------------------------------------------------------
# Evaluation of one book
# --------------------------------------------------------------------------------------
class BookStress:
    """Stress evaluation over one engine's book, read-only (see the module docstring).

    Build it once per request: it caches, per unshocked symbol, the row sums of its cross
    terms at the current mark, so a grid or a cascade pays for the shocked symbols only.
    Not safe across engine changes: build a new one after the engine applied events.
    """

    def __init__(self, engine, top: int = DEFAULT_TOP) -> None:
        self.engine = engine
        self.idx = engine.index
        self.top = top
        self.n = len(self.idx.ids)
        self._cross_slots: dict[str, tuple[np.ndarray, np.ndarray]] = {}
        self._base: dict[str, tuple] = {}

    # -- per symbol ---------------------------------------------------------------------
    def _cross_of(self, col) -> tuple[np.ndarray, np.ndarray]:
        """(slots, rows) of the symbol's cross positions."""
        sym = col.inst.symbol
        got = self._cross_slots.get(sym)
        if got is None:
            slots = np.flatnonzero(~col.iso[: col.n])
            got = self._cross_slots[sym] = (slots, col.rows[slots])
        return got

    @staticmethod
    def _values(col, mark: float):
        """Notional, uPnL, MM, Σ|terms| and near-tier of every slot at ``mark`` (the
        formulas and operations of ``SymbolColumn.compute``; nothing written)."""
        n = col.n
        q = col.qty[:n]
        e = col.entry[:n]  # 1/entry for inverse contracts
        c = col.c
        aq = np.abs(q)
        aq *= c
        upnl = q * c
        if col.inverse:
            inv_m = 1.0 / mark if mark > 0 else 0.0
            notional = aq * inv_m
            upnl *= e - inv_m
            gross = e + inv_m
        else:
            notional = aq * mark
            upnl *= mark - e
            gross = e + mark
        gross *= aq
        _, mm, near = col._tiers(notional)
        return notional, upnl, mm, gross, near

    def _sums(self, col, vals, cross) -> tuple:
        """Row sums (uPnL, MM, Σ|terms|) of the symbol's cross terms, and its near-tier rows."""
        slots, rows = cross
        n = self.n
        _, upnl, mm, gross, near = vals
        u = np.bincount(rows, upnl[slots], minlength=n)
        m = np.bincount(rows, mm[slots], minlength=n)
        g = np.bincount(rows, gross[slots], minlength=n)
        near_c = near[slots] if not isinstance(near, bool) else None
        near_rows = rows[near_c] if near_c is not None and near_c.any() else np.zeros(0, np.int64)
        return u, m, g, near_rows

    def _current(self, col):
        """The slots' values at the book's mark, as the index holds them."""
        n = col.n
        return None, col.upnl[:n], col.mm[:n], col.gross[:n], col.near_tier[:n]

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
        n = self.n
        marks_f = {s: float(m) for s, m in marks_d.items()}
        # asset prices at the scenario's marks
        price = idx.price.copy()
        for a_name, rec in market.assets.items():
            a = idx.asset_col.get(a_name)
            if a is not None and rec.price_symbol in marks_f:
                price[a] = marks_f[rec.price_symbol]
        # per symbol: values at the scenario's mark (or the index's, unshocked)
        vals: dict[str, tuple] = {}
        for sym, col in idx.symbols.items():
            if not col.n:
                continue
            vals[sym] = self._values(col, marks_f[sym]) if sym in marks_f else self._current(col)
        closed_rows, closed_slots = self._closed(closed)
        cross_prev = idx.cross_state[:n].copy()
        if exact:
            c_eq, c_mm, c_state, iso = self._exact(smarket, cross_prev, closed_rows, closed_slots)
            ex = n + sum(len(x[0]) for x in iso.values())
        else:
            c_eq, c_mm, c_state, iso, ex = self._floats(vals, marks_f, price, cross_prev, smarket,
                                                         closed_rows, closed_slots)
        return self._result(marks_d, smarket, vals, price, c_eq, c_mm, c_state, cross_prev, iso,
                            closed_rows, closed_slots, ex, want_liquidated)

    def _closed(self, closed):
        rows: set[int] = set()
        slots: dict[str, set[int]] = {}
        for account_id, scope in closed or ():
            r = self.idx.row_of.get(account_id)
            if r is None or r >= self.n:
                continue
            if scope == CROSS:
                rows.add(r)
            else:
                col = self.idx.symbols.get(scope)
                s = col.slot_of.get(r) if col is not None else None
                if s is not None:
                    slots.setdefault(scope, set()).add(s)
        return rows, slots

    def _floats(self, vals, marks_f, price, cross_prev, smarket, closed_rows, closed_slots):
        idx = self.idx
        n = self.n
        cfg = self.engine.cfg
        equity = np.zeros(n)
        mm = np.zeros(n)
        gross = np.zeros(n)
        near_tier_rows = np.zeros(n, bool)
        for a in range(len(idx.assets)):
            net = idx.bal[a, :n].copy()
            g = np.abs(net)
            m = np.zeros(n)
            for sym in idx.settle_symbols.get(a, ()):
                col = idx.symbols[sym]
                if not col.n:
                    continue
                cross = self._cross_of(col)
                if not len(cross[0]):
                    continue
                if sym in marks_f:
                    u, mmv, gg, nr = self._sums(col, vals[sym], cross)
                else:
                    got = self._base.get(sym)
                    if got is None:
                        got = self._base[sym] = self._sums(col, vals[sym], cross)
                    u, mmv, gg, nr = got
                net += u
                m += mmv
                g += gg
                near_tier_rows[nr] = True
            p = float(price[a])
            if math.isnan(p):
                continue  # unpriced: valued 0, its MM not counted (as the engine does)
            h = float(idx.haircut[a])
            equity += np.where(net > 0, net * (p * (1.0 - h)), net * p)
            mm += m * p
            gross += g * p + m * p
        state = idx.decide(equity, mm, cross_prev)
        near = idx._near(equity, mm, gross) | near_tier_rows
        ex = 0
        for r in np.flatnonzero(near).tolist():
            if r in closed_rows:
                continue
            book = self.engine.accounts[idx.ids[r]].book
            v = evaluate_exact(book, smarket)
            state[r] = STATE_CODE[next_state(STATES[int(cross_prev[r])], v.cross.equity, v.cross.mm, cfg)]
            ex += 1
        iso = {}
        for sym, col in idx.symbols.items():
            if not col.n:
                continue
            slots = np.flatnonzero(col.iso[: col.n])
            if not len(slots):
                continue
            _, upnl, mmv, gg, nt = vals[sym]
            margin = col.iso_margin[slots]
            eq = margin + upnl[slots]
            m = mmv[slots]
            g = np.abs(margin) + gg[slots]
            prev = col.iso_state[slots]
            st = idx.decide(eq, m, prev)
            near = idx._near(eq, m, g) | nt[slots]
            skip = closed_slots.get(sym, ())
            for i in np.flatnonzero(near).tolist():
                s = int(slots[i])
                if s in skip:
                    continue
                pos = self.engine.accounts[idx.ids[int(col.rows[s])]].book.positions[sym]
                pv = position_values(pos, col.inst, smarket.mark_for(pos))
                st[i] = STATE_CODE[next_state(STATES[int(prev[i])], pos.isolated_margin + pv.upnl, pv.mm, cfg)]
                ex += 1
            iso[sym] = (slots, eq, m, st, prev)
        return equity, mm, state, iso, ex

    def _exact(self, smarket, cross_prev, closed_rows, closed_slots):
        """Every scope with the exact reference (Decimal), as float arrays."""
        idx = self.idx
        n = self.n
        cfg = self.engine.cfg
        equity = np.zeros(n)
        mm = np.zeros(n)
        state = np.zeros(n, np.int8)
        iso_vals: dict[str, dict[int, tuple]] = {}
        for r in range(n):
            st = self.engine.accounts.get(idx.ids[r])
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
        iso = {}
        for sym, d in iso_vals.items():
            slots = np.array(sorted(d), np.int64)
            rows = [d[s] for s in slots.tolist()]
            iso[sym] = (slots, np.array([x[0] for x in rows]), np.array([x[1] for x in rows]),
                        np.array([x[2] for x in rows], np.int8), np.array([x[3] for x in rows], np.int8))
        return equity, mm, state, iso

    def _result(self, marks_d, smarket, vals, price, c_eq, c_mm, c_state, cross_prev, iso,
                closed_rows, closed_slots, ex, want_liquidated) -> StressResult:
        idx = self.idx
        n = self.n
        ids = idx.ids
        open_rows = np.ones(n, bool)
        if closed_rows:
            open_rows[list(closed_rows)] = False
        has_acct = np.fromiter((a in self.engine.accounts for a in ids[:n]), bool, n) if n else np.zeros(0, bool)
        open_rows &= has_acct
        c_state = np.where(open_rows, c_state, 0).astype(np.int8)
        worst = c_state.copy()
        worst_prev = np.where(open_rows, cross_prev, 0).astype(np.int8)
        short = np.where(open_rows, np.maximum(0.0, c_mm - c_eq), 0.0)
        bad = np.where(open_rows, np.maximum(0.0, -c_eq), 0.0)
        liq_bad = float(bad[c_state == 2].sum())
        res = StressResult()
        res.scopes = int(open_rows.sum())
        res.scopes_liquidation = int((c_state == 2).sum())
        res.scopes_margin_call = int((c_state == 1).sum())
        cand = []  # (shortfall, bad debt, account, scope, state, equity, mm) candidates for top
        k = self.top
        if k and n:
            pick = np.argpartition(-(short + bad), k - 1)[:k] if n > k else np.arange(n)
            for r in pick.tolist():
                if short[r] > 0 or bad[r] > 0:
                    cand.append({"account_id": ids[r], "scope": CROSS, "state": STATES[int(c_state[r])],
                                 "equity": float(c_eq[r]), "maintenance_margin": float(c_mm[r]),
                                 "shortfall": float(short[r]), "bad_debt": float(bad[r])})
        shortfall = float(short.sum())
        bad_debt = float(bad.sum())
        unpriced = 0
        liq_slots: dict[str, np.ndarray] = {}
        for sym, (slots, eq, m, st, prev) in iso.items():
            col = idx.symbols[sym]
            rows = col.rows[slots]
            ok = has_acct[rows]  # an isolated scope stays open when its account's cross scope closed
            if sym in closed_slots:
                ok = ok & ~np.isin(slots, np.fromiter(closed_slots[sym], np.int64))
            st = np.where(ok, st, 0).astype(np.int8)
            prev_ok = np.where(ok, prev, 0).astype(np.int8)
            np.maximum.at(worst, rows, st)
            np.maximum.at(worst_prev, rows, prev_ok)
            res.scopes += int(ok.sum())
            res.scopes_liquidation += int((st == 2).sum())
            res.scopes_margin_call += int((st == 1).sum())
            if want_liquidated:
                liq_slots[sym] = slots[st == 2]
            p = float(price[col.asset_col])
            if math.isnan(p):
                unpriced += int(ok.sum())
                continue
            sh = np.where(ok, np.maximum(0.0, m - eq), 0.0) * p
            bd = np.where(ok, np.maximum(0.0, -eq), 0.0) * p
            shortfall += float(sh.sum())
            bad_debt += float(bd.sum())
            liq_bad += float(bd[st == 2].sum())
            if k:
                pick = np.argpartition(-(sh + bd), k - 1)[:k] if len(sh) > k else np.arange(len(sh))
                for i in pick.tolist():
                    if sh[i] > 0 or bd[i] > 0:
                        cand.append({"account_id": ids[int(rows[i])], "scope": sym, "state": STATES[int(st[i])],
                                     "equity": float(eq[i] * p), "maintenance_margin": float(m[i] * p),
                                     "shortfall": float(sh[i]), "bad_debt": float(bd[i])})
        res.accounts = int(has_acct.sum())
        res.liquidation = sorted(ids[r] for r in np.flatnonzero(worst == 2).tolist())
        res.margin_call = sorted(ids[r] for r in np.flatnonzero(worst == 1).tolist())
        res.entering_liquidation = sorted(ids[r] for r in np.flatnonzero((worst == 2) & (worst_prev < 2)).tolist())
        res.entering_margin_call = sorted(ids[r] for r in np.flatnonzero((worst == 1) & (worst_prev < 1)).tolist())
        res.shortfall = shortfall
        res.bad_debt = bad_debt
        res.liq_bad_debt = liq_bad
        res.unpriced_scopes = unpriced
        res.exact_checks = ex
        res.top = sorted(cand, key=_top_key)[:k]
        res.marks = {s: fmt_decimal(m) for s, m in sorted(marks_d.items())}
        res.all_marks = {s: fmt_decimal(m) for s, m in sorted(smarket.marks.items())}
        if want_liquidated:
            self._liquidated(res, c_state, liq_slots, vals, price, smarket)
        return res

    def _liquidated(self, res: StressResult, c_state, liq_slots, vals, price, smarket) -> None:
        """Scopes in liquidation and the signed notional (valuation currency, + = sold) of
        their positions per symbol: the orders of closing them in full at the marks."""
        idx = self.idx
        ids = idx.ids
        liq_rows = c_state == 2
        res.liquidated = [[ids[r], CROSS] for r in np.flatnonzero(liq_rows).tolist()]
        notional: dict[str, float] = {}
        for sym, col in idx.symbols.items():
            if not col.n:
                continue
            p = float(price[col.asset_col])
            if math.isnan(p):
                p = 0.0
            slots, rows = self._cross_of(col)
            sel = slots[liq_rows[rows]]
            iso_sel = liq_slots.get(sym)  # (already excludes closed slots: their state is 0)
            if iso_sel is not None and len(iso_sel):
                res.liquidated.extend([ids[int(r)], sym] for r in col.rows[iso_sel].tolist())
                sel = np.concatenate([sel, iso_sel])
            if not len(sel):
                continue
            n_ = vals[sym][0]
            if n_ is None:  # unshocked: the notional at the book's mark
                m = col.mark
                aq = np.abs(col.qty[sel]) * col.c
                if math.isnan(m):
                    m = col.lastp[sel]
                nv = aq * (1.0 / m) if col.inverse else aq * m
            else:
                nv = n_[sel]
            signed = float((np.sign(col.qty[sel]) * nv).sum()) * p
            if signed:
                notional[sym] = notional.get(sym, 0.0) + signed
        res.liquidated.sort()
        res.liquidated_notional = notional


def evaluate_books(books: list[BookStress], scenario: Scenario, closed=None, exact: bool = False,
                   want_liquidated: bool = False, top: int = DEFAULT_TOP) -> StressResult:
    """``scenario`` over several books, merged."""
    return StressResult.merge([b.evaluate(scenario, closed, exact, want_liquidated) for b in books], top)


def grid_report(results: list[StressResult], scenarios: list[Scenario], currency: str) -> dict:
    """The JSON answer of a grid: every scenario, and at the top the worst one's figures
    (largest shortfall + bad debt)."""
    reports = [r.report(currency, s.label()) for r, s in zip(results, scenarios)]
    worst = max(range(len(results)), key=lambda i: (results[i].shortfall + results[i].bad_debt, -i)) if results else 0
    out = dict(reports[worst]) if reports else {}
    out["worst_scenario"] = worst
    out["scenarios"] = reports
    return out
