"""One pipeline run, the baseline, repetitions, the machine's state."""
from __future__ import annotations

import asyncio
import hashlib
import os
import pickle
import subprocess
import sys
import time
import uuid
from pathlib import Path

import orjson

from ..probes import cpu_model
from . import latency as lat
from .kafka import REPO, Probe, Worker, commit_group, metric_sum, wait_processed
from .workload import Config, Workload, build, produce, sequenced_count

INPUTS = ("fills", "mark-prices", "collateral", "account-snapshots", "risk-params")
CACHE = REPO / ".cache" / "bench-pipeline"


def log(msg: str) -> None:
    sys.stderr.write(f"[{time.strftime('%H:%M:%S')}] {msg}\n")
    sys.stderr.flush()


def load_workload(cfg: Config) -> tuple[Workload, float, bool]:
    """The workload for ``cfg``, from the cache when built before (same code, same config)."""
    code = (Path(__file__).parent / "workload.py").read_bytes()
    key = hashlib.sha256(code + repr(cfg).encode()).hexdigest()[:16]
    path = CACHE / f"workload-{key}.pkl"
    t0 = time.perf_counter()
    if path.exists():
        with open(path, "rb") as f:
            return pickle.load(f), time.perf_counter() - t0, True
    w = build(cfg)
    CACHE.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    with open(tmp, "wb") as f:
        pickle.dump(w, f, protocol=pickle.HIGHEST_PROTOCOL)
    tmp.replace(path)
    return w, time.perf_counter() - t0, False


# ------------------------------------------------------------------------- machine state

def _proc_times() -> dict[int, tuple[int, str]]:
    out = {}
    for d in os.listdir("/proc"):
        if not d.isdigit():
            continue
        try:
            stat = Path(f"/proc/{d}/stat").read_text()
            rest = stat[stat.rindex(")") + 2:].split()
            ticks = int(rest[11]) + int(rest[12])
            cmd = Path(f"/proc/{d}/cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace").strip()
            out[int(d)] = (ticks, cmd or stat[stat.index("(") + 1:stat.rindex(")")])
        except (OSError, ValueError, IndexError):
            continue
    return out


def machine_state(sample_s: float = 1.0, top: int = 6) -> dict:
    """loadavg and the processes using the most CPU over ``sample_s`` (from /proc)."""
    a = _proc_times()
    time.sleep(sample_s)
    b = _proc_times()
    hz = os.sysconf("SC_CLK_TCK")
    busy = []
    for pid, (ticks, cmd) in b.items():
        if pid in a:
            pct = (ticks - a[pid][0]) / hz / sample_s * 100
            if pct >= 1:
                busy.append({"pid": pid, "cpu_pct": round(pct), "cmd": cmd[:110]})
    busy.sort(key=lambda x: -x["cpu_pct"])
    return {"loadavg": [round(x, 2) for x in os.getloadavg()], "top_cpu": busy[:top]}


def machine_info() -> dict:
    import platform

    return {"nproc": len(os.sched_getaffinity(0)), "cpu": cpu_model(), "python": platform.python_version(),
            "mem_total_gib": round(os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30, 1)}


# ------------------------------------------------------------------------- one run

def worker_env(args, prefix: str, guarantee: str, commit_interval: float) -> dict:
    return {
        "MW_BROKER": f"kafka://{args.bootstrap}",
        "MW_APP_ID": f"{prefix}mw",
        "MW_TOPIC_PREFIX": prefix,
        "MW_PARTITIONS": str(args.partitions),
        "MW_GUARANTEE": guarantee,
        "MW_COMMIT_INTERVAL_S": str(commit_interval),
        "MW_SESSION_TIMEOUT_S": "10",
        "MW_LOG_LEVEL": "info",
    }


async def _end_offsets(bootstrap: str, prefix: str) -> dict:
    async with Probe(bootstrap) as probe:
        out = {}
        for t in INPUTS:
            out.update(await probe.end_offsets(prefix + t))
        return out


def pipeline_run(args, w: Workload, guarantee: str, commit_interval: float, name: str, outdir: Path) -> dict:
    """Setup worker, then the measured worker over the pre-produced bulk, then live ticks."""
    from streams.settings import Settings
    from streams.topics import ensure_topics

    prefix = f"{args.run_id}-{name}."
    env = worker_env(args, prefix, guarantee, commit_interval)
    settings = Settings.from_env(env)
    group = settings.app_id
    seq_topic = f"{prefix}{settings.app_id}-sequenced"
    parts = args.partitions
    res: dict = {"name": name, "prefix": prefix, "guarantee": guarantee, "commit_interval_s": commit_interval}
    asyncio.run(ensure_topics(settings))
    asyncio.run(_wait_leaders(args.bootstrap, [prefix + t for t in INPUTS]))
    res["produce_setup_s"] = round(asyncio.run(produce(args.bootstrap, prefix, w.setup, parts)), 2)
    expected = sequenced_count(w.setup, parts)

    # --- stage A: a worker applies the setup (deposits before fills), then stops
    w0 = Worker(env, outdir, f"{name}-setup").start()
    try:
        w0.wait_ready(args.timeout)
        asyncio.run(_wait(args, group, seq_topic, expected, w0))
    finally:
        w0.stop()
    res["bulk_start_offsets"] = {f"{tp.topic}:{tp.partition}": o for tp, o in
                                 asyncio.run(_end_offsets(args.bootstrap, prefix)).items()}
    t = asyncio.run(produce(args.bootstrap, prefix, w.bulk, parts))
    res["bulk_end_offsets"] = {f"{tp.topic}:{tp.partition}": o for tp, o in
                               asyncio.run(_end_offsets(args.bootstrap, prefix)).items()}
    res["produce_bulk_s"] = round(t, 2)
    res["produce_bulk_events_per_s"] = round(len(w.bulk) / t)
    expected += sequenced_count(w.bulk, parts)
    log(f"{name}: produced {len(w.setup):,} setup + {len(w.bulk):,} bulk records ({res['produce_bulk_events_per_s']:,}/s)")

    # --- stage B: the measured worker (it runs the working tree as it is now: note the commit)
    res["worker_code"] = code_version()
    w1 = Worker(env, outdir, name)
    t_spawn = time.perf_counter()
    w1.start()
    try:
        t_ready = w1.wait_ready(args.timeout)
        m0 = w1.metrics()
        res["startup_s"] = round(t_ready - t_spawn, 2)
        res["handled_at_ready"] = int(metric_sum(m0, "marginwatch_input_messages_total"))
        res["forwarded_at_ready"] = int(metric_sum(m0, "marginwatch_sequencer_forwarded_total"))
        last = [time.perf_counter()]
        res["loadavg_1m_during"] = loads = [round(os.getloadavg()[0], 2)]

        def tick(size, behind):
            now = time.perf_counter()
            if now - last[0] >= 10:
                last[0] = now
                loads.append(round(os.getloadavg()[0], 2))
                m = w1.metrics()
                log(f"{name}: {now - t_ready:6.1f}s sequenced {size:,}, not committed {behind:,}, handled "
                    f"{int(metric_sum(m, 'marginwatch_input_messages_total')):,} (sequenced records)")

        t_done = asyncio.run(_wait(args, group, seq_topic, expected, w1, tick))
        secs = t_done - t_ready
        res["bulk_events"] = len(w.bulk)
        res["bulk_sequenced_records"] = sequenced_count(w.bulk, parts)
        res["throughput_s"] = round(secs, 2)
        res["events_per_s"] = round(len(w.bulk) / secs, 1)
        mem = w1.memory_kib()
        res["rss_after_bulk_mib"] = round(mem.get("VmRSS", 0) / 1024, 1)
        m1 = w1.metrics()
        res["bulk_outputs"] = {t: int(metric_sum(m1, "marginwatch_outputs_total", topic=t))
                               for t in ("margin-status", "margin-calls", "liquidations", "dead-letters")}
        res["accounts_by_state_after_bulk"] = {s: int(metric_sum(m1, "marginwatch_accounts", state=s))
                                               for s in ("healthy", "margin_call", "liquidation")}
        res["bulk_worker_metrics"] = _agent_metrics(m0, m1)
        log(f"{name}: bulk {len(w.bulk):,} events in {secs:.1f}s = {res['events_per_s']:,.0f} events/s "
            f"(ready after {res['startup_s']}s), RSS {res['rss_after_bulk_mib']} MiB, outputs {res['bulk_outputs']}")

        # --- latency: live ticks against the loaded, idle worker
        if args.latency_seconds > 0:
            time.sleep(1.0)
            collector = lat.Collector(args.bootstrap, [prefix + "margin-calls", prefix + "liquidations"])
            collector.start()
            collector.ready.wait(60)
            if collector.error:
                raise collector.error
            sent, acked = asyncio.run(lat.send_ticks(args.bootstrap, prefix, w.specs, w.last_price, w.last_seq,
                                                     args.latency_seconds, w.cfg.crash_depth, w.cfg.seed + 1))
            expected += len(sent) * parts
            t_sent = time.perf_counter()
            asyncio.run(_wait(args, group, seq_topic, expected, w1))
            res["live_backlog_s"] = round(time.perf_counter() - t_sent, 2)
            quiet_since = time.time()
            while time.time() - max(quiet_since, collector.last_arrival) < 2.0:
                time.sleep(0.1)
            collector.stopping.set()
            collector.join(30)
            res["latency"] = lat.summarize(collector.records, sent, acked, prefix)
            m2 = w1.metrics()
            res["live_worker_metrics"] = _agent_metrics(m1, m2)
            res["accounts_by_state_after_live"] = {s: int(metric_sum(m2, "marginwatch_accounts", state=s))
                                                   for s in ("healthy", "margin_call", "liquidation")}
            L = res["latency"]
            log(f"{name}: live {L['ticks_sent']} ticks, {sum(L['events'].values()):,} caused events "
                f"{L['events']}: p50 {L['all_events']['p50_ms']} p99 {L['all_events']['p99_ms']} "
                f"max {L['all_events']['max_ms']} ms; first/tick p99 {L['first_event_per_tick']['p99_ms']} ms")
        mem = w1.memory_kib()
        res["peak_rss_mib"] = round(mem.get("VmHWM", 0) / 1024, 1)
    finally:
        w1.stop()
    res["worker_log"] = str(w1.log_path)
    return res


def _agent_metrics(before: dict, after: dict) -> dict:
    """What the margin agent did between two /metrics samples: sequenced records handled,
    batches, seconds spent applying/evaluating batches (the engine, not the sends)."""
    def d(name):
        return metric_sum(after, name) - metric_sum(before, name)

    handled = d("marginwatch_input_messages_total")
    batches = d("marginwatch_evaluation_duration_seconds_count")
    return {"sequenced_records_handled": int(handled), "batches": int(batches),
            "mean_batch_records": round(handled / batches, 1) if batches else None,
            "apply_evaluate_s": round(d("marginwatch_evaluation_duration_seconds_sum"), 2)}


async def _wait_leaders(bootstrap: str, topics: list[str]) -> None:
    async with Probe(bootstrap) as probe:
        await probe.wait_leaders(topics)
        await asyncio.sleep(0.5)


async def _wait(args, group, topic, expected, worker, tick=None) -> float:
    async with Probe(args.bootstrap) as probe:
        return await wait_processed(probe, group, topic, expected, args.timeout, worker.alive, tick)


def baseline_run(args, prefix: str, start_offsets: dict[str, int], end_offsets: dict[str, int], expect: int) -> dict:
    """The plain aiokafka loop (own process, own group) over the same bulk records."""
    from aiokafka import TopicPartition
    from aiokafka.admin import AIOKafkaAdminClient, NewTopic

    group = f"{prefix}baseline"
    out = f"{prefix}baseline-out"

    async def prepare():
        admin = AIOKafkaAdminClient(bootstrap_servers=args.bootstrap)
        await admin.start()
        try:
            await admin.create_topics([NewTopic(out, args.partitions, 1)])
        finally:
            await admin.close()
        offsets = {}
        for key, off in start_offsets.items():
            topic, p = key.rsplit(":", 1)
            offsets[TopicPartition(topic, int(p))] = off
        await commit_group(args.bootstrap, group, offsets)

    asyncio.run(prepare())
    in_range = sum(end_offsets[k] - start_offsets.get(k, 0) for k in end_offsets)
    if in_range != expect:
        raise RuntimeError(f"the bulk's offsets span {in_range} records, expected {expect}")
    cmd = [sys.executable, "-m", "bench.pipeline.baseline", "--bootstrap", args.bootstrap, "--group", group,
           "--out", out, "--expect", str(expect), "--timeout", str(args.timeout),
           "--stop", orjson.dumps(end_offsets).decode()] + [prefix + t for t in INPUTS]
    proc = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, timeout=args.timeout + 120)
    if proc.returncode != 0:
        raise RuntimeError(f"baseline failed ({proc.returncode}):\n{proc.stderr[-3000:]}")
    res = orjson.loads(proc.stdout.strip().splitlines()[-1])
    log(f"baseline: {res['events']:,} events in {res['seconds']}s = {res['events_per_s']:,.0f} events/s")
    return res


def delete_topics(args, prefix: str) -> None:
    async def go():
        async with Probe(args.bootstrap) as probe:
            return await probe.delete_prefix(prefix)

    try:
        names = asyncio.run(go())
        log(f"deleted {len(names)} topics {prefix}*")
    except Exception as exc:  # never fail a finished run over clean-up
        log(f"could not delete topics {prefix}*: {exc!r}")


def code_version() -> dict:
    """HEAD and whether streams/ has uncommitted changes (others edit the worker concurrently)."""
    def git(*a):
        try:
            return subprocess.run(["git", *a], cwd=REPO, capture_output=True, text=True, timeout=10).stdout.strip()
        except (OSError, subprocess.SubprocessError):
            return ""

    return {"head": git("rev-parse", "--short", "HEAD"), "streams_dirty": bool(git("status", "--porcelain", "streams"))}


def new_run_id() -> str:
    return f"mwbench-{uuid.uuid4().hex[:8]}"
