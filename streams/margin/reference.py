"""Exact decimal evaluation of one account: the reference the kernels must match.

``evaluate_exact`` follows the contract's "Margin definitions" term by term in
:class:`Decimal`; ``next_state`` is the state machine with hysteresis. The
vectorized kernels call these for accounts whose float values lie too close to a
threshold to decide in floats.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from decimal import Decimal
from typing import Mapping

from .book import AccountBook, Position
from .instruments import CollateralAsset, Instrument

ZERO = Decimal(0)
ONE = Decimal(1)

HEALTHY = "healthy"
MARGIN_CALL = "margin_call"
LIQUIDATION = "liquidation"
STATES = (HEALTHY, MARGIN_CALL, LIQUIDATION)
STATE_CODE = {HEALTHY: 0, MARGIN_CALL: 1, LIQUIDATION: 2}


@dataclass(frozen=True)
class MarginConfig:
    """Thresholds and the valuation currency (the contract's settings)."""

    call_level: Decimal = Decimal("0.8")
    recovery_band: Decimal = Decimal("0.05")
    valuation_currency: str = "USDT"
    status_interval_ms: int = 1000
    status_ratio_step: Decimal = Decimal("0.01")
    # ids are forgotten this much event time after their account's latest one (see dedup.py);
    # the contract's floor, not a worker setting: replay and worker must forget alike
    id_window_ms: int = 86_400_000


@dataclass
class Market:
    """What the evaluation reads besides the book: parameters and last marks."""

    instruments: dict[str, Instrument] = field(default_factory=dict)
    assets: dict[str, CollateralAsset] = field(default_factory=dict)
    marks: dict[str, Decimal] = field(default_factory=dict)
    valuation_currency: str = "USDT"

    def asset_price(self, asset: str) -> Decimal | None:
        """Valuation price of ``asset``: 1 for the valuation currency, else its price symbol's mark."""
        if asset == self.valuation_currency:
            return ONE
        rec = self.assets.get(asset)
        if rec is None or rec.price_symbol is None:
            return None
        return self.marks.get(rec.price_symbol)

    def haircut(self, asset: str) -> Decimal:
        rec = self.assets.get(asset)
        return rec.haircut if rec is not None else ZERO

    def mark_for(self, pos: Position) -> Decimal:
        return self.marks.get(pos.symbol, pos.last_price)


@dataclass(frozen=True)
class PositionValues:
    mark: Decimal
    notional: Decimal
    upnl: Decimal
    mm: Decimal  # settle units
    im: Decimal  # settle units


@dataclass(frozen=True)
class ScopeValues:
    equity: Decimal
    mm: Decimal
    im: Decimal

    @property
    def ratio(self) -> Decimal | None:
        return margin_ratio(self.equity, self.mm)


@dataclass(frozen=True)
class AccountValues:
    cross: ScopeValues
    isolated: dict[str, ScopeValues]
    positions: dict[str, PositionValues]
    unpriced: tuple[str, ...]


def margin_ratio(equity: Decimal, mm: Decimal) -> Decimal | None:
    """MM / equity; None when equity ≤ 0 < MM; 0 when MM = 0."""
    if mm == 0:
        return ZERO
    if equity <= 0:
        return None
    return mm / equity


def position_values(pos: Position, inst: Instrument, mark: Decimal) -> PositionValues:
    """Notional, uPnL, MM and IM of one position at ``mark`` (settle units)."""
    c = inst.contract
    if pos.qty == 0:
        return PositionValues(mark, ZERO, ZERO, ZERO, ZERO)
    n = c.notional(pos.qty, inst.contract_size, mark)
    return PositionValues(
        mark, n, c.upnl(pos.qty, inst.contract_size, pos.entry, mark), inst.tiers.maintenance(n), inst.tiers.initial(n)
    )


def evaluate_exact(book: AccountBook, market: Market) -> AccountValues:
    """The contract's cross and isolated evaluation, exactly."""
    nets: dict[str, Decimal] = dict(sorted(book.balances.items()))
    mm_cross = ZERO
    im_cross = ZERO
    pvals: dict[str, PositionValues] = {}
    isolated: dict[str, ScopeValues] = {}
    settle_prices: dict[str, Decimal | None] = {}
    for symbol, pos in sorted(book.positions.items()):
        inst = market.instruments[symbol]
        pv = position_values(pos, inst, market.mark_for(pos))
        pvals[symbol] = pv
        if pos.isolated:
            isolated[symbol] = ScopeValues(pos.isolated_margin + pv.upnl, pv.mm, pv.im)
            continue
        a = inst.settle_asset
        nets[a] = nets.get(a, ZERO) + pv.upnl
        if a not in settle_prices:
            settle_prices[a] = market.asset_price(a)
        price = settle_prices[a]
        if price is not None:
            mm_cross += pv.mm * price
            im_cross += pv.im * price
    equity = ZERO
    unpriced = []
    for a, net in sorted(nets.items()):
        price = market.asset_price(a)
        if price is None:
            if net != 0:
                unpriced.append(a)
            continue
        equity += net * price * (ONE - market.haircut(a)) if net > 0 else net * price
    return AccountValues(ScopeValues(equity, mm_cross, im_cross), isolated, pvals, tuple(sorted(unpriced)))


def next_state(prev: str, equity: Decimal, mm: Decimal, cfg: MarginConfig) -> str:
    """The state machine of a scope.

    ``liquidation`` while MM > 0 and equity ≤ MM; otherwise ``margin_call`` if
    ratio ≥ call_level, or if the scope was in margin_call/liquidation and
    ratio ≥ call_level − recovery_band; otherwise ``healthy``. Ratios are compared
    as ``MM ≥ level × equity`` (equity > 0 here), which is exact.
    """
    if mm > 0 and equity <= mm:
        return LIQUIDATION
    if mm == 0:
        return HEALTHY if cfg.call_level > 0 else MARGIN_CALL
    if mm >= cfg.call_level * equity:
        return MARGIN_CALL
    if prev != HEALTHY and mm >= (cfg.call_level - cfg.recovery_band) * equity:
        return MARGIN_CALL
    return HEALTHY


def worst(states) -> str:
    code = max((STATE_CODE[s] for s in states), default=0)
    return STATES[code]


def exact_states(
    book: AccountBook, market: Market, cfg: MarginConfig, prev: Mapping[str, str]
) -> dict[str, str]:
    """States of every scope (``"cross"`` and each isolated symbol) after evaluation."""
    vals = evaluate_exact(book, market)
    out = {"cross": next_state(prev.get("cross", HEALTHY), vals.cross.equity, vals.cross.mm, cfg)}
    for symbol, sv in vals.isolated.items():
        out[symbol] = next_state(prev.get(symbol, HEALTHY), sv.equity, sv.mm, cfg)
    return out
