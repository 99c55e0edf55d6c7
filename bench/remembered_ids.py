"""Remembered input ids over days of event time: they level off at the 24 h window.

Folds deposits of ``--accounts`` accounts, one per account every ``--every-min``
minutes of event time, for ``--days`` days, through one partition engine twice in
this process: with the contract's 24 h window (``streams/margin/dedup.py``) and with a
window too long to ever forget (what the worker did before). Each simulated
``--sample-h`` hours it prints the remembered ids and their bytes
(``RememberedIds.memory_bytes``), and at the end the CPU time per event of both runs
and their ratio (same process, interleaved in halves, so the noisy box affects both).

    .venv/bin/python bench/remembered_ids.py [--accounts 300 --days 3 --every-min 10]
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from decimal import Decimal
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from streams.margin.engine import PartitionEngine  # noqa: E402
from streams.margin.events import CollateralChange  # noqa: E402
from streams.margin.reference import MarginConfig  # noqa: E402

T0 = 1_767_225_600_000
MIN = 60_000
NEVER = 10**15  # ~31,700 years: nothing is forgotten


def deposits(accounts: int, days: float, every_min: int):
    """(ts, event) in event-time order: every account deposits once per ``every_min``."""
    step = every_min * MIN
    n = 0
    for k in range(int(days * 24 * 60 / every_min)):
        for a in range(accounts):
            # accounts spread over the interval, so time advances smoothly
            ts = T0 + k * step + a * step // accounts
            n += 1
            yield ts, CollateralChange(f"dep-{n}", f"acct-{a:05d}", "USDT", Decimal(1), "deposit", ts, None)


def run(window_ms: int, args, samples: list[dict], label: str) -> float:
    eng = PartitionEngine(MarginConfig(status_interval_ms=0, id_window_ms=window_ms))
    next_sample = T0
    cpu = 0.0
    events = 0
    for ts, ev in deposits(args.accounts, args.days, args.every_min):
        if ts >= next_sample:
            samples.append({"run": label, "hours": round((ts - T0) / 3_600_000, 1), "ids": len(eng.seen),
                            "mib": round(eng.seen.memory_bytes() / 2**20, 2)})
            next_sample += args.sample_h * 3_600_000
        t = time.process_time()
        eng.apply(ev)
        eng.take_dirty()
        cpu += time.process_time() - t
        events += 1
    samples.append({"run": label, "hours": round(args.days * 24, 1), "ids": len(eng.seen),
                    "mib": round(eng.seen.memory_bytes() / 2**20, 2)})
    return cpu / events


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--accounts", type=int, default=300)
    ap.add_argument("--days", type=float, default=3.0)
    ap.add_argument("--every-min", type=int, default=10)
    ap.add_argument("--sample-h", type=float, default=6.0)
    ap.add_argument("--json", type=Path)
    args = ap.parse_args(argv)
    samples: list[dict] = []
    # interleaved: window, never, window, never (each half the accounts' worth of repeats)
    per_event = {"24h": [], "never": []}
    for label, window in (("24h", 86_400_000), ("never", NEVER), ("24h", 86_400_000), ("never", NEVER)):
        batch: list[dict] = []
        per_event[label].append(run(window, args, batch, label))
        if len(per_event[label]) == 1:
            samples.extend(batch)
    print(f"{'hours':>6} {'ids 24h':>9} {'MiB 24h':>8} {'ids never':>10} {'MiB never':>10}")
    by_h: dict[float, dict] = {}
    for s in samples:
        by_h.setdefault(s["hours"], {})[s["run"]] = s
    for h in sorted(by_h):
        w, n = by_h[h].get("24h", {}), by_h[h].get("never", {})
        print(f"{h:>6} {w.get('ids', ''):>9} {w.get('mib', ''):>8} {n.get('ids', ''):>10} {n.get('mib', ''):>10}")
    us = {k: min(v) * 1e6 for k, v in per_event.items()}
    print(f"CPU per event (best of 2): 24h window {us['24h']:.1f} µs, never forget {us['never']:.1f} µs, "
          f"ratio {us['24h'] / us['never']:.3f}")
    out = {"args": vars(args) | {"json": str(args.json) if args.json else None}, "samples": samples,
           "cpu_us_per_event": us, "ratio": us["24h"] / us["never"]}
    if args.json:
        args.json.write_text(json.dumps(out, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
