"""Stress results: one scenario over some books (mergeable), their wire form and the JSON
reports of a scenario and of a grid."""
from __future__ import annotations

from dataclasses import dataclass, field

from ..numbers import fmt_sig
from .scenarios import Scenario

CROSS = "cross"
DEFAULT_TOP = 10


@dataclass
class StressResult:
    """One scenario over some books (mergeable). Money in the valuation currency, floats."""

    marks: dict[str, str] = field(default_factory=dict)  # the scenario's marks that differ
    all_marks: dict[str, str] = field(default_factory=dict)  # every mark used
    accounts: int = 0
    scopes: int = 0
    liquidation: list[str] = field(default_factory=list)  # accounts, worst scope in liquidation
    margin_call: list[str] = field(default_factory=list)  # accounts, worst scope margin_call
    entering_liquidation: list[str] = field(default_factory=list)
    entering_margin_call: list[str] = field(default_factory=list)
    scopes_liquidation: int = 0
    scopes_margin_call: int = 0
    shortfall: float = 0.0
    bad_debt: float = 0.0
    liq_bad_debt: float = 0.0  # the part of bad_debt owed by scopes in liquidation
    unpriced_scopes: int = 0
    exact_checks: int = 0  # scopes decided by the exact reference
    top: list[dict] = field(default_factory=list)  # largest contributors
    liquidated: list[tuple[str, str]] = field(default_factory=list)  # (account_id, scope) in liquidation
    liquidated_notional: dict[str, float] = field(default_factory=dict)  # symbol -> signed notional

    @classmethod
    def merge(cls, results: list["StressResult"], top: int = DEFAULT_TOP) -> "StressResult":
        out = cls()
        for r in results:
            for k, v in r.marks.items():
                out.marks.setdefault(k, v)
            for k, v in r.all_marks.items():
                out.all_marks.setdefault(k, v)
            for name in ("accounts", "scopes", "scopes_liquidation", "scopes_margin_call", "shortfall",
                         "bad_debt", "liq_bad_debt", "unpriced_scopes", "exact_checks"):
                setattr(out, name, getattr(out, name) + getattr(r, name))
            for name in ("liquidation", "margin_call", "entering_liquidation", "entering_margin_call",
                         "liquidated", "top"):
                getattr(out, name).extend(getattr(r, name))
            for k, v in r.liquidated_notional.items():
                out.liquidated_notional[k] = out.liquidated_notional.get(k, 0.0) + v
        for name in ("liquidation", "margin_call", "entering_liquidation", "entering_margin_call"):
            setattr(out, name, sorted(set(getattr(out, name))))
        out.liquidated.sort()
        out.top = sorted(out.top, key=_top_key)[:top]
        return out

    def to_wire(self) -> dict:
        return {k: getattr(self, k) for k in self.__dataclass_fields__}

    @classmethod
    def from_wire(cls, d: dict) -> "StressResult":
        out = cls()
        for k in cls.__dataclass_fields__:
            if k in d:
                setattr(out, k, d[k])
        out.liquidated = [tuple(x) for x in out.liquidated]
        return out

    def report(self, currency: str, label: str = "") -> dict:
        """The JSON answer of one scenario (numbers as decimal strings, 12 significant digits)."""
        return {
            "scenario": label,
            "marks": dict(sorted(self.marks.items())),
            "currency": currency,
            "accounts": self.accounts,
            "scopes": self.scopes,
            "accounts_liquidation": self.liquidation,
            "accounts_margin_call": self.margin_call,
            "entering_liquidation": self.entering_liquidation,
            "entering_margin_call": self.entering_margin_call,
            "scopes_liquidation": self.scopes_liquidation,
            "scopes_margin_call": self.scopes_margin_call,
            "shortfall": fmt_sig(self.shortfall),
            "bad_debt": fmt_sig(self.bad_debt),
            "unpriced_scopes": self.unpriced_scopes,
            "exact_checks": self.exact_checks,
            "top": [_fmt_contributor(c) for c in self.top],
        }


def _top_key(c: dict):
    return (-c["shortfall"], -c["bad_debt"], c["account_id"], c["scope"])


def _fmt_contributor(c: dict) -> dict:
    out = dict(c)
    for k in ("equity", "maintenance_margin", "shortfall", "bad_debt"):
        out[k] = fmt_sig(c[k])
    return out



def grid_report(results: list[StressResult], scenarios: list[Scenario], currency: str) -> dict:
    """The JSON answer of a grid: every scenario, and at the top the worst one's figures
    (largest shortfall + bad debt)."""
    reports = [r.report(currency, s.label()) for r, s in zip(results, scenarios)]
    worst = max(range(len(results)), key=lambda i: (results[i].shortfall + results[i].bad_debt, -i)) if results else 0
    out = dict(reports[worst]) if reports else {}
    out["worst_scenario"] = worst
    out["scenarios"] = reports
    return out
