"""Instruments, maintenance tier tables and collateral assets.

Margin policy lives in small objects whose docstrings state the formula:
:class:`LinearContract` and :class:`InverseContract` (the contract kind),
:class:`TierTable` (maintenance / initial margin as a function of notional).
Everything here is exact (:class:`~decimal.Decimal`); the float copies of tier
tables (``bounds``, ``mmrs``, ...) serve the vectorized kernels.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from decimal import Decimal

import numpy as np

from .errors import PARAMS_CONFLICT, SCHEMA_VIOLATION, InputRejected
from .events import AssetParams, InstrumentParams

ZERO = Decimal(0)
ONE = Decimal(1)


@dataclass(frozen=True, slots=True)
class Tier:
    """One maintenance bracket: notionals N < ``max_notional`` (``None`` = no bound)."""

    max_notional: Decimal | None
    mmr: Decimal
    maintenance_amount: Decimal
    imr: Decimal


class TierTable:
    """Maintenance margin by notional bracket.

    A notional N uses the first tier k with N < max_notional_k; then
    ``MM = N·mmr_k − amount_k`` and ``IM = N·imr_k``. When the amounts are not
    given they are derived so that MM is continuous in N:
    ``amount_0 = 0``, ``amount_k = amount_{k−1} + max_notional_{k−1}·(mmr_k − mmr_{k−1})``.
    When ``imr`` is not given, ``imr_k = mmr_k``.
    """

    __slots__ = ("tiers", "bounds", "mmrs", "amounts", "imrs")

    def __init__(self, tiers: tuple[Tier, ...]) -> None:
        if not tiers:
            raise ValueError("a tier table needs at least one tier")
        self.tiers = tiers
        self.bounds = np.array(
            [math.inf if t.max_notional is None else float(t.max_notional) for t in tiers], dtype=np.float64
        )
        self.mmrs = np.array([float(t.mmr) for t in tiers], dtype=np.float64)
        self.amounts = np.array([float(t.maintenance_amount) for t in tiers], dtype=np.float64)
        self.imrs = np.array([float(t.imr) for t in tiers], dtype=np.float64)

    @classmethod
    def from_specs(cls, specs) -> "TierTable":
        """Build from wire :class:`~streams.margin.events.TierSpec` s, deriving amounts."""
        tiers: list[Tier] = []
        given = specs[0].maintenance_amount is not None
        amount = ZERO
        for k, spec in enumerate(specs):
            if given:
                amount = spec.maintenance_amount
            elif k > 0:
                prev = specs[k - 1]
                amount = amount + prev.max_notional * (spec.mmr - prev.mmr)
            imr = spec.imr if spec.imr is not None else spec.mmr
            tiers.append(Tier(spec.max_notional, spec.mmr, amount, imr))
        return cls(tuple(tiers))

    def index(self, notional: Decimal) -> int:
        """Index of the tier that ``notional`` falls in (first with N < max_notional)."""
        for k, tier in enumerate(self.tiers):
            if tier.max_notional is None or notional < tier.max_notional:
                return k
        return len(self.tiers) - 1

    def maintenance(self, notional: Decimal) -> Decimal:
        """``N·mmr_k − amount_k`` for the tier k of N (exact)."""
        if notional == 0:
            return ZERO
        tier = self.tiers[self.index(notional)]
        return notional * tier.mmr - tier.maintenance_amount

    def initial(self, notional: Decimal) -> Decimal:
        """``N·imr_k`` for the tier k of N (exact)."""
        if notional == 0:
            return ZERO
        return notional * self.tiers[self.index(notional)].imr

    def index_f(self, notional: np.ndarray) -> np.ndarray:
        """Vectorized tier index of float notionals (same rule: first with N < bound)."""
        return np.searchsorted(self.bounds, notional, side="right").clip(max=len(self.tiers) - 1)

    def __eq__(self, other: object) -> bool:
        return isinstance(other, TierTable) and self.tiers == other.tiers

    def __repr__(self) -> str:
        return f"TierTable({self.tiers!r})"


def check_positive_maintenance(table: TierTable) -> None:
    """Reject tables whose MM can be ≤ 0 for a positive notional.

    MM of tier k is smallest at its lower bound, so MM > 0 on (0, ∞) needs
    ``amount_0 = 0`` and ``amount_k < max_notional_{k−1}·mmr_k`` (equality would make
    MM exactly 0 at a bound). A negative MM has no meaning in the contract's states
    (ratio, liquidation), so such parameters are a ``schema_violation``.
    """
    tiers = table.tiers
    if tiers[0].maintenance_amount != 0:
        raise InputRejected(SCHEMA_VIOLATION, "field 'tiers.0.maintenance_amount' must be 0", "tiers.0.maintenance_amount")
    for k in range(1, len(tiers)):
        low = tiers[k - 1].max_notional
        if tiers[k].mmr > 0 and not (tiers[k].maintenance_amount < low * tiers[k].mmr):
            raise InputRejected(
                SCHEMA_VIOLATION,
                f"field 'tiers.{k}.maintenance_amount' ({tiers[k].maintenance_amount}) must be below "
                f"max_notional of tier {k - 1} × mmr ({low * tiers[k].mmr}): maintenance margin would not be positive",
                f"tiers.{k}.maintenance_amount",
            )


class LinearContract:
    """Linear (quanto-free) contract, settled in the quote asset.

    ``N = |q|·c·m``; ``uPnL = q·c·(m − e)``; adding to a position moves the entry to
    the size-weighted arithmetic mean ``e' = (|q|·e + |f|·p) / (|q| + |f|)``.
    """

    name = "linear"

    @staticmethod
    def notional(qty: Decimal, contract_size: Decimal, mark: Decimal) -> Decimal:
        return abs(qty) * contract_size * mark

    @staticmethod
    def upnl(qty: Decimal, contract_size: Decimal, entry: Decimal, mark: Decimal) -> Decimal:
        return qty * contract_size * (mark - entry)

    @staticmethod
    def average_entry(qty: Decimal, entry: Decimal, add_qty: Decimal, price: Decimal) -> Decimal:
        a, b = abs(qty), abs(add_qty)
        return (a * entry + b * price) / (a + b)

    @staticmethod
    def realized(closed_qty: Decimal, contract_size: Decimal, entry: Decimal, price: Decimal) -> Decimal:
        """PnL of closing signed ``closed_qty`` (the sign of the position) at ``price``."""
        return closed_qty * contract_size * (price - entry)


class InverseContract:
    """Inverse contract: quoted in USD, margined and settled in the base coin.

    ``N = |q|·c/m``; ``uPnL = q·c·(1/e − 1/m)``; adding to a position moves the entry to
    the size-weighted harmonic mean ``e' = (|q| + |f|) / (|q|/e + |f|/p)``.
    """

    name = "inverse"

    @staticmethod
    def notional(qty: Decimal, contract_size: Decimal, mark: Decimal) -> Decimal:
        return abs(qty) * contract_size / mark

    @staticmethod
    def upnl(qty: Decimal, contract_size: Decimal, entry: Decimal, mark: Decimal) -> Decimal:
        return qty * contract_size * (ONE / entry - ONE / mark)

    @staticmethod
    def average_entry(qty: Decimal, entry: Decimal, add_qty: Decimal, price: Decimal) -> Decimal:
        a, b = abs(qty), abs(add_qty)
        return (a + b) / (a / entry + b / price)

    @staticmethod
    def realized(closed_qty: Decimal, contract_size: Decimal, entry: Decimal, price: Decimal) -> Decimal:
        return closed_qty * contract_size * (ONE / entry - ONE / price)


CONTRACT_KINDS = {"linear": LinearContract, "inverse": InverseContract}


@dataclass(frozen=True, slots=True)
class Instrument:
    """An instrument's risk parameters, with its tier table built."""

    symbol: str
    kind: str
    settle_asset: str
    contract_size: Decimal
    qty_step: Decimal | None
    tiers: TierTable

    @property
    def contract(self):
        return CONTRACT_KINDS[self.kind]

    @property
    def inverse(self) -> bool:
        return self.kind == "inverse"

    @classmethod
    def from_params(cls, p: InstrumentParams) -> "Instrument":
        if p.kind not in CONTRACT_KINDS:
            raise InputRejected(SCHEMA_VIOLATION, f"field 'kind' must be linear or inverse, got {p.kind!r}", "kind")
        table = TierTable.from_specs(p.tiers)
        check_positive_maintenance(table)
        return cls(p.symbol, p.kind, p.settle_asset, p.contract_size, p.qty_step, table)

    def check_update(self, new: "Instrument") -> None:
        """Raise ``params_conflict`` if ``new`` changes what may not change."""
        for name in ("kind", "settle_asset", "contract_size"):
            if getattr(self, name) != getattr(new, name):
                raise InputRejected(
                    PARAMS_CONFLICT,
                    f"field '{name}' of known instrument {self.symbol} may not change "
                    f"({getattr(self, name)} -> {getattr(new, name)})",
                    name,
                )


@dataclass(frozen=True, slots=True)
class CollateralAsset:
    """A collateral asset: priced by the mark of ``price_symbol``, valued at
    ``net × price × (1 − haircut)`` when its net is positive, ``net × price`` otherwise."""

    asset: str
    price_symbol: str | None  # None for the valuation currency (price 1)
    haircut: Decimal

    @classmethod
    def from_params(cls, p: AssetParams) -> "CollateralAsset":
        return cls(p.asset, p.price_symbol, p.haircut)
