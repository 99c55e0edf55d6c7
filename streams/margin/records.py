"""State records of a partition engine: what the adapter persists, and the rebuild.

Records are plain dicts, lists, strings and numbers (the adapter serializes
them). The rebuild restores the columnar index in the original column order
(assets, then instruments, each in order of first appearance) so that float sums
run in the same order as before the restart and give the same bits.
"""
from __future__ import annotations

import math
from decimal import Decimal
from typing import Iterable

import numpy as np

from .book import AccountBook
from .instruments import CollateralAsset, Instrument, Tier, TierTable
from .reference import STATE_CODE

GLOBALS_KEY = "__partition__"


def instrument_record(inst: Instrument) -> dict:
    return {
        "kind": inst.kind,
        "settle_asset": inst.settle_asset,
        "contract_size": str(inst.contract_size),
        "qty_step": None if inst.qty_step is None else str(inst.qty_step),
        "tiers": [
            [None if t.max_notional is None else str(t.max_notional), str(t.mmr), str(t.maintenance_amount), str(t.imr)]
            for t in inst.tiers.tiers
        ],
    }


def instrument_from_record(symbol: str, r: dict) -> Instrument:
    tiers = tuple(
        Tier(None if t[0] is None else Decimal(t[0]), Decimal(t[1]), Decimal(t[2]), Decimal(t[3])) for t in r["tiers"]
    )
    return Instrument(
        symbol, r["kind"], r["settle_asset"], Decimal(r["contract_size"]),
        None if r["qty_step"] is None else Decimal(r["qty_step"]), TierTable(tiers),
    )


def params_record(engine) -> dict:
    """Partition-wide parameters and the index's column order (changes rarely)."""
    m = engine.market
    return {
        "instruments": {s: instrument_record(i) for s, i in m.instruments.items()},
        "assets": {a: [r.price_symbol, str(r.haircut)] for a, r in m.assets.items()},
        "asset_order": list(engine.index.assets),
        "symbol_order": list(engine.index.symbols),
    }


def marks_record(engine) -> dict:
    """Last marks (with ts/seq for staleness) and the latest event time seen."""
    return {
        "marks": {s: [str(p), *engine.mark_meta[s]] for s, p in engine.market.marks.items()},
        "last_ts": engine.last_ts,
    }


def account_record(engine, account_id: str) -> dict:
    """One account: exact book, scope states, episodes and status bookkeeping."""
    st = engine.accounts[account_id]
    idx = engine.index
    r = idx.row_of[account_id]
    iso = {}
    for symbol, pos in st.book.positions.items():
        if pos.isolated:
            col = idx.symbols[symbol]
            iso[symbol] = int(col.iso_state[col.slot_of[r]])
    ratio = float(idx.emit_ratio[r])
    return {
        "book": st.book.to_record(),
        "cs": int(idx.cross_state[r]),
        "is": iso,
        "ep": {k: list(v) for k, v in st.episodes.items()},
        "et": int(idx.emit_ts[r]),
        "er": None if math.isnan(ratio) else repr(ratio),
        "bd": bool(idx.book_dirty[r]),
    }


def restore(engine, params_rec: dict | None, marks_rec: dict | None, accounts: Iterable[tuple[str, dict]],
            seen: Iterable[tuple[str, str]], bulk: bool = True) -> None:
    """Rebuild a fresh engine (seeded or not) from records.

    ``seen`` holds the remembered ids as (key, changelog value) pairs, in any order.

    ``bulk`` (the default) mirrors all the books into the index at once
    (``PartitionEngine.sync_rows``: one vectorized pass per symbol); ``bulk=False``
    takes ``_sync_row`` per account. Both give the same arrays, bit for bit.
    """
    from .engine import AccountState

    idx = engine.index
    m = engine.market
    if marks_rec is not None:
        for s, (price, ts, seq) in marks_rec["marks"].items():
            m.marks[s] = Decimal(price)
            engine.mark_meta[s] = (ts, seq)
        engine.last_ts = marks_rec["last_ts"]
    if params_rec is not None:
        # the recovered parameters override the seeded ones, in their recorded order
        m.instruments.clear()
        m.assets.clear()
        idx.__init__(idx.valuation_currency, idx.call_level, idx.recovery_band)
        for s, r in params_rec["instruments"].items():
            m.instruments[s] = instrument_from_record(s, r)
        for a, (price_symbol, haircut) in params_rec["assets"].items():
            m.assets[a] = CollateralAsset(a, price_symbol, Decimal(haircut))
        for a in params_rec["asset_order"]:
            price = m.asset_price(a)
            rec = m.assets.get(a)
            idx.add_asset(a, math.nan if price is None else float(price), float(rec.haircut) if rec else 0.0)
        for s in params_rec["symbol_order"]:
            idx.add_symbol(m.instruments[s])
    for a, rec in m.assets.items():
        price = m.asset_price(a)
        if a in idx.asset_col:
            idx.add_asset(a, math.nan if price is None else float(price), float(rec.haircut))
    for s, col in idx.symbols.items():
        if s in m.marks:
            col.mark = float(m.marks[s])
    loaded: list[tuple[str, dict, AccountState]] = []
    for account_id, rec in accounts:
        state = AccountState(AccountBook.from_record(account_id, rec["book"]))
        state.episodes = {k: list(v) for k, v in rec["ep"].items()}
        engine.accounts[account_id] = state
        loaded.append((account_id, rec, state))
    rows = idx.rows_for([a for a, _, _ in loaded])
    if bulk:
        engine.sync_rows([(r, st) for r, (_, _, st) in zip(rows, loaded)], [rec["book"] for _, rec, _ in loaded])
    else:
        for r, (_, _, st) in zip(rows, loaded):
            engine._sync_row(r, st)
    for r, (_, rec, _) in zip(rows, loaded):
        for symbol, code in rec["is"].items():
            col = idx.symbols[symbol]
            col.iso_state[col.slot_of[r]] = code
    if loaded:
        ra = np.array(rows, np.int64)
        idx.cross_state[ra] = [rec["cs"] for _, rec, _ in loaded]
        idx.emit_ts[ra] = [rec["et"] for _, rec, _ in loaded]
        idx.emit_ratio[ra] = [math.nan if rec["er"] is None else float(rec["er"]) for _, rec, _ in loaded]
        idx.book_dirty[ra] = [rec["bd"] for _, rec, _ in loaded]
    engine.seen.restore(seen, undated_ts=engine.last_ts)


def state_counts(engine) -> dict[str, int]:
    """Accounts by worst state (for the metrics gauge)."""
    idx = engine.index
    n = len(idx.ids)
    worst = idx.cross_state[:n].astype(np.int8).copy()
    for col in idx.symbols.values():
        k = col.n
        if k:
            sl = col.iso[:k]
            np.maximum.at(worst, col.rows[:k][sl], col.iso_state[:k][sl])
    names = {v: k for k, v in STATE_CODE.items()}
    counts = np.bincount(worst, minlength=3)
    return {names[i]: int(counts[i]) for i in range(3)}
