"""Shared builders for the margin-core unit tests (events, risk-params, engines).

Plain functions (importable as ``from tests.unit.conftest import ...``) plus a few
fixtures. Events are built directly (no codec): ``cause_id`` of risk-params is
``KEY@`` + the first 12 hex digits of the SHA-256 of a canonical text of the value,
as the codec would set it from the raw bytes.
"""
from __future__ import annotations

import hashlib
from decimal import Decimal

import pytest

from streams.margin.engine import PartitionEngine
from streams.margin.events import (
    AccountSnapshot,
    AssetParams,
    CollateralChange,
    Fill,
    InstrumentParams,
    MarkTick,
    SnapshotPosition,
    TierSpec,
)
from streams.margin.reference import MarginConfig

D = Decimal


def dec(x) -> Decimal | None:
    return None if x is None else Decimal(str(x))


def tierspecs(*rows) -> tuple[TierSpec, ...]:
    """rows: ``(max_notional|None, mmr)`` or ``(max_notional|None, mmr, amount|None[, imr])``."""
    out = []
    for row in rows:
        bound, mmr = row[0], row[1]
        amount = row[2] if len(row) > 2 else None
        imr = row[3] if len(row) > 3 else None
        out.append(TierSpec(dec(bound), dec(mmr), dec(amount), dec(imr)))
    return tuple(out)


def _cause(key: str, payload: str) -> str:
    return f"{key}@{hashlib.sha256(payload.encode()).hexdigest()[:12]}"


def instrument(symbol, kind="linear", settle="USDT", c="1", tiers=((None, "0.01"),), qty_step=None, ts=None) -> InstrumentParams:
    specs = tierspecs(*tiers)
    payload = repr((symbol, kind, settle, str(c), specs, qty_step, ts))
    return InstrumentParams(symbol, kind, settle, D(str(c)), specs, dec(qty_step), ts, cause_id=_cause(symbol, payload))


def asset(name, price_symbol, haircut="0", ts=None) -> AssetParams:
    payload = repr((name, price_symbol, str(haircut), ts))
    return AssetParams(name, price_symbol, D(str(haircut)), ts, cause_id=_cause(f"asset:{name}", payload))


def fill(fid, acct, symbol, side, qty, price, ts, fee="0", fee_asset=None, mode="cross") -> Fill:
    return Fill(fid, acct, symbol, side, D(str(qty)), D(str(price)), ts, D(str(fee)), fee_asset, mode)


def collateral(eid, acct, asset_name, amount, ts, reason="deposit", symbol=None) -> CollateralChange:
    return CollateralChange(eid, acct, asset_name, D(str(amount)), reason, ts, symbol)


def iso_move(eid, acct, asset_name, amount, symbol, ts) -> CollateralChange:
    return CollateralChange(eid, acct, asset_name, D(str(amount)), "isolated_margin", ts, symbol)


def mark(symbol, price, ts, seq=None) -> MarkTick:
    return MarkTick(symbol, D(str(price)), ts, seq)


def snapshot(sid, acct, ts, balances: dict, positions=()) -> AccountSnapshot:
    """positions: ``(symbol, qty, entry, mode="cross", isolated_margin="0")`` tuples."""
    pos = []
    for p in positions:
        symbol, qty, entry = p[0], p[1], p[2]
        mode = p[3] if len(p) > 3 else "cross"
        iso = p[4] if len(p) > 4 else "0"
        pos.append(SnapshotPosition(symbol, D(str(qty)), D(str(entry)), mode, D(str(iso))))
    return AccountSnapshot(sid, acct, ts, tuple((a, D(str(v))) for a, v in balances.items()), tuple(pos))


# A standard market: two linear USDT-settled instruments (derived / explicit amounts),
# two inverse coin-settled ones, BTC and ETH collateral priced by the linear marks.
BTCUSDT_TIERS = ((50000, "0.004"), (250000, "0.005"), (1000000, "0.01"), (None, "0.025"))
# explicit amounts, continuous: 0; 100000*(0.01-0.005)=500; 500+500000*(0.025-0.01)=8000
ETHUSDT_TIERS = ((100000, "0.005", "0"), (500000, "0.01", "500"), (None, "0.025", "8000"))
BTCUSD_TIERS = ((5, "0.005"), (25, "0.01"), (None, "0.02"))  # notionals in BTC
ETHUSD_TIERS = ((100, "0.01"), (None, "0.02"))  # notionals in ETH


def standard_params(ts=None) -> list:
    return [
        asset("BTC", "BTCUSDT", "0.05", ts),
        asset("ETH", "ETHUSDT", "0.1", ts),
        instrument("BTCUSDT", "linear", "USDT", "0.001", BTCUSDT_TIERS, qty_step="1", ts=ts),
        instrument("ETHUSDT", "linear", "USDT", "0.01", ETHUSDT_TIERS, qty_step="1", ts=ts),
        instrument("BTCUSD", "inverse", "BTC", "100", BTCUSD_TIERS, qty_step="1", ts=ts),
        instrument("ETHUSD", "inverse", "ETH", "10", ETHUSD_TIERS, qty_step="1", ts=ts),
    ]


def new_engine(cfg: MarginConfig | None = None, params=None, **cfg_kw) -> PartitionEngine:
    """An engine with ``params`` (default :func:`standard_params`) applied as seed."""
    if cfg is None:
        cfg = MarginConfig(**cfg_kw)
    eng = PartitionEngine(cfg)
    eng.seed_params(standard_params() if params is None else params)
    return eng


def outputs_of(result, topic=None) -> list:
    return [o for o in result.outputs if topic is None or o.topic == topic]


@pytest.fixture
def engine() -> PartitionEngine:
    return new_engine()
