"""Fault tolerance on the real broker: nothing lost, nothing duplicated, state equal to replay.

Each test runs a generated market (``streams.sim.market``) through worker(s) under
exactly-once, injects a fault while input flows, lets the system finish, then checks
the committed (read_committed) outputs against ``marginwatch replay`` of each
exported sequenced partition (:func:`verify_against_replay`):

- every margin-call and liquidation (and margin-status, dead-letter) the replay
  produces is there, none is extra, each ``event_id`` exactly once (no duplicate in
  any output topic), the lists equal the replay's in order and content
  (``decided_at`` aside);
- the final state equals the replay's: the last margin-status per account, and the
  committed account records of the ``accounts`` changelog equal the records of the
  replay's engine after the whole log.

Faults:

a. crash: ``kill -9`` of the worker at 3 kill points drawn by a seeded RNG over the
   progress fraction (committed sequenced offsets / total), one per third of the run;
   the test plays the supervisor and restarts it. ``MW_FAULT_SEED`` fixes the seed
   (printed; a random one otherwise).
b. broker restart: a dedicated broker (its own ports, data and pid file under the
   test's tmp dir; the shared broker is never touched) is stopped and started while
   the worker works through a backlog. The worker must get going again without a
   manual step: by itself, or by exiting non-zero (the stall watchdog's 4 with
   ``MW_STALL_TIMEOUT_S``) and being restarted by the test playing the supervisor.
c. rebalance under load: worker A, then B joins while input flows, then A is
   stopped (SIGTERM); B finishes.

Counts (kill points, events checked, outputs compared, duplicates, restarts) are
printed (``pytest -s``).
"""
from __future__ import annotations

import asyncio
import os
import random
import signal
import subprocess
import sys
import threading
import time
from collections import Counter, defaultdict
from pathlib import Path

import orjson
import pytest
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition
from aiokafka.admin import AIOKafkaAdminClient

from streams import kafka_local
from streams.agents import state_keys
from streams.margin import records
from streams.pipeline import PartitionProcessor, new_engine
from streams.replay import parse_envelope
from streams.sim.market import SimConfig, generate
from streams.topics import INPUT_TOPICS, sequenced_topic

from .harness import (
    REPO,
    WorkerProcess,
    comparable,
    envelope_bytes,
    expected_sequenced,
    free_port,
    latest_values,
    read_topic,
    sequenced_as_replay_lines,
    settings_for,
    wait_up,
    worker_env,
    worker_outputs,
)

pytestmark = [pytest.mark.kafka]
PARTITIONS = 4
OUTPUTS = ("margin-status", "margin-calls", "liquidations", "dead-letters")


def fault_seed() -> int:
    raw = os.environ.get("MW_FAULT_SEED", "").strip()
    return int(raw) if raw else random.SystemRandom().randrange(1_000_000)


def market(seed: int, accounts: int = 150, events: int = 5000) -> list[dict]:
    return list(generate(SimConfig(seed=seed, accounts=accounts, events=events)))


# account ids the state keys must keep apart from the partition globals and the id records
ODD_ACCOUNTS = ("marks", "params", "desk\x1fcollateral\x1f1")


def with_odd_accounts(envelopes: list[dict], at=(0.02, 0.5)) -> list[dict]:
    """``envelopes`` with deposits of :data:`ODD_ACCOUNTS` inserted at fractions ``at`` of the log."""
    out = list(envelopes)
    for n, frac in sorted(enumerate(at), key=lambda x: -x[1]):
        i = int(len(out) * frac)
        ts = next(e["value"]["ts"] for e in out[i:] if isinstance(e.get("value"), dict) and "ts" in e["value"])
        out[i:i] = [{"topic": "collateral", "key": a,
                     "value": {"event_id": f"odd-{n}", "account_id": a, "asset": "USDT", "amount": "100",
                               "reason": "deposit", "ts": ts}} for a in ODD_ACCOUNTS]
    return out


# ------------------------------------------------------------------ input feeder
class Feeder(threading.Thread):
    """Produce envelopes from a thread at about ``rate`` events/s (0 = at once)."""

    def __init__(self, bootstrap: str, prefix: str, envelopes: list[dict], rate: float, chunk: int = 250) -> None:
        super().__init__(name="feeder", daemon=True)
        self.bootstrap, self.prefix, self.envelopes = bootstrap, prefix, envelopes
        self.rate, self.chunk = rate, chunk
        self.sent = 0
        self.error: BaseException | None = None

    def run(self) -> None:
        try:
            asyncio.run(self._run())
        except BaseException as exc:  # noqa: BLE001 - reported by join_ok()
            self.error = exc

    async def _run(self) -> None:
        producer = AIOKafkaProducer(bootstrap_servers=self.bootstrap, acks="all", enable_idempotence=True,
                                    linger_ms=5)
        await producer.start()
        try:
            t0 = time.monotonic()
            for i in range(0, len(self.envelopes), self.chunk):
                futs = []
                for env in self.envelopes[i:i + self.chunk]:
                    key, value = envelope_bytes(env)
                    futs.append(await producer.send(self.prefix + env["topic"], value, key=key))
                await asyncio.gather(*futs)
                self.sent += len(futs)
                if self.rate > 0:
                    ahead = self.sent / self.rate - (time.monotonic() - t0)
                    if ahead > 0:
                        await asyncio.sleep(ahead)
        finally:
            await producer.stop()

    def join_ok(self, timeout: float = 120) -> None:
        self.join(timeout)
        assert not self.is_alive(), f"feeder still producing after {timeout}s ({self.sent} sent)"
        if self.error is not None:
            raise AssertionError(f"feeder failed after {self.sent} events: {self.error!r}")


# ------------------------------------------------------------------ progress
async def _group_behind(bootstrap: str, group: str, topics: list[str]) -> tuple[int, int]:
    """(committed, end) summed over the partitions of ``topics`` for ``group``."""
    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap, request_timeout_ms=10000)
    consumer = AIOKafkaConsumer(bootstrap_servers=bootstrap, request_timeout_ms=10000)
    await admin.start()
    await consumer.start()
    try:
        offsets = await admin.list_consumer_group_offsets(group)
        await consumer._client.force_metadata_update()
        tps = [TopicPartition(t, p) for t in topics for p in (consumer.partitions_for_topic(t) or ())]
        end = await consumer.end_offsets(tps) if tps else {}
        committed = 0
        for tp in tps:
            meta = offsets.get(tp)
            committed += meta.offset if meta is not None and meta.offset >= 0 else 0
        return committed, sum(end.values())
    finally:
        await consumer.stop()
        await admin.close()


def group_offsets(bootstrap: str, group: str, topics: list[str]) -> tuple[int, int]:
    try:
        return asyncio.run(asyncio.wait_for(_group_behind(bootstrap, group, topics), 20))
    except Exception:  # broker away: no answer
        return -1, -1


class Progress:
    """Committed offsets of the margin agent's group on the sequenced log, as a fraction of the total."""

    def __init__(self, bootstrap: str, env: dict, envelopes: list[dict]) -> None:
        self.bootstrap = bootstrap
        self.group = env["MW_APP_ID"]
        self.seq_topic = sequenced_topic(settings_for(env))
        self.input_topics = [env["MW_TOPIC_PREFIX"] + t for t in INPUT_TOPICS]
        self.total = expected_sequenced(envelopes, PARTITIONS)

    def fraction(self) -> float:
        committed, _ = group_offsets(self.bootstrap, self.group, [self.seq_topic])
        return committed / self.total if committed >= 0 else -1.0

    def done(self) -> bool:
        """Every input sequenced and committed by the sequencer, every sequenced record
        committed by the margin agent."""
        c_in, e_in = group_offsets(self.bootstrap, f"{self.group}-sequencer", self.input_topics)
        if c_in < 0 or c_in < e_in:
            return False
        c_seq, e_seq = group_offsets(self.bootstrap, self.group, [self.seq_topic])
        return c_seq >= 0 and e_seq >= self.total and c_seq >= e_seq

    def wait(self, pred, timeout: float, workers: list[WorkerProcess], what: str, step: float = 0.5) -> None:
        deadline = time.time() + timeout
        while time.time() < deadline:
            for w in workers:
                w.check()
            if pred():
                return
            time.sleep(step)
        raise AssertionError(f"{what}: not reached after {timeout:.0f}s (progress {self.fraction():.3f});\n"
                             + "\n".join(w.tail(40) for w in workers))

    def wait_fraction(self, target: float, timeout: float, workers: list[WorkerProcess]) -> float:
        box = {}

        def reached() -> bool:
            box["f"] = self.fraction()
            return box["f"] >= target

        self.wait(reached, timeout, workers, f"progress {target:.3f}")
        return box["f"]

    def wait_done(self, timeout: float, workers: list[WorkerProcess]) -> None:
        self.wait(self.done, timeout, workers, "all input processed and committed", step=1.0)


# ------------------------------------------------------------------ the check
def _first_difference(got: list[dict], want: list[dict]) -> str:
    i = next((i for i, (a, b) in enumerate(zip(got, want)) if a != b), min(len(got), len(want)))
    a = got[i] if i < len(got) else {}
    b = want[i] if i < len(want) else {}
    diff = {k: (a.get(k), b.get(k)) for k in sorted(set(a) | set(b)) if a.get(k) != b.get(k)}
    return f"first difference at index {i} ({a.get('event_id')} / {b.get('event_id')}): (worker, replay) = {diff}"


def verify_against_replay(bootstrap: str, env: dict) -> dict[str, int]:
    """Check the committed outputs and state against the replay of each sequenced partition.

    Raises AssertionError listing every problem (missing, extra, duplicated event_ids
    per partition and topic, order/content differences, account records that differ);
    returns the counts."""
    settings = settings_for(env)
    seq = asyncio.run(read_topic(bootstrap, sequenced_topic(settings)))
    outputs = asyncio.run(worker_outputs(bootstrap, env["MW_TOPIC_PREFIX"]))
    state = asyncio.run(latest_values(bootstrap, f"{env['MW_APP_ID']}-accounts-changelog"))
    remembered = asyncio.run(latest_values(bootstrap, f"{env['MW_APP_ID']}-seen-ids-changelog"))
    counts: Counter = Counter()
    problems: list[str] = []
    for p in range(PARTITIONS):
        lines = sequenced_as_replay_lines(seq.get(p, []))
        counts["events_checked"] += len(lines)
        # the replay of this partition (streams.replay.replay_lines, keeping its engine)
        proc = PartitionProcessor(new_engine(settings), partition=0)
        want: dict[str, list[dict]] = defaultdict(list)
        for offset, line in enumerate(lines):
            topic, key, value = parse_envelope(line)
            for out in proc.process(topic, key, value, offset).outputs:
                want[out.topic].append(comparable(out.topic, out.value))
        for topic in OUTPUTS:
            got = outputs[topic].get(p, [])
            exp = want.get(topic, [])
            counts[f"{topic}_compared"] += len(exp)
            g_ids = Counter(v["event_id"] for v in got)
            w_ids = Counter(v["event_id"] for v in exp)
            if topic != "dead-letters":  # an input sequenced twice dead-letters twice: same in the replay
                assert all(n == 1 for n in w_ids.values()), f"replay of partition {p} repeats {topic} event_ids"
            dup = {i: n for i, n in g_ids.items() if n > max(1, w_ids.get(i, 0))}
            missing = w_ids - g_ids
            extra = g_ids - w_ids
            counts["duplicates"] += sum(n - max(1, w_ids.get(i, 0)) for i, n in dup.items())
            counts["missing"] += sum(missing.values())
            counts["extra"] += sum(extra.values())
            if dup:
                problems.append(f"partition {p} {topic}: {len(dup)} duplicated event_ids, e.g. {sorted(dup)[:3]}")
            if missing:
                problems.append(f"partition {p} {topic}: {sum(missing.values())} missing, e.g. {sorted(missing)[:3]}")
            if extra:
                problems.append(f"partition {p} {topic}: {sum(extra.values())} extra, e.g. {sorted(extra)[:3]}")
            if got != exp:
                problems.append(f"partition {p} {topic}: worker {len(got)} vs replay {len(exp)}; "
                                + _first_difference(got, exp))
        # final state: last margin-status per account, committed account records
        last_got = {v["account_id"]: v for v in outputs["margin-status"].get(p, [])}
        last_want = {v["account_id"]: v for v in want.get("margin-status", [])}
        counts["accounts_last_status"] += len(last_want)
        if last_got != last_want:
            bad = sorted(a for a in set(last_got) | set(last_want) if last_got.get(a) != last_want.get(a))
            problems.append(f"partition {p}: last margin-status differs for {len(bad)} accounts, e.g. {bad[:3]}")
        engine = proc.engine
        globals_, by_account = state_keys.split_accounts_table(p, state)
        committed = {a: orjson.loads(v) for a, v in by_account.items()}
        marks = orjson.loads(globals_[state_keys.MARKS]) if state_keys.MARKS in globals_ else None
        expected_records = {a: orjson.loads(orjson.dumps(records.account_record(engine, a))) for a in engine.accounts}
        counts["account_records"] += len(expected_records)
        if committed != expected_records:
            bad = sorted(a for a in set(committed) | set(expected_records)
                         if committed.get(a) != expected_records.get(a))
            a = bad[0]
            problems.append(f"partition {p}: committed account records differ for {len(bad)} accounts, "
                            f"e.g. {a}: committed {committed.get(a)} vs replay {expected_records.get(a)}")
        if engine.market.marks and marks != orjson.loads(orjson.dumps(records.marks_record(engine))):
            problems.append(f"partition {p}: committed marks record {marks} vs replay "
                            f"{records.marks_record(engine)}")
        # remembered ids: the committed seen-ids records are the replay's, values (ts, account) too
        committed_ids = dict(state_keys.split_seen_table(p, remembered))
        counts["remembered_ids"] += len(committed_ids)
        if committed_ids != dict(engine.seen.dated_items()):
            problems.append(f"partition {p}: committed remembered ids {len(committed_ids)} vs replay "
                            f"{len(engine.seen)}")
    counts["outputs_compared"] = sum(counts[f"{t}_compared"] for t in OUTPUTS)
    if problems:
        raise AssertionError(f"{len(problems)} problems (counts {dict(counts)}):\n" + "\n".join(problems))
    assert counts["margin-calls_compared"] > 0 and counts["liquidations_compared"] > 0, dict(counts)
    return dict(counts)


def report(name: str, counts: dict, **extra) -> None:
    keys = ("events_checked", "outputs_compared", "margin-status_compared", "margin-calls_compared",
            "liquidations_compared", "dead-letters_compared", "account_records", "remembered_ids",
            "duplicates", "missing", "extra")
    print(f"\n[{name}] " + ", ".join(f"{k}={v}" for k, v in extra.items()) + "; "
          + ", ".join(f"{k}={counts.get(k, 0)}" for k in keys))


def recoveries_logged(worker) -> int:
    """How many times the worker's log (appended by every incarnation) says its recovery completed."""
    return worker.log_path.read_text(errors="replace").count("recovery complete in")


# ------------------------------------------------------------------ a. crash
@pytest.mark.timeout(720)
def test_kill9_at_random_points_outputs_equal_replay(kafka_bootstrap, unique_prefix, tmp_path):
    seed = fault_seed()
    rng = random.Random(seed)
    points = [round(0.1 + (i + rng.random()) * 0.8 / 3, 3) for i in range(3)]  # one per third of the run
    print(f"\n[crash] MW_FAULT_SEED={seed}: kill points at progress {points}")
    envelopes = with_odd_accounts(market(seed=31))
    env = worker_env(kafka_bootstrap, unique_prefix, PARTITIONS)
    worker = WorkerProcess(env, tmp_path, "w", supervised=True).start()
    progress = Progress(kafka_bootstrap, env, envelopes)
    feeder = Feeder(kafka_bootstrap, unique_prefix, envelopes, rate=80)
    kills = []
    t0 = time.time()
    try:
        wait_up(worker)
        feeder.start()
        for point in points:
            at = progress.wait_fraction(point, 180, [worker])
            # mid-processing: the current incarnation has finished its recovery (it logs one
            # "recovery complete" per incarnation; killing it before that line would leave the
            # count below short) and has handled input
            progress.wait(lambda: recoveries_logged(worker) >= len(kills) + 1 + worker.restarts
                          and worker.inputs_handled() > 0,
                          90, [worker], f"incarnation {len(kills) + 1 + worker.restarts} recovered, handling input")
            worker.kill(signal.SIGKILL)
            kills.append(round(at, 3))
            print(f"[crash] kill -9 at progress {at:.3f} (feeder sent {feeder.sent}/{len(envelopes)}), "
                  f"{time.time() - t0:.0f}s")
            worker.start()  # the supervisor
        feeder.join_ok()
        progress.wait_done(420, [worker])
    finally:
        worker.stop()
    elapsed = time.time() - t0
    counts = verify_against_replay(kafka_bootstrap, env)
    report("crash", counts, seed=seed, kill_points=kills, kills=len(kills),
           supervised_restarts=worker.restarts, inputs=len(envelopes), seconds=round(elapsed))
    assert len(kills) == 3 and counts["duplicates"] == 0
    # the changelog:// store: no restart re-read the changelog through faust's recovery
    # (it once hung there after a kill -9: "need offset 541, have 540" until the test gave up)
    log = worker.log_path.read_text(errors="replace")
    assert recoveries_logged(worker) >= len(kills) + 1, worker.tail(80)
    assert "Restoring state from changelog topics" not in log, worker.tail(80)


# ------------------------------------------------------------------ b. broker restart
class DedicatedBroker:
    """A broker of its own for one test (``python -m streams.kafka_local`` in a subprocess
    with its own MW_CACHE_DIR and ports, sharing the jars): restarting it leaves the shared
    broker alone."""

    def __init__(self, home: Path) -> None:
        self.port, self.controller_port = free_port(), free_port()
        while self.controller_port == self.port:
            self.controller_port = free_port()
        assert kafka_local.DEFAULT_PORT not in (self.port, self.controller_port)
        self.env = dict(os.environ, MW_CACHE_DIR=str(home), MW_KAFKA_LIBS_DIR=str(kafka_local.libs_dir()),
                        MW_KAFKA_PORT=str(self.port), MW_KAFKA_CONTROLLER_PORT=str(self.controller_port),
                        MW_KAFKA_HEAP="512M", MW_PARTITIONS=str(PARTITIONS))
        self.bootstrap = f"127.0.0.1:{self.port}"

    def _run(self, *args: str, timeout: float = 180) -> str:
        proc = subprocess.run([sys.executable, "-m", "streams.kafka_local", *args], cwd=REPO, env=self.env,
                              capture_output=True, text=True, timeout=timeout)
        assert proc.returncode == 0, f"kafka_local {' '.join(args)}: {proc.stdout}{proc.stderr}"
        return proc.stdout.strip()

    def up(self) -> str:
        out = self._run("up", "--timeout", "150")
        assert f":{self.port}" in out and "not managed" not in out, out
        return out

    def down(self) -> str:
        return self._run("down")


@pytest.fixture
def dedicated_broker(tmp_path):
    broker = DedicatedBroker(tmp_path / "broker")
    broker.up()
    try:
        yield broker
    finally:
        broker.down()


@pytest.mark.timeout(600)
def test_broker_restart_under_load_outputs_equal_replay(dedicated_broker, unique_prefix, tmp_path):
    broker = dedicated_broker
    envelopes = market(seed=37)
    split = len(envelopes) * 3 // 5
    # 10 s: shorter than the outage, so the watchdog path (exit 4, supervised restart) is taken;
    # MW_FAULT_STALL_TIMEOUT_S=60 gives faust the chance to get going again by itself
    stall = os.environ.get("MW_FAULT_STALL_TIMEOUT_S", "10")
    env = worker_env(broker.bootstrap, unique_prefix, PARTITIONS, MW_STALL_TIMEOUT_S=stall)
    worker = WorkerProcess(env, tmp_path, "w", supervised=True).start()
    progress = Progress(broker.bootstrap, env, envelopes)
    t0 = time.time()
    try:
        wait_up(worker)
        first = Feeder(broker.bootstrap, unique_prefix, envelopes[:split], rate=0)
        first.run()
        assert first.error is None, first.error
        at = progress.wait_fraction(0.2, 180, [worker])
        print(f"\n[broker] stopping the broker at progress {at:.3f}, {time.time() - t0:.0f}s")
        t_down = time.time()
        broker.down()
        time.sleep(5)
        out = broker.up()
        print(f"[broker] broker back after {time.time() - t_down:.0f}s: {out}")
        feeder = Feeder(broker.bootstrap, unique_prefix, envelopes[split:], rate=0)
        feeder.run()
        assert feeder.error is None, feeder.error
        progress.wait_done(300, [worker])
    finally:
        worker.stop()
    elapsed = time.time() - t0
    counts = verify_against_replay(broker.bootstrap, env)
    report("broker", counts, stall_timeout_s=stall, supervised_restarts=worker.restarts, exit_codes=worker.exit_codes,
           inputs=len(envelopes), seconds=round(elapsed))
    assert counts["duplicates"] == 0


# ------------------------------------------------------------------ c. rebalance
@pytest.mark.timeout(600)
def test_worker_added_then_first_removed_under_load_outputs_equal_replay(kafka_bootstrap, unique_prefix, tmp_path):
    envelopes = market(seed=41)
    env = worker_env(kafka_bootstrap, unique_prefix, PARTITIONS)
    a = WorkerProcess(env, tmp_path, "a", supervised=True).start()
    b = WorkerProcess(env, tmp_path, "b", supervised=True)
    progress = Progress(kafka_bootstrap, env, envelopes)
    feeder = Feeder(kafka_bootstrap, unique_prefix, envelopes, rate=80)
    t0 = time.time()
    try:
        wait_up(a)
        feeder.start()
        at_b = progress.wait_fraction(0.25, 180, [a])
        b.start()
        wait_up(b)
        progress.wait(lambda: b.inputs_handled() > 0, 120, [a, b], "worker B handling input")
        at_stop = progress.fraction()
        a.stop()
        print(f"\n[rebalance] B started at progress {at_b:.3f}, A stopped (SIGTERM, exit {a.proc.returncode}) "
              f"at {at_stop:.3f}, {time.time() - t0:.0f}s")
        feeder.join_ok()
        progress.wait_done(360, [b])
    finally:
        a.stop()
        b.stop()
    elapsed = time.time() - t0
    counts = verify_against_replay(kafka_bootstrap, env)
    report("rebalance", counts, b_joined_at=at_b, a_stopped_at=round(at_stop, 3), restarts_a=a.restarts,
           restarts_b=b.restarts, inputs=len(envelopes), seconds=round(elapsed))
    assert counts["duplicates"] == 0
