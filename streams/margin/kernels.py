"""Vectorized float evaluation of many accounts at once (numpy).

The :class:`ColumnarIndex` mirrors the exact books of one partition in arrays:

* per symbol, its positions (:class:`SymbolColumn`): account row, qty, entry and
  the values last computed at its mark (notional, uPnL, MM, term magnitude);
* per settle asset, column-major matrices ``U`` (uPnL), ``M`` (MM) and ``G`` (sum of
  term magnitudes) with one column per symbol settled in it, cross positions only;
* per asset, the cross balances ``bal``.

Every float value of an account is a pure function of its book, the marks and the
parameters, summed in a fixed order (asset column order, then symbol column
order), never accumulated across events: so the worker, a replay and a worker
rebuilt from its changelog compute the same bits. Decisions are screened in
floats; an account within ``NEAR`` (relative to the magnitude of its terms) of a
threshold is flagged for the exact decimal reference.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from .instruments import Instrument

NEAR = 1e-9  # relative screening band around every threshold
_MIN_WIDTH = 4


def _width(count: int) -> int:
    """Matrix width for ``count`` symbols: a deterministic function of the count."""
    w = _MIN_WIDTH
    while w < count:
        w *= 2
    return w


class SymbolColumn:
    """The positions of one symbol: parallel arrays indexed by slot."""

    def __init__(self, inst: Instrument, asset_col: int, j: int) -> None:
        self.inst = inst
        self.asset_col = asset_col  # settle asset column
        self.j = j  # column inside the settle asset's matrices
        self.c = float(inst.contract_size)
        self.inverse = inst.inverse
        self.slot_of: dict[int, int] = {}
        self.n = 0
        cap = 16
        self.rows = np.zeros(cap, np.int64)
        self.qty = np.zeros(cap)
        self.entry = np.zeros(cap)  # e (linear) or 1/e (inverse)
        self.lastp = np.zeros(cap)  # last fill price, the mark until the first mark
        self.iso = np.zeros(cap, bool)
        self.iso_margin = np.zeros(cap)
        self.iso_state = np.zeros(cap, np.int8)
        self.notional = np.zeros(cap)
        self.upnl = np.zeros(cap)
        self.mm = np.zeros(cap)
        self.gross = np.zeros(cap)
        self.near_tier = np.zeros(cap, bool)
        self.mark: float = math.nan

    _ARRAYS = ("rows", "qty", "entry", "lastp", "iso", "iso_margin", "iso_state", "notional", "upnl", "mm", "gross", "near_tier")

    def _grow(self) -> None:
        for name in self._ARRAYS:
            a = getattr(self, name)
            b = np.zeros(len(a) * 2, a.dtype)
            b[: len(a)] = a
            setattr(self, name, b)

    def put(self, row: int, qty: float, entry: float, lastp: float, iso: bool, iso_margin: float, iso_state: int) -> int:
        slot = self.slot_of.get(row)
        if slot is None:
            if self.n == len(self.rows):
                self._grow()
            slot = self.n
            self.n += 1
            self.slot_of[row] = slot
            self.rows[slot] = row
        self.qty[slot] = qty
        self.entry[slot] = 1.0 / entry if (self.inverse and entry) else entry
        self.lastp[slot] = lastp
        self.iso[slot] = iso
        self.iso_margin[slot] = iso_margin
        self.iso_state[slot] = iso_state
        return slot

    def remove(self, row: int) -> None:
        slot = self.slot_of.pop(row, None)
        if slot is None:
            return
        last = self.n - 1
        if slot != last:
            for name in self._ARRAYS:
                a = getattr(self, name)
                a[slot] = a[last]
            self.slot_of[int(self.rows[slot])] = slot
        self.n = last

    def compute(self, sl: slice | np.ndarray) -> None:
        """Notional, uPnL, MM and term magnitude of the positions ``sl`` at the mark.

        linear: ``N = |q|c·m``, ``uPnL = q·c·(m − e)``, terms ``|q|c(m + e)``;
        inverse: ``N = |q|c/m``, ``uPnL = q·c·(1/e − 1/m)``, terms ``|q|c(1/e + 1/m)``;
        ``MM = N·mmr_k − amount_k`` for the tier k of N.
        """
        q = self.qty[sl]
        m = self.lastp[sl] if math.isnan(self.mark) else np.full(q.shape, self.mark)
        aq = np.abs(q) * self.c
        if self.inverse:
            # a flat isolated slot funded before any fill or mark has no price (0)
            with np.errstate(divide="ignore", invalid="ignore"):
                inv_m = np.where(m > 0, 1.0 / np.where(m > 0, m, 1.0), 0.0)
            n = aq * inv_m
            upnl = q * self.c * (self.entry[sl] - inv_m)
            gross = aq * (self.entry[sl] + inv_m)
        else:
            n = aq * m
            upnl = q * self.c * (m - self.entry[sl])
            gross = aq * (m + self.entry[sl])
        tiers = self.inst.tiers
        k = tiers.index_f(n)
        mm = n * tiers.mmrs[k] - tiers.amounts[k]
        mm[n == 0] = 0.0
        self.notional[sl] = n
        self.upnl[sl] = upnl
        self.mm[sl] = mm
        self.gross[sl] = gross
        if len(tiers.bounds) > 1:
            b = tiers.bounds[:-1]
            # distance to the nearest finite bound, relative: float tier choice may be wrong there
            d = np.min(np.abs(n[:, None] - b[None, :]), axis=1)
            self.near_tier[sl] = d <= NEAR * np.maximum(n, 1e-300)
        else:
            self.near_tier[sl] = False

    def marks_used(self, slots: np.ndarray) -> np.ndarray:
        return self.lastp[slots] if math.isnan(self.mark) else np.full(len(slots), self.mark)


@dataclass
class CrossEval:
    """Float values of the cross scope of the evaluated rows."""

    rows: np.ndarray
    equity: np.ndarray
    mm: np.ndarray
    gross: np.ndarray
    unpriced: np.ndarray  # bool: some asset with a nonzero net has no price
    near: np.ndarray  # bool: too close to a threshold to decide in floats


class ColumnarIndex:
    """Arrays mirroring the books of one partition; see the module docstring."""

    def __init__(self, valuation_currency: str, call_level: float, recovery_band: float) -> None:
        self.valuation_currency = valuation_currency
        self.call_level = call_level
        self.recovery_band = recovery_band
        self.lower_level = call_level - recovery_band
        self.row_of: dict[str, int] = {}
        self.ids: list[str] = []
        self.cap = 1024
        self.cross_state = np.zeros(self.cap, np.int8)
        # status bookkeeping: event ts and ratio of the last emitted status (-1: never;
        # NaN ratio: null), and whether the book changed since then
        self.emit_ts = np.full(self.cap, -1, np.int64)
        self.emit_ratio = np.zeros(self.cap)
        self.book_dirty = np.zeros(self.cap, bool)
        self.asset_col: dict[str, int] = {}
        self.assets: list[str] = []
        self.price = np.zeros(0)  # per asset column, NaN = unpriced
        self.haircut = np.zeros(0)
        self.bal = np.zeros((0, self.cap))
        self.symbols: dict[str, SymbolColumn] = {}
        self.settle_symbols: dict[int, list[str]] = {}  # asset col -> symbols in column order
        self.U: dict[int, np.ndarray] = {}
        self.M: dict[int, np.ndarray] = {}
        self.G: dict[int, np.ndarray] = {}
        self.Z: dict[int, np.ndarray] = {}  # near a tier bound (bool)
        self.held: dict[int, set[str]] = {}  # row -> symbols in the index
        self.add_asset(valuation_currency, 1.0, 0.0)

    # -- structure ----------------------------------------------------------------
    def row(self, account_id: str) -> int:
        r = self.row_of.get(account_id)
        if r is not None:
            return r
        r = len(self.ids)
        if r == self.cap:
            self._grow_rows()
        self.ids.append(account_id)
        self.row_of[account_id] = r
        self.held[r] = set()
        return r

    def _grow_rows(self) -> None:
        new = self.cap * 2

        def grow(a: np.ndarray) -> np.ndarray:
            b = np.zeros(a.shape[:-1] + (new,), a.dtype)
            b[..., : self.cap] = a
            return b

        self.cross_state = grow(self.cross_state)
        self.emit_ts = grow(self.emit_ts)
        self.emit_ts[self.cap:] = -1
        self.emit_ratio = grow(self.emit_ratio)
        self.book_dirty = grow(self.book_dirty)
        self.bal = grow(self.bal)
        for d in (self.U, self.M, self.G, self.Z):
            for k in d:
                d[k] = grow(d[k])
        self.cap = new

    def add_asset(self, asset: str, price: float, haircut: float) -> int:
        col = self.asset_col.get(asset)
        if col is None:
            col = len(self.assets)
            self.assets.append(asset)
            self.asset_col[asset] = col
            self.price = np.append(self.price, price)
            self.haircut = np.append(self.haircut, haircut)
            self.bal = np.vstack([self.bal, np.zeros((1, self.cap))])
        else:
            self.price[col] = price
            self.haircut[col] = haircut
        return col

    def add_symbol(self, inst: Instrument) -> SymbolColumn:
        col = self.symbols.get(inst.symbol)
        if col is not None:
            col.inst = inst  # tiers may change; kind/settle/size may not
            return col
        a = self.asset_col.get(inst.settle_asset)
        if a is None:
            a = self.add_asset(inst.settle_asset, math.nan, 0.0)
        names = self.settle_symbols.setdefault(a, [])
        j = len(names)
        names.append(inst.symbol)
        w = _width(len(names))
        for d in (self.U, self.M, self.G, self.Z):
            old = d.get(a)
            if old is None or old.shape[0] < w:
                new = np.zeros((w, self.cap), bool if d is self.Z else np.float64)
                if old is not None:
                    new[: old.shape[0]] = old
                d[a] = new
        col = SymbolColumn(inst, a, j)
        self.symbols[inst.symbol] = col
        return col

    # -- keeping the arrays in step with the books ------------------------------------
    def set_balances(self, row: int, balances: dict[str, float]) -> None:
        self.bal[:, row] = 0.0
        for asset, amount in balances.items():
            self.bal[self.asset_col[asset], row] = amount

    def set_position(self, row: int, symbol: str, qty: float, entry: float, lastp: float,
                     iso: bool, iso_margin: float, iso_state: int) -> None:
        col = self.symbols[symbol]
        slot = col.put(row, qty, entry, lastp, iso, iso_margin, iso_state)
        col.compute(np.array([slot]))
        self._write_cross(col, np.array([slot]))
        self.held[row].add(symbol)

    def remove_position(self, row: int, symbol: str) -> None:
        col = self.symbols[symbol]
        col.remove(row)
        for d in (self.U, self.M, self.G, self.Z):
            d[col.asset_col][col.j, row] = 0
        self.held[row].discard(symbol)

    def _write_cross(self, col: SymbolColumn, slots: np.ndarray) -> None:
        rows = col.rows[slots]
        cross = ~col.iso[slots]
        a, j = col.asset_col, col.j
        self.U[a][j, rows] = np.where(cross, col.upnl[slots], 0.0)
        self.M[a][j, rows] = np.where(cross, col.mm[slots], 0.0)
        self.G[a][j, rows] = np.where(cross, col.gross[slots], 0.0)
        self.Z[a][j, rows] = cross & col.near_tier[slots]

    def set_mark(self, symbol: str, mark: float) -> np.ndarray:
        """Recompute every position of ``symbol`` at ``mark``; returns the slots."""
        col = self.symbols[symbol]
        col.mark = mark
        slots = np.arange(col.n)
        col.compute(slots)
        self._write_cross(col, slots)
        return slots

    def recompute_symbol(self, symbol: str) -> None:
        """After a tier change: recompute at the unchanged mark."""
        col = self.symbols[symbol]
        slots = np.arange(col.n)
        col.compute(slots)
        self._write_cross(col, slots)

    def rows_exposed_to(self, asset: str) -> np.ndarray:
        """Rows whose cross equity depends on the price of ``asset``."""
        a = self.asset_col.get(asset)
        n = len(self.ids)
        if a is None:
            return np.zeros(0, np.int64)
        mask = self.bal[a, :n] != 0
        for sym in self.settle_symbols.get(a, ()):
            col = self.symbols[sym]
            rows = col.rows[: col.n][~col.iso[: col.n]]
            mask[rows] = True
        return np.flatnonzero(mask)

    # -- evaluation ---------------------------------------------------------------------
    def evaluate_cross(self, rows: np.ndarray) -> CrossEval:
        """Equity, MM and the near-threshold screen of the cross scope of ``rows``.

        ``net_a = bal_a + Σ uPnL``; ``value_a = net_a·P_a·(1 − h_a)`` if net_a > 0 else
        ``net_a·P_a``; equity = Σ value_a; MM = Σ MM_pos·P_settle. Unpriced assets count 0.
        """
        k = len(rows)
        equity = np.zeros(k)
        mm = np.zeros(k)
        gross = np.zeros(k)
        unpriced = np.zeros(k, bool)
        near_tier = np.zeros(k, bool)
        for a in range(len(self.assets)):
            bal = self.bal[a, rows]
            net = bal.copy()
            g = np.abs(bal)
            m = None
            if a in self.U:
                U = self.U[a][:, rows]
                M = self.M[a][:, rows]
                G = self.G[a][:, rows]
                near_tier |= self.Z[a][:, rows].any(axis=0)
                m = np.zeros(k)
                for j in range(U.shape[0]):  # fixed order: the sums are reproducible bit for bit
                    net += U[j]
                    m += M[j]
                    g += G[j]
            p = self.price[a]
            if math.isnan(p):
                unpriced |= net != 0
                continue
            h = self.haircut[a]
            equity += np.where(net > 0, net * (p * (1.0 - h)), net * p)
            gross += g * p
            if m is not None:
                mm += m * p
                gross += m * p
        near = self._near(equity, mm, gross) | near_tier
        return CrossEval(rows, equity, mm, gross, unpriced, near)

    def _near(self, equity: np.ndarray, mm: np.ndarray, gross: np.ndarray) -> np.ndarray:
        tol = NEAR * (gross + np.abs(equity) + mm)
        return (
            (np.abs(equity - mm) <= tol)
            | (np.abs(mm - self.call_level * equity) <= tol)
            | (np.abs(mm - self.lower_level * equity) <= tol)
            | (np.abs(equity) <= tol) & (mm > 0)
        )

    def decide(self, equity: np.ndarray, mm: np.ndarray, prev: np.ndarray) -> np.ndarray:
        """Float state decision (0 healthy, 1 margin_call, 2 liquidation) with hysteresis."""
        liq = (mm > 0) & (equity <= mm)
        pos_eq = equity > 0
        call = pos_eq & (mm > 0) & (mm >= self.call_level * equity)
        stay = pos_eq & (mm > 0) & (prev > 0) & (mm >= self.lower_level * equity)
        return np.where(liq, 2, np.where(call | stay, 1, 0)).astype(np.int8)

    def evaluate_isolated(self, col: SymbolColumn, slots: np.ndarray):
        """Equity (margin + uPnL), MM and near screen of isolated positions ``slots``."""
        equity = col.iso_margin[slots] + col.upnl[slots]
        mm = col.mm[slots]
        gross = np.abs(col.iso_margin[slots]) + col.gross[slots]
        near = self._near(equity, mm, gross) | col.near_tier[slots]
        return equity, mm, near


def ratio_of(equity: float, mm: float) -> float | None:
    """MM / equity; None when equity ≤ 0 < MM; 0 when MM = 0 (floats)."""
    if mm == 0:
        return 0.0
    if equity <= 0:
        return None
    return mm / equity
