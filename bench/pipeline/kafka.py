"""Broker-side helpers: offsets, committed progress of a group, topics; and the worker process."""
from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

from aiokafka import AIOKafkaConsumer, TopicPartition
from aiokafka.admin import AIOKafkaAdminClient
from aiokafka.structs import OffsetAndMetadata

from ..probes import free_port, scrape_metrics

REPO = Path(__file__).resolve().parents[2]


class Probe:
    """One admin client + one group-less consumer, reused for every poll."""

    def __init__(self, bootstrap: str) -> None:
        self.bootstrap = bootstrap
        self.admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap)
        self.consumer = AIOKafkaConsumer(bootstrap_servers=bootstrap, enable_auto_commit=False)

    async def __aenter__(self) -> "Probe":
        await self.admin.start()
        await self.consumer.start()
        return self

    async def __aexit__(self, *exc) -> None:
        await self.consumer.stop()
        await self.admin.close()

    async def tps(self, topic: str) -> list[TopicPartition]:
        parts = self.consumer.partitions_for_topic(topic)
        if not parts:
            await self.consumer._client.force_metadata_update()
            parts = self.consumer.partitions_for_topic(topic) or set()
        return [TopicPartition(topic, p) for p in sorted(parts)]

    async def end_offsets(self, topic: str) -> dict[TopicPartition, int]:
        tps = await self.tps(topic)
        return await self.consumer.end_offsets(tps) if tps else {}

    async def progress(self, group: str, topic: str) -> tuple[int, int]:
        """(records in ``topic``, records ``group`` has not committed yet)."""
        end = await self.end_offsets(topic)
        offsets = await self.admin.list_consumer_group_offsets(group, partitions=list(end))
        behind = 0
        for tp, e in end.items():
            meta = offsets.get(tp)
            behind += e - (meta.offset if meta is not None and meta.offset >= 0 else 0)
        return sum(end.values()), behind

    async def wait_leaders(self, topics: list[str], timeout_s: float = 30.0) -> None:
        """Until every partition of ``topics`` has a leader (fresh topics: avoids produce retries)."""
        deadline = time.monotonic() + timeout_s
        while True:
            await self.consumer._client.force_metadata_update()
            cluster = self.consumer._client.cluster
            missing = [t for t in topics if not cluster.partitions_for_topic(t)
                       or any(cluster.leader_for_partition(TopicPartition(t, p)) in (None, -1)
                              for p in cluster.partitions_for_topic(t))]
            if not missing or time.monotonic() > deadline:
                return
            await asyncio.sleep(0.2)

    async def delete_prefix(self, prefix: str) -> list[str]:
        names = [t for t in await self.admin.list_topics() if t.startswith(prefix)]
        if names:
            await self.admin.delete_topics(names)
        return names


async def commit_group(bootstrap: str, group: str, offsets: dict[TopicPartition, int]) -> None:
    """Commit ``offsets`` for ``group`` (no members yet): where its consumers will start."""
    consumer = AIOKafkaConsumer(bootstrap_servers=bootstrap, group_id=group, enable_auto_commit=False)
    await consumer.start()
    try:
        consumer.assign(list(offsets))
        await consumer.commit({tp: OffsetAndMetadata(off, "") for tp, off in offsets.items()})
    finally:
        await consumer.stop()


async def wait_processed(probe: Probe, group: str, topic: str, expected: int, timeout_s: float,
                         alive=lambda: None, tick=None, interval_s: float = 0.1) -> float:
    """Wait until ``topic`` holds ``expected`` records and ``group`` committed all of them;
    returns the ``time.perf_counter()`` at which that was seen."""
    deadline = time.monotonic() + timeout_s
    while True:
        size, behind = await probe.progress(group, topic)
        now = time.perf_counter()
        if size >= expected and behind == 0:
            return now
        if time.monotonic() > deadline:
            raise RuntimeError(f"{topic}: {size} of {expected} records, {behind} not committed by {group} "
                               f"after {timeout_s:.0f} s")
        alive()
        if tick is not None:
            tick(size, behind)
        await asyncio.sleep(interval_s)


class Worker:
    """One ``python -m streams.cli worker`` process with its own web port, data dir and log."""

    def __init__(self, env: dict, outdir: Path, name: str) -> None:
        self.port = free_port()
        self.name = name
        self.env = dict(os.environ, **env, MW_WEB_PORT=str(self.port), MW_DATA_DIR=str(outdir / f"data-{name}"))
        self.log_path = outdir / f"worker-{name}.log"
        self.proc: subprocess.Popen | None = None

    def start(self) -> "Worker":
        log = open(self.log_path, "ab")
        self.proc = subprocess.Popen([sys.executable, "-m", "streams.cli", "worker"], cwd=REPO, env=self.env,
                                     stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
        return self

    def alive(self) -> None:
        if self.proc is not None and self.proc.poll() is not None:
            raise RuntimeError(f"worker {self.name} exited with {self.proc.returncode}; log {self.log_path}:\n"
                               + self.tail())

    def ready(self) -> bool:
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{self.port}/readyz", timeout=2) as r:
                return r.status == 200
        except OSError:
            return False

    def wait_ready(self, timeout_s: float) -> float:
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            self.alive()
            if self.ready():
                return time.perf_counter()
            time.sleep(0.05)
        raise RuntimeError(f"worker {self.name} not ready after {timeout_s:.0f} s; log {self.log_path}:\n" + self.tail())

    def metrics(self) -> dict[str, float]:
        return scrape_metrics(self.port)

    def memory_kib(self) -> dict[str, int]:
        """VmHWM (peak RSS) and VmRSS of the worker process, KiB, from /proc."""
        out = {}
        try:
            for line in Path(f"/proc/{self.proc.pid}/status").read_text().splitlines():
                if line.startswith(("VmHWM:", "VmRSS:")):
                    key, val = line.split(":", 1)
                    out[key] = int(val.split()[0])
        except (OSError, AttributeError):
            pass
        return out

    def stop(self) -> None:
        if self.proc and self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGTERM)
            try:
                self.proc.wait(60)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait(30)

    def tail(self, n: int = 40) -> str:
        try:
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-n:])
        except OSError:
            return ""


def metric_sum(metrics: dict[str, float], name: str, **labels: str) -> float:
    total = 0.0
    for key, value in metrics.items():
        if key == name or key.startswith(name + "{"):
            if all(f'{k}="{v}"' in key for k, v in labels.items()):
                total += value
    return total
