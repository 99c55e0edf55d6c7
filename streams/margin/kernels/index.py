"""The :class:`ColumnarIndex`: rows, assets, symbol columns and the packed cross terms of
one partition, kept in step with its books (the evaluation is in :mod:`.evaluation`)."""
from __future__ import annotations

import math

import numpy as np

from .. import kernels
from ..instruments import Instrument
from .columns import SymbolColumn
from .evaluation import CrossEvaluation

_MIN_HEIGHT = 4  # initial rows of the packed matrices


class _Packed:
    """The cross terms of one settle asset, packed by row.

    ``U``/``M``/``G`` are (K, cap) views of flat buffers with one spare cell at the end
    (index -1: where slots that are not packed write); ``cnt[r]`` is the number of
    row r's cross positions in the asset, which sit at ``[0, cnt[r])`` in symbol column
    order; everything at and past ``cnt[r]`` is +0.0."""

    __slots__ = ("K", "cap", "Uf", "Mf", "Gf", "U", "M", "G", "cnt")

    def __init__(self, K: int, cap: int) -> None:
        self.K, self.cap = K, cap
        self.cnt = np.zeros(cap, np.int32)
        self._alloc(K, cap, None)

    def _alloc(self, K: int, cap: int, old: "_Packed | None") -> None:
        for name in ("U", "M", "G"):
            buf = np.zeros(K * cap + 1)
            mat = buf[: K * cap].reshape(K, cap)
            if old is not None:
                o = getattr(old, name)
                mat[: o.shape[0], : o.shape[1]] = o
            setattr(self, name + "f", buf)
            setattr(self, name, mat)
        self.K, self.cap = K, cap

    def resize(self, K: int, cap: int) -> None:
        old = _PackedView(self.U, self.M, self.G)
        if cap != self.cap:
            cnt = np.zeros(cap, np.int32)
            cnt[: self.cap] = self.cnt
            self.cnt = cnt
        self._alloc(K, cap, old)


class _PackedView:
    __slots__ = ("U", "M", "G")

    def __init__(self, U, M, G) -> None:
        self.U, self.M, self.G = U, M, G


class ColumnarIndex(CrossEvaluation):
    """Arrays mirroring the books of one partition; see the package docstring."""

    def __init__(self, valuation_currency: str, call_level: float, recovery_band: float) -> None:
        self.valuation_currency = valuation_currency
        self.call_level = call_level
        self.recovery_band = recovery_band
        self.lower_level = call_level - recovery_band
        lowest = min(1.0, call_level, self.lower_level)
        self._lowest_level = lowest if 0 < lowest else None  # see _cross_block
        self.row_of: dict[str, int] = {}
        self.ids: list[str] = []
        self.cap = 1024
        self.cross_state = np.zeros(self.cap, np.int8)
        # status bookkeeping: event ts and ratio of the last emitted status (-1: never;
        # NaN ratio: null), and whether the book changed since then
        self.emit_ts = np.full(self.cap, -1, np.int64)
        self.emit_ratio = np.zeros(self.cap)
        self.book_dirty = np.zeros(self.cap, bool)
        self.ntc = np.zeros(self.cap, np.int32)  # cross positions near a tier bound, per row
        self.asset_col: dict[str, int] = {}
        self.assets: list[str] = []
        self.price = np.zeros(0)  # per asset column, NaN = unpriced
        self.haircut = np.zeros(0)
        self.bal = np.zeros((0, self.cap))
        self.symbols: dict[str, SymbolColumn] = {}
        self.settle_symbols: dict[int, list[str]] = {}  # asset col -> symbols in column order
        self.pk: dict[int, _Packed] = {}  # settle asset col -> its packed cross terms
        self.held: dict[int, set[str]] = {}  # row -> symbols in the index
        self.add_asset(valuation_currency, 1.0, 0.0)

    # -- structure ----------------------------------------------------------------
    def row(self, account_id: str) -> int:
        r = self.row_of.get(account_id)
        if r is not None:
            return r
        r = len(self.ids)
        if r == self.cap:
            self._grow_rows(r + 1)
        self.ids.append(account_id)
        self.row_of[account_id] = r
        self.held[r] = set()
        return r

    def rows_for(self, account_ids: list[str]) -> list[int]:
        """``row`` of each id (new ids get new rows, in order)."""
        need = len(self.ids) + len(account_ids)
        if need > self.cap:
            self._grow_rows(need)
        return [self.row(a) for a in account_ids]

    def _grow_rows(self, need: int) -> None:
        new = self.cap
        while new < need:
            new *= 2

        def grow(a: np.ndarray) -> np.ndarray:
            b = np.zeros(a.shape[:-1] + (new,), a.dtype)
            b[..., : self.cap] = a
            return b

        self.cross_state = grow(self.cross_state)
        self.emit_ts = grow(self.emit_ts)
        self.emit_ts[self.cap:] = -1
        self.emit_ratio = grow(self.emit_ratio)
        self.book_dirty = grow(self.book_dirty)
        self.ntc = grow(self.ntc)
        self.bal = grow(self.bal)
        self.cap = new
        for a, pk in self.pk.items():
            pk.resize(pk.K, new)
            self._set_flats(a)

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
        if a not in self.pk:
            self.pk[a] = _Packed(_MIN_HEIGHT, self.cap)
        col = SymbolColumn(inst, a, j)
        self.symbols[inst.symbol] = col
        return col

    # -- keeping the arrays in step with the books ------------------------------------
    def set_balances(self, row: int, balances: dict[str, float]) -> None:
        self.bal[:, row] = 0.0
        for asset, amount in balances.items():
            self.bal[self.asset_col[asset], row] = amount

    def set_position(self, row: int, symbol: str, qty: float, entry: float, lastp: float,
                     iso: bool, iso_margin: float, iso_state: int, pack: bool = True) -> None:
        """Put one position (and compute it). ``pack=False`` leaves the row's packed terms
        to a later ``pack_row`` (after all of the row's changes)."""
        col = self.symbols[symbol]
        slot = col.put(row, qty, entry, lastp, iso, iso_margin, iso_state)
        col.compute_one(slot)
        self._count_near_one(col, slot)
        self.held[row].add(symbol)
        if pack:
            self.pack_row(row)

    def load_symbol(self, symbol: str, rows, qty, entry, lastp, iso, iso_margin, iso_state,
                    pack: bool = True, fresh: bool = False) -> None:
        """Bulk ``set_position`` for many rows of one symbol (arrays, one entry per row).

        Rows already holding the symbol are updated one by one; the others get new
        slots in the given order, computed block by block: the same values, bit for
        bit, as one ``set_position`` call per row. ``pack=False``: the caller packs the
        rows (``pack_rows``) once it has loaded all their symbols. ``fresh``: the caller
        vouches that no row holds the symbol yet (and that the rows are distinct).
        """
        col = self.symbols[symbol]
        rows = np.asarray(rows, np.int64)
        args = [np.asarray(x) for x in (qty, entry, lastp, iso, iso_margin, iso_state)]
        if fresh:
            known = np.zeros(len(rows), bool)
        else:
            slot_of = col.slot_of
            known = np.fromiter((r in slot_of for r in rows.tolist()), bool, len(rows))
        for i in np.flatnonzero(known).tolist():
            self.set_position(int(rows[i]), symbol, *(x[i].item() for x in args), pack=False)
        fresh = ~known
        new_rows = rows
        if fresh.any():
            if not fresh.all():
                new_rows = rows[fresh]
                args = [x[fresh] for x in args]
            sl = col.append(new_rows, *args)
            self._refresh(col, sl.start, sl.stop, write=False)
            held = self.held
            for r in new_rows.tolist():
                held[r].add(symbol)
        if pack:
            self.pack_rows(rows)

    def remove_position(self, row: int, symbol: str, pack: bool = True) -> None:
        col = self.symbols[symbol]
        slot = col.slot_of.get(row)
        if slot is not None and col.counted[slot]:
            self.ntc[row] -= 1
        col.remove(row)
        self.held[row].discard(symbol)
        if pack:
            self.pack_row(row)

    # -- the packed cross terms -----------------------------------------------------------
    def _set_flats(self, a: int) -> None:
        """Recompute ``flat`` of every slot settled in ``a`` (after a resize)."""
        cap = self.cap
        for sym in self.settle_symbols.get(a, ()):
            col = self.symbols[sym]
            n = col.n
            k = col.kpos[:n]
            col.flat[:n] = np.where(k >= 0, k.astype(np.int64) * cap + col.rows[:n], -1)

    def _ensure_height(self, a: int, need: int) -> _Packed:
        pk = self.pk[a]
        if need > pk.K:
            K = pk.K
            while K < need:
                K *= 2
            pk.resize(K, self.cap)
            self._set_flats(a)
        return pk

    def pack_row(self, row: int) -> None:
        """Write row ``row``'s cross terms into the packed matrices, in column order."""
        by_asset: dict[int, list[SymbolColumn]] = {}
        for sym in self.held[row]:
            col = self.symbols[sym]
            by_asset.setdefault(col.asset_col, []).append(col)
        cap = self.cap
        for a, pk in self.pk.items():
            cols = by_asset.get(a)
            prev = int(pk.cnt[row])
            if not cols and not prev:
                continue
            k = 0
            for col in sorted(cols or (), key=lambda c: c.j):
                s = col.slot_of[row]
                if col.iso[s]:
                    col.kpos[s] = -1
                    col.flat[s] = -1
                    continue
                if k >= pk.K:
                    pk = self._ensure_height(a, k + 1)
                pk.U[k, row] = col.upnl[s]
                pk.M[k, row] = col.mm[s]
                pk.G[k, row] = col.gross[s]
                col.kpos[s] = k
                col.flat[s] = k * cap + row
                k += 1
            if prev > k:
                pk.U[k:prev, row] = 0.0
                pk.M[k:prev, row] = 0.0
                pk.G[k:prev, row] = 0.0
            pk.cnt[row] = k

    def pack_rows(self, rows) -> None:
        """``pack_row`` of many rows at once (vectorized per symbol column)."""
        rows = np.unique(np.asarray(rows, np.int64))
        if len(rows) <= kernels.SMALL:
            for r in rows.tolist():
                self.pack_row(r)
            return
        mask = np.zeros(self.cap, bool)
        mask[rows] = True
        cap = self.cap
        for a, pk in self.pk.items():
            pk.U[:, rows] = 0.0
            pk.M[:, rows] = 0.0
            pk.G[:, rows] = 0.0
            pk.cnt[rows] = 0
            for sym in self.settle_symbols.get(a, ()):  # column order
                col = self.symbols[sym]
                n = col.n
                s = np.flatnonzero(mask[col.rows[:n]])
                if not len(s):
                    continue
                iso = col.iso[s]
                col.kpos[s[iso]] = -1
                col.flat[s[iso]] = -1
                s = s[~iso]
                r = col.rows[s]
                k = pk.cnt[r]
                if len(k) and int(k.max()) >= pk.K:
                    pk = self._ensure_height(a, int(k.max()) + 1)
                pk.U[k, r] = col.upnl[s]
                pk.M[k, r] = col.mm[s]
                pk.G[k, r] = col.gross[s]
                col.kpos[s] = k
                col.flat[s] = k.astype(np.int64) * cap + r
                pk.cnt[r] = k + 1  # rows of a column are distinct

    def _write_cross(self, col: SymbolColumn, sl) -> None:
        """The cross terms of packed slots ``sl`` into the matrices (the others write the
        spare cell), and their near-tier counts."""
        pk = self.pk[col.asset_col]
        flat = col.flat[sl]
        pk.Uf[flat] = col.upnl[sl]
        pk.Mf[flat] = col.mm[sl]
        pk.Gf[flat] = col.gross[sl]
        self._count_near(col, sl)

    def _count_near(self, col: SymbolColumn, sl) -> None:
        flag = ~col.iso[sl]
        flag &= col.near_tier[sl]
        changed = flag != col.counted[sl]
        if changed.any():
            i = np.flatnonzero(changed)
            rows = col.rows[sl]
            self.ntc[rows[i]] += np.where(flag[i], 1, -1).astype(np.int32)  # rows of a column are distinct
            col.counted[sl] = flag

    def _count_near_one(self, col: SymbolColumn, s: int) -> None:
        flag = not col.iso[s] and bool(col.near_tier[s])
        if flag != bool(col.counted[s]):
            self.ntc[int(col.rows[s])] += 1 if flag else -1
            col.counted[s] = flag

    def _write_cross_one(self, col: SymbolColumn, s: int) -> None:
        f = int(col.flat[s])
        pk = self.pk[col.asset_col]
        pk.Uf[f] = col.upnl[s]
        pk.Mf[f] = col.mm[s]
        pk.Gf[f] = col.gross[s]
        self._count_near_one(col, s)

    def _refresh(self, col: SymbolColumn, start: int, stop: int, write: bool = True) -> None:
        """Recompute slots ``start:stop`` (and write their cross terms), block by block."""
        if stop - start <= kernels.SMALL:
            for s in range(start, stop):
                col.compute_one(s)
                if write:
                    self._write_cross_one(col, s)
                else:
                    self._count_near_one(col, s)
            return
        for b, e in kernels.blocks(start, stop):
            sl = slice(b, e)
            col._compute_block(sl)
            if write:
                self._write_cross(col, sl)
            else:
                self._count_near(col, sl)

    def set_mark(self, symbol: str, mark: float) -> slice:
        """Recompute every position of ``symbol`` at ``mark``; returns its slots (a slice)."""
        col = self.symbols[symbol]
        col.mark = mark
        self._refresh(col, 0, col.n)
        return slice(0, col.n)

    def recompute_symbol(self, symbol: str) -> None:
        """After a tier change: recompute at the unchanged mark."""
        col = self.symbols[symbol]
        self._refresh(col, 0, col.n)

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
