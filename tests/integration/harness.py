"""Helpers for tests on the real broker: run workers, produce inputs, read outputs,
export the sequenced log and compare it with ``marginwatch replay``."""
from __future__ import annotations

import asyncio
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from collections import defaultdict
from pathlib import Path

import orjson
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition

from streams.replay import replay_lines
from streams.settings import Settings
from streams.sim.market import envelope_bytes  # noqa: F401 - the tests import it from here
from streams.topics import INPUT_TOPICS, OUTPUT_TOPICS, SOURCE_HEADER

REPO = Path(__file__).resolve().parents[2]
ACCOUNT_TOPICS = ("fills", "collateral", "account-snapshots")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


#: exit codes a supervisor restarts on: the stall watchdog (4) and the ordering guard (5)
RESTART_CODES_DEFAULT = (4, 5)


class WorkerProcess:
    """One ``marginwatch worker`` subprocess with its own web port and data dir.

    ``supervised``: :meth:`check` plays the supervisor and restarts a worker that
    exited with one of ``restart_codes`` (default: 4 and 5, the deliberate exits).
    """

    RESTART_CODES = RESTART_CODES_DEFAULT

    def __init__(self, env: dict, tmp: Path, name: str, supervised: bool = False,
                 restart_codes: tuple[int, ...] | None = None) -> None:
        self.supervised = supervised
        self.restart_codes = RESTART_CODES_DEFAULT if restart_codes is None else tuple(restart_codes)
        self.restarts = 0
        self.exit_codes: list[int] = []  # of the supervised restarts
        self.port = free_port()
        self.env = dict(os.environ, **env, MW_WEB_PORT=str(self.port), MW_DATA_DIR=str(tmp / f"data-{name}"))
        self.log_path = tmp / f"worker-{name}.log"
        self.proc: subprocess.Popen | None = None

    def start(self) -> "WorkerProcess":
        log = open(self.log_path, "ab")
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "streams.cli", "worker"], cwd=REPO, env=self.env,
            stdout=log, stderr=subprocess.STDOUT, start_new_session=True,
        )
        return self

    def check(self) -> None:
        """Play the supervisor: restart after a deliberate exit, fail on any other."""
        if self.proc is None or self.proc.poll() is None:
            return
        code = self.proc.returncode
        if self.supervised and code in self.restart_codes:
            self.restarts += 1
            self.exit_codes.append(code)
            self.start()
            return
        raise AssertionError(f"worker exited with {code}:\n{self.tail()}")

    def metrics(self) -> dict[str, float]:
        """Sample name{labels} -> value of the worker's /metrics (empty if unreachable)."""
        try:
            body = urllib.request.urlopen(f"http://127.0.0.1:{self.port}/metrics", timeout=2).read().decode()
        except OSError:
            return {}
        out = {}
        for line in body.splitlines():
            if line and not line.startswith("#"):
                name, _, value = line.rpartition(" ")
                out[name] = float(value)
        return out

    def inputs_handled(self) -> float:
        return sum(v for k, v in self.metrics().items() if k.startswith("marginwatch_input_messages_total"))

    def kill(self, sig=signal.SIGKILL) -> None:
        if self.proc and self.proc.poll() is None:
            os.killpg(self.proc.pid, sig)
            self.proc.wait(30)

    def stop(self) -> None:
        if self.proc and self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGTERM)
            try:
                self.proc.wait(30)
            except subprocess.TimeoutExpired:
                self.kill()

    def tail(self, n: int = 60) -> str:
        try:
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-n:])
        except OSError:
            return ""


def worker_env(bootstrap: str, prefix: str, partitions: int = 4, **extra: str) -> dict:
    env = {
        "MW_BROKER": f"kafka://{bootstrap}",
        "MW_APP_ID": f"{prefix}mw",
        "MW_TOPIC_PREFIX": prefix,
        "MW_PARTITIONS": str(partitions),
        "MW_SESSION_TIMEOUT_S": "6",
        "MW_COMMIT_INTERVAL_S": "0.2",
        "MW_LOG_LEVEL": "info",
    }
    env.update(extra)
    return env


def settings_for(env: dict) -> Settings:
    return Settings.from_env(env)


async def produce(bootstrap: str, prefix: str, envelopes: list[dict]) -> None:
    producer = AIOKafkaProducer(bootstrap_servers=bootstrap, acks="all", enable_idempotence=True, linger_ms=5)
    await producer.start()
    try:
        futs = []
        for env in envelopes:
            key, value = envelope_bytes(env)
            futs.append(await producer.send(prefix + env["topic"], value, key=key))
        await asyncio.gather(*futs)
    finally:
        await producer.stop()


def expected_sequenced(envelopes: list[dict], partitions: int) -> int:
    return sum(1 if e["topic"] in ACCOUNT_TOPICS else partitions for e in envelopes)


def wait_handled(workers: list[WorkerProcess], total: int, timeout: float, base: float = 0.0) -> float:
    """Wait until the workers' ingress counters reach ``total`` (plus ``base``)."""
    deadline = time.time() + timeout
    seen = 0.0
    while time.time() < deadline:
        seen = sum(w.inputs_handled() for w in workers)
        if seen >= total + base:
            return seen
        for w in workers:
            w.check()
        time.sleep(0.5)
    raise AssertionError(f"handled {seen} of {total + base} inputs in {timeout}s;\n" + "\n".join(w.tail() for w in workers))


async def read_topic(bootstrap: str, topic: str, committed: bool = True, idle_s: float = 2.0) -> dict[int, list]:
    """Every record of ``topic`` per partition, in offset order (read_committed by default)."""
    consumer = AIOKafkaConsumer(
        bootstrap_servers=bootstrap, enable_auto_commit=False, auto_offset_reset="earliest",
        isolation_level="read_committed" if committed else "read_uncommitted",
    )
    await consumer.start()
    try:
        parts = consumer.partitions_for_topic(topic) or set()
        if not parts:
            await consumer._client.force_metadata_update()
            parts = consumer.partitions_for_topic(topic) or set()
        tps = [TopicPartition(topic, p) for p in sorted(parts)]
        consumer.assign(tps)
        await consumer.seek_to_beginning(*tps)
        end = await consumer.end_offsets(tps)
        out: dict[int, list] = defaultdict(list)
        last = time.time()
        while True:
            batch = await consumer.getmany(timeout_ms=200)
            for tp, recs in batch.items():
                out[tp.partition].extend(recs)
                last = time.time()
            done = True
            for tp in tps:
                if await consumer.position(tp) < end[tp]:
                    done = False
            if done or time.time() - last > idle_s:
                break
        return out
    finally:
        await consumer.stop()


async def latest_values(bootstrap: str, topic: str) -> dict[bytes, bytes]:
    """The committed latest value per key of a compacted topic (a tombstone removes the key)."""
    latest: dict[bytes, bytes] = {}
    for recs in (await read_topic(bootstrap, topic)).values():
        for rec in recs:
            if rec.value is None:
                latest.pop(rec.key, None)
            else:
                latest[rec.key] = rec.value
    return latest


def sequenced_as_replay_lines(records: list) -> list[bytes]:
    """An exported sequenced partition in the replay format."""
    lines = []
    for rec in records:
        topic = dict(rec.headers or ()).get(SOURCE_HEADER, b"").decode()
        env: dict = {"topic": topic, "key": rec.key.decode() if rec.key is not None else None}
        try:
            env["value"] = rec.value.decode()
        except UnicodeDecodeError:
            import base64

            env["value_b64"] = base64.b64encode(rec.value).decode()
        lines.append(orjson.dumps(env))
    return lines


def comparable(topic: str, value: dict) -> dict:
    """An output value as the contract compares it: no decided_at (no partition/offset for dead-letters)."""
    v = {k: x for k, x in value.items() if k != "decided_at"}
    if topic == "dead-letters":
        v.pop("partition", None)
        v.pop("offset", None)
    return v


async def worker_outputs(bootstrap: str, prefix: str) -> dict[str, dict[int, list[dict]]]:
    out = {}
    for t in OUTPUT_TOPICS:
        recs = await read_topic(bootstrap, prefix + t)
        out[t] = {p: [comparable(t, orjson.loads(r.value)) for r in rs] for p, rs in recs.items()}
    return out


def replay_partition(lines: list[bytes], settings: Settings) -> dict[str, list[dict]]:
    out: dict[str, list[dict]] = defaultdict(list)
    for o in replay_lines(lines, settings):
        out[o.topic].append(comparable(o.topic, o.value))
    return out


async def committed_behind(bootstrap: str, group: str, topic: str) -> int:
    """How many records of ``topic`` the consumer group has not committed yet."""
    from aiokafka.admin import AIOKafkaAdminClient

    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap)
    consumer = AIOKafkaConsumer(bootstrap_servers=bootstrap)
    await admin.start()
    await consumer.start()
    try:
        offsets = await admin.list_consumer_group_offsets(group)
        parts = consumer.partitions_for_topic(topic)
        if not parts:
            await consumer._client.force_metadata_update()
            parts = consumer.partitions_for_topic(topic) or set()
        tps = [TopicPartition(topic, p) for p in parts]
        end = await consumer.end_offsets(tps) if tps else {}
        behind = 0
        for tp in tps:
            meta = offsets.get(tp)
            behind += end[tp] - (meta.offset if meta is not None and meta.offset >= 0 else 0)
        return behind if tps else 1
    finally:
        await consumer.stop()
        await admin.close()


def wait_committed(bootstrap: str, group: str, topic: str, timeout: float, workers=()) -> None:
    deadline = time.time() + timeout
    behind = -1
    while time.time() < deadline:
        behind = asyncio.run(committed_behind(bootstrap, group, topic))
        if behind == 0:
            return
        for w in workers:
            w.check()
        time.sleep(1.0)
    raise AssertionError(f"{behind} records of {topic} not committed by {group} after {timeout}s;\n"
                         + "\n".join(w.tail() for w in workers))


def wait_up(worker: WorkerProcess, timeout: float = 60) -> None:
    deadline = time.time() + timeout
    while time.time() < deadline:
        if worker.metrics():
            return
        if worker.proc and worker.proc.poll() is not None:
            raise AssertionError(f"worker exited with {worker.proc.returncode}:\n{worker.tail()}")
        time.sleep(0.5)
    raise AssertionError(f"worker not up after {timeout}s:\n{worker.tail()}")


async def topic_size(bootstrap: str, topic: str) -> int:
    consumer = AIOKafkaConsumer(bootstrap_servers=bootstrap)
    await consumer.start()
    try:
        await consumer._client.force_metadata_update()
        tps = [TopicPartition(topic, p) for p in (consumer.partitions_for_topic(topic) or ())]
        end = await consumer.end_offsets(tps) if tps else {}
        return sum(end.values())
    finally:
        await consumer.stop()


def wait_processed(bootstrap: str, group: str, topic: str, sequenced_total: int, timeout: float, workers=()) -> None:
    """Wait until the sequenced log holds ``sequenced_total`` records and all are committed."""
    deadline = time.time() + timeout
    size = 0
    while time.time() < deadline:
        size = asyncio.run(topic_size(bootstrap, topic))
        if size >= sequenced_total:
            break
        for w in workers:
            w.check()
        time.sleep(0.5)
    else:
        raise AssertionError(f"sequenced log has {size} of {sequenced_total} records after {timeout}s")
    wait_committed(bootstrap, group, topic, max(10.0, deadline - time.time()), workers)
