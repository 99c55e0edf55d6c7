"""Soak benchmark (not in CI): N minutes of moderate load on one worker, sampled every minute.

    .venv/bin/python bench/soak.py [--minutes 30] [--rate 40] [--accounts 200] [--partitions 2]
                                   [--sample-s 60] [--crash-every 120] [--json out.json]

Starts one ``marginwatch worker`` (the default settings: exactly-once, the
``changelog://`` store, heap trimming every 60 s; its own topic prefix
on the broker at ``MW_KAFKA_PORT``/9092) and ``marginwatch simulate`` (wall clock,
so event times are live) producing ``--rate`` events/s with a market crash every
``--crash-every`` s (margin calls and liquidations keep coming). Every
``--sample-s`` it records:

- the worker's RSS (``/proc/<pid>/status`` VmRSS; the worker is one process),
- decision latency over the last interval: p50/p99/max bucket of the deltas of the
  worker's ``marginwatch_decision_latency_seconds`` histogram (all outputs;
  interpolated within buckets like ``histogram_quantile``),
- inputs handled (rate over the interval), outputs, consumer lag of the sequenced
  partitions, accounts held, open positions, remembered input ids
  (``marginwatch_remembered_input_ids``).

At the end: a table, a JSON document (stdout, and ``--json``), and a verdict on
growth, from a least-squares line through the samples of the second half (after
warm-up): RSS slope in MiB/min and the growth it implies over that half relative to
its mean; p99 latency slope; lag slope. Growth is flagged when the RSS line rises
by more than ``--rss-tolerance`` (5 %) of the mean over the second half, the p99
line by more than 50 %, or the lag keeps rising. Note that remembered input ids are
state by contract (24 h of event time per account, ``streams/margin/dedup.py``):
until a run spans more than a day of event time, the seen-ids table grows linearly
with the fills and collateral events, and so does memory, slowly; the verdict
reports the slope so this can be told apart from a leak: the verdict also fits the
remembered ids, prices them at the bytes per id the engine keeps for the
simulator's own ids (measured in this process before the run with
``RememberedIds.memory_bytes``), and flags RSS growth beyond that state ("net").

Topics and groups of the run are deleted at the end (``--keep-topics`` keeps them).
"""
from __future__ import annotations

import argparse
import asyncio
import json
import math
import os
import signal
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from bench.probes import free_port, scrape_metrics  # noqa: E402

LATENCY = "marginwatch_decision_latency_seconds"


def log(msg: str) -> None:
    sys.stderr.write(f"[{time.strftime('%H:%M:%S')}] soak: {msg}\n")
    sys.stderr.flush()


def rss_mib(pid: int) -> float | None:
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024.0
    except OSError:
        return None
    return None


def total(metrics: dict[str, float], prefix: str) -> float:
    return sum(v for k, v in metrics.items() if k == prefix or k.startswith(prefix + "{"))


def latency_buckets(metrics: dict[str, float]) -> dict[float, float]:
    """Cumulative counts per upper bound, summed over the output label."""
    out: dict[float, float] = {}
    for k, v in metrics.items():
        if not k.startswith(LATENCY + "_bucket{"):
            continue
        le = k.split('le="', 1)[1].split('"', 1)[0]
        bound = math.inf if le == "+Inf" else float(le)
        out[bound] = out.get(bound, 0.0) + v
    return out


def quantile(q: float, buckets: dict[float, float]) -> float | None:
    """histogram_quantile over cumulative buckets (linear within a bucket)."""
    bounds = sorted(buckets)
    if not bounds or buckets[bounds[-1]] <= 0:
        return None
    rank = q * buckets[bounds[-1]]
    lower, prev = 0.0, 0.0
    for b in bounds:
        c = buckets[b]
        if c >= rank:
            if math.isinf(b):
                return lower  # above the last finite bucket: its bound (a lower bound)
            return lower + (b - lower) * ((rank - prev) / (c - prev) if c > prev else 1.0)
        lower, prev = b, c
    return lower


def remembered_id_bytes(seed: int, accounts: int, events: int = 6000) -> float:
    """Bytes the engine keeps per remembered input id, for the simulator's ids.

    Folds the first ``events`` simulated inputs through one partition engine and
    divides the size of its remembered ids (``RememberedIds.memory_bytes``, each
    object rounded up to pymalloc's 16-byte size classes) by their number.
    """
    from streams.pipeline import PartitionProcessor, new_engine
    from streams.settings import Settings
    from streams.sim.market import SimConfig, envelope_bytes, generate

    engine = new_engine(Settings.from_env({}))
    proc = PartitionProcessor(engine, 0)
    for offset, env in enumerate(generate(SimConfig(seed=seed, accounts=accounts, events=events))):
        key, value = envelope_bytes(env)
        proc.process(env["topic"], key, value, offset)
        engine.take_dirty()
    seen = engine.seen
    if not seen:
        return 0.0
    size16 = lambda o: -(-sys.getsizeof(o) // 16) * 16  # noqa: E731
    return seen.memory_bytes(size16) / len(seen)


def linfit(xs: list[float], ys: list[float]) -> tuple[float, float]:
    """(slope, intercept) of the least-squares line."""
    n = len(xs)
    if n < 2:
        return 0.0, ys[0] if ys else 0.0
    mx, my = sum(xs) / n, sum(ys) / n
    sxx = sum((x - mx) ** 2 for x in xs)
    if sxx == 0:
        return 0.0, my
    slope = sum((x - mx) * (y - my) for x, y in zip(xs, ys)) / sxx
    return slope, my - slope * mx


async def delete_run(bootstrap: str, prefix: str, app_id: str) -> int:
    from aiokafka.admin import AIOKafkaAdminClient

    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap)
    await admin.start()
    try:
        topics = [t for t in await admin.list_topics() if t.startswith(prefix) or t.startswith(app_id)]
        if topics:
            await admin.delete_topics(topics)
        try:
            await admin.delete_consumer_groups([app_id, f"{app_id}-sequencer"])
        except Exception:
            pass
        return len(topics)
    finally:
        await admin.close()


def verdict(samples: list[dict], rss_tolerance: float, id_bytes: float = 0.0) -> dict:
    half = samples[len(samples) // 2:] if len(samples) >= 4 else samples
    xs = [s["minute"] for s in half]
    span = (xs[-1] - xs[0]) if len(xs) > 1 else 0.0
    out: dict = {"window_minutes": [xs[0], xs[-1]] if xs else None, "samples": len(half)}
    rss = [s["rss_mib"] for s in half if s["rss_mib"] is not None]
    if len(rss) == len(half) and rss:
        slope, _ = linfit(xs, rss)
        mean = sum(rss) / len(rss)
        growth = slope * span
        ids = [s.get("remembered_ids") for s in half]
        ids_slope = linfit(xs, ids)[0] if all(v is not None for v in ids) else 0.0
        ids_mib = ids_slope * id_bytes / 2**20  # MiB/min the contract's remembered ids account for
        net = (slope - ids_mib) * span
        out["rss"] = {"slope_mib_per_min": round(slope, 3), "mean_mib": round(mean, 1),
                      "growth_over_window_mib": round(growth, 1),
                      "growth_over_window_pct": round(100 * growth / mean, 2) if mean else None,
                      "projected_mib_per_hour": round(slope * 60, 1),
                      "remembered_ids_per_min": round(ids_slope, 1), "bytes_per_id": round(id_bytes),
                      "remembered_ids_mib_per_min": round(ids_mib, 3),
                      "net_slope_mib_per_min": round(slope - ids_mib, 3),
                      "net_growth_over_window_mib": round(net, 1),
                      "net_growth_over_window_pct": round(100 * net / mean, 2) if mean else None,
                      "grows": net > rss_tolerance * mean}
    p99 = [(s["minute"], s["p99_ms"]) for s in half if s["p99_ms"] is not None]
    if len(p99) >= 2:
        slope, _ = linfit([m for m, _ in p99], [v for _, v in p99])
        mean = sum(v for _, v in p99) / len(p99)
        growth = slope * span
        out["p99"] = {"slope_ms_per_min": round(slope, 2), "mean_ms": round(mean, 1),
                      "growth_over_window_ms": round(growth, 1), "grows": growth > 0.5 * mean}
    lag = [s["lag"] for s in half]
    if len(lag) >= 2:
        slope, _ = linfit(xs, lag)
        rate = [s["inputs_per_s"] for s in half]
        keeps_up = slope * span <= max(100.0, 0.05 * 60 * (sum(rate) / len(rate)))  # < 3 s of input
        out["lag"] = {"slope_msgs_per_min": round(slope, 1), "last": lag[-1], "grows": not keeps_up}
    out["growth"] = any(v.get("grows") for v in out.values() if isinstance(v, dict))
    out["summary"] = (
        ("GROWTH: " if out["growth"] else "no growth: ")
        + "; ".join(
            f"{k} {v.get('slope_mib_per_min', v.get('slope_ms_per_min', v.get('slope_msgs_per_min')))}/min"
            + (f" (net of remembered ids {v['net_slope_mib_per_min']}/min)" if "net_slope_mib_per_min" in v else "")
            + (" (grows)" if v.get("grows") else "")
            for k, v in out.items() if isinstance(v, dict)
        )
    )
    return out


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--minutes", type=float, default=30.0, help="duration of the load (30)")
    ap.add_argument("--sample-s", type=float, default=60.0, help="sampling interval, s (60)")
    ap.add_argument("--rate", type=float, default=40.0, help="simulated events/s (40)")
    ap.add_argument("--accounts", type=int, default=200, help="simulated accounts (200)")
    ap.add_argument("--partitions", type=int, default=2, help="partitions of the run's topics (2)")
    ap.add_argument("--crash-every", type=float, default=120.0, help="a market crash every S s (120)")
    ap.add_argument("--seed", type=int, default=7)
    ap.add_argument("--bootstrap", default=f"127.0.0.1:{os.environ.get('MW_KAFKA_PORT', '9092')}")
    ap.add_argument("--rss-tolerance", type=float, default=0.05,
                    help="RSS growth over the second half flagged above this share of its mean (0.05)")
    ap.add_argument("--json", type=Path, default=None, help="also write the JSON result here")
    ap.add_argument("--keep-topics", action="store_true")
    args = ap.parse_args(argv)

    id_bytes = remembered_id_bytes(args.seed, args.accounts)
    log(f"the engine keeps {id_bytes:.0f} bytes per remembered id of the simulator (measured in-process)")
    run = uuid.uuid4().hex[:8]
    prefix, app_id = f"soak{run}.", f"soak{run}.mw"
    tmp = Path(tempfile.mkdtemp(prefix=f"soak-{run}-"))
    port = free_port()
    env = dict(os.environ, MW_BROKER=f"kafka://{args.bootstrap}", MW_APP_ID=app_id, MW_TOPIC_PREFIX=prefix,
               MW_PARTITIONS=str(args.partitions), MW_WEB_PORT=str(port), MW_DATA_DIR=str(tmp / "data"),
               MW_LOG_LEVEL="warning")
    duration_s = args.minutes * 60
    log(f"run {run}: worker on :{port}, {args.rate:g} events/s, {args.accounts} accounts, "
        f"{args.partitions} partitions, {args.minutes:g} min, logs in {tmp}")
    worker_log = open(tmp / "worker.log", "ab")
    worker = subprocess.Popen([sys.executable, "-m", "streams.cli", "worker"], cwd=REPO, env=env,
                              stdout=worker_log, stderr=subprocess.STDOUT, start_new_session=True)
    sim = None
    samples: list[dict] = []
    try:
        deadline = time.time() + 120
        while not scrape_metrics(port):
            if worker.poll() is not None or time.time() > deadline:
                raise SystemExit(f"soak: worker did not come up (exit {worker.poll()}); see {tmp / 'worker.log'}")
            time.sleep(0.5)
        sim_log = open(tmp / "simulate.log", "ab")
        sim = subprocess.Popen(
            [sys.executable, "-m", "streams.cli", "simulate", "--accounts", str(args.accounts), "--rate", str(args.rate),
             "--duration", str(duration_s), "--crash-every", str(args.crash_every), "--seed", str(args.seed),
             "--no-progress"],
            cwd=REPO, env=env, stdout=sim_log, stderr=subprocess.STDOUT, start_new_session=True)
        t0 = time.time()
        prev = scrape_metrics(port)
        prev_t = t0
        header = (f"{'min':>5} {'rss MiB':>8} {'seq in/s':>9} {'outputs':>8} {'p50 ms':>8} {'p99 ms':>8} "
                  f"{'lag':>6} {'accounts':>8} {'positions':>9} {'ids':>8}")
        print(header, flush=True)
        next_at = t0 + args.sample_s
        while True:
            time.sleep(max(0.0, next_at - time.time()))
            if worker.poll() is not None:
                raise SystemExit(f"soak: worker exited with {worker.returncode}; see {tmp / 'worker.log'}")
            now = time.time()
            cur = scrape_metrics(port)
            b_now, b_prev = latency_buckets(cur), latency_buckets(prev)
            delta = {b: b_now.get(b, 0.0) - b_prev.get(b, 0.0) for b in b_now}
            p50, p99 = quantile(0.5, delta), quantile(0.99, delta)
            handled = total(cur, "marginwatch_input_messages_total") - total(prev, "marginwatch_input_messages_total")
            s = {
                "minute": round((now - t0) / 60, 2),
                "rss_mib": None if (r := rss_mib(worker.pid)) is None else round(r, 1),
                "inputs_per_s": round(handled / (now - prev_t), 1),
                "outputs": int(total(cur, "marginwatch_outputs_total")),
                "decisions": int(sum(delta.get(b, 0.0) for b in delta if math.isinf(b))),
                "p50_ms": None if p50 is None else round(p50 * 1000, 1),
                "p99_ms": None if p99 is None else round(p99 * 1000, 1),
                "lag": int(sum(v for k, v in cur.items()
                               if k.startswith("marginwatch_consumer_lag_messages{") and 'topic="sequenced"' in k)),
                "accounts": int(total(cur, "marginwatch_accounts_held")),
                "positions": int(total(cur, "marginwatch_positions")),
                "remembered_ids": int(total(cur, "marginwatch_remembered_input_ids")),
            }
            samples.append(s)
            fmt = lambda v: "-" if v is None else f"{v:,.1f}"  # noqa: E731
            print(f"{s['minute']:>5.1f} {fmt(s['rss_mib']):>8} {s['inputs_per_s']:>9,.1f} {s['outputs']:>8,} "
                  f"{fmt(s['p50_ms']):>8} {fmt(s['p99_ms']):>8} {s['lag']:>6,} {s['accounts']:>8,} "
                  f"{s['positions']:>9,} {s['remembered_ids']:>8,}", flush=True)
            prev, prev_t = cur, now
            next_at += args.sample_s
            if now - t0 >= duration_s - 1:
                break
    finally:
        for proc in (sim, worker):
            if proc is not None and proc.poll() is None:
                os.killpg(proc.pid, signal.SIGTERM)
                try:
                    proc.wait(30)
                except subprocess.TimeoutExpired:
                    os.killpg(proc.pid, signal.SIGKILL)
                    proc.wait(10)
        if not args.keep_topics:
            try:
                n = asyncio.run(delete_run(args.bootstrap, prefix, app_id))
                log(f"deleted {n} topics of the run")
            except Exception as exc:  # noqa: BLE001
                log(f"could not delete the run's topics: {exc!r}")
    result = {
        "config": {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items()},
        "run": run, "logs": str(tmp), "samples": samples,
        "bytes_per_remembered_id": round(id_bytes),
        "verdict": verdict(samples, args.rss_tolerance, id_bytes) if samples else None,
    }
    text = json.dumps(result, indent=2)
    print(text)
    if args.json:
        args.json.write_text(text + "\n")
    if result["verdict"]:
        log(result["verdict"]["summary"])
    return 0


if __name__ == "__main__":
    sys.exit(main())
