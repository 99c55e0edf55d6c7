"""Stress scenarios: shocks, grid moves and absolute marks, parsed from requests and CLI
arguments, and resolved against a market (see the package docstring)."""
from __future__ import annotations

from dataclasses import dataclass
from decimal import Decimal, InvalidOperation

from ..numbers import fmt_decimal
from ..reference import Market

ZERO = Decimal(0)
ONE = Decimal(1)


class StressError(ValueError):
    """A bad stress request; ``field`` names the offending argument or body field."""

    def __init__(self, field_name: str, message: str) -> None:
        super().__init__(message)
        self.field = field_name
        self.message = message




@dataclass(frozen=True)
class Shock:
    """A shock of one symbol: ``relative`` (m·(1 + value), value > −1) or an absolute mark."""

    symbol: str
    value: Decimal
    relative: bool

    def apply(self, mark: Decimal | None) -> Decimal:
        if not self.relative:
            return self.value
        assert mark is not None
        return mark * (ONE + self.value)

    def text(self) -> str:
        if self.relative:
            return fmt_decimal(self.value * 100) + "%"
        return fmt_decimal(self.value)


def _decimal(text, field_name: str) -> Decimal:
    try:
        value = Decimal(str(text).strip())
    except (InvalidOperation, ValueError):
        raise StressError(field_name, f"{field_name}: not a number: {text!r}") from None
    if not value.is_finite():
        raise StressError(field_name, f"{field_name}: not a finite number: {text!r}")
    return value


def parse_shock(symbol: str, text, field_name: str = "shocks") -> Shock:
    """``"-15%"`` (relative, above −100 %) or an absolute price > 0 (``"51000"``)."""
    where = f"{field_name}.{symbol}"
    if not symbol:
        raise StressError(field_name, f"{field_name}: empty symbol")
    if isinstance(text, bool) or not isinstance(text, (str, int, float)):
        raise StressError(where, f"{where}: expected a string like '-15%' or a price, got {text!r}")
    s = str(text).strip()
    if s.endswith("%"):
        value = _decimal(s[:-1], where) / 100
        if value <= -1:
            raise StressError(where, f"{where}: a relative shock must be above -100%: {text!r}")
        return Shock(symbol, value, True)
    value = _decimal(s, where)
    if value <= 0:
        raise StressError(where, f"{where}: an absolute mark must be > 0: {text!r}")
    return Shock(symbol, value, False)


def parse_shock_arg(text: str, field_name: str = "--shock") -> Shock:
    """``SYMBOL=-15%`` or ``SYMBOL=51000`` (the CLI form)."""
    symbol, sep, value = text.partition("=")
    if not sep or not symbol.strip() or not value.strip():
        raise StressError(field_name, f"{field_name}: expected SYMBOL=-15% or SYMBOL=PRICE, got {text!r}")
    return parse_shock(symbol.strip(), value, field_name)


def parse_grid(values, field_name: str = "grid") -> list[Decimal]:
    """Grid steps in percent (``[4, 8, 12, 16]``) → the relative moves 0, ±4 %, … sorted."""
    moves = {ZERO}
    for i, v in enumerate(values):
        if isinstance(v, bool) or not isinstance(v, (str, int, float)):
            raise StressError(field_name, f"{field_name}[{i}]: expected a number of percent, got {v!r}")
        d = _decimal(str(v).rstrip("%"), f"{field_name}[{i}]")
        if not 0 <= d < 100:
            raise StressError(field_name, f"{field_name}[{i}]: a step must be in [0, 100) percent, got {v!r}")
        moves.add(d / 100)
        moves.add(-d / 100)
    return sorted(moves)


@dataclass(frozen=True)
class Scenario:
    """Marks to evaluate at: ``shocks``, then ``move`` (relative, every marked symbol), then
    the absolute ``marks`` (override)."""

    shocks: tuple[Shock, ...] = ()
    move: Decimal = ZERO
    marks: tuple[tuple[str, Decimal], ...] = ()
    name: str = ""

    def resolve(self, market: Market) -> dict[str, Decimal]:
        """The marks that differ from ``market``'s (symbol → Decimal), or ``StressError``."""
        out: dict[str, Decimal] = {}
        priced = {a.price_symbol for a in market.assets.values() if a.price_symbol}
        for sh in self.shocks:
            known = sh.symbol in market.instruments or sh.symbol in market.marks or sh.symbol in priced
            if not known:
                raise StressError(f"shocks.{sh.symbol}", f"shocks.{sh.symbol}: unknown symbol {sh.symbol!r}")
            base = market.marks.get(sh.symbol)
            if sh.relative and base is None:
                raise StressError(f"shocks.{sh.symbol}",
                                  f"shocks.{sh.symbol}: {sh.symbol} has no mark yet; give an absolute price")
            out[sh.symbol] = sh.apply(base)
        if self.move:
            f = ONE + self.move
            for sym, m in market.marks.items():
                out[sym] = out.get(sym, m) * f
        for sym, m in self.marks:
            out[sym] = m
        return out

    def label(self) -> str:
        if self.name:
            return self.name
        parts = [f"{s.symbol} {s.text()}" for s in self.shocks]
        if self.move:
            parts.append(f"all {'+' if self.move > 0 else ''}{fmt_decimal(self.move * 100)}%")
        if self.marks:
            parts.append(f"{len(self.marks)} mark(s) set")
        return ", ".join(parts) or "current marks"

    def to_wire(self) -> dict:
        return {"shocks": {s.symbol: s.text() for s in self.shocks}, "move": fmt_decimal(self.move),
                "marks": {s: fmt_decimal(m) for s, m in self.marks}, "name": self.name}

    @classmethod
    def from_wire(cls, d: dict) -> "Scenario":
        shocks = tuple(parse_shock(s, v) for s, v in (d.get("shocks") or {}).items())
        marks = tuple((s, _decimal(v, f"marks.{s}")) for s, v in (d.get("marks") or {}).items())
        return cls(shocks, _decimal(d.get("move") or "0", "move"), marks, d.get("name") or "")


def grid_scenarios(shocks: tuple[Shock, ...], moves: list[Decimal]) -> list[Scenario]:
    """One scenario per move: the shocks, then every marked symbol moved by it."""
    return [Scenario(tuple(shocks), mv, (), _grid_name(shocks, mv)) for mv in moves]


def _grid_name(shocks, mv: Decimal) -> str:
    base = ", ".join(f"{s.symbol} {s.text()}" for s in shocks)
    step = f"all {'+' if mv > 0 else ''}{fmt_decimal(mv * 100)}%"
    return f"{base}, then {step}" if base else step
