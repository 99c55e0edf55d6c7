"""Same-process A/B of the stress grid (and cascade): a previous ``streams/margin/stress.py``
(one file, e.g. ``git show 240ec63:streams/margin/stress.py > /tmp/stress_old.py``) against
the current ``streams.margin.stress``, on one bench book (bench/engine.py), alternating.

    .venv/bin/python bench/stress_ab.py --old /tmp/stress_old.py [--pairs 15 --cascade]

Checks first that both give the same ``StressResult.to_wire()`` for every grid scenario (and
the same cascade report), then times pairs of grids (each a fresh ``BookStress``, CPU time)
in alternating order and prints the medians, the minima and the median of the per-pair
ratios new/old. On a shared box this ratio is steadier than two separate bench runs.
"""
from __future__ import annotations

import os

for _v in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS", "NUMEXPR_NUM_THREADS"):
    os.environ.setdefault(_v, "1")

import argparse  # noqa: E402
import gc  # noqa: E402
import importlib.util  # noqa: E402
import sys  # noqa: E402
import time  # noqa: E402
from decimal import Decimal  # noqa: E402
from pathlib import Path  # noqa: E402

import numpy as np  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from engine import bulk_load, make_engine  # noqa: E402  (bench/engine.py)

import streams.margin.stress as new  # noqa: E402
from streams.margin.cascade import ImpactModel, run_cascade  # noqa: E402
from streams.margin.reference import MarginConfig  # noqa: E402


def load_old(path: str):
    """The old module as ``streams.margin._stress_old`` (its relative imports resolve in the
    current package: numbers, reference). ``path``: one file, or a package directory (e.g.
    ``/tmp/stress_base/streams/margin/stress`` from a ``git archive``)."""
    p = Path(path)
    if p.is_dir():  # a package: its __init__ with its own directory for the submodules
        spec = importlib.util.spec_from_file_location("streams.margin._stress_old", p / "__init__.py",
                                                      submodule_search_locations=[str(p)])
    else:
        spec = importlib.util.spec_from_file_location("streams.margin._stress_old", path)
    mod = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = mod
    spec.loader.exec_module(mod)
    return mod


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--old", required=True, help="a previous streams/margin/stress.py (one file) or stress/ package directory")
    ap.add_argument("--accounts", type=int, default=100_000)
    ap.add_argument("--positions", type=int, default=1_000_000)
    ap.add_argument("--pairs", type=int, default=7)
    ap.add_argument("--cascade", action="store_true", help="also the cascade (-4 %%, depth 1e10, 10 rounds)")
    args = ap.parse_args(argv)
    old = load_old(args.old)
    gc.disable()
    eng = make_engine(MarginConfig())
    bulk_load(eng, args.accounts, args.positions, 7)
    scen = {m: m.grid_scenarios((), m.parse_grid("4,8,12,16".split(","))) for m in (old, new)}

    def grid(mod):
        bs = mod.BookStress(eng)
        return [bs.evaluate(s) for s in scen[mod]]

    def casc(mod):
        bs = mod.BookStress(eng)
        model = ImpactModel(default_depth=Decimal("1e10"))
        return run_cascade(lambda s, closed: bs.evaluate(s, closed, want_liquidated=True),
                           new.Scenario((), Decimal(-4) / 100), model, 10)

    if [r.to_wire() for r in grid(old)] != [r.to_wire() for r in grid(new)]:
        print("grid results differ")
        return 1
    if args.cascade and casc(old).report("USDT") != casc(new).report("USDT"):
        print("cascade reports differ")
        return 1
    print("results identical (grid" + (", cascade)" if args.cascade else ")"), flush=True)
    t_old, t_new, ratios, c_old, c_new = [], [], [], [], []
    for i in range(args.pairs):
        order = [(old, t_old), (new, t_new)]
        if i % 2:
            order.reverse()
        for mod, acc in order:
            gc.collect()
            c0 = time.process_time()
            grid(mod)
            acc.append((time.process_time() - c0) * 1e3)
        ratios.append(t_new[-1] / t_old[-1])
        if args.cascade:
            for mod, acc in [(old, c_old), (new, c_new)][:: -1 if i % 2 else 1]:
                c0 = time.process_time()
                casc(mod)
                acc.append((time.process_time() - c0) * 1e3)
    med = lambda x: float(np.median(x))  # noqa: E731
    print(f"grid CPU ms: old median {med(t_old):.1f} min {min(t_old):.1f} | new median {med(t_new):.1f} "
          f"min {min(t_new):.1f} | ratio new/old, median of pairs {med(ratios):.3f}")
    if args.cascade:
        print(f"cascade CPU ms: old median {med(c_old):.1f} min {min(c_old):.1f} | new median {med(c_new):.1f} "
              f"min {min(c_new):.1f} | ratio of medians {med(c_new) / med(c_old):.3f}")
    print("load average", os.getloadavg())
    return 0


if __name__ == "__main__":
    sys.exit(main())
