"""Bodies of the output payloads: margin-status, margin-calls and liquidations.

Computed values (equity, margin, uPnL, notional, ratios, prices) come from the
float arrays and are rounded to 12 significant digits; balances, quantities,
entry prices and isolated margins come from the exact book. Liquidation events
are priced exactly (:mod:`.reference`): they are the decisions that move money.
"""
from __future__ import annotations

import math
from decimal import Decimal
from typing import TYPE_CHECKING

from .kernels import ratio_of
from .liquidation import LiquidationScope, PlanPosition, liquidation_orders, liquidation_price
from .numbers import fmt_decimal, fmt_sig
from .reference import STATES, evaluate_exact, margin_ratio, worst

if TYPE_CHECKING:  # pragma: no cover
    from .engine import PartitionEngine

ZERO = Decimal(0)
_INF = math.inf


def fmt_sig_float(x: float | None) -> str | None:
    """``numbers.fmt_sig`` of a float (or None), the same string without the Decimal:
    12 significant digits in plain notation, no trailing zeros."""
    if x is None or x != x or x == _INF or x == -_INF:
        return None
    if x == 0:
        return "0"
    text = f"{x:.12g}"  # 12 significant digits, trailing zeros dropped: plain unless the exponent
    if "e" not in text:  # is < -4 or >= 12
        return text
    mant, _, exp = f"{x:.11e}".partition("e")
    neg = mant[0] == "-"
    digits = (mant[1:] if neg else mant).replace(".", "").rstrip("0")
    p = int(exp) + 1  # digits before the point
    if p <= 0:
        text = "0." + "0" * -p + digits
    elif p >= len(digits):
        text = digits + "0" * (p - len(digits))
    else:
        text = digits[:p] + "." + digits[p:]
    return "-" + text if neg else text


class StatusBuilder:
    """Builds payload bodies from an engine's book, arrays and market."""

    def __init__(self, engine: "PartitionEngine") -> None:
        self.engine = engine

    # -- margin-calls -----------------------------------------------------------------
    def margin_call(self, r: int, scope: str, old: str, new: str, ce, i: int) -> dict:
        equity, mm, currency = self._scope_values(r, scope, ce, i)
        return {
            "scope": scope,
            "from": old,
            "to": new,
            "margin_ratio": fmt_sig_float(ratio_of(equity, mm)),
            "equity": fmt_sig_float(equity),
            "maintenance_margin": fmt_sig_float(mm),
            "currency": currency,
        }

    def _scope_values(self, r: int, scope: str, ce, i: int) -> tuple[float, float, str]:
        if scope == "cross":
            return float(ce.equity[i]), float(ce.mm[i]), self.engine.cfg.valuation_currency
        col = self.engine.index.symbols[scope]
        slot = col.slot_of[r]
        return float(col.iso_margin[slot] + col.upnl[slot]), float(col.mm[slot]), col.inst.settle_asset

    # -- liquidations -------------------------------------------------------------------
    def liquidation(self, r: int, scope: str, episode: int, step: int) -> dict:
        eng = self.engine
        market = eng.market
        book = eng.accounts[eng.index.ids[r]].book
        vals = evaluate_exact(book, market)
        plan: list[PlanPosition] = []
        if scope == "cross":
            sv = vals.cross
            currency = eng.cfg.valuation_currency
            for symbol, pos in sorted(book.positions.items()):
                if pos.isolated or pos.qty == 0:
                    continue
                inst = market.instruments[symbol]
                price = market.asset_price(inst.settle_asset)
                plan.append(self._plan_position(pos, inst, price if price is not None else ZERO))
        else:
            sv = vals.isolated[scope]
            pos = book.positions[scope]
            inst = market.instruments[scope]
            currency = inst.settle_asset
            plan.append(self._plan_position(pos, inst, Decimal(1)))
        target = eng.cfg.call_level - eng.cfg.recovery_band
        orders = liquidation_orders(plan, sv.equity, target)
        ratio = margin_ratio(sv.equity, sv.mm)
        return {
            "scope": scope,
            "currency": currency,
            "equity": fmt_sig(sv.equity),
            "maintenance_margin": fmt_sig(sv.mm),
            "margin_ratio": fmt_sig(ratio),
            "shortfall": fmt_sig(max(ZERO, -sv.equity)),
            "episode": episode,
            "step": step,
            "orders": [
                {"symbol": o.symbol, "side": o.side, "qty": fmt_decimal(o.qty), "mark_price": fmt_decimal(o.mark_price)}
                for o in orders
            ],
        }

    def _plan_position(self, pos, inst, settle_price: Decimal) -> PlanPosition:
        return PlanPosition(
            symbol=pos.symbol, qty=pos.qty, mark=self.engine.market.mark_for(pos),
            contract_size=inst.contract_size, kind=inst.kind, tiers=inst.tiers,
            qty_step=inst.qty_step, settle_price=settle_price,
        )

    # -- margin-status ---------------------------------------------------------------------
    def margin_status(self, r: int, ce, i: int) -> tuple[dict, float | None]:
        eng = self.engine
        idx = eng.index
        market = eng.market
        book = eng.accounts[idx.ids[r]].book
        equity = float(ce.equity[i])
        mm = float(ce.mm[i])
        # per settle asset nets (float, in the index's fixed order) for liquidation prices
        # every sum below runs in sorted order: a rebuilt book must give the same bits
        nets: dict[str, float] = {a: float(idx.bal[idx.asset_col[a], r]) for a in sorted(book.balances)}
        held = []  # (symbol, position, column, slot, notional), sorted by symbol
        for symbol, pos in sorted(book.positions.items()):
            col = idx.symbols[symbol]
            slot = col.slot_of[r]
            held.append((symbol, pos, col, slot, col.notional_one(slot)))
            if not pos.isolated:
                a = col.inst.settle_asset
                nets[a] = nets.get(a, 0.0) + float(col.upnl[slot])
        im = 0.0
        for symbol, pos, col, slot, n in held:
            if pos.isolated:
                continue
            p = idx.price[col.asset_col]
            if not math.isnan(p):
                im += col.initial_one(slot, n) * p
        values = {a: self._value(a, n) for a, n in sorted(nets.items())}
        priced_by: dict[str, list[str]] = {}  # price symbol -> assets it prices
        for name, rec in market.assets.items():
            priced_by.setdefault(rec.price_symbol, []).append(name)
        unpriced = sorted(a for a, n in nets.items() if n != 0 and math.isnan(idx.price[idx.asset_col[a]]))
        positions = []
        states = [STATES[int(idx.cross_state[r])]]
        for symbol, pos, col, slot, n in held:
            mark = col.mark if not math.isnan(col.mark) else float(col.lastp[slot])
            entry = {
                "symbol": symbol,
                "qty": fmt_decimal(pos.qty),
                "entry_price": fmt_decimal(pos.entry),
                "mark_price": fmt_sig_float(mark),
                "notional": fmt_sig_float(n),
                "unrealized_pnl": fmt_sig_float(float(col.upnl[slot])),
                "maintenance_margin": fmt_sig_float(float(col.mm[slot])),
                "margin_mode": pos.margin_mode,
                "liquidation_price": fmt_sig_float(self._liq_price(r, pos, col, slot, mark, nets, values, mm, priced_by)),
                "isolated_margin": fmt_decimal(pos.isolated_margin),
            }
            if pos.isolated:
                state = STATES[int(col.iso_state[slot])]
                entry["state"] = state
                states.append(state)
            positions.append(entry)
        ratio = ratio_of(equity, mm)
        body = {
            "state": STATES[int(idx.cross_state[r])],
            "worst_state": worst(states),
            "equity": fmt_sig_float(equity),
            "maintenance_margin": fmt_sig_float(mm),
            "margin_ratio": fmt_sig_float(ratio),
            "initial_margin": fmt_sig_float(im),
            "free_collateral": fmt_sig_float(equity - im),
            "currency": eng.cfg.valuation_currency,
            "balances": {a: fmt_decimal(v) for a, v in sorted(book.balances.items())},
            "unpriced_assets": unpriced,
            "positions": positions,
        }
        return body, ratio

    def _value(self, asset: str, net: float) -> float:
        idx = self.engine.index
        col = idx.asset_col[asset]
        p = idx.price[col]
        if math.isnan(p):
            return 0.0
        return net * (p * (1.0 - idx.haircut[col])) if net > 0 else net * p

    def _liq_price(self, r, pos, col, slot, mark, nets, values, mm_total, priced_by) -> float | None:
        if pos.qty == 0:
            return None
        idx = self.engine.index
        if pos.isolated:
            scope = LiquidationScope(
                kind=col.inst.kind, qty=float(pos.qty), contract_size=col.c, entry=float(pos.entry), mark=mark,
                tiers=col.inst.tiers, settle_net_other=float(col.iso_margin[slot]), settle_price=1.0,
                settle_haircut=0.0, other_equity=0.0, other_mm=0.0,
            )
            return liquidation_price(scope)
        a = col.inst.settle_asset
        p = idx.price[col.asset_col]
        if math.isnan(p):
            return None
        linked_assets = {name for name in priced_by.get(pos.symbol, ()) if name != a and name in nets}
        other_equity = sum(v for name, v in values.items() if name != a and name not in linked_assets)
        linked = tuple(
            (nets[name], float(idx.haircut[idx.asset_col[name]])) for name in sorted(linked_assets)
        )
        scope = LiquidationScope(
            kind=col.inst.kind, qty=float(pos.qty), contract_size=col.c, entry=float(pos.entry), mark=mark,
            tiers=col.inst.tiers, settle_net_other=nets[a] - float(col.upnl[slot]), settle_price=float(p),
            settle_haircut=float(idx.haircut[col.asset_col]), other_equity=other_equity,
            other_mm=mm_total - float(col.mm[slot]) * float(p), linked=linked,
        )
        return liquidation_price(scope)

