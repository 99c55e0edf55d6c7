"""Liquidation cascades: liquidations move prices, which liquidate more.

Round 1 evaluates the scenario (:class:`~.stress.Scenario`). Every scope in liquidation at
a round's marks is closed in full at those marks — the orders that close its positions:
a sell of each long, a buy of each short — and leaves the book for the later rounds (a
closed scope keeps the shortfall and bad debt it had when it closed). The orders of a
round move the prices through :class:`ImpactModel`; the next round evaluates the scopes
still open at the moved marks. The cascade stops at a fixed point (a round with no
liquidation orders: the prices no longer move) or after ``rounds`` rounds.

The round evaluation is a callback ``evaluate(scenario, closed) -> StressResult`` over
"books": :func:`run_cascade` runs it over local engines (``stress.evaluate_books``), and
the HTTP coordinator (``streams/web_stress.py``) runs :func:`run_cascade_async` with a
callback that fans each round out to every worker and merges their results.
:class:`Cascade` is the loop's state: ``next_round`` gives the next request, ``feed`` takes
its merged result.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from decimal import ROUND_HALF_EVEN, Decimal, localcontext
from typing import Awaitable, Callable

from .numbers import fmt_decimal, fmt_sig
from .stress import DEFAULT_TOP, Scenario, StressResult

ZERO = Decimal(0)
ONE = Decimal(1)
DEFAULT_DEPTH = Decimal("50000000")
DEFAULT_MAX_MOVE = Decimal("0.5")


def round_sig(d: Decimal, digits: int = 12) -> Decimal:
    """``d`` rounded to ``digits`` significant digits (half even), the contract's price precision."""
    with localcontext() as ctx:
        ctx.prec = digits
        ctx.rounding = ROUND_HALF_EVEN
        return +d


@dataclass(frozen=True)
class ImpactModel:
    """Linear price impact of a round's liquidation orders, per symbol s:

        L_s    = Σ signed notional of the round's orders in s (valuation currency;
                 + for sells, i.e. longs closed; − for buys, shorts closed)
        move_s = −impact × L_s / depth_s, clamped to [−max_move, +max_move]
        m_s   ← round₁₂(m_s × (1 + move_s))

    ``depth_s`` is the notional that moves the price by 100 %/impact (the book's depth
    per unit of relative move): ``depth`` per symbol, else ``default_depth``.
    """

    depth: tuple[tuple[str, Decimal], ...] = ()
    default_depth: Decimal = DEFAULT_DEPTH
    impact: Decimal = ONE
    max_move: Decimal = DEFAULT_MAX_MOVE

    def depth_of(self, symbol: str) -> Decimal:
        for s, d in self.depth:
            if s == symbol:
                return d
        return self.default_depth

    def move(self, symbol: str, notional: float) -> Decimal:
        """The relative move of ``symbol`` for a signed liquidated ``notional``."""
        if not notional:
            return ZERO
        mv = -self.impact * Decimal(repr(notional)) / self.depth_of(symbol)
        return max(-self.max_move, min(self.max_move, mv))

    def next_marks(self, marks: dict[str, Decimal], notional: dict[str, float]) -> tuple[dict, dict]:
        """(new marks of the moved symbols, their relative moves)."""
        out, moves = {}, {}
        for sym, L in sorted(notional.items()):
            mv = self.move(sym, L)
            if not mv or sym not in marks:
                continue
            new = round_sig(marks[sym] * (ONE + mv))
            if new <= 0 or new == marks[sym]:
                continue
            out[sym] = new
            moves[sym] = mv
        return out, moves

    def to_wire(self) -> dict:
        return {"depth": {s: fmt_decimal(d) for s, d in self.depth}, "default_depth": fmt_decimal(self.default_depth),
                "impact": fmt_decimal(self.impact), "max_move": fmt_decimal(self.max_move)}


@dataclass
class Round:
    index: int
    marks: dict[str, str]  # the round's marks that differ from the book's
    result: StressResult
    new_accounts: list[str] = field(default_factory=list)  # accounts with a scope closed this round
    moves: dict[str, str] = field(default_factory=dict)  # relative moves its orders cause


class Cascade:
    """The loop's state: ``next_round()`` → (scenario, closed scopes) or None; ``feed(result)``."""

    def __init__(self, scenario: Scenario, model: ImpactModel, rounds: int = 10) -> None:
        if rounds < 1:
            raise ValueError("rounds must be >= 1")
        self.scenario = scenario
        self.model = model
        self.max_rounds = rounds
        self.rounds: list[Round] = []
        self.closed: list[tuple[str, str]] = []  # append-only: BookStress updates its masks incrementally
        self.liquidated_accounts: set[str] = set()
        self.overrides: dict[str, Decimal] = {}  # absolute marks after round 1
        self.converged = False
        self._pending: Scenario | None = scenario

    def next_round(self) -> tuple[Scenario, list] | None:
        """The pending round: its scenario and the scopes closed so far (a list that later rounds
        extend: read it, do not keep a reference expecting it to stay as is)."""
        if self._pending is None:
            return None
        return self._pending, self.closed

    def feed(self, result: StressResult) -> None:
        """Take the merged result of the pending round; plan the next one."""
        scen = self._pending
        assert scen is not None, "no round pending"
        new_accounts = sorted({a for a, _ in result.liquidated} - self.liquidated_accounts)
        rnd = Round(len(self.rounds) + 1, dict(result.marks), result, new_accounts)
        self.rounds.append(rnd)
        self.liquidated_accounts.update(a for a, _ in result.liquidated)
        self.closed.extend(tuple(x) for x in result.liquidated)
        self._pending = None
        if not result.liquidated:
            self.converged = True
            return
        current = {s: Decimal(m) for s, m in result.all_marks.items()}
        moved, moves = self.model.next_marks(current, result.liquidated_notional)
        rnd.moves = {s: fmt_sig(mv) for s, mv in moves.items()}  # (12 significant digits)
        if len(self.rounds) >= self.max_rounds:
            return
        if not moved:
            # orders that move nothing: the next round would liquidate nothing new
            self.converged = True
            return
        marks = {s: Decimal(m) for s, m in result.marks.items()}
        marks.update(moved)
        self._pending = Scenario((), ZERO, tuple(sorted(marks.items())), f"round {len(self.rounds) + 1}")

    # -- the answer ---------------------------------------------------------------------------
    def report(self, currency: str, top: int = DEFAULT_TOP) -> dict:
        """Every round, and totals: each scope counted at the round it closed, or at the last
        round if still open (shortfall; bad debt likewise)."""
        rounds = []
        shortfall = 0.0
        bad_debt = 0.0
        for rnd in self.rounds:
            r = rnd.result
            shortfall += r.shortfall  # > 0 only for scopes in liquidation, which then close
            bad_debt += r.liq_bad_debt
            rounds.append({
                "round": rnd.index,
                "marks": rnd.marks,
                "scopes_liquidated": len(r.liquidated),
                "accounts_liquidated": rnd.new_accounts,
                "liquidated_notional": {s: fmt_sig(v) for s, v in sorted(r.liquidated_notional.items())},
                "moves": rnd.moves,
                "accounts_margin_call": len(r.margin_call),
                "shortfall": fmt_sig(r.shortfall),
                "bad_debt": fmt_sig(r.bad_debt),
                "exact_checks": r.exact_checks,
            })
        last = self.rounds[-1].result if self.rounds else StressResult()
        bad_debt += last.bad_debt - last.liq_bad_debt  # open scopes with negative equity and no MM
        tops = [c for rnd in self.rounds for c in rnd.result.top if c["state"] == "liquidation"]
        tops += [c for c in last.top if c["state"] != "liquidation"]
        merged = StressResult(top=tops)
        return {
            "scenario": self.scenario.label(),
            "currency": currency,
            "accounts": last.accounts,
            "marks": self.rounds[0].marks if self.rounds else {},
            "final_marks": dict(sorted(last.marks.items())),
            "accounts_liquidation": sorted(self.liquidated_accounts),
            "accounts_margin_call": sorted(set(last.margin_call) - self.liquidated_accounts),
            "scopes_liquidated": len(self.closed),
            "shortfall": fmt_sig(shortfall),
            "bad_debt": fmt_sig(bad_debt),
            "converged": self.converged,
            "impact": self.model.to_wire(),
            "rounds": rounds,
            "top": StressResult.merge([merged], top).report(currency)["top"],
        }


Evaluate = Callable[[Scenario, list], StressResult]


def run_cascade(evaluate: Evaluate, scenario: Scenario, model: ImpactModel, rounds: int = 10) -> Cascade:
    """Run the rounds with a synchronous ``evaluate(scenario, closed)`` callback."""
    c = Cascade(scenario, model, rounds)
    while (req := c.next_round()) is not None:
        c.feed(evaluate(*req))
    return c


async def run_cascade_async(evaluate: Callable[[Scenario, list], Awaitable[StressResult]],
                            scenario: Scenario, model: ImpactModel, rounds: int = 10) -> Cascade:
    """Run the rounds with an ``async`` callback (e.g. one HTTP fan-out per round)."""
    c = Cascade(scenario, model, rounds)
    while (req := c.next_round()) is not None:
        c.feed(await evaluate(*req))
    return c
