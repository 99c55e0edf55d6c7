"""Benchmark: stress grid and liquidation cascade over a full partition.

    .venv/bin/python bench/stress.py [--accounts 100000 --positions 1000000 --repeat 5]
                                     [--grid 4,8,12,16] [--rounds 10 --cascade-shock -8 --depth 2e8]
                                     [--sample 1000]

The book is bench/engine.py's (imported: ``make_engine`` + ``bulk_load``): ``--accounts``
accounts holding ``--positions`` positions over 10 symbols (8 linear USDT, 2 inverse
coin-settled), ~20 % isolated, USDT balances for all and BTC collateral for ~20 %.

Measured (median / min over ``--repeat`` runs, each with a fresh ``BookStress``, i.e. no
cache carried over between runs):

(g) the grid: 9 scenarios (every marked symbol moved by 0, ±4, ±8, ±12, ±16 %), each a full
    ``BookStress.evaluate`` (values of every position at the moved marks, cross sums, screen,
    float decisions, exact fallback for flagged scopes, totals, lists, top contributors);
(c) a cascade of ``--rounds`` rounds from every symbol moved by ``--cascade-shock`` % with
    ``--depth`` (valuation currency) per symbol: ``cascade.run_cascade`` over the book,
    ``want_liquidated`` (the orders' notionals) every round;
(b) baseline: the exact reference path (``BookStress.evaluate(exact=True)`` semantics:
    ``reference.evaluate_exact`` + ``next_state`` per scope) timed on ``--sample`` accounts for one
    scenario and extrapolated to the whole book × 9 scenarios; the sampled accounts' states are
    compared with the vectorized result (mismatches must be 0).

Prints a table and one JSON line. Single core: BLAS/OpenMP threads pinned to 1.
"""
from __future__ import annotations

import os

for _v in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS", "NUMEXPR_NUM_THREADS"):
    os.environ.setdefault(_v, "1")

import argparse  # noqa: E402
import gc  # noqa: E402
import json  # noqa: E402
import sys  # noqa: E402
import time  # noqa: E402
from decimal import Decimal  # noqa: E402
from pathlib import Path  # noqa: E402

import numpy as np  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from engine import bulk_load, machine, make_engine, peak_rss_mb  # noqa: E402  (bench/engine.py)

from streams.margin.cascade import ImpactModel, run_cascade  # noqa: E402
from streams.margin.reference import STATE_CODE, STATES, MarginConfig, evaluate_exact, next_state, worst  # noqa: E402
from streams.margin.stress import BookStress, Scenario, grid_scenarios, parse_grid  # noqa: E402

D = Decimal


def exact_sample(eng, scenario: Scenario, rows: np.ndarray) -> tuple[float, dict[str, str]]:
    """The reference path on ``rows``: seconds, and each account's worst state."""
    from streams.margin.reference import Market

    m = eng.market
    t0 = time.perf_counter()
    smarket = Market(m.instruments, m.assets, {**m.marks, **scenario.resolve(m)}, m.valuation_currency)
    idx = eng.index
    out = {}
    for r in rows.tolist():
        a = idx.ids[r]
        book = eng.accounts[a].book
        v = evaluate_exact(book, smarket)
        states = [next_state(STATES[int(idx.cross_state[r])], v.cross.equity, v.cross.mm, eng.cfg)]
        for sym, sv in v.isolated.items():
            col = idx.symbols[sym]
            states.append(next_state(STATES[int(col.iso_state[col.slot_of[r]])], sv.equity, sv.mm, eng.cfg))
        out[a] = worst(states)
    return time.perf_counter() - t0, out


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--accounts", type=int, default=100_000)
    ap.add_argument("--positions", type=int, default=1_000_000)
    ap.add_argument("--repeat", type=int, default=5)
    ap.add_argument("--grid", default="4,8,12,16")
    ap.add_argument("--rounds", type=int, default=10)
    ap.add_argument("--cascade-shock", type=float, default=-8.0, help="percent, every symbol")
    ap.add_argument("--depth", type=float, default=2e8, help="per-symbol depth (valuation currency)")
    ap.add_argument("--sample", type=int, default=1000)
    ap.add_argument("--seed", type=int, default=7)
    args = ap.parse_args(argv)

    gc.disable()
    eng = make_engine(MarginConfig())
    t0 = time.perf_counter()
    info = bulk_load(eng, args.accounts, args.positions, args.seed)
    build_s = time.perf_counter() - t0
    print(f"built {args.accounts:,} accounts / {info['positions']:,} positions in {build_s:.1f}s; "
          f"accounts by worst state: {info['states']}")

    scenarios = grid_scenarios((), parse_grid(args.grid.split(",")))
    # ---- (g) the grid -------------------------------------------------------------------
    grid_ms, grid_cpu = [], []
    results = None
    for _ in range(args.repeat):
        c0, t0 = time.process_time(), time.perf_counter()
        bs = BookStress(eng)
        results = [bs.evaluate(s) for s in scenarios]
        grid_ms.append((time.perf_counter() - t0) * 1e3)
        grid_cpu.append((time.process_time() - c0) * 1e3)
    per_scenario = [{"scenario": s.label(), "liquidation": len(r.liquidation), "margin_call": len(r.margin_call),
                     "shortfall": round(r.shortfall, 2), "bad_debt": round(r.bad_debt, 2),
                     "exact_checks": r.exact_checks} for s, r in zip(scenarios, results)]

    # ---- (c) the cascade ----------------------------------------------------------------
    model = ImpactModel(default_depth=D(repr(args.depth)))
    start = Scenario((), D(repr(args.cascade_shock)) / 100)
    casc_ms, casc_cpu, casc = [], [], None
    for _ in range(args.repeat):
        c0, t0 = time.process_time(), time.perf_counter()
        bs = BookStress(eng)
        casc = run_cascade(lambda s, closed: bs.evaluate(s, closed, want_liquidated=True), start, model, args.rounds)
        casc_ms.append((time.perf_counter() - t0) * 1e3)
        casc_cpu.append((time.process_time() - c0) * 1e3)
    rep = casc.report("USDT")
    rounds = [{"round": r["round"], "liquidated_scopes": r["scopes_liquidated"],
               "BTCUSDT": r["marks"].get("BTCUSDT"), "shortfall": r["shortfall"]} for r in rep["rounds"]]

    # ---- (b) the exact reference on a sample ------------------------------------------------
    rng = np.random.default_rng(args.seed + 3)
    rows = np.sort(rng.choice(len(eng.index.ids), size=min(args.sample, len(eng.index.ids)), replace=False))
    mismatches = 0
    ref_s = []
    for s, r in zip(scenarios[:: max(1, len(scenarios) // 3)], results[:: max(1, len(scenarios) // 3)]):
        dt, states = exact_sample(eng, s, rows)
        ref_s.append(dt)
        liq, call = set(r.liquidation), set(r.margin_call)
        for a, st in states.items():
            got = "liquidation" if a in liq else "margin_call" if a in call else "healthy"
            mismatches += got != st
    ref_grid_ms = float(np.median(ref_s)) * 1e3 * len(eng.index.ids) / len(rows) * len(scenarios)
    g_med, c_med = float(np.median(grid_ms)), float(np.median(casc_ms))

    print()
    print(f"| measure | median | min | CPU median | CPU min | target |")
    print(f"|---|---|---|---|---|---|")
    print(f"| (g) grid, {len(scenarios)} scenarios × {args.accounts:,} accounts | {g_med:.1f} ms | {min(grid_ms):.1f} ms "
          f"| {float(np.median(grid_cpu)):.1f} ms | {min(grid_cpu):.1f} ms | ≤ 250 ms |")
    print(f"| (c) cascade, {len(rep['rounds'])} rounds | {c_med:.1f} ms | {min(casc_ms):.1f} ms "
          f"| {float(np.median(casc_cpu)):.1f} ms | {min(casc_cpu):.1f} ms | ≤ 1000 ms |")
    print(f"| (b) exact reference, grid extrapolated from {len(rows):,} accounts | {ref_grid_ms:,.0f} ms | | | | |")
    print(f"| speedup (b)/(g) | {ref_grid_ms / g_med:.0f}× | | | | |")
    print(f"\nstates of the sampled accounts, vectorized vs reference: {mismatches} mismatches")
    print("\ngrid:")
    for p in per_scenario:
        print(f"  {p['scenario']:>10}: liquidation {p['liquidation']:>6,}  margin_call {p['margin_call']:>5,}  "
              f"shortfall {p['shortfall']:>16,.2f}  bad debt {p['bad_debt']:>16,.2f}  exact checks {p['exact_checks']}")
    print(f"\ncascade ({'converged' if rep['converged'] else 'round limit'}), depth {args.depth:g} per symbol:")
    for r in rounds:
        print(f"  round {r['round']:>2}: BTCUSDT {r['BTCUSDT']:>14}  liquidated scopes {r['liquidated_scopes']:>6,}  "
              f"shortfall {r['shortfall']}")
    out = {"accounts": args.accounts, "positions": info["positions"], "scenarios": len(scenarios),
           "grid_ms_median": round(g_med, 2), "grid_ms_min": round(min(grid_ms), 2),
           "grid_cpu_ms_median": round(float(np.median(grid_cpu)), 2), "grid_cpu_ms_min": round(min(grid_cpu), 2),
           "cascade_rounds": len(rep["rounds"]), "cascade_ms_median": round(c_med, 2),
           "cascade_ms_min": round(min(casc_ms), 2), "cascade_cpu_ms_median": round(float(np.median(casc_cpu)), 2),
           "cascade_cpu_ms_min": round(min(casc_cpu), 2),
           "reference_grid_ms_extrapolated": round(ref_grid_ms, 1), "speedup": round(ref_grid_ms / g_med, 1),
           "sample": len(rows), "state_mismatches": mismatches, "grid": per_scenario, "cascade": rounds,
           "peak_rss_mb": round(peak_rss_mb(), 1), "machine": machine()}
    print(json.dumps(out))
    return 0 if mismatches == 0 else 1


if __name__ == "__main__":
    sys.exit(main())
