"""``marginwatch stress``: what-if shocks and liquidation cascades over a replayed log.

    marginwatch stress --log FILE --shock BTCUSDT=-15% [--shock ETHUSDT=-20%] [--grid 4,8,12,16]
                       [--cascade --rounds 10 --depth BTCUSDT=5e7 --default-depth X --impact X]
                       [--top 10] [--exact] [--format json|table] [margin options as for replay]

The log is folded exactly as ``marginwatch replay`` does (one partition, the same
``PartitionProcessor``, outputs discarded); the stress evaluation (``streams.margin.stress``)
and the cascade (``streams.margin.cascade``) then run over the state it leaves.
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import time
from decimal import Decimal

from .margin.errors import InputRejected, MarginwatchError


def add_stress_command(sub, add_margin_options) -> None:
    p = sub.add_parser("stress", help="what-if shocks (and liquidation cascades) over the state a replayed log leaves")
    p.add_argument("--log", required=True, metavar="FILE", help="JSON-lines log of {topic, key, value} envelopes, as for replay ('-' = stdin)")
    p.add_argument("--shock", action="append", default=[], metavar="SYMBOL=X",
                   help="shock a mark: SYMBOL=-15%% (relative) or SYMBOL=PRICE (absolute); repeatable")
    p.add_argument("--grid", metavar="P1,P2,...",
                   help="also move every marked symbol by 0 and ±P%% each (e.g. 4,8,12,16: 9 scenarios)")
    p.add_argument("--cascade", action="store_true", help="run liquidation rounds with price impact")
    p.add_argument("--rounds", default="10", metavar="N", help="cascade: at most N rounds (10)")
    p.add_argument("--depth", action="append", default=[], metavar="SYMBOL=X",
                   help="cascade: notional (valuation currency) that moves SYMBOL by 100%%/impact; repeatable")
    p.add_argument("--default-depth", default=None, metavar="X", help="cascade: depth of the other symbols (5e7)")
    p.add_argument("--impact", default="1", metavar="X", help="cascade: impact coefficient (1)")
    p.add_argument("--max-move", default="0.5", metavar="X", help="cascade: largest relative move per round (0.5)")
    p.add_argument("--top", default="10", metavar="N", help="largest contributors to list (10)")
    p.add_argument("--exact", action="store_true", help="evaluate every scope in exact decimal arithmetic (slow)")
    p.add_argument("--format", choices=("json", "table"), default="json", help="output format (json)")
    add_margin_options(p)
    p.set_defaults(func=cmd_stress)


def _bad(arg: str, message: str) -> MarginwatchError:
    return MarginwatchError("config_error", f"{arg}: {message}", arg)


def _dec(arg: str, text: str, positive: bool = True, lo: Decimal | None = None) -> Decimal:
    from decimal import InvalidOperation

    try:
        v = Decimal(text)
    except InvalidOperation:
        raise _bad(arg, f"not a number: {text!r}") from None
    if not v.is_finite() or (positive and v <= 0) or (lo is not None and v < lo):
        raise _bad(arg, f"must be a finite number {'> 0' if positive else '>= ' + str(lo)}: {text!r}")
    return v


def _int(arg: str, text: str, lo: int) -> int:
    try:
        v = int(text)
    except ValueError:
        raise _bad(arg, f"not an integer: {text!r}") from None
    if v < lo:
        raise _bad(arg, f"must be >= {lo}: {text!r}")
    return v


def parse_request(args: argparse.Namespace):
    """(scenarios, cascade model or None, rounds, top) from the arguments, or a one-line error."""
    from .margin.cascade import DEFAULT_DEPTH, ImpactModel
    from .margin.stress import Scenario, StressError, grid_scenarios, parse_grid, parse_shock_arg

    try:
        shocks = tuple(parse_shock_arg(t) for t in args.shock)
        moves = None if args.grid is None else parse_grid([x for x in args.grid.split(",") if x.strip()], "--grid")
    except StressError as err:
        raise _bad(err.field.split(".")[0] if err.field.startswith("--") else err.field, err.message.split(": ", 1)[-1]) from None
    if args.grid is not None and not args.grid.strip():
        raise _bad("--grid", "empty: give steps in percent like 4,8,12,16")
    if not shocks and moves is None:
        raise _bad("--shock", "give at least one --shock SYMBOL=X (or --grid)")
    seen = set()
    for s in shocks:
        if s.symbol in seen:
            raise _bad("--shock", f"{s.symbol} given twice")
        seen.add(s.symbol)
    top = _int("--top", args.top, 0)
    model = None
    rounds = _int("--rounds", args.rounds, 1)
    if args.cascade:
        if moves is not None:
            raise _bad("--grid", "cannot be combined with --cascade (a cascade starts from one scenario)")
        depth = []
        for t in args.depth:
            sym, sep, val = t.partition("=")
            if not sep or not sym.strip():
                raise _bad("--depth", f"expected SYMBOL=X, got {t!r}")
            depth.append((sym.strip(), _dec("--depth", val.strip())))
        model = ImpactModel(tuple(depth),
                            _dec("--default-depth", args.default_depth) if args.default_depth else DEFAULT_DEPTH,
                            _dec("--impact", args.impact, positive=False, lo=Decimal(0)),
                            _dec("--max-move", args.max_move))
        if model.max_move >= 1:
            raise _bad("--max-move", f"must be < 1 (a price stays > 0): {args.max_move!r}")
    elif args.depth or args.default_depth:
        raise _bad("--depth" if args.depth else "--default-depth", "only with --cascade")
    scenarios = grid_scenarios(shocks, moves) if moves is not None else [Scenario(shocks)]
    return scenarios, model, rounds, top


def fold_log(path: str, settings):
    """The engine after replaying ``path`` as ``marginwatch replay`` does (outputs discarded),
    and the count of lines by outcome."""
    from .pipeline import PartitionProcessor, new_engine
    from .replay import apply_lines, open_log

    proc = PartitionProcessor(new_engine(settings), partition=0)
    counts: dict[str, int] = {}
    with open_log(path) as stream:
        for _, _, result in apply_lines(proc, stream):
            outcome = "dead_letter" if isinstance(result, InputRejected) else result.outcome
            counts[outcome] = counts.get(outcome, 0) + 1
    return proc.engine, counts


def run(args: argparse.Namespace, settings) -> dict:
    """The JSON answer (also used by the table format)."""
    from .margin.cascade import run_cascade
    from .margin.stress import BookStress, StressError, grid_report

    scenarios, model, rounds, top = parse_request(args)
    t0 = time.perf_counter()
    engine, counts = fold_log(args.log, settings)
    t1 = time.perf_counter()
    currency = settings.valuation_currency
    try:
        book = BookStress(engine, top=top)
        if model is not None:
            casc = run_cascade(lambda sc, closed: book.evaluate(sc, closed, args.exact, want_liquidated=True),
                               scenarios[0], model, rounds)
            out = casc.report(currency, top)
        elif len(scenarios) == 1:
            out = book.evaluate(scenarios[0], exact=args.exact).report(currency, scenarios[0].label())
        else:
            out = grid_report([book.evaluate(s, exact=args.exact) for s in scenarios], scenarios, currency)
    except StressError as err:
        field = err.field.split(".")[0]
        raise _bad("--shock" if field == "shocks" else field, err.message.split(": ", 1)[-1]) from None
    t2 = time.perf_counter()
    out["log"] = {"file": args.log, "lines": counts}
    out["timing"] = {"replay_s": round(t1 - t0, 3), "evaluate_ms": round((t2 - t1) * 1e3, 1)}
    return out


def cmd_stress(args: argparse.Namespace) -> int:
    from .cli import settings_from_args

    if args.log != "-" and not os.path.isfile(args.log):
        raise _bad("--log", f"no such file: {args.log}")
    parse_request(args)  # bad arguments fail before the (long) fold
    out = run(args, settings_from_args(args))
    if args.format == "json":
        sys.stdout.write(json.dumps(out, indent=2) + "\n")
    else:
        print_table(out)
    return 0


# --------------------------------------------------------------------------------------
def print_table(out: dict) -> None:
    from rich.console import Console
    from rich.table import Table

    console = Console(highlight=False, width=None if sys.stdout.isatty() else 160)  # files: wide, not cut
    cur = out.get("currency", "")
    lines = out.get("log", {}).get("lines", {})
    console.print(f"[bold]stress[/] over {out.get('log', {}).get('file')} "
                  f"({', '.join(f'{k} {v}' for k, v in sorted(lines.items()))}); {out.get('accounts', 0)} accounts; "
                  f"replay {out['timing']['replay_s']} s, evaluation {out['timing']['evaluate_ms']} ms")
    if "rounds" in out:
        t = Table(title=f"cascade from {out['scenario']} ({'fixed point' if out['converged'] else 'round limit'})")
        for c in ("round", "marks", "liquidated scopes", "new accounts", "liquidated notional", "moves",
                  f"shortfall {cur}", f"bad debt {cur}"):
            t.add_column(c, justify="left" if c in ("marks", "liquidated notional", "moves") else "right")
        for r in out["rounds"]:
            t.add_row(str(r["round"]), _kv(r["marks"]), str(r["scopes_liquidated"]), str(len(r["accounts_liquidated"])),
                      _kv(r["liquidated_notional"]), _kv(r["moves"]), r["shortfall"], r["bad_debt"])
        console.print(t)
        console.print(f"total: [red]{len(out['accounts_liquidation'])}[/] account(s) liquidated, "
                      f"[yellow]{len(out['accounts_margin_call'])}[/] in margin call at the final marks "
                      f"{_kv(out['final_marks'])}; shortfall {out['shortfall']} {cur}, bad debt {out['bad_debt']} {cur}")
    else:
        scen = out.get("scenarios") or [out]
        t = Table(title="stress scenarios" + (f" (worst: #{out['worst_scenario'] + 1})" if "scenarios" in out else ""))
        for c in ("#", "scenario", "liquidation", "entering", "margin call", "entering", f"shortfall {cur}", f"bad debt {cur}"):
            t.add_column(c, justify="left" if c == "scenario" else "right")
        for i, s in enumerate(scen, 1):
            t.add_row(str(i), s["scenario"], f"[red]{len(s['accounts_liquidation'])}[/]", str(len(s["entering_liquidation"])),
                      f"[yellow]{len(s['accounts_margin_call'])}[/]", str(len(s["entering_margin_call"])),
                      s["shortfall"], s["bad_debt"])
        console.print(t)
    top = out.get("top") or []
    if top:
        t = Table(title="largest contributors" + (" (worst scenario)" if "scenarios" in out else ""))
        for c in ("account", "scope", "state", f"equity {cur}", f"MM {cur}", f"shortfall {cur}", f"bad debt {cur}"):
            t.add_column(c, justify="left" if c in ("account", "scope", "state") else "right")
        for c in top:
            t.add_row(c["account_id"], c["scope"], c["state"], c["equity"], c["maintenance_margin"], c["shortfall"], c["bad_debt"])
        console.print(t)


def _kv(d: dict) -> str:
    return ", ".join(f"{k} {v}" for k, v in sorted(d.items())) or "-"
