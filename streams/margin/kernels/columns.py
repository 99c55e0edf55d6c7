"""One symbol's positions in parallel arrays, and their values at the mark (:class:`SymbolColumn`)."""
from __future__ import annotations

import math

import numpy as np

from .. import kernels
from ..instruments import Instrument


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
        lo = np.concatenate([[0.0], fin * (1.0 + 4 * kernels.NEAR)])
        hi = np.concatenate([fin * (1.0 - 4 * kernels.NEAR), [math.inf]])
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
            if stop - start <= kernels.SMALL:
                for s in range(start, stop):
                    self.compute_one(s)
                return
            for b, e in kernels.blocks(start, stop):
                self._compute_block(slice(b, e))
            return
        sl = np.asarray(sl)
        if len(sl) <= kernels.SMALL:
            for s in sl.tolist():
                self.compute_one(s)
            return
        for b, e in kernels.blocks(0, len(sl)):
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
            near = d <= kernels.NEAR * np.maximum(n, 1e-300)
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
            near = min(abs(n - lo), abs(n - hi)) <= kernels.NEAR * max(n, 1e-300)
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
