"""The demo's topics: reading its margin calls and liquidations into the view, deleting them at the end."""

from __future__ import annotations

import asyncio
import time

import orjson

from .view import View


class OutputReader:
    """Reads margin-calls and liquidations of the demo (read_committed) into the view."""

    def __init__(self, bootstrap: str, prefix: str, view: View) -> None:
        self.bootstrap, self.view = bootstrap, view
        self.topics = (f"{prefix}margin-calls", f"{prefix}liquidations")
        self.consumer = None
        self.tps: list = []

    async def run(self, stop: asyncio.Event) -> None:
        from aiokafka import AIOKafkaConsumer, TopicPartition

        self.consumer = AIOKafkaConsumer(bootstrap_servers=self.bootstrap, enable_auto_commit=False,
                                         auto_offset_reset="earliest", isolation_level="read_committed")
        await self.consumer.start()
        try:
            while not self.tps and not stop.is_set():
                await self.consumer._client.force_metadata_update()
                parts = {t: self.consumer.partitions_for_topic(t) for t in self.topics}
                if all(parts.values()):
                    self.tps = [TopicPartition(t, p) for t in self.topics for p in sorted(parts[t])]
                else:
                    await asyncio.sleep(0.5)
            if not self.tps:
                return
            self.consumer.assign(self.tps)
            await self.consumer.seek_to_beginning(*self.tps)
            while not stop.is_set():
                batch = await self.consumer.getmany(timeout_ms=200, max_records=2000)
                for tp, recs in batch.items():
                    for rec in recs:
                        self._take(tp.topic, rec.value)
        finally:
            await self.consumer.stop()

    def _take(self, topic: str, raw: bytes) -> None:
        try:
            v = orjson.loads(raw)
        except orjson.JSONDecodeError:
            return
        if not isinstance(v, dict):
            return
        if topic.endswith("margin-calls"):
            self.view.calls_total += 1
            self.view.calls_to[str(v.get("to"))] += 1
            self.view.calls.append(v)
        else:
            self.view.liqs_total += 1
            self.view.episodes.add((v.get("account_id"), v.get("scope"), v.get("episode")))
            self.view.liqs.append(v)

    async def caught_up(self, timeout: float = 10.0) -> bool:
        """Wait until everything committed to the output topics so far has been read."""
        if self.consumer is None or not self.tps:
            return False
        try:
            end = await self.consumer.end_offsets(self.tps)
        except Exception:  # noqa: BLE001 - the summary then counts what was read
            return False
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            try:
                done = True
                for tp in self.tps:
                    if await self.consumer.position(tp) < end[tp]:
                        done = False
                        break
                if done:
                    return True
            except Exception:  # noqa: BLE001
                return False
            await asyncio.sleep(0.2)
        return False


async def _delete_topics(bootstrap: str, tag: str) -> int:
    from aiokafka.admin import AIOKafkaAdminClient

    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap, request_timeout_ms=10000)
    await asyncio.wait_for(admin.start(), 10)
    try:
        names = [t for t in await admin.list_topics() if t.startswith(tag)]
        if names:
            await asyncio.wait_for(admin.delete_topics(names), 20)
        return len(names)
    finally:
        await admin.close()
