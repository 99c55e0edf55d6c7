"""Entry point: ``python -m bench.pipeline [--quick] [--reps 3] [--json out.json] ...``."""
from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path

import orjson

from .run import (
    delete_topics, load_workload, log, machine_info, machine_state, new_run_id, baseline_run, pipeline_run,
)
from .workload import Config, TICKED


def parse(argv):
    p = argparse.ArgumentParser(prog="python -m bench.pipeline", description=__doc__)
    p.add_argument("--bootstrap", default="127.0.0.1:9092")
    p.add_argument("--accounts", type=int, default=None, help="default 100,000 (--quick: 10,000)")
    p.add_argument("--fills", type=int, default=None, help="default 1,000,000 (--quick: 100,000)")
    p.add_argument("--symbols", type=int, default=20)
    p.add_argument("--duration", type=float, default=0.0,
                   help="event time of the bulk marks, s (default max(20, fills/10,000)); 10 ticks/s per symbol")
    p.add_argument("--isolated-share", type=float, default=0.1)
    p.add_argument("--seed", type=int, default=6)
    p.add_argument("--quick", action="store_true", help="10,000 accounts, 100,000 fills, 10 s of live ticks")
    p.add_argument("--partitions", type=int, default=8, help="MW_PARTITIONS of the run's topics (default 8)")
    p.add_argument("--reps", type=int, default=3)
    p.add_argument("--guarantees", default="at_least_once,exactly_once")
    p.add_argument("--commit-interval", type=float, default=0.1, help="MW_COMMIT_INTERVAL_S of the main runs")
    p.add_argument("--commit-intervals", default=None,
                   help="trade-off mode: comma-separated intervals, each run exactly-once (no baseline)")
    p.add_argument("--latency-seconds", type=float, default=None, help="live tick phase, s (default 30; quick 10)")
    p.add_argument("--no-baseline", action="store_true")
    p.add_argument("--keep-topics", action="store_true")
    p.add_argument("--timeout", type=float, default=3600.0, help="per wait, s")
    p.add_argument("--json", default=None, help="also write the JSON result to this file")
    p.add_argument("--outdir", default=None, help="worker logs and data (default a temp dir)")
    a = p.parse_args(argv)
    a.accounts = a.accounts or (10_000 if a.quick else 100_000)
    a.fills = a.fills or (100_000 if a.quick else 1_000_000)
    if a.latency_seconds is None:
        a.latency_seconds = 10.0 if a.quick else 30.0
    return a


def med(values):
    values = [v for v in values if v is not None]
    return round(statistics.median(values), 1) if values else None


def summarize_runs(runs: list[dict]) -> dict:
    def L(r, kind, key):
        return (r.get("latency") or {}).get(kind, {}).get(key)

    return {
        "runs": len(runs),
        "events_per_s": med([r["events_per_s"] for r in runs]),
        "events_per_s_all": [r["events_per_s"] for r in runs],
        "p50_ms": med([L(r, "all_events", "p50_ms") for r in runs]),
        "p99_ms": med([L(r, "all_events", "p99_ms") for r in runs]),
        "max_ms": med([L(r, "all_events", "max_ms") for r in runs]),
        "first_p50_ms": med([L(r, "first_event_per_tick", "p50_ms") for r in runs]),
        "first_p99_ms": med([L(r, "first_event_per_tick", "p99_ms") for r in runs]),
        "first_max_ms": med([L(r, "first_event_per_tick", "max_ms") for r in runs]),
        "caused_events": med([L(r, "all_events", "n") for r in runs]),
        "peak_rss_mib": med([r.get("peak_rss_mib") for r in runs]),
        "startup_s": med([r.get("startup_s") for r in runs]),
    }


def fmt(x, nd=0):
    if x is None:
        return "-"
    return f"{x:,.{nd}f}"


def print_tables(result: dict) -> None:
    out = sys.stdout
    w = result["workload"]
    out.write(f"\nmarginwatch pipeline benchmark — {w['accounts']:,} accounts, {w['positions']:,} positions "
              f"({w['holders_of_ticked']:,} hold {TICKED}), {w['symbols']} symbols, {w['partitions']} partitions, "
              f"{w['bulk_events']:,} bulk events ({w['bulk_fills']:,} fills + {w['bulk_marks']:,} marks over "
              f"{w['duration_s']:.0f} s of event time), live phase {w['latency_seconds']:.0f} s x 10 ticks/s x "
              f"{w['symbols']} symbols; reps {result['reps']}, medians\n")
    m = result["machine"]
    out.write(f"machine: {m['nproc']} CPUs ({m['cpu']}), {m['mem_total_gib']} GiB, Python {m['python']}; "
              f"loadavg before {result['state_before']['loadavg']}, after {result['state_after']['loadavg']}\n")
    for label in ("state_before", "state_after"):
        out.write(f"  top CPU {label.split('_')[1]}: " + "; ".join(
            f"{p['cpu_pct']}% {p['cmd'][:60]}" for p in result[label]["top_cpu"]) + "\n")
    s = result.get("summary", {})
    base = s.get("baseline")
    if s.get("pipeline"):
        out.write("\n| run | input events/s | x baseline | tick->decision p50 / p99 / max (ms) | first event per tick "
                  "p50 / p99 / max (ms) | caused events | peak RSS (MiB) | startup (s) |\n")
        out.write("|---|---:|---:|---|---|---:|---:|---:|\n")
        for g, r in s["pipeline"].items():
            ratio = r.get("ratio_to_baseline")
            out.write(f"| pipeline {g} (commit {r['commit_interval_s']} s) | {fmt(r['events_per_s'])} | "
                      f"{fmt(ratio, 3) if ratio is not None else '-'} | {fmt(r['p50_ms'], 1)} / {fmt(r['p99_ms'], 1)} / "
                      f"{fmt(r['max_ms'], 1)} | {fmt(r['first_p50_ms'], 1)} / {fmt(r['first_p99_ms'], 1)} / "
                      f"{fmt(r['first_max_ms'], 1)} | {fmt(r['caused_events'])} | {fmt(r['peak_rss_mib'])} | "
                      f"{fmt(r['startup_s'], 1)} |\n")
        if base:
            out.write(f"| baseline (aiokafka getmany + orjson + produce + commit, at-least-once) | "
                      f"{fmt(base['events_per_s'])} | 1.00 | - | - | - | - | - |\n")
    if result.get("runs"):
        out.write("\n| run | guarantee | commit (s) | ready after (s) | bulk (s) | events/s | agent batches / mean "
                  "records / apply+evaluate (s) | live backlog (s) | p99 (ms) | first/tick p99 (ms) | peak RSS "
                  "(MiB) | load 1m during | worker code |\n|---|---|---:|---:|---:|---:|---|---:|---:|---:|---:|---|---|\n")
        for r in result["runs"]:
            L = r.get("latency") or {}
            bm = r.get("bulk_worker_metrics") or {}
            load = r.get("loadavg_1m_during") or []
            out.write(f"| {r['name']} | {r['guarantee']} | {r['commit_interval_s']} | {fmt(r.get('startup_s'), 1)} | "
                      f"{fmt(r.get('throughput_s'), 1)} | {fmt(r.get('events_per_s'))} | {fmt(bm.get('batches'))} / "
                      f"{fmt(bm.get('mean_batch_records'), 1)} / {fmt(bm.get('apply_evaluate_s'), 1)} | "
                      f"{fmt(r.get('live_backlog_s'), 1)} | {fmt(L.get('all_events', {}).get('p99_ms'), 1)} | "
                      f"{fmt(L.get('first_event_per_tick', {}).get('p99_ms'), 1)} | {fmt(r.get('peak_rss_mib'))} | "
                      f"{min(load) if load else '-'}–{max(load) if load else '-'} | {_code(r)} |\n")
        for b in result.get("baseline") or []:
            out.write(f"| baseline | at_least_once | - | - | {b['seconds']} | {fmt(b['events_per_s'])} | - | - | - | - "
                      f"| - | - | - |\n")
    if s.get("tradeoff"):
        out.write("\n| commit interval (s) | exactly-once input events/s | p50 (ms) | p99 (ms) | max (ms) | "
                  "first/tick p99 (ms) | peak RSS (MiB) |\n|---:|---:|---:|---:|---:|---:|---:|\n")
        for r in s["tradeoff"]:
            out.write(f"| {r['commit_interval_s']} | {fmt(r['events_per_s'])} | {fmt(r['p50_ms'], 1)} | "
                      f"{fmt(r['p99_ms'], 1)} | {fmt(r['max_ms'], 1)} | {fmt(r['first_p99_ms'], 1)} | "
                      f"{fmt(r['peak_rss_mib'])} |\n")
    out.write("\n")


def _code(r: dict) -> str:
    c = r.get("worker_code") or {}
    return (c.get("head") or "-") + (" + uncommitted streams/" if c.get("streams_dirty") else "")


def main(argv=None) -> int:
    args = parse(argv)
    args.run_id = new_run_id()
    outdir = Path(args.outdir or tempfile.mkdtemp(prefix="mwbench-"))
    outdir.mkdir(parents=True, exist_ok=True)
    cfg = Config(accounts=args.accounts, fills=args.fills, symbols=args.symbols, seed=args.seed,
                 duration_s=args.duration, isolated_share=args.isolated_share)
    log(f"run {args.run_id}; logs in {outdir}")
    w, secs, cached = load_workload(cfg)
    log(f"workload {'loaded from cache' if cached else 'built'} in {secs:.1f}s: {w.counts}")
    marks = w.counts.get("bulk/mark-prices", 0)
    result: dict = {
        "run_id": args.run_id, "started": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()), "reps": args.reps,
        "machine": machine_info(), "state_before": machine_state(),
        "workload": {"accounts": cfg.accounts, "fills": cfg.fills, "symbols": cfg.symbols, "seed": cfg.seed,
                     "partitions": args.partitions, "positions": w.positions,
                     "holders_of_ticked": w.holders.get(TICKED, 0), "duration_s": cfg.duration(),
                     "setup_records": len(w.setup), "bulk_events": len(w.bulk), "bulk_fills": len(w.bulk) - marks,
                     "bulk_marks": marks, "counts": w.counts, "latency_seconds": args.latency_seconds,
                     "isolated_share": cfg.isolated_share},
        "runs": [], "baseline": [],
    }
    summary: dict = {}
    try:
        if args.commit_intervals:
            intervals = [float(x) for x in args.commit_intervals.split(",") if x.strip()]
            rows = []
            for ci in intervals:
                runs = []
                for rep in range(args.reps):
                    name = f"eos-ci{ci:g}-r{rep}".replace(".", "p")
                    r = pipeline_run(args, w, "exactly_once", ci, name, outdir)
                    runs.append(r)
                    result["runs"].append(r)
                    if not args.keep_topics:
                        delete_topics(args, r["prefix"])
                rows.append(dict(summarize_runs(runs), commit_interval_s=ci))
            summary["tradeoff"] = rows
        else:
            guarantees = [g.strip() for g in args.guarantees.split(",") if g.strip()]
            by_g: dict[str, list] = {g: [] for g in guarantees}
            for rep in range(args.reps):
                for g in guarantees:
                    name = f"{'alo' if g == 'at_least_once' else 'eos'}-r{rep}"
                    r = pipeline_run(args, w, g, args.commit_interval, name, outdir)
                    by_g[g].append(r)
                    result["runs"].append(r)
                    if not args.no_baseline and g == guarantees[0]:
                        b = baseline_run(args, r["prefix"], r["bulk_start_offsets"], r["bulk_end_offsets"], len(w.bulk))
                        result["baseline"].append(b)
                    if not args.keep_topics:
                        delete_topics(args, r["prefix"])
            if result["baseline"]:
                summary["baseline"] = {"events_per_s": med([b["events_per_s"] for b in result["baseline"]]),
                                       "events_per_s_all": [b["events_per_s"] for b in result["baseline"]]}
            summary["pipeline"] = {}
            for g, runs in by_g.items():
                s = dict(summarize_runs(runs), commit_interval_s=args.commit_interval)
                if summary.get("baseline"):
                    s["ratio_to_baseline"] = round(s["events_per_s"] / summary["baseline"]["events_per_s"], 3)
                summary["pipeline"][g] = s
    finally:
        result["summary"] = summary
        result["state_after"] = machine_state()
        result["finished"] = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
        for r in result["runs"]:
            r.pop("bulk_start_offsets", None)
            r.pop("bulk_end_offsets", None)
        text = orjson.dumps(result, option=orjson.OPT_INDENT_2).decode()
        if args.json:
            Path(args.json).write_text(text + "\n")
        if summary:
            print_tables(result)
        sys.stdout.write(text + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
