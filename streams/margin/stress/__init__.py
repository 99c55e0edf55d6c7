"""What-if stress evaluation: every account re-evaluated on shocked marks, the engine untouched.

A :class:`Scenario` names marks: per-symbol shocks (relative, ``-15%`` → m·(1 − 0.15), or
an absolute price), then optionally a uniform relative ``move`` of every marked symbol
(the grid form: ±4/8/12/16 % gives 9 scenarios with 0), then absolute marks that override
both (what a cascade round sends). Marks of the other symbols stay as the book has them.
Collateral assets priced by a shocked symbol take the shocked mark as their price.

:class:`BookStress` evaluates one :class:`~streams.margin.engine.PartitionEngine` at a
scenario's marks, reading the engine's columnar index (``kernels.ColumnarIndex``) and
never writing it. Every scope is evaluated with the contract's formulas:

* position at mark m: linear ``N = |q|·c·m``, ``uPnL = q·c·(m − e)``; inverse
  ``N = |q|·c/m``, ``uPnL = q·c·(1/e − 1/m)``; ``MM = N·mmr_k − amount_k`` (tier k of N);
* cross: ``net_a = balance_a + Σ uPnL`` (cross positions settled in a),
  ``equity = Σ_a net_a·P_a·(1 − h_a)`` if net_a > 0 else ``net_a·P_a``,
  ``MM = Σ MM_pos·P_settle`` (unpriced assets count 0, as in the engine);
* isolated: ``equity = isolated_margin + uPnL``, ``MM = MM_pos`` (settle units, ×P_settle
  for the totals below);
* state: ``next_state(current state, equity, MM)`` — the scenario's marks are taken as
  arriving together, one evaluation from each scope's current state (hysteresis included).

Decisions are screened in floats (``ColumnarIndex.decide`` / ``_near``) and every scope the
screen flags near a threshold (or with a notional near a tier bound) is decided by the exact
reference (``reference.evaluate_exact`` in Decimal), like the engine does — so the states are
those of exact decimal arithmetic, i.e. those the engine reaches when the same marks arrive
(for a single-symbol scenario always; with several symbols ticking one by one the engine's
intermediate states can differ only inside the hysteresis band). ``exact=True`` evaluates
every scope with the reference instead (slow; boundary checks, tests, the bench baseline).

Reported, in the valuation currency (floats, within 1e-9 relative of exact):

* ``shortfall = Σ_scopes max(0, MM − equity)``, ``bad_debt = Σ_scopes max(0, −equity)``
  (isolated scopes ×P_settle; a scope whose settle asset has no price is counted in
  ``unpriced_scopes`` and not summed);
* accounts by worst scope state (``liquidation``, ``margin_call``) and those *entering*
  it (worse than their current worst state); the largest contributors (scopes by shortfall,
  then bad debt);
* for cascades: the scopes in liquidation and the signed notional of their positions per
  symbol (``+`` = sold: longs closed; valuation currency), see :mod:`.cascade`.

Results of several books (partitions, workers) merge with :meth:`StressResult.merge`;
``to_wire``/``from_wire`` give plain dicts of str/float/int/list for transport.

Modules: :mod:`.scenarios` (shocks, grids, scenarios and their parsing), :mod:`.results`
(``StressResult``, the JSON reports), :mod:`.columns` (per-symbol constants and values at a
mark, the float screen), :mod:`.book` (``BookStress``: cross and isolated scopes, exact
fallback) and :mod:`.totals` (shortfall, bad debt, account lists, top contributors).
"""
from __future__ import annotations

import math
from itertools import compress
from .book import BookStress, evaluate_books
from .results import CROSS, DEFAULT_TOP, StressResult, grid_report
from .scenarios import (
    ONE,
    ZERO,
    Scenario,
    Shock,
    StressError,
    grid_scenarios,
    parse_grid,
    parse_shock,
    parse_shock_arg,
)

__all__ = [
    "BookStress", "CROSS", "DEFAULT_TOP", "ONE", "Scenario", "Shock", "StressError", "StressResult", "ZERO",
    "evaluate_books", "grid_report", "grid_scenarios", "parse_grid", "parse_shock", "parse_shock_arg",
]
