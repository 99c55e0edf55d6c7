"""The stall watchdog (``MW_STALL_TIMEOUT_S``): exits the worker with status 4 when
sequenced input is pending and nothing is handled for longer than the timeout.

The decision logic runs against an injected clock and a fake probe (pending,
last progress, busy); the exit path runs for real in a subprocess. Live workers
started with ``MW_STALL_TIMEOUT_S=5``: one reads the setting, starts the task and
does not fire over an idle period followed by new input; two are made to stall
for real — an output send that never completes (a wedged producer), and an event
loop blocked inside the agent — and exit with status 4 after one log line.
"""
from __future__ import annotations

import asyncio
import logging
import os
import subprocess
import sys
import textwrap
import threading
import time
from dataclasses import dataclass
from pathlib import Path

import pytest

from streams.worker import STALL_EXIT_CODE, StallWatchdog, run_watchdog, start_watchdog

from .harness import REPO


@dataclass
class FakeProbe:
    pending: int = 0
    last_progress: float = 0.0
    busy: bool = False

    def __call__(self) -> "FakeProbe":
        return FakeProbe(self.pending, self.last_progress, self.busy)


class Clock:
    def __init__(self, now: float = 1_000.0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


def run(wd: StallWatchdog, clock: Clock, seconds: float, step: float = 1.0) -> str | None:
    """Advance the clock by ``step`` and check, for ``seconds``; the first reason, if any."""
    end = clock.now + seconds
    while clock.now < end:
        clock.now = min(end, clock.now + step)
        reason = wd.check()
        if reason:
            return reason
    return None


def make(timeout: float = 10.0, **probe):
    clock = Clock()
    state = FakeProbe(last_progress=clock.now, **probe)
    return StallWatchdog(timeout, state, clock=clock), state, clock


# ------------------------------------------------------------ decision logic
def test_idle_worker_never_fires():
    wd, state, clock = make()
    assert run(wd, clock, 1000) is None  # no input handled for 1000 s, but nothing pending


def test_pending_without_progress_fires_after_the_timeout():
    wd, state, clock = make()
    state.pending = 12
    assert run(wd, clock, 10) is None
    reason = run(wd, clock, 2)
    assert reason and "12 sequenced messages pending" in reason and "MW_STALL_TIMEOUT_S=10" in reason


def test_input_after_a_long_idle_time_gets_the_whole_timeout():
    wd, state, clock = make()
    assert run(wd, clock, 500) is None  # last progress is now 500 s old
    state.pending = 3
    assert run(wd, clock, 9) is None
    assert run(wd, clock, 3) is not None


def test_progress_keeps_it_alive_and_the_lag_going_to_zero_resets():
    wd, state, clock = make()
    state.pending = 1000
    for _ in range(100):  # slowly working through a backlog
        assert run(wd, clock, 5) is None
        state.last_progress = clock.now
    state.pending = 0
    assert run(wd, clock, 100) is None
    state.pending = 1  # pending again: counted from now, not from the last progress
    assert run(wd, clock, 9) is None
    assert run(wd, clock, 3) is not None


def test_busy_suppresses_up_to_five_timeouts_then_fires():
    wd, state, clock = make()
    state.pending, state.busy = 50, True
    assert run(wd, clock, 49) is None
    reason = run(wd, clock, 3)
    assert reason and "recovering" in reason and "limit 50s" in reason


def test_end_of_a_busy_period_gives_the_whole_timeout_and_breaks_reset_the_busy_limit():
    wd, state, clock = make()
    state.pending = 5
    for _ in range(4):  # four recoveries of 30 s each: 120 s busy in total, never 50 s in a row
        state.busy = True
        assert run(wd, clock, 30) is None
        state.busy = False
        state.last_progress = clock.now
        assert run(wd, clock, 2) is None
    state.busy = True
    assert run(wd, clock, 45) is None
    state.busy = False  # recovered, still nothing handled: full timeout from the end of recovery
    assert run(wd, clock, 9) is None
    assert run(wd, clock, 3) is not None


def test_a_stuck_rebalance_loop_fires_even_without_known_lag():
    wd, state, clock = make()
    state.busy = True  # never assigned/recovered: lag unknown (0)
    assert run(wd, clock, 50) is None
    assert run(wd, clock, 2) is not None


def test_timeout_must_be_positive_and_interval_follows_it():
    with pytest.raises(ValueError):
        StallWatchdog(0, FakeProbe())
    assert StallWatchdog(60, FakeProbe()).interval_s == 1.0
    assert StallWatchdog(2, FakeProbe()).interval_s == pytest.approx(0.4)


def test_run_watchdog_logs_one_line_and_exits_4(caplog):
    clock = Clock()
    state = FakeProbe(pending=7, last_progress=clock.now)
    exits = []

    def probe():
        clock.now += 1.0  # every check is one second later
        return state()

    wd = StallWatchdog(2.0, probe, clock=clock)
    caplog.set_level(logging.INFO, logger="marginwatch.worker")
    thread = start_watchdog(wd, exit=exits.append)
    thread.join(10)
    assert not thread.is_alive()
    assert exits == [STALL_EXIT_CODE]
    stalled = [r for r in caplog.records if "worker stalled" in r.getMessage()]
    assert len(stalled) == 1 and stalled[0].levelno == logging.CRITICAL
    assert "7 sequenced messages pending" in stalled[0].getMessage()


def test_a_broken_probe_is_logged_and_the_watchdog_keeps_going(caplog):
    calls = []

    def probe():
        calls.append(1)
        if len(calls) < 3:
            raise RuntimeError("dictionary changed size during iteration")
        return FakeProbe(pending=1, last_progress=0.0)

    exits = []
    clock = Clock()
    stop = threading.Event()
    wd = StallWatchdog(0.2, probe, clock=clock)
    caplog.set_level(logging.INFO, logger="marginwatch.worker")
    thread = threading.Thread(target=run_watchdog, args=(wd, exits.append, stop), daemon=True)
    thread.start()
    deadline = time.time() + 10
    while len(calls) < 4 and time.time() < deadline:
        time.sleep(0.05)
    clock.now += 100  # pending for 100 s without progress
    thread.join(10)
    assert exits == [STALL_EXIT_CODE]
    assert sum("check failed" in r.getMessage() for r in caplog.records) == 2


def test_the_process_really_exits_with_status_4():
    code = textwrap.dedent("""
        import asyncio, logging, time
        from streams.worker import StallWatchdog, run_watchdog
        logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
        started = time.time()
        class Probe:
            pending, busy = 3, False
            last_progress = started
        run_watchdog(StallWatchdog(0.5, lambda: Probe))
        print("not reached")
    """)
    proc = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, timeout=60)
    assert proc.returncode == STALL_EXIT_CODE, proc.stdout + proc.stderr
    assert "not reached" not in proc.stdout
    lines = [ln for ln in proc.stderr.splitlines() if "worker stalled" in ln]
    assert len(lines) == 1 and lines[0].startswith("CRITICAL marginwatch.worker"), proc.stderr


# ------------------------------------------------------------ live worker
@pytest.mark.kafka
@pytest.mark.timeout(180)
def test_worker_reads_the_setting_runs_the_task_and_survives_idle_then_input(kafka_bootstrap, unique_prefix, tmp_path):
    from streams.sim.market import SimConfig, generate
    from streams.topics import sequenced_topic

    from .harness import WorkerProcess, expected_sequenced, produce, settings_for, wait_processed, wait_up, worker_env

    env = worker_env(kafka_bootstrap, unique_prefix, 2, MW_STALL_TIMEOUT_S="5")
    worker = WorkerProcess(env, tmp_path, "w").start()
    try:
        wait_up(worker)
        deadline = time.time() + 30
        while "stall watchdog: exits 4" not in worker.log_path.read_text(errors="replace"):
            assert time.time() < deadline, worker.tail()
            time.sleep(0.2)
        log_text = worker.log_path.read_text(errors="replace")
        assert "none is handled for 5s (or after 25s of starting/rebalancing/recovering)" in log_text
        time.sleep(8)  # idle for longer than the timeout: nothing pending, no exit
        assert worker.proc.poll() is None, worker.tail()
        envelopes = list(generate(SimConfig(seed=3, accounts=20, events=600, symbols=("BTCUSDT",))))
        asyncio.run(produce(kafka_bootstrap, unique_prefix, envelopes))
        wait_processed(kafka_bootstrap, env["MW_APP_ID"], sequenced_topic(settings_for(env)),
                       expected_sequenced(envelopes, 2), 120, [worker])
        time.sleep(8)
        assert worker.proc.poll() is None, worker.tail()
        assert "worker stalled" not in worker.log_path.read_text(errors="replace")
    finally:
        worker.stop()
    assert worker.proc.returncode != STALL_EXIT_CODE


# ------------------------------------------------------------ real stalls
STALLED_WORKER = """
import asyncio, os, sys, time
how = os.environ["STALL_HOW"]
if how == "send":  # a batch's sends never complete: a wedged producer
    from streams.agents.sender import BatchSender

    async def never(self, *args, **kwargs):
        await asyncio.Event().wait()

    BatchSender.flush = never
else:  # the agent blocks the event loop (a synchronous call that never returns)
    import streams.pipeline as pipeline

    def blocked(self, *args, **kwargs):
        time.sleep(3600)

    pipeline.PartitionProcessor.process = blocked
from streams.cli import main
sys.argv = ["marginwatch", "worker"]
sys.exit(main(["worker"]))
"""


@pytest.mark.kafka
@pytest.mark.timeout(180)
@pytest.mark.parametrize("how", ["send", "blocked_loop"])
def test_a_stalled_worker_exits_4_after_the_timeout(how, kafka_bootstrap, unique_prefix, tmp_path):
    from streams.sim.market import SimConfig, generate

    from .harness import free_port, produce, worker_env

    port = free_port()
    env = dict(os.environ, **worker_env(kafka_bootstrap, unique_prefix, 2, MW_STALL_TIMEOUT_S="5"),
               MW_WEB_PORT=str(port), MW_DATA_DIR=str(tmp_path / "data"), STALL_HOW=how)
    log_path = tmp_path / "worker.log"
    with open(log_path, "ab") as log:
        proc = subprocess.Popen([sys.executable, "-c", STALLED_WORKER], cwd=REPO, env=env,
                                stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    try:
        text = lambda: log_path.read_text(errors="replace")  # noqa: E731
        deadline = time.time() + 90
        while "recovery complete" not in text():  # started, assigned, ready
            assert proc.poll() is None and time.time() < deadline, text()[-3000:]
            time.sleep(0.2)
        envelopes = [e for e in generate(SimConfig(seed=3, accounts=20, events=400, symbols=("BTCUSDT",)))
                     if e["topic"] == "collateral"]
        asyncio.run(produce(kafka_bootstrap, unique_prefix, envelopes))
        produced_at = time.time()
        rc = proc.wait(60)
        waited = time.time() - produced_at
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, 9)
            proc.wait(10)
    lines = [ln for ln in text().splitlines() if "stall watchdog: worker stalled" in ln]
    print(f"\n{how}: exit {rc} {waited:.1f}s after the input: {lines}")
    assert rc == STALL_EXIT_CODE, text()[-3000:]
    assert len(lines) == 1 and "sequenced messages pending and no input handled for" in lines[0], lines
    assert 5 <= waited < 30
