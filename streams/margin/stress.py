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
from itertools import compress
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
    liquidated: list[tuple[str, str]] = field(default_factory=list)  # (account_id, scope) in liquidation
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
        out.liquidated = [tuple(x) for x in out.liquidated]
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
def _top_rows(score: np.ndarray, k: int) -> list[int]:
    """Indices of the (at most) ``k`` largest positive scores."""
    pos = np.flatnonzero(score > 0)
    if len(pos) > k:
        pos = pos[np.argpartition(-score[pos], k - 1)[:k]]
    return pos.tolist()


def _decide(idx, equity, mm, gross, prev):
    """Float decision and near screen of scopes (``ColumnarIndex.decide``/``_near``), through
    the index's quiet-row prefilter: a scope with equity > 0 and MM < L·equity − tol (L the
    lowest level) is healthy and far from every threshold, so only the others are decided."""
    rest = idx._not_quiet(equity, mm, gross)
    if rest is None:
        return idx.decide(equity, mm, prev), idx._near(equity, mm, gross)
    state = np.zeros(len(equity), np.int8)
    near = np.zeros(len(equity), bool)
    if len(rest):
        e, m, g = equity[rest], mm[rest], gross[rest]
        state[rest] = idx.decide(e, m, prev[rest])
        near[rest] = idx._near(e, m, g)
    return state, near


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
                 "cand", "dense_e", "aqe")

    def __init__(self, col, n_rows: int) -> None:
        n = col.n
        self.col = col
        self.n = n
        self.n_rows = n_rows
        iso = col.iso[:n]
        rows = col.rows[:n]
        self.rows_x = np.where(iso, n_rows, rows)  # isolated slots sum into a spare row
        self.iso_slots = np.flatnonzero(iso)
        self.iso_rows = rows[self.iso_slots]
        self.aq = np.abs(col.qty[:n] * col.c)  # |q|·c of every slot
        self.iso = None
        self.dense = None
        self.isod = None
        self.iso_pos = None
        self.cand = None
        self.dense_e = None
        self.aqe = None

    def _dense(self):
        """Row-aligned q·c, q·c·e, |q|·c, mmr and amount of the cross slots (0 for a row
        without one; the same products as per slot), and the isolated slots' own."""
        if self.dense is None:
            col, n, c = self.col, self.n, self.col.c
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
            sl = self.iso_slots
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
        """The symbol at ``mark``: x (the mark, 1/mark for inverse contracts), the cross rows'
        uPnL and MM (row-aligned, 0 without a position), the rows with a near-tier cross slot,
        the isolated slots' uPnL, MM and near-tier flags (None: none). The contract's formulas:
        linear N = |q|c·m, uPnL = qc·m − qc·e; inverse N = |q|c/m, uPnL = qc·(1/e) − qc/m;
        MM = N·mmr_k − amount_k for the tier k of N.

        The tier comes from the slot's tier cache in the index (``t_lo < N < t_hi``: the tier
        is certain and no bound is within NEAR, see ``SymbolColumn._compute_block``); the
        other slots take the index's full lookup (``SymbolColumn._tiers``: tier, MM and the
        engine's near-tier test). Nothing is written."""
        col = self.col
        qc, qce, aq, mmr, amt = self._dense()
        iqc, iqce, iaq, immr, iamt = self.isod
        m0 = col.mark
        if col.inverse:
            x = 1.0 / mark if mark > 0 else 0.0
            xb = 1.0 / m0 if m0 > 0 else math.nan
            u = np.multiply(qc, x)
            np.subtract(qce, u, out=u)
            iu = np.multiply(iqc, x)
            np.subtract(iqce, iu, out=iu)
        else:
            x = mark
            xb = m0
            u = np.multiply(qc, x)
            u -= qce
            iu = np.multiply(iqc, x)
            iu -= iqce
        mm = np.multiply(aq, x)
        mm *= mmr
        mm -= amt
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
                    mm[rx] = mm_o
                    if near_o.any():
                        near_rows = rx[near_o]
                else:
                    mm[rx[xm]] = mm_o[xm]
                    ip = self.iso_pos[out[~xm]]
                    imm[ip] = mm_o[~xm]
                    nx = near_o[xm]
                    if nx.any():
                        near_rows = rx[xm][nx]
                    ni = near_o[~xm]
                    if ni.any():
                        iso_near = np.zeros(len(self.iso_slots), bool)
                        iso_near[ip[ni]] = True
        return x, u, mm, near_rows, iu, imm, iso_near

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


class BookStress:
    """Stress evaluation over one engine's book, read-only (see the module docstring).

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
        # sorted id lists without sorting strings per scenario: the rows in id order, once
        ids_list = list(ids)
        if ids_list == sorted(ids_list):  # (rows made in id order: no permutation)
            self._order = None
            self._ids_sorted = ids_list
            self._ids_arr = np.array(ids_list, dtype=object) if n else np.zeros(0, object)
        else:
            order = sorted(range(n), key=ids.__getitem__)
            self._order = np.array(order, np.int64)
            self._ids_sorted = [ids[i] for i in order]
            self._ids_arr = np.array(self._ids_sorted, dtype=object)
        self._syms: dict[str, _Sym] = {}
        self._base: dict[str, tuple] = {}
        self._gross: dict[int, np.ndarray] = {}
        self._worst_prev = None
        self._closed_src = None
        self._closed_done = 0
        self._closed_rows = np.zeros(n, bool)
        self._closed_iso: dict[str, np.ndarray] = {}

    def _sym(self, name: str) -> _Sym:
        s = self._syms.get(name)
        if s is None:
            s = self._syms[name] = _Sym(self.idx.symbols[name], self.n)
        return s

    def _ids_where(self, mask: np.ndarray) -> list[str]:
        m = mask if self._order is None else mask[self._order]
        if 3 * int(np.count_nonzero(m)) > len(m):  # many: itertools.compress over the mask's bytes
            return list(compress(self._ids_sorted, m.view(np.uint8).tobytes()))
        return self._ids_arr[m].tolist()

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
        # symbol -> (x or None, cross rows' uPnL, MM, rows with a near-tier cross slot or None,
        #            isolated slots' uPnL, MM, near-tier flags or None), see _Sym.values
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
            ex = int(self.has_acct.sum()) + sum(len(x[0]) for x in iso.values())
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
                                     rx if len(rx) else None, col.upnl[sl], col.mm[sl], nt if nt.any() else None)
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
            net = idx.bal[a, :n].copy()
            g = np.abs(net)
            m = None
            # Σ|terms| for the screen: at most F_max × their sum at the book's marks, F_max the
            # largest growth factor of a shocked symbol (``_Sym.factor``) — a wider tolerance than
            # the engine's, never a narrower one; exact sums for symbols with no mark yet
            f_max = 1.0
            g_terms = None
            for sym in idx.settle_symbols.get(a, ()):
                col = idx.symbols[sym]
                if not col.n:
                    continue
                s = self._sym(sym)
                if len(s.iso_slots) == col.n:
                    continue  # no cross position
                g_terms = self._asset_gross(a)
                x, u, mm_s, near = vals[sym][:4]
                if x is not None:
                    f = s.factor(marks_f[sym])
                    if f is None:  # Σ|q|c·(m + e) (linear) or Σ|q|c·(1/e + 1/m) (inverse)
                        g += s._dense()[2] * x
                        g += s.aqe_parts()[0]
                    else:
                        f_max = max(f_max, f)
                net += u
                if m is None:
                    m = mm_s.copy() if x is None else mm_s  # (a shocked symbol's MM is this evaluation's)
                else:
                    m += mm_s
                if near is not None:
                    near_rows[near] = True
            if g_terms is not None:
                g += g_terms * f_max if f_max != 1.0 else g_terms
            p = float(price[a])
            if math.isnan(p):
                continue  # unpriced: valued 0, its MM not counted (as the engine does)
            h = float(idx.haircut[a])
            if p == 1.0 and h == 0.0:
                equity += net
            else:
                equity += np.where(net > 0, net * (p * (1.0 - h)), net * p)
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
        iso = {}
        for sym, col in idx.symbols.items():
            if not col.n:
                continue
            s = self._sym(sym)
            slots = s.iso_slots
            if not len(slots):
                continue
            x, _, _, _, upnl, mmv, nt = vals[sym][:7]
            margin, abs_margin, gross0, prev = s.iso_consts()
            eq = upnl + margin
            m = mmv.copy()
            f = s.factor(marks_f[sym]) if sym in marks_f else 1.0
            if f is None:
                g = abs_margin + s.isod[2] * x + s.aqe_parts()[1]
            else:
                g = gross0 * f if f != 1.0 else gross0.copy()
                g += abs_margin
            st, near = _decide(idx, eq, m, g, prev)
            if nt is not None:
                near |= nt
            closed = self._closed_iso.get(sym)
            if closed is not None:
                near &= ~closed[slots]
            for i in np.flatnonzero(near).tolist():
                sl = int(slots[i])
                acct = accounts.get(self.ids[int(col.rows[sl])])
                if acct is None:
                    continue
                pos = acct.book.positions[sym]
                pv = position_values(pos, col.inst, smarket.mark_for(pos))
                st[i] = STATE_CODE[next_state(STATES[int(prev[i])], pos.isolated_margin + pv.upnl, pv.mm, cfg)]
                ex += 1
            iso[sym] = (slots, eq, m, st, prev)
        return equity, mm, state, iso, ex

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
        iso = {}
        for sym, d in iso_vals.items():
            slots = self._sym(sym).iso_slots
            rows = [d[s] for s in slots.tolist()]
            iso[sym] = (slots, np.array([x[0] for x in rows]), np.array([x[1] for x in rows]),
                        np.array([x[2] for x in rows], np.int8), np.array([x[3] for x in rows], np.int8))
        return equity, mm, state, iso

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
