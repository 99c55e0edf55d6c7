"""``marginwatch demo``: the whole system on one machine, with a live terminal view.

1. Ensures the local Kafka broker is up (:func:`streams.kafka_local.start`,
   idempotent; a broker already answering on ``MW_KAFKA_PORT`` is used as is).
2. Starts a worker (``python -m streams.cli worker``) with its own topic prefix
   and app id (``demo-<id>.``), status interval 1000 ms, on a free web port.
3. Starts the liquidation bot (``examples/liquidation_bot.py``) and the live
   simulator (``python -m streams.cli simulate``), with a market crash after about
   a third of ``--duration`` and a recovery after it (without ``--duration``: a
   crash every ``--crash-every`` seconds).
4. Shows accounts per state (the worker's ``marginwatch_accounts{state}``), the
   input rate, decision latency p50/p99 (from the ``/metrics`` histograms) and the
   latest margin calls and liquidations (consumed from the output topics).
5. At the end (``--duration`` reached, Ctrl-C or SIGTERM) stops the children
   (SIGTERM to each process group, SIGKILL after a grace period), deletes the
   demo's topics (``--keep-topics`` keeps them), stops the broker if the demo
   started it (``--keep-kafka`` keeps it), and prints a plain-text summary.

Every child runs in its own process group and is killed as a group, so nothing is
left behind. Logs of the children go to ``<cache>/demo/<id>/`` and are kept when
something failed.
"""
from __future__ import annotations

import asyncio
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections import Counter, deque
from dataclasses import dataclass, field
from pathlib import Path

import orjson

from . import kafka_local
from .margin.errors import MarginwatchError

REPO = Path(__file__).resolve().parents[1]
BOT = REPO / "examples" / "liquidation_bot.py"
STATES = ("healthy", "margin_call", "liquidation")
DECISION_OUTPUTS = ("margin-status", "margin-calls", "liquidations")
STOP_GRACE_S = 20.0


@dataclass
class DemoOptions:
    duration: float | None = None  # seconds of simulation; None = until stopped
    accounts: int = 150
    rate: float = 40.0
    seed: int = 7
    crash_at: float = 1 / 3
    crash_depth: float = 0.18
    crash_every: float = 60.0
    partitions: int = 1
    keep_kafka: bool = False
    keep_topics: bool = False
    live: bool | None = None  # rich live view; None = when stdout is a terminal


# ------------------------------------------------------------------- metrics


def parse_metrics(text: str) -> list[tuple[str, dict, float]]:
    """Samples of a Prometheus text exposition as (name, labels, value)."""
    out = []
    for line in text.splitlines():
        if not line or line.startswith("#"):
            continue
        head, _, value = line.rpartition(" ")
        name, labels = head, {}
        if "{" in head:
            name, _, rest = head.partition("{")
            rest = rest.rsplit("}", 1)[0]
            for part in _split_labels(rest):
                k, _, v = part.partition("=")
                labels[k.strip()] = v.strip().strip('"')
        try:
            out.append((name, labels, float(value)))
        except ValueError:
            continue
    return out


def _split_labels(text: str) -> list[str]:
    parts, cur, quoted = [], [], False
    for ch in text:
        if ch == '"':
            quoted = not quoted
        if ch == "," and not quoted:
            parts.append("".join(cur))
            cur = []
        else:
            cur.append(ch)
    if cur:
        parts.append("".join(cur))
    return [p for p in parts if p.strip()]


def histogram_quantile(q: float, buckets: dict[float, float]) -> float | None:
    """Prometheus' histogram_quantile over cumulative ``{le: count}`` (linear in the bucket)."""
    if not buckets:
        return None
    les = sorted(buckets)
    total = buckets[les[-1]]
    if total <= 0:
        return None
    rank = q * total
    prev_le, prev_count = 0.0, 0.0
    for le in les:
        count = buckets[le]
        if count >= rank:
            if le == float("inf"):
                return prev_le
            if count == prev_count:
                return le
            return prev_le + (le - prev_le) * (rank - prev_count) / (count - prev_count)
        prev_le, prev_count = le, count
    return les[-1]


@dataclass
class Snapshot:
    """What the demo reads from one scrape of the worker's /metrics."""

    at: float
    accounts: dict[str, float]
    inputs: float
    inputs_by_outcome: dict[str, float]
    margin_calls: float
    liquidations: float
    episodes: float
    latency_buckets: dict[float, float]
    lag: float = 0.0

    @classmethod
    def parse(cls, text: str, at: float) -> "Snapshot":
        accounts = {s: 0.0 for s in STATES}
        by_outcome: Counter = Counter()
        buckets: Counter = Counter()
        calls = liqs = episodes = lag = 0.0
        for name, labels, value in parse_metrics(text):
            if name == "marginwatch_consumer_lag_messages":
                lag += value
            if name == "marginwatch_accounts" and labels.get("state") in accounts:
                accounts[labels["state"]] += value
            elif name == "marginwatch_input_messages_total":
                by_outcome[labels.get("outcome", "?")] += value
            elif name == "marginwatch_margin_calls_total":
                calls += value
            elif name == "marginwatch_liquidations_total":
                liqs += value
            elif name == "marginwatch_liquidation_episodes_total":
                episodes += value
            elif name == "marginwatch_decision_latency_seconds_bucket" and labels.get("output") in DECISION_OUTPUTS:
                buckets[float(labels["le"])] += value
        return cls(at, accounts, sum(by_outcome.values()), dict(by_outcome), calls, liqs, episodes, dict(buckets), lag)

    def latency(self, q: float) -> float | None:
        return histogram_quantile(q, self.latency_buckets)


def scrape(url: str, timeout: float = 2.0) -> str | None:
    try:
        with urllib.request.urlopen(url, timeout=timeout) as resp:
            return resp.read().decode()
    except (OSError, urllib.error.URLError):
        return None


# ------------------------------------------------------------------ children


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Child:
    """A subprocess in its own process group, logging to a file."""

    def __init__(self, name: str, cmd: list[str], env: dict, log_path: Path) -> None:
        self.name, self.cmd, self.env, self.log_path = name, cmd, env, log_path
        self.proc: subprocess.Popen | None = None

    def start(self) -> "Child":
        with open(self.log_path, "ab") as log:
            self.proc = subprocess.Popen(self.cmd, cwd=REPO, env=self.env, stdin=subprocess.DEVNULL,
                                         stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
        return self

    @property
    def pid(self) -> int | None:
        return self.proc.pid if self.proc else None

    def running(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def _killpg(self, sig: int) -> None:
        if self.proc is None:
            return
        try:
            os.killpg(self.proc.pid, sig)
        except (ProcessLookupError, PermissionError):
            pass

    def stop(self, grace: float = STOP_GRACE_S) -> int | None:
        """SIGTERM the group, SIGKILL it after ``grace`` seconds; the exit code."""
        if self.proc is None:
            return None
        if self.proc.poll() is None:
            self._killpg(signal.SIGTERM)
            try:
                self.proc.wait(grace)
            except subprocess.TimeoutExpired:
                self._killpg(signal.SIGKILL)
                self.proc.wait(10)
        self._killpg(signal.SIGKILL)  # whatever the leader left in its group
        return self.proc.returncode

    def kill(self) -> None:
        self._killpg(signal.SIGKILL)
        if self.proc is not None:
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                pass

    def tail(self, n: int = 25) -> str:
        try:
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-n:])
        except OSError:
            return ""


# ------------------------------------------------------------------ the view


@dataclass
class View:
    """State shown by the live view and the summary."""

    tag: str
    calls: deque = field(default_factory=lambda: deque(maxlen=8))
    liqs: deque = field(default_factory=lambda: deque(maxlen=8))
    calls_total: int = 0
    calls_to: Counter = field(default_factory=Counter)
    liqs_total: int = 0
    episodes: set = field(default_factory=set)
    snap: Snapshot | None = None
    prev: deque = field(default_factory=lambda: deque(maxlen=20))
    sim_started: float | None = None
    sim_done: bool = False
    phase: str = "starting"

    def rate(self) -> float:
        if self.snap is None or not self.prev:
            return 0.0
        old = self.prev[0]
        dt = self.snap.at - old.at
        return (self.snap.inputs - old.inputs) / dt if dt > 0 else 0.0


def _ms(x: float | None) -> str:
    return "-" if x is None else f"{x * 1000:.1f} ms"


def render(view: View, opts: DemoOptions):
    from rich.console import Group
    from rich.panel import Panel
    from rich.table import Table

    elapsed = time.monotonic() - view.sim_started if view.sim_started else 0.0
    if opts.duration:
        crash = opts.duration * opts.crash_at
        when = f"{elapsed:5.0f}/{opts.duration:.0f} s, crash at ~{crash:.0f} s"
    else:
        when = f"{elapsed:5.0f} s, a crash every {opts.crash_every:.0f} s, Ctrl-C stops"
    head = f"[bold]marginwatch demo[/]  prefix [cyan]{view.tag}.[/]  {when}  [dim]{view.phase}[/]"

    snap = view.snap
    acc = Table(title="accounts (worst state)", expand=True)
    for s, style in zip(STATES, ("green", "yellow", "red")):
        acc.add_column(s, justify="right", style=style)
    acc.add_row(*(f"{snap.accounts.get(s, 0):.0f}" if snap else "-" for s in STATES))

    stats = Table(title="flow", expand=True)
    for col in ("inputs", "inputs/s", "dead letters", "margin calls", "liquidations", "p50", "p99"):
        stats.add_column(col, justify="right")
    stats.add_row(
        f"{snap.inputs:,.0f}" if snap else "-", f"{view.rate():,.0f}",
        f"{snap.inputs_by_outcome.get('dead_letter', 0):,.0f}" if snap else "-",
        f"{view.calls_total:,}", f"{view.liqs_total:,}",
        _ms(snap.latency(0.5)) if snap else "-", _ms(snap.latency(0.99)) if snap else "-",
    )

    calls = Table(title="recent margin calls", expand=True, show_edge=False)
    for col in ("time", "account", "scope", "transition", "ratio"):
        calls.add_column(col)
    for v in reversed(view.calls):
        to = v.get("to")
        style = {"healthy": "green", "margin_call": "yellow", "liquidation": "red"}.get(to, "white")
        calls.add_row(_clock(v.get("ts")), str(v.get("account_id")), str(v.get("scope")),
                      f"{v.get('from')} → [{style}]{to}[/]", _ratio(v.get("margin_ratio")))

    liqs = Table(title="recent liquidations", expand=True, show_edge=False)
    for col in ("time", "account", "scope", "ep.step", "orders"):
        liqs.add_column(col)
    for v in reversed(view.liqs):
        orders = ", ".join(f"{o.get('side')} {o.get('qty')} {o.get('symbol')}" for o in v.get("orders") or ())
        liqs.add_row(_clock(v.get("ts")), str(v.get("account_id")), str(v.get("scope")),
                     f"{v.get('episode')}.{v.get('step')}", orders[:60])
    return Panel(Group(head, acc, stats, calls, liqs), border_style="blue")


def _clock(ts: object) -> str:
    if not isinstance(ts, int):
        return "-"
    return time.strftime("%H:%M:%S", time.localtime(ts / 1000))


def _ratio(r: object) -> str:
    try:
        return f"{float(r):.3f}"
    except (TypeError, ValueError):
        return "∞"


def summary_text(view: View, opts: DemoOptions, produced: int | None, live_s: float,
                 bot_fills: int | None = None) -> str:
    snap = view.snap
    lines = [f"marginwatch demo: summary ({live_s:.0f} s of simulation, topic prefix {view.tag}.)"]
    if snap is not None:
        lines.append("accounts: " + ", ".join(f"{s} {snap.accounts.get(s, 0):.0f}" for s in STATES))
    else:
        lines.append("accounts: unknown (no metrics from the worker)")
    to = ", ".join(f"to {k} {v}" for k, v in sorted(view.calls_to.items()))
    lines.append(f"margin calls: {view.calls_total}" + (f" ({to})" if to else ""))
    lines.append(f"liquidations: {view.liqs_total} ({len(view.episodes)} episodes)")
    if snap is not None:
        outcomes = ", ".join(f"{k} {v:,.0f}" for k, v in sorted(snap.inputs_by_outcome.items()))
        sources = []
        if produced is not None:
            sources.append(f"{produced:,} events from the simulator")
        if bot_fills is not None:
            sources.append(f"{bot_fills:,} closing fills from the bot")
        lines.append(f"inputs processed: {snap.inputs:,.0f} ({outcomes})"
                     + (f"; produced: {', '.join(sources)}" if sources else ""))
        lines.append(f"decision latency: p50 {_ms(snap.latency(0.5))}, p99 {_ms(snap.latency(0.99))}")
    return "\n".join(lines)


# -------------------------------------------------------------------- topics


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


# ---------------------------------------------------------------------- main


class Demo:
    def __init__(self, opts: DemoOptions, out=sys.stdout, err=sys.stderr) -> None:
        self.opts = opts
        self.out, self.err = out, err
        self.tag = f"demo-{int(time.time()):x}{os.getpid() % 4096:03x}"
        self.run_dir = kafka_local.cache_dir() / "demo" / self.tag
        self.children: list[Child] = []
        self.stop = asyncio.Event()
        self.signals: list[int] = []
        self.view = View(self.tag)
        self.failed: str | None = None

    def say(self, text: str) -> None:
        print(f"demo: {text}", file=self.err, flush=True)

    def _on_signal(self, sig: int) -> None:
        self.signals.append(sig)
        if len(self.signals) > 1:  # second Ctrl-C: no more grace
            for child in self.children:
                child.kill()
        self.stop.set()

    async def run(self) -> int:
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(sig, self._on_signal, sig)
        port = kafka_local.default_port()
        was_up = kafka_local.is_reachable(port)
        started_kafka = False
        bootstrap = kafka_local.bootstrap_servers(port)
        live_s = 0.0
        produced = None
        sim = bot = None
        try:
            if not was_up:
                self.say(f"starting the local Kafka broker on {bootstrap} ...")
            try:
                info = await asyncio.to_thread(kafka_local.start, port)
            except kafka_local.KafkaLocalError as exc:
                raise MarginwatchError("kafka_unavailable", f"the local Kafka broker could not start: "
                                       f"{str(exc).splitlines()[0]}") from None
            started_kafka = not was_up and not info.get("external")
            bootstrap = info.get("bootstrap") or bootstrap
            if self.stop.is_set():
                return 130
            self.run_dir.mkdir(parents=True, exist_ok=True)
            prefix = f"{self.tag}."
            web_port = free_port()
            env = dict(os.environ)
            env.update({
                "MW_BROKER": f"kafka://{bootstrap}", "MW_TOPIC_PREFIX": prefix, "MW_APP_ID": f"{self.tag}-mw",
                "MW_PARTITIONS": str(self.opts.partitions), "MW_STATUS_INTERVAL_MS": "1000",
                "MW_WEB_HOST": "127.0.0.1", "MW_WEB_PORT": str(web_port), "MW_WEB_CANONICAL_HOST": "127.0.0.1",
                "MW_DATA_DIR": str(self.run_dir / "worker-data"), "PYTHONUNBUFFERED": "1",
            })
            env.setdefault("MW_LOG_LEVEL", "info")
            py = sys.executable
            worker = Child("worker", [py, "-m", "streams.cli", "worker"], env, self.run_dir / "worker.log")
            self.children.append(worker.start())
            self.say(f"worker pid {worker.pid}, http://127.0.0.1:{web_port}, topics {prefix}*, log {worker.log_path}")
            metrics_url = f"http://127.0.0.1:{web_port}/metrics"
            self.view.phase = "waiting for the worker"
            await self._wait_ready(worker, f"http://127.0.0.1:{web_port}/readyz", timeout=180)
            if self.stop.is_set():
                return 130
            if not BOT.is_file():
                raise MarginwatchError("config_error", f"the liquidation bot is missing: {BOT}")
            bot = Child("bot", [py, str(BOT), "--quiet"], env, self.run_dir / "bot.log")
            self.children.append(bot.start())
            sim_cmd = [py, "-m", "streams.cli", "simulate", "--accounts", str(self.opts.accounts),
                       "--rate", str(self.opts.rate), "--seed", str(self.opts.seed),
                       "--crash-depth", str(self.opts.crash_depth), "--run-id", f"{self.tag}-", "--no-progress"]
            if self.opts.duration:
                sim_cmd += ["--duration", str(self.opts.duration), "--crash-at", f"{self.opts.crash_at:.4f}"]
            else:
                sim_cmd += ["--crash-every", str(self.opts.crash_every)]
            sim = Child("simulator", sim_cmd, env, self.run_dir / "simulator.log")
            self.children.append(sim.start())
            self.view.sim_started = time.monotonic()
            self.view.phase = "simulating"
            self.say(f"liquidation bot pid {bot.pid}, simulator pid {sim.pid}")
            reader = OutputReader(bootstrap, prefix, self.view)
            reader_stop = asyncio.Event()
            consumer = asyncio.create_task(reader.run(reader_stop))
            try:
                await self._watch(worker, bot, sim, metrics_url)
                live_s = time.monotonic() - self.view.sim_started
                if not self.stop.is_set() and self.failed is None:
                    self.view.phase = "draining"
                    produced = _produced(sim)
                    await self._drain(worker, metrics_url)
                    await reader.caught_up()
                text = await asyncio.to_thread(scrape, metrics_url)
                if text:
                    self._update(text)
            finally:
                reader_stop.set()
                try:
                    await asyncio.wait_for(consumer, 10)
                except (asyncio.TimeoutError, Exception):  # noqa: BLE001 - the summary still comes
                    consumer.cancel()
            return 1 if self.failed else 0
        except MarginwatchError as err:
            self.failed = self.failed or err.detail
            raise
        except Exception as exc:  # noqa: BLE001 - one line, not a traceback
            self.failed = f"{type(exc).__name__}: {exc}"
            raise MarginwatchError("demo_failed", f"the demo failed: {type(exc).__name__}: {exc}") from None
        finally:
            self.stop.set()
            await asyncio.to_thread(self._stop_children)
            if self.view.sim_started is not None:
                if not self.opts.keep_topics:
                    try:
                        n = await _delete_topics(bootstrap, self.tag)
                        self.say(f"deleted {n} demo topics")
                    except Exception as exc:  # noqa: BLE001 - best effort
                        self.say(f"could not delete the demo topics ({type(exc).__name__})")
                else:
                    self.say(f"topics kept: MW_TOPIC_PREFIX={self.tag}. marginwatch tail margin-calls --from-beginning")
            if started_kafka and not self.opts.keep_kafka:
                self.say("stopping the Kafka broker the demo started")
                await asyncio.to_thread(kafka_local.stop)
            summary = None
            if self.view.sim_started is not None:
                if produced is None and sim is not None:
                    produced = _produced(sim)
                summary = summary_text(self.view, self.opts, produced, live_s, _bot_fills(bot))
            if self.failed:
                self.say(f"logs kept in {self.run_dir}")
            elif self.run_dir.exists():
                shutil.rmtree(self.run_dir, ignore_errors=True)
            if summary is not None:
                print(summary, file=self.out, flush=True)
            for sig in (signal.SIGINT, signal.SIGTERM):
                loop.remove_signal_handler(sig)

    async def _wait_ready(self, worker: Child, url: str, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        while not self.stop.is_set():
            if not worker.running():
                self.failed = "worker exited"
                raise MarginwatchError("worker_failed", f"the worker exited with {worker.proc.returncode} during "
                                       f"start-up; see {worker.log_path}:\n{worker.tail(15)}")
            try:
                with urllib.request.urlopen(url, timeout=2) as resp:
                    if resp.status == 200:
                        return
            except (OSError, urllib.error.URLError):
                pass
            if time.monotonic() > deadline:
                self.failed = "worker not ready"
                raise MarginwatchError("worker_failed", f"the worker was not ready after {timeout:.0f}s; see {worker.log_path}")
            try:
                await asyncio.wait_for(self.stop.wait(), 0.5)
            except asyncio.TimeoutError:
                pass

    def _update(self, text: str) -> None:
        snap = Snapshot.parse(text, time.monotonic())
        if self.view.snap is not None:
            self.view.prev.append(self.view.snap)
        while self.view.prev and snap.at - self.view.prev[0].at > 5.0:
            self.view.prev.popleft()
        self.view.snap = snap

    async def _watch(self, worker: Child, bot: Child, sim: Child, metrics_url: str) -> None:
        live = None
        use_live = self.opts.live if self.opts.live is not None else self.out.isatty()
        if use_live:
            from rich.console import Console
            from rich.live import Live

            live = Live(render(self.view, self.opts), console=Console(file=self.out), refresh_per_second=4,
                        transient=False)
            live.start()
        last_line = time.monotonic()
        try:
            while not self.stop.is_set():
                text = await asyncio.to_thread(scrape, metrics_url)
                if text:
                    self._update(text)
                for child in (worker, bot):
                    if not child.running():
                        self.failed = f"{child.name} exited"
                        self.say(f"the {child.name} exited with {child.proc.returncode}; last lines of "
                                 f"{child.log_path}:\n{child.tail(15)}")
                        return
                if not sim.running():
                    if sim.proc.returncode != 0:
                        self.failed = "simulator failed"
                        self.say(f"the simulator exited with {sim.proc.returncode}:\n{sim.tail(10)}")
                    return
                if live is not None:
                    live.update(render(self.view, self.opts))
                elif time.monotonic() - last_line >= 10:
                    last_line = time.monotonic()
                    snap = self.view.snap
                    el = time.monotonic() - self.view.sim_started
                    state = ", ".join(f"{s} {snap.accounts.get(s, 0):.0f}" for s in STATES) if snap else "-"
                    print(f"demo: {el:4.0f}s  inputs {snap.inputs if snap else 0:,.0f} ({self.view.rate():,.0f}/s)  "
                          f"accounts {state}  margin calls {self.view.calls_total}  liquidations {self.view.liqs_total}",
                          file=self.out, flush=True)
                try:
                    await asyncio.wait_for(self.stop.wait(), 1.0)
                except asyncio.TimeoutError:
                    pass
        finally:
            if live is not None:
                live.update(render(self.view, self.opts))
                live.stop()

    async def _drain(self, worker: Child, metrics_url: str, timeout: float = 60.0) -> bool:
        """After the simulator ended: wait until the worker has handled its backlog (bot fills included).

        Done when the input counter stood still for 3 s with no consumer lag (the lag
        gauge is refreshed every 5 s, so a still counter for 8 s also counts).
        """
        deadline = time.monotonic() + timeout
        last, since = None, time.monotonic()
        while time.monotonic() < deadline and not self.stop.is_set() and worker.running():
            text = await asyncio.to_thread(scrape, metrics_url)
            if text:
                self._update(text)
                snap = self.view.snap
                if snap.inputs != last:
                    last, since = snap.inputs, time.monotonic()
                still = time.monotonic() - since
                if (still >= 3 and snap.lag == 0) or still >= 8:
                    return True
            try:
                await asyncio.wait_for(self.stop.wait(), 0.5)
            except asyncio.TimeoutError:
                pass
        if not self.stop.is_set():
            self.say(f"the worker had not caught up after {timeout:.0f}s; stopping anyway")
        return False

    def _stop_children(self) -> None:
        # simulator first (no new inputs), then the bot, then the worker
        for child in sorted(self.children, key=lambda c: ("simulator", "bot", "worker").index(c.name)):
            code = child.stop()
            if code not in (0, None, -signal.SIGTERM, 130, 143) and not self.signals:
                self.say(f"{child.name} exited with {code}")


def _produced(sim: Child) -> int | None:
    """How many events the simulator says it produced (its last summary line)."""
    for line in reversed(sim.tail(20).splitlines()):
        if line.startswith("simulate: produced "):
            try:
                return int(line.split()[2].replace(",", ""))
            except (IndexError, ValueError):
                return None
    return None


def _bot_fills(bot: Child | None) -> int | None:
    """How many fills the bot says it sent (its last line, written when it stops)."""
    if bot is None:
        return None
    for line in reversed(bot.tail(20).splitlines()):
        if line.startswith("liquidation-bot: stopped;"):
            for part in line.split(","):
                words = part.split()
                if len(words) >= 2 and words[1] == "fills":
                    try:
                        return int(words[0])
                    except ValueError:
                        return None
    return None


def run(opts: DemoOptions) -> int:
    return asyncio.run(Demo(opts).run())
