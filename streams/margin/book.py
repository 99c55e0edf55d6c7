"""The exact account book: a fold over fills, collateral events and snapshots.

Quantities, balances, entry prices and isolated margins are :class:`Decimal`,
exact. Each ``apply_*`` either changes the book and returns ``True``, or raises
:class:`InputRejected` before changing anything. Duplicate detection (ids seen
before) is the engine's job; the book only knows balances and positions.
"""
from __future__ import annotations

from dataclasses import dataclass
from decimal import Decimal
from typing import Callable

from .errors import (
    INSUFFICIENT_ISOLATED_MARGIN,
    MARGIN_MODE_CONFLICT,
    SCHEMA_VIOLATION,
    InputRejected,
)
from .events import CROSS, ISOLATED, AccountSnapshot, CollateralChange, Fill
from .instruments import Instrument

ZERO = Decimal(0)


@dataclass(slots=True)
class Position:
    """One position per (account, symbol): signed ``qty``, average ``entry``.

    ``last_price`` is the last fill price, the mark used until the symbol's first
    mark. A flat isolated position may keep funded ``isolated_margin``.
    """

    symbol: str
    qty: Decimal
    entry: Decimal
    margin_mode: str
    isolated_margin: Decimal
    last_price: Decimal

    @property
    def isolated(self) -> bool:
        return self.margin_mode == ISOLATED

    def to_record(self) -> list:
        return [self.symbol, str(self.qty), str(self.entry), self.margin_mode, str(self.isolated_margin), str(self.last_price)]

    @classmethod
    def from_record(cls, r: list) -> "Position":
        return cls(r[0], Decimal(r[1]), Decimal(r[2]), r[3], Decimal(r[4]), Decimal(r[5]))


class AccountBook:
    """Balances (cross, per asset) and positions (per symbol) of one account."""

    __slots__ = ("account_id", "balances", "positions")

    def __init__(self, account_id: str) -> None:
        self.account_id = account_id
        self.balances: dict[str, Decimal] = {}
        self.positions: dict[str, Position] = {}

    # -- the fold ---------------------------------------------------------------
    def apply_fill(self, fill: Fill, inst: Instrument) -> None:
        """Apply a fill: open/add (new average entry), reduce/close/flip (realize PnL), fee.

        Reducing realizes ``closed × c × (p − e)`` (linear) or ``closed × c × (1/e − 1/p)``
        (inverse) at the fill price into the settle asset (cross) or the isolated
        margin; the rest of a fill that crosses zero opens at the fill price. When
        the qty becomes exactly 0 the isolated margin returns to the cross balance.
        """
        pos = self.positions.get(fill.symbol)
        if pos is not None and pos.qty != 0 and pos.margin_mode != fill.margin_mode:
            raise InputRejected(
                MARGIN_MODE_CONFLICT,
                f"field 'margin_mode' is {fill.margin_mode!r} but the open {fill.symbol} position is {pos.margin_mode!r}",
                "margin_mode",
            )
        contract = inst.contract
        delta = fill.signed_qty
        if pos is None:
            pos = Position(fill.symbol, ZERO, fill.price, fill.margin_mode, ZERO, fill.price)
            self.positions[fill.symbol] = pos
        elif pos.qty == 0 and pos.margin_mode != fill.margin_mode:
            # A flat slot may change mode; its funded isolated margin goes back to cross.
            self._credit(inst.settle_asset, pos.isolated_margin)
            pos.isolated_margin = ZERO
            pos.margin_mode = fill.margin_mode
        q = pos.qty
        if q == 0 or (q > 0) == (delta > 0):
            pos.entry = fill.price if q == 0 else contract.average_entry(q, pos.entry, delta, fill.price)
            pos.qty = q + delta
        else:
            closed = delta if abs(delta) <= abs(q) else -q  # signed like delta
            pnl = contract.realized(-closed, inst.contract_size, pos.entry, fill.price)
            if pos.isolated:
                pos.isolated_margin += pnl
            else:
                self._credit(inst.settle_asset, pnl)
            rest = delta - closed
            pos.qty = q + closed
            if rest != 0:
                pos.qty = rest
                pos.entry = fill.price
        pos.last_price = fill.price
        if fill.fee:
            self._credit(fill.fee_asset or inst.settle_asset, -fill.fee)
        if pos.qty == 0:
            if pos.isolated_margin != 0:
                self._credit(inst.settle_asset, pos.isolated_margin)
            del self.positions[fill.symbol]

    def apply_collateral(self, ev: CollateralChange, inst: Instrument | None) -> None:
        """Apply a signed balance change; ``isolated_margin`` moves cross ⇄ isolated."""
        if ev.reason != "isolated_margin":
            self._credit(ev.asset, ev.amount)
            return
        assert inst is not None and ev.symbol is not None
        if ev.asset != inst.settle_asset:
            raise InputRejected(
                SCHEMA_VIOLATION,
                f"field 'asset' must be {inst.settle_asset}, the settle asset of {ev.symbol}, for isolated_margin",
                "asset",
            )
        pos = self.positions.get(ev.symbol)
        if pos is not None and pos.qty != 0 and not pos.isolated:
            raise InputRejected(
                MARGIN_MODE_CONFLICT,
                f"field 'symbol' names {ev.symbol}, an open cross position: it has no isolated margin",
                "symbol",
            )
        current = pos.isolated_margin if pos is not None else ZERO
        if current + ev.amount < 0:
            raise InputRejected(
                INSUFFICIENT_ISOLATED_MARGIN,
                f"field 'amount' {ev.amount} would take the isolated margin of {ev.symbol} below zero ({current})",
                "amount",
            )
        if pos is None:
            pos = Position(ev.symbol, ZERO, ZERO, ISOLATED, ZERO, ZERO)
            self.positions[ev.symbol] = pos
        elif pos.qty == 0 and not pos.isolated:
            pos.margin_mode = ISOLATED
        pos.isolated_margin = current + ev.amount
        self._credit(ev.asset, -ev.amount)
        if pos.qty == 0 and pos.isolated_margin == 0:
            del self.positions[ev.symbol]

    def apply_snapshot(self, snap: AccountSnapshot) -> None:
        """Replace balances and positions by the snapshot's."""
        self.balances = {asset: amount for asset, amount in snap.balances if amount != 0}
        self.positions = {}
        for p in snap.positions:
            if p.qty == 0 and (p.margin_mode != ISOLATED or p.isolated_margin == 0):
                continue
            self.positions[p.symbol] = Position(
                p.symbol, p.qty, p.entry_price, p.margin_mode,
                p.isolated_margin if p.margin_mode == ISOLATED else ZERO, p.entry_price,
            )

    def _credit(self, asset: str, amount: Decimal) -> None:
        if not amount:
            return
        new = self.balances.get(asset, ZERO) + amount
        if new == 0:
            self.balances.pop(asset, None)
        else:
            self.balances[asset] = new

    # -- state records (plain lists/dicts of strings; the adapter serializes) -----
    def to_record(self) -> dict:
        return {
            "b": {a: str(v) for a, v in sorted(self.balances.items())},
            "p": [p.to_record() for _, p in sorted(self.positions.items())],
        }

    @classmethod
    def from_record(cls, account_id: str, r: dict) -> "AccountBook":
        book = cls(account_id)
        book.balances = {a: Decimal(v) for a, v in r["b"].items()}
        for pr in r["p"]:
            p = Position.from_record(pr)
            book.positions[p.symbol] = p
        return book

    def copy(self) -> "AccountBook":
        return AccountBook.from_record(self.account_id, self.to_record())


def check_symbols(book: AccountBook, known: Callable[[str], bool]) -> str | None:
    """The first symbol of ``book`` that ``known`` rejects, or None."""
    for symbol in book.positions:
        if not known(symbol):
            return symbol
    return None
