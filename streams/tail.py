"""Reading topics for humans: ``marginwatch tail`` and ``marginwatch dead-letters replay``.

:func:`tail` prints one compact, colored line per message of a topic (input or
output; ``--raw`` prints the replay format ``{"topic", "key", "value"}`` instead,
so ``marginwatch tail fills --from-beginning --raw --no-follow > log.jsonl`` feeds
``marginwatch replay``). :func:`replay_dead_letters` re-produces dead-lettered
inputs to their source topic, e.g. after the risk-params were fixed.

Topic names are the contract's (``margin-calls``); ``MW_TOPIC_PREFIX`` is put
before them. A name that is not a contract topic is used as given.
"""
from __future__ import annotations

import asyncio
import base64
import binascii
import signal
import sys
import time
from collections import Counter
from dataclasses import dataclass, field
from typing import Iterable

import orjson
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition

from .margin.errors import MarginwatchError
from .settings import Settings
from .topics import INPUT_TOPICS, OUTPUT_TOPICS, bootstrap, kafka_security

CONTRACT_TOPICS = INPUT_TOPICS + OUTPUT_TOPICS
STATE_STYLE = {"healthy": "green", "margin_call": "yellow", "liquidation": "bold red"}


def resolve_topic(settings: Settings, name: str) -> tuple[str, str | None]:
    """(full topic name, contract name or None) for a name given on the command line."""
    if name in CONTRACT_TOPICS:
        return settings.topic(name), name
    if settings.topic_prefix and name.startswith(settings.topic_prefix) and name[len(settings.topic_prefix):] in CONTRACT_TOPICS:
        return name, name[len(settings.topic_prefix):]
    return name, None


# --------------------------------------------------------------------- formatting


def _esc(text: object) -> str:
    from rich.markup import escape

    return escape(str(text))


def _clock(ts: object) -> str:
    if not isinstance(ts, int) or ts < 0:
        return "--:--:--.---"
    try:
        return time.strftime("%H:%M:%S", time.gmtime(ts / 1000)) + f".{ts % 1000:03d}"
    except (OverflowError, OSError, ValueError):
        return "--:--:--.---"


def _state(s: object) -> str:
    style = STATE_STYLE.get(str(s), "white")
    return f"[{style}]{_esc(s)}[/]"


def _ratio(r: object) -> str:
    if r is None:
        return "∞"
    try:
        return f"{float(r):.4f}"
    except (TypeError, ValueError):
        return _esc(r)


def _num(x: object) -> str:
    try:
        f = float(x)
    except (TypeError, ValueError):
        return _esc(x)
    if abs(f) >= 1e6:
        return f"{f:,.0f}"
    return _esc(x)


def summarize(topic: str | None, value: object) -> str:
    """One line (rich markup) describing a message value of contract topic ``topic``."""
    if not isinstance(value, dict):
        text = value if isinstance(value, str) else repr(value)
        return f"[dim]{_esc(text[:200])}[/]"
    v = value
    try:
        if topic == "fills":
            side = "[green]buy[/]" if v.get("side") == "buy" else "[red]sell[/]"
            return (f"{side} {_esc(v.get('qty'))} [bold]{_esc(v.get('symbol'))}[/] @ {_esc(v.get('price'))} "
                    f"{_esc(v.get('margin_mode', 'cross'))} [dim]{_esc(v.get('fill_id'))}[/]")
        if topic == "mark-prices":
            return f"[bold]{_esc(v.get('symbol'))}[/] {_esc(v.get('mark_price'))} [dim]seq {_esc(v.get('seq'))}[/]"
        if topic == "collateral":
            extra = f" → {_esc(v['symbol'])}" if v.get("symbol") else ""
            return (f"{_esc(v.get('reason'))} {_esc(v.get('amount'))} {_esc(v.get('asset'))}{extra} "
                    f"[dim]{_esc(v.get('event_id'))}[/]")
        if topic == "account-snapshots":
            return (f"snapshot {_esc(v.get('snapshot_id'))}: {len(v.get('positions') or [])} positions, "
                    f"balances {_esc(v.get('balances'))}")
        if topic == "risk-params":
            if v.get("type") == "asset":
                return f"asset [bold]{_esc(v.get('asset'))}[/] price {_esc(v.get('price_symbol'))} haircut {_esc(v.get('haircut'))}"
            return (f"instrument [bold]{_esc(v.get('symbol'))}[/] {_esc(v.get('kind'))} settle {_esc(v.get('settle_asset'))} "
                    f"{len(v.get('tiers') or [])} tiers")
        if topic == "margin-status":
            worst = v.get("worst_state")
            worst_txt = f" (worst {_state(worst)})" if worst and worst != v.get("state") else ""
            return (f"{_state(v.get('state'))}{worst_txt} ratio {_ratio(v.get('margin_ratio'))} "
                    f"equity {_num(v.get('equity'))} mm {_num(v.get('maintenance_margin'))} "
                    f"{_esc(v.get('currency', ''))}, {len(v.get('positions') or [])} positions")
        if topic == "margin-calls":
            return (f"{_esc(v.get('scope'))}: {_state(v.get('from'))} → {_state(v.get('to'))} "
                    f"ratio {_ratio(v.get('margin_ratio'))} equity {_num(v.get('equity'))} "
                    f"mm {_num(v.get('maintenance_margin'))}")
        if topic == "liquidations":
            orders = ", ".join(f"{o.get('side')} {o.get('qty')} {o.get('symbol')}@{o.get('mark_price')}"
                               for o in v.get("orders") or ())
            return (f"[bold red]{_esc(v.get('scope'))}[/] episode {_esc(v.get('episode'))} step {_esc(v.get('step'))} "
                    f"ratio {_ratio(v.get('margin_ratio'))} shortfall {_num(v.get('shortfall'))}: {_esc(orders or 'no orders')}")
        if topic == "dead-letters":
            return (f"[magenta]{_esc(v.get('error'))}[/] from {_esc(v.get('source_topic'))} "
                    f"[dim]{_esc(str(v.get('detail', ''))[:160])}[/]")
    except (AttributeError, TypeError):
        pass
    return _esc(orjson.dumps(v).decode()[:300])


def decode_value(raw: bytes | None) -> object:
    if raw is None:
        return None
    try:
        return orjson.loads(raw)
    except orjson.JSONDecodeError:
        return raw.decode("utf-8", "replace")


def format_record(topic: str | None, rec) -> str:
    """The line of one consumer record (rich markup)."""
    value = decode_value(rec.value)
    ts = value.get("ts") if isinstance(value, dict) else None
    if not isinstance(ts, int):
        ts = rec.timestamp
    key = rec.key.decode("utf-8", "replace") if rec.key is not None else "∅"
    who = f"{(topic or rec.topic)[:14]:<14}"
    return (f"[dim]{_clock(ts)}[/] [cyan]{_esc(who)}[/] [dim]{rec.partition}:{rec.offset:<7}[/] "
            f"[bold]{_esc(key):<12}[/] {summarize(topic, value)}")


def replay_line(topic: str | None, rec) -> bytes:
    """The record as a replay envelope (``value``, or ``value_b64`` when not UTF-8)."""
    env: dict = {"topic": topic or rec.topic, "key": rec.key.decode("utf-8", "replace") if rec.key is not None else None}
    if rec.value is None:
        env["value"] = None
    else:
        try:
            text = rec.value.decode("utf-8")
            try:
                env["value"] = orjson.loads(rec.value)
            except orjson.JSONDecodeError:
                env["value"] = text
        except UnicodeDecodeError:
            env["value_b64"] = base64.b64encode(rec.value).decode()
    return orjson.dumps(env)


# --------------------------------------------------------------------------- tail


async def _start(client) -> None:
    """Start an aiokafka client; close it again if that fails (no "Unclosed" warnings)."""
    try:
        await client.start()
    except BaseException:
        await client.stop()
        raise


async def _partitions(consumer: AIOKafkaConsumer, topic: str, wait_s: float = 5.0) -> list[TopicPartition]:
    deadline = time.monotonic() + wait_s
    while True:
        parts = consumer.partitions_for_topic(topic)
        if parts:
            return [TopicPartition(topic, p) for p in sorted(parts)]
        if time.monotonic() > deadline:
            raise MarginwatchError("unknown_topic", f"topic {topic!r} does not exist on {consumer._client._bootstrap_servers}")
        await consumer._client.force_metadata_update()
        await asyncio.sleep(0.2)


def _consumer(settings: Settings) -> AIOKafkaConsumer:
    return AIOKafkaConsumer(bootstrap_servers=bootstrap(settings), enable_auto_commit=False,
                            auto_offset_reset="earliest", isolation_level="read_committed",
                            request_timeout_ms=15000, **kafka_security(settings))


async def tail(settings: Settings, name: str, from_beginning: bool = False, limit: int | None = None,
               follow: bool = True, raw: bool = False, out=None) -> int:
    """Print messages of topic ``name``; returns how many were printed."""
    from rich.console import Console

    topic, contract = resolve_topic(settings, name)
    console = Console(file=out or sys.stdout, highlight=False, soft_wrap=True)
    consumer = _consumer(settings)
    await _start(consumer)
    printed = 0
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    handlers = []
    for sig in (signal.SIGINT, signal.SIGTERM):
        try:
            loop.add_signal_handler(sig, stop.set)
            handlers.append(sig)
        except (NotImplementedError, RuntimeError):
            pass
    try:
        tps = await _partitions(consumer, topic)
        consumer.assign(tps)
        if from_beginning:
            await consumer.seek_to_beginning(*tps)
        else:
            await consumer.seek_to_end(*tps)
        end = await consumer.end_offsets(tps) if not follow else None
        while not stop.is_set():
            batch = await consumer.getmany(timeout_ms=200, max_records=500)
            records = sorted((r for recs in batch.values() for r in recs), key=lambda r: (r.timestamp, r.partition, r.offset))
            for rec in records:
                if raw:
                    (out or sys.stdout).write(replay_line(contract, rec).decode() + "\n")
                else:
                    console.print(format_record(contract, rec))
                printed += 1
                if limit and printed >= limit:
                    return printed
            if raw:
                (out or sys.stdout).flush()
            if end is not None and not batch:
                positions = [await consumer.position(tp) for tp in tps]
                if all(pos >= end[tp] for pos, tp in zip(positions, tps)):
                    break
    finally:
        for sig in handlers:
            loop.remove_signal_handler(sig)
        await consumer.stop()
    return printed


# ---------------------------------------------------------- dead-letters replay


@dataclass
class ReplayReport:
    read: int = 0
    matched: int = 0
    produced: int = 0
    by_topic: Counter = field(default_factory=Counter)
    by_error: Counter = field(default_factory=Counter)
    skipped: Counter = field(default_factory=Counter)  # reason -> count


def dead_letter_input(dl: dict) -> tuple[str, bytes | None, bytes] | str:
    """(source topic, key, value) to re-produce, or why it cannot be."""
    topic = dl.get("source_topic")
    if topic not in INPUT_TOPICS:
        return "not an input topic"
    if dl.get("raw_truncated"):
        return "value truncated"
    try:
        if "raw" in dl and isinstance(dl["raw"], str):
            value = dl["raw"].encode("utf-8", "surrogatepass")
        elif isinstance(dl.get("raw_b64"), str):
            value = base64.b64decode(dl["raw_b64"], validate=True)
        else:
            return "no raw value"
        if isinstance(dl.get("key_b64"), str):
            key = base64.b64decode(dl["key_b64"], validate=True)
        elif isinstance(dl.get("key"), str):
            key = dl["key"].encode("utf-8", "surrogatepass")
        else:
            key = None
    except (binascii.Error, ValueError):
        return "bad base64"
    return topic, key, value


async def replay_dead_letters(settings: Settings, errors: Iterable[str] = (), dry_run: bool = False,
                              idle_s: float = 3.0) -> ReplayReport:
    """Re-produce the dead-lettered inputs (those with an error in ``errors``; all if empty).

    Reads ``dead-letters`` from the beginning up to its end at the start (so what
    the replay dead-letters again is not read back), keeps each distinct
    (topic, key, value) once, and produces it to the prefixed source topic.
    """
    wanted = set(errors)
    topic = settings.topic("dead-letters")
    report = ReplayReport()
    todo: dict[tuple[str, bytes | None, bytes], None] = {}
    consumer = _consumer(settings)
    await _start(consumer)
    try:
        tps = await _partitions(consumer, topic)
        consumer.assign(tps)
        await consumer.seek_to_beginning(*tps)
        end = await consumer.end_offsets(tps)
        tps = [tp for tp in tps if end[tp] > 0]
        last = time.monotonic()
        while tps:
            batch = await consumer.getmany(*tps, timeout_ms=200, max_records=2000)
            for recs in batch.values():
                for rec in recs:
                    if rec.offset >= end[TopicPartition(rec.topic, rec.partition)]:
                        continue
                    last = time.monotonic()
                    report.read += 1
                    try:
                        dl = orjson.loads(rec.value)
                    except orjson.JSONDecodeError:
                        report.skipped["unreadable dead-letter"] += 1
                        continue
                    if not isinstance(dl, dict):
                        report.skipped["unreadable dead-letter"] += 1
                        continue
                    if wanted and dl.get("error") not in wanted:
                        continue
                    report.matched += 1
                    got = dead_letter_input(dl)
                    if isinstance(got, str):
                        report.skipped[got] += 1
                        continue
                    if got in todo:
                        report.skipped["repeated input"] += 1
                        continue
                    todo[got] = None
                    report.by_topic[got[0]] += 1
                    report.by_error[str(dl.get("error"))] += 1
            remaining = []
            for tp in tps:
                if await consumer.position(tp) < end[tp]:
                    remaining.append(tp)
            tps = remaining
            if tps and time.monotonic() - last > idle_s:
                raise MarginwatchError("kafka_timeout", f"dead-letters: no progress reading {topic} for {idle_s:.0f}s")
    finally:
        await consumer.stop()
    if dry_run or not todo:
        return report
    producer = AIOKafkaProducer(bootstrap_servers=bootstrap(settings), acks="all", enable_idempotence=True,
                                linger_ms=5, **kafka_security(settings))
    await _start(producer)
    try:
        futures = []
        for (src, key, value) in todo:
            futures.append(await producer.send(settings.topic(src), value, key=key))
        await asyncio.gather(*futures)
        report.produced = len(futures)
    finally:
        await producer.stop()
    return report
