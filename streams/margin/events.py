"""Immutable domain events: what the codec makes of an input message.

Decimal quantities are :class:`decimal.Decimal`, exact as they came on the wire;
``ts`` is event time in integer milliseconds. ``cause_id`` is the contract's cause
id of the input (``fill_id``, ``event_id``, ``snapshot_id``, ``SYMBOL:seq`` /
``SYMBOL@ts`` for marks, ``KEY@<sha256[:12]>`` for risk-params); the codec sets it
because for risk-params it depends on the raw bytes.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from decimal import Decimal
from typing import Union

# Topic names as they appear in ``cause.topic`` (the contract's input topics).
FILLS = "fills"
MARK_PRICES = "mark-prices"
COLLATERAL = "collateral"
ACCOUNT_SNAPSHOTS = "account-snapshots"
RISK_PARAMS = "risk-params"

CROSS = "cross"
ISOLATED = "isolated"


@dataclass(frozen=True, slots=True)
class Fill:
    """A fill from a matching engine (topic ``fills``)."""

    fill_id: str
    account_id: str
    symbol: str
    side: str  # "buy" | "sell"
    qty: Decimal  # > 0, contracts
    price: Decimal  # > 0
    ts: int
    fee: Decimal = Decimal(0)  # positive = paid
    fee_asset: str | None = None  # None = the instrument's settle asset
    margin_mode: str = CROSS
    topic: str = field(default=FILLS, init=False)

    @property
    def cause_id(self) -> str:
        return self.fill_id

    @property
    def signed_qty(self) -> Decimal:
        return self.qty if self.side == "buy" else -self.qty


@dataclass(frozen=True, slots=True)
class MarkTick:
    """A mark (or index) price tick of one symbol (topic ``mark-prices``)."""

    symbol: str
    mark_price: Decimal  # > 0
    ts: int
    seq: int | None = None
    topic: str = field(default=MARK_PRICES, init=False)

    @property
    def cause_id(self) -> str:
        return f"{self.symbol}:{self.seq}" if self.seq is not None else f"{self.symbol}@{self.ts}"


@dataclass(frozen=True, slots=True)
class CollateralChange:
    """A signed balance change of one asset (topic ``collateral``).

    With ``reason == "isolated_margin"`` the amount moves between the cross balance
    of the settle asset and the isolated margin of (account, ``symbol``).
    """

    event_id: str
    account_id: str
    asset: str
    amount: Decimal
    reason: str
    ts: int
    symbol: str | None = None
    topic: str = field(default=COLLATERAL, init=False)

    @property
    def cause_id(self) -> str:
        return self.event_id


@dataclass(frozen=True, slots=True)
class SnapshotPosition:
    symbol: str
    qty: Decimal  # signed
    entry_price: Decimal
    margin_mode: str = CROSS
    isolated_margin: Decimal = Decimal(0)


@dataclass(frozen=True, slots=True)
class AccountSnapshot:
    """The whole book of one account, replacing it (topic ``account-snapshots``)."""

    snapshot_id: str
    account_id: str
    ts: int
    balances: tuple[tuple[str, Decimal], ...]
    positions: tuple[SnapshotPosition, ...]
    topic: str = field(default=ACCOUNT_SNAPSHOTS, init=False)

    @property
    def cause_id(self) -> str:
        return self.snapshot_id


@dataclass(frozen=True, slots=True)
class TierSpec:
    """One maintenance bracket as given on the wire (amounts may be omitted)."""

    max_notional: Decimal | None  # None on the last tier
    mmr: Decimal
    maintenance_amount: Decimal | None = None
    imr: Decimal | None = None


@dataclass(frozen=True, slots=True)
class InstrumentParams:
    """An instrument's risk parameters (topic ``risk-params``, key = symbol)."""

    symbol: str
    kind: str  # "linear" | "inverse"
    settle_asset: str
    contract_size: Decimal
    tiers: tuple[TierSpec, ...]
    qty_step: Decimal | None = None
    ts: int | None = None
    cause_id: str = ""  # KEY@sha256[:12], set by the codec
    topic: str = field(default=RISK_PARAMS, init=False)

    @property
    def key(self) -> str:
        return self.symbol


@dataclass(frozen=True, slots=True)
class AssetParams:
    """A collateral asset's parameters (topic ``risk-params``, key ``asset:<ASSET>``)."""

    asset: str
    price_symbol: str
    haircut: Decimal
    ts: int | None = None
    cause_id: str = ""
    topic: str = field(default=RISK_PARAMS, init=False)

    @property
    def key(self) -> str:
        return f"asset:{self.asset}"


AccountEvent = Union[Fill, CollateralChange, AccountSnapshot]
RiskParams = Union[InstrumentParams, AssetParams]
Event = Union[Fill, MarkTick, CollateralChange, AccountSnapshot, InstrumentParams, AssetParams]
