"""The demo run: broker, worker, bot and simulator started, watched, drained and stopped."""

from __future__ import annotations

import asyncio
import os
import shutil
import signal
import sys
import time
import urllib.error
import urllib.request

from .. import kafka_local
from ..margin.errors import MarginwatchError
from .children import Child, _bot_fills, _produced, free_port
from .metrics import STATES, Snapshot, scrape
from .options import BOT, DemoOptions
from .topics import OutputReader, _delete_topics
from .view import View, render, summary_text


class Demo:
    """One demo run; :meth:`run` returns the exit code."""

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


def run(opts: DemoOptions) -> int:
    """Run the demo to the end; its exit code (0, 1 if a child failed, 130 if stopped before the simulation).

    Raises MarginwatchError when the broker or the worker cannot start.
    """
    return asyncio.run(Demo(opts).run())
