"""Vectorized float evaluation of many accounts at once (numpy).

The :class:`ColumnarIndex` mirrors the exact books of one partition in arrays:

* per symbol, its positions (:class:`SymbolColumn`): account row, qty, entry and
  the values last computed at its mark (uPnL, MM, term magnitude; the notional is
  recomputed on demand, ``notional_one``);
* per settle asset, packed matrices ``U`` (uPnL), ``M`` (MM) and ``G`` (term
  magnitude) of the cross positions: row r's positions settled in the asset sit in
  ``[0, cnt[r])`` in the asset's symbol column order, zeros after (:class:`_Packed`) —
  so a tick reads as many rows of them as accounts hold positions, not one per symbol;
* per asset, the cross balances ``bal``;
* per row, ``ntc``: how many of its cross positions lie near a tier bound (an
  integer count, exact, so it does not depend on the order it was kept in).

Every float value of an account is a pure function of its book, the marks and the
parameters, summed in a fixed order (asset column order, then symbol column
order; skipping a symbol the account does not hold skips an exact ``+ 0.0``),
never accumulated across events: so the worker, a replay and a worker
rebuilt from its changelog compute the same bits. Decisions are screened in
floats; an account within ``NEAR`` (relative to the magnitude of its terms) of a
threshold is flagged for the exact decimal reference.

Three implementations compute the same values with the same IEEE operations in the
same order, so they give the same bits and any of them may serve any call:

* blocks of ``BLOCK`` rows/slots (numpy), so each block's working set stays in
  cache — a contiguous run of rows is read through views, never copied;
* arbitrary row sets gathered block by block with ``np.take`` (C-contiguous);
* at most ``SMALL`` rows or slots: plain Python floats (``+ − × ÷`` on doubles are
  correctly rounded in numpy and in Python alike), for single-account events.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from .instruments import Instrument

NEAR = 1e-9  # relative screening band around every threshold
_MIN_HEIGHT = 4  # initial rows of the packed matrices
BLOCK = 32768  # rows (or slots) per block of the vectorized loops
SMALL = 4  # at most this many rows (or slots): the scalar path


def _blocks(start: int, stop: int):
    for b in range(start, stop, BLOCK):
        yield b, min(stop, b + BLOCK)


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
        self._alloc(16)
        self.mark: float = math.nan

    # rows..near_tier: the position and its values; kpos/flat: where the slot's cross terms sit in
    # the packed matrices (kpos·cap + row; -1: not packed, isolated or not yet packed — index -1
    # is the buffers' spare last cell); counted: cross & near_tier as counted in the index's per-row
    # ``ntc`` (kept with the slot so a removal can uncount it); t_*: the slot's tier cache (see
    # _compute_block; t_hi = 0 marks it invalid)
    _ARRAYS = ("rows", "qty", "entry", "lastp", "iso", "iso_margin", "iso_state", "upnl", "mm", "gross",
               "near_tier", "kpos", "flat", "counted", "t_lo", "t_hi", "t_mmr", "t_amt")
    _DTYPES = {"rows": np.int64, "iso": bool, "iso_state": np.int8, "near_tier": bool, "counted": bool,
               "kpos": np.int32, "flat": np.int64, "t_lo": np.float32, "t_hi": np.float32}

    def _alloc(self, cap: int) -> None:
        for name in self._ARRAYS:
            setattr(self, name, np.zeros(cap, self._DTYPES.get(name, np.float64)))

    @property
    def inst(self) -> Instrument:
        return self._inst

    @inst.setter
    def inst(self, inst: Instrument) -> None:
        # tiers may change (kind, settle asset and contract size may not): refresh the float copies
        self._inst = inst
        t = inst.tiers
        self.mmrs, self.amounts, self.imrs = t.mmrs, t.amounts, t.imrs
        self.mmrs_l, self.amounts_l, self.imrs_l = t.mmrs.tolist(), t.amounts.tolist(), t.imrs.tolist()
        fin = np.array(t.bounds[:-1], dtype=np.float64)  # the finite bounds (the last tier has none)
        self.fin = fin
        self.fin_l = fin.tolist()
        if len(fin):
            # the bounds on either side of tier k: fin[max(k-1, 0)] and fin[min(k, len-1)]
            self.fin_lo = np.concatenate([fin[:1], fin])
            self.fin_hi = np.concatenate([fin, fin[-1:]])
        # tier k is certain, and no bound is within NEAR, for N strictly inside
        # (safe_lo[k], safe_hi[k]): the bounds shrunk by 4·NEAR (N = 0 is never inside)
        # (kept in float32, rounded inwards: a narrower band is still a safe one)
        lo = np.concatenate([[0.0], fin * (1.0 + 4 * NEAR)])
        hi = np.concatenate([fin * (1.0 - 4 * NEAR), [math.inf]])
        lo32, hi32 = lo.astype(np.float32), hi.astype(np.float32)
        self.safe_lo = np.where(lo32 < lo, np.nextafter(lo32, np.float32(np.inf)), lo32)
        self.safe_hi = np.where(hi32 > hi, np.nextafter(hi32, np.float32(-np.inf)), hi32)
        self.safe_lo_l, self.safe_hi_l = self.safe_lo.tolist(), self.safe_hi.tolist()
        if hasattr(self, "t_hi"):
            self.t_hi[:] = 0.0  # the tier caches are stale

    def reserve(self, count: int) -> None:
        """Capacity for ``count`` slots (doubling)."""
        cap = len(self.rows)
        if count <= cap:
            return
        while cap < count:
            cap *= 2
        for name in self._ARRAYS:
            a = getattr(self, name)
            b = np.zeros(cap, a.dtype)
            b[: len(a)] = a
            setattr(self, name, b)

    def put(self, row: int, qty: float, entry: float, lastp: float, iso: bool, iso_margin: float, iso_state: int) -> int:
        slot = self.slot_of.get(row)
        if slot is None:
            self.reserve(self.n + 1)
            slot = self.n
            self.n += 1
            self.slot_of[row] = slot
            self.rows[slot] = row
            self.kpos[slot] = -1
            self.flat[slot] = -1
        self.qty[slot] = qty
        self.entry[slot] = 1.0 / entry if (self.inverse and entry) else entry
        self.lastp[slot] = lastp
        self.iso[slot] = iso
        self.iso_margin[slot] = iso_margin
        self.iso_state[slot] = iso_state
        self.t_hi[slot] = 0.0
        return slot

    def append(self, rows: np.ndarray, qty, entry, lastp, iso, iso_margin, iso_state) -> slice:
        """New slots for ``rows`` (none of them held yet), in the given order; returns them."""
        k = len(rows)
        start = self.n
        self.reserve(start + k)
        sl = slice(start, start + k)
        self.rows[sl] = rows
        self.qty[sl] = qty
        entry = np.asarray(entry, np.float64)
        if self.inverse:
            with np.errstate(divide="ignore"):
                entry = np.where(entry != 0, 1.0 / np.where(entry != 0, entry, 1.0), entry)
        self.entry[sl] = entry
        self.lastp[sl] = lastp
        self.iso[sl] = iso
        self.kpos[sl] = -1
        self.flat[sl] = -1
        self.iso_margin[sl] = iso_margin
        self.iso_state[sl] = iso_state
        self.near_tier[sl] = False
        self.counted[sl] = False
        self.t_hi[sl] = 0.0
        self.slot_of.update(zip(np.asarray(rows).tolist(), range(start, start + k)))
        self.n = start + k
        return sl

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

    # -- values at the mark ---------------------------------------------------------
    def compute(self, sl: slice | np.ndarray) -> None:
        """Notional, uPnL, MM and term magnitude of the positions ``sl`` at the mark.

        linear: ``N = |q|c·m``, ``uPnL = q·c·(m − e)``, terms ``|q|c(m + e)``;
        inverse: ``N = |q|c/m``, ``uPnL = q·c·(1/e − 1/m)``, terms ``|q|c(1/e + 1/m)``;
        ``MM = N·mmr_k − amount_k`` for the tier k of N (the first with N < bound_k);
        ``near_tier``: N within NEAR (relative) of a finite bound, where the float tier
        may differ from the exact one.
        """
        if isinstance(sl, slice):
            start, stop, _ = sl.indices(self.n)
            if stop - start <= SMALL:
                for s in range(start, stop):
                    self.compute_one(s)
                return
            for b, e in _blocks(start, stop):
                self._compute_block(slice(b, e))
            return
        sl = np.asarray(sl)
        if len(sl) <= SMALL:
            for s in sl.tolist():
                self.compute_one(s)
            return
        for b, e in _blocks(0, len(sl)):
            self._compute_block(sl[b:e])

    def _compute_block(self, sl) -> None:
        q = self.qty[sl]
        e = self.entry[sl]
        c = self.c
        k = len(q)
        n = np.empty(k)
        if isinstance(sl, slice):  # compute straight into the column's arrays
            upnl, gross, mm = self.upnl[sl], self.gross[sl], self.mm[sl]
        else:
            upnl, gross, mm = np.empty(k), np.empty(k), np.empty(k)
        aq = np.abs(q)
        aq *= c
        np.multiply(q, c, out=upnl)
        if math.isnan(self.mark):
            m = self.lastp[sl]
            if self.inverse:
                # a flat isolated slot funded before any fill or mark has no price (0)
                with np.errstate(divide="ignore", invalid="ignore"):
                    inv_m = np.where(m > 0, 1.0 / np.where(m > 0, m, 1.0), 0.0)
        else:
            m = self.mark
            inv_m = 1.0 / m if m > 0 else 0.0
        if self.inverse:
            np.multiply(aq, inv_m, out=n)  # N = |q|c/m
            upnl *= e - inv_m  # q·c·(1/e − 1/m)
            np.add(e, inv_m, out=gross)
        else:
            np.multiply(aq, m, out=n)  # N = |q|c·m
            upnl *= m - e  # q·c·(m − e)
            np.add(m, e, out=gross)
        gross *= aq
        # The tier cache: while N stays strictly inside (t_lo, t_hi) the slot keeps its tier
        # (mmr t_mmr, amount t_amt) and no finite bound is within NEAR of N — the bounds are
        # shrunk by 4·NEAR, far more than any rounding of N or of the test — so MM is
        # N·mmr_k − amount_k with the same floats as a fresh lookup, and near_tier is False.
        np.multiply(n, self.t_mmr[sl], out=mm)
        mm -= self.t_amt[sl]
        ok = n > self.t_lo[sl]
        ok &= n < self.t_hi[sl]
        if ok.all():
            near = False
        else:
            near = np.zeros(k, bool)
            bad = np.flatnonzero(~ok)
            slots = bad + sl.start if isinstance(sl, slice) else sl[bad]
            kt, mm[bad], near[bad] = self._tiers(n[bad])
            self.t_lo[slots] = self.safe_lo[kt]
            self.t_hi[slots] = self.safe_hi[kt]
            self.t_mmr[slots] = self.mmrs[kt]
            self.t_amt[slots] = self.amounts[kt]
        if not isinstance(sl, slice):
            self.upnl[sl] = upnl
            self.mm[sl] = mm
            self.gross[sl] = gross
        self.near_tier[sl] = near

    def _tiers(self, n: np.ndarray):
        """Tier index, MM and near_tier of notionals ``n`` (the full lookup)."""
        fin = self.fin
        if len(fin) == 0:
            k = np.zeros(len(n), np.intp)
            near = np.zeros(len(n), bool)
        else:
            # tier k = number of finite bounds <= N (= searchsorted(bounds, N, "right"), clipped)
            k = (n >= fin[0]).astype(np.intp)
            for b in self.fin_l[1:]:
                k += n >= b
            # the nearest finite bound is one of the two around tier k
            d = np.minimum(np.abs(n - self.fin_lo[k]), np.abs(n - self.fin_hi[k]))
            near = d <= NEAR * np.maximum(n, 1e-300)
        mm = n * self.mmrs[k] - self.amounts[k]
        mm[n == 0] = 0.0
        return k, mm, near

    def _tier_one(self, n: float) -> tuple[int, float, bool]:
        """``_tiers`` of one notional, in Python floats."""
        fin = self.fin_l
        k = 0
        near = False
        if fin:
            for b in fin:
                if n >= b:
                    k += 1
            lo, hi = fin[k - 1 if k else 0], fin[k if k < len(fin) else -1]
            near = min(abs(n - lo), abs(n - hi)) <= NEAR * max(n, 1e-300)
        mm = n * self.mmrs_l[k] - self.amounts_l[k] if n != 0 else 0.0
        return k, mm, near

    def values_one(self, s: int) -> tuple[float, float, float, float, bool, int]:
        """``compute`` of one slot in Python floats (same operations, same bits):
        notional, uPnL, MM, term magnitude, near_tier and the tier index."""
        q = float(self.qty[s])
        e = float(self.entry[s])
        c = self.c
        aq = abs(q) * c
        m = self.mark
        if m != m:  # NaN: no mark yet
            m = float(self.lastp[s])
        if self.inverse:
            inv_m = 1.0 / m if m > 0 else 0.0
            n = aq * inv_m
            upnl = q * c * (e - inv_m)
            gross = aq * (e + inv_m)
        else:
            n = aq * m
            upnl = q * c * (m - e)
            gross = aq * (m + e)
        k, mm, near = self._tier_one(n)
        return n, upnl, mm, gross, near, k

    def compute_one(self, s: int) -> None:
        n, upnl, mm, gross, near, k = self.values_one(s)
        self.upnl[s] = upnl
        self.mm[s] = mm
        self.gross[s] = gross
        self.near_tier[s] = near
        self.t_lo[s] = self.safe_lo_l[k]
        self.t_hi[s] = self.safe_hi_l[k]
        self.t_mmr[s] = self.mmrs_l[k]
        self.t_amt[s] = self.amounts_l[k]

    def notional_one(self, s: int) -> float:
        """The notional of one slot at the current mark (the bits ``compute`` had: the
        operations of ``values_one``)."""
        aq = abs(float(self.qty[s])) * self.c
        m = self.mark
        if m != m:  # NaN: no mark yet
            m = float(self.lastp[s])
        if self.inverse:
            return aq * (1.0 / m if m > 0 else 0.0)
        return aq * m

    def initial_one(self, s: int, n: float | None = None) -> float:
        """IM of one slot, ``N·imr_k`` (0 for N = 0); ``n``: its notional, if known."""
        if n is None:
            n = self.notional_one(s)
        if n == 0:
            return 0.0
        k = 0
        for b in self.fin_l:
            if n >= b:
                k += 1
        return n * self.imrs_l[k]

    def marks_used(self, slots: np.ndarray) -> np.ndarray:
        return self.lastp[slots] if math.isnan(self.mark) else np.full(len(slots), self.mark)


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


class ColumnarIndex:
    """Arrays mirroring the books of one partition; see the module docstring."""

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
        if len(rows) <= SMALL:
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
        if stop - start <= SMALL:
            for s in range(start, stop):
                col.compute_one(s)
                if write:
                    self._write_cross_one(col, s)
                else:
                    self._count_near_one(col, s)
            return
        for b, e in _blocks(start, stop):
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

    # -- evaluation ---------------------------------------------------------------------
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
        if k <= SMALL:
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
            for b, e in _blocks(lo, hi):
                take = _SliceTake(b, e)
                self._cross_block(take, e - b, None if sprev is None else sprev[b - lo:e - lo], res, b - lo)
            if not whole:
                out.pick(res, rows - lo)
        else:
            for b, e in _blocks(0, k):
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
        if k <= SMALL:
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
        for b, e in _blocks(0, k):
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
        tol = NEAR * (gross + np.abs(equity) + mm)
        return (
            (np.abs(equity - mm) <= tol)
            | (np.abs(mm - self.call_level * equity) <= tol)
            | (np.abs(mm - self.lower_level * equity) <= tol)
            | (np.abs(equity) <= tol) & (mm > 0)
        )

    def near_one(self, equity: float, mm: float, gross: float) -> bool:
        """``_near`` of one scope, in Python floats."""
        tol = NEAR * (gross + abs(equity) + mm)
        return (abs(equity - mm) <= tol or abs(mm - self.call_level * equity) <= tol
                or abs(mm - self.lower_level * equity) <= tol or (abs(equity) <= tol and mm > 0))

    def decide(self, equity: np.ndarray, mm: np.ndarray, prev: np.ndarray) -> np.ndarray:
        """Float state decision (0 healthy, 1 margin_call, 2 liquidation) with hysteresis."""
        if len(equity) <= SMALL:
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
        if k <= SMALL:
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
        tol *= NEAR  # = NEAR·(gross + |equity| + MM) where equity > 0
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
