"""Run the stream worker: create topics, start the sequencer and the faust app.

The worker also runs the stall watchdog (:class:`StallWatchdog`): faust can stay
alive without consuming, e.g. stuck in rebalance loops after a broker restart
(faust-streaming issues #594, #602), and only a restart by the supervisor helps.
"""
from __future__ import annotations

import asyncio
import logging
import os
import sys
import threading
import time
from typing import Callable

from .settings import Settings

log = logging.getLogger("marginwatch.worker")

#: exit status of the worker when the stall watchdog fires (the sequencer failing exits with 3)
STALL_EXIT_CODE = 4
#: the sequencer is restarted after a commit lost to a rebalance at most this often per minute
SEQUENCER_RESTARTS_PER_MINUTE = 5
#: while starting, rebalancing or recovering tables the watchdog waits this many timeouts
BUSY_FACTOR = 5.0


class StallWatchdog:
    """Decides when the worker is stalled; :meth:`check` returns why, or None.

    ``probe()`` returns an object with ``pending`` (sequenced messages not yet
    committed on the assigned partitions), ``last_progress`` (``clock()`` time of the last
    handled input) and ``busy`` (starting, rebalancing, recovering tables or
    rebuilding an engine). The worker is stalled when

    - inputs are pending, it is not busy, and no input was handled for longer than
      ``timeout_s`` — counted from the latest of: the last handled input, the
      first check that saw input pending, the end of the last busy period (so an
      input arriving after a long idle time, or after a recovery, gets the whole
      timeout); or
    - it has been busy without a break for longer than ``busy_factor × timeout_s``
      (a rebalance loop restarts recovery over and over: each is short, together
      they never end).

    Call :meth:`check` periodically (the worker: every ``min(1, timeout/5)`` s).
    """

    def __init__(self, timeout_s: float, probe: Callable[[], object], clock: Callable[[], float] = time.time,
                 busy_factor: float = BUSY_FACTOR) -> None:
        if timeout_s <= 0:
            raise ValueError("timeout_s must be > 0")
        self.timeout_s = float(timeout_s)
        self.busy_limit_s = float(timeout_s) * busy_factor
        self.probe = probe
        self.clock = clock
        self._busy_since: float | None = None
        self._idle_since: float | None = None  # end of the last busy period
        self._pending_since: float | None = None

    @property
    def interval_s(self) -> float:
        return min(1.0, self.timeout_s / 5)

    def check(self) -> str | None:
        now = self.clock()
        state = self.probe()
        if state.busy:
            self._pending_since = None
            if self._busy_since is None:
                self._busy_since = now
            busy_for = now - self._busy_since
            if busy_for > self.busy_limit_s:
                return (f"starting/rebalancing/recovering for {busy_for:.0f}s without a break "
                        f"(limit {self.busy_limit_s:.0f}s = {self.busy_limit_s / self.timeout_s:g} x MW_STALL_TIMEOUT_S)")
            return None
        if self._busy_since is not None:
            self._busy_since = None
            self._idle_since = now
        if state.pending <= 0:
            self._pending_since = None
            return None
        if self._pending_since is None:
            self._pending_since = now
        since = max(state.last_progress, self._pending_since, self._idle_since or 0.0)
        stalled_for = now - since
        if stalled_for > self.timeout_s:
            return (f"{state.pending} sequenced messages pending and no input handled for {stalled_for:.0f}s "
                    f"(MW_STALL_TIMEOUT_S={self.timeout_s:g})")
        return None


def run_watchdog(watchdog: StallWatchdog, exit: Callable[[int], object] = os._exit,
                 stop: threading.Event | None = None) -> None:
    """Check every ``watchdog.interval_s`` until ``stop`` is set; on a stall log one
    line and ``exit(4)``. Blocking: run it in a thread (:func:`start_watchdog`), so
    that it also fires when the event loop itself is stuck."""
    stop = stop or threading.Event()
    log.info("stall watchdog: exits %d when sequenced input is pending and none is handled for %gs "
             "(or after %gs of starting/rebalancing/recovering)", STALL_EXIT_CODE, watchdog.timeout_s,
             watchdog.busy_limit_s)
    while not stop.wait(watchdog.interval_s):
        try:
            reason = watchdog.check()
        except Exception:  # a broken probe must not kill the worker, nor the watchdog
            log.exception("stall watchdog: check failed")
            continue
        if reason:
            log.critical("stall watchdog: worker stalled: %s; exiting with status %d for the supervisor to restart it",
                         reason, STALL_EXIT_CODE)
            for handler in logging.getLogger().handlers:
                try:
                    handler.flush()
                except Exception:
                    pass
            sys.stdout.flush()
            sys.stderr.flush()
            exit(STALL_EXIT_CODE)
            return


def start_watchdog(watchdog: StallWatchdog, exit: Callable[[int], object] = os._exit) -> threading.Thread:
    """Run :func:`run_watchdog` in a daemon thread."""
    thread = threading.Thread(target=run_watchdog, args=(watchdog, exit), name="stall-watchdog", daemon=True)
    thread.start()
    return thread


def commit_before_revoke(consumer) -> None:
    """Commit the acked offsets (with their batch's outputs and changelog records, one
    transaction per partition) when a rebalance starts, before faust drops the acks.

    faust's ``Consumer.on_partitions_revoked`` first forgets the acked offsets of the
    revoked partitions (all of them: the eager protocol revokes everything), and only
    then runs the app's handler, whose commit therefore commits nothing. The
    transactional producer of a partition the worker keeps stays in its open
    transaction, holding the sends of the batches acked since the last timer commit;
    the partition resumes from the older committed offset, those batches are applied
    again and their outputs sent a second time into the same transaction, and both
    copies are committed (seen on the broker: 36 margin-status, 7 margin-calls and 3
    liquidations twice in read_committed when a second worker joined). Committing
    first closes that transaction with its offsets. The commit goes through the margin
    agent's commit barrier (``consumer.commit`` is wrapped), so a batch in flight
    finishes first; a batch taken before the revoke and applied during it acks after
    this and is committed by faust's own revoke commit.
    """
    original = consumer.on_partitions_revoked

    async def on_partitions_revoked(revoked):
        try:
            await consumer.commit()
        except Exception:  # the revoke must go on; uncommitted work is redone by the next owner
            log.exception("commit before the rebalance failed")
        return await original(revoked)

    consumer.on_partitions_revoked = on_partitions_revoked


async def trim_heap_every(interval_s: float) -> None:
    """Return the C heap's free space to the OS every ``interval_s`` (off the event loop)."""
    from .heap import heap_trimmer

    trim = heap_trimmer() if interval_s > 0 else None
    if trim is None:
        log.info("C heap trimming off (%s)", "MW_MALLOC_TRIM_INTERVAL_S=0" if interval_s <= 0 else "not glibc")
        return
    while True:
        await asyncio.sleep(interval_s)
        try:
            released, seconds = await asyncio.to_thread(trim)
        except Exception:  # memory housekeeping must never stop the worker
            log.exception("C heap trim failed")
            continue
        (log.warning if seconds > 0.1 else log.debug)("C heap trim: released=%s in %.1f ms", released, seconds * 1000)


def _quiet_worker_class():
    import faust

    class QuietWorker(faust.Worker):
        """faust's worker with the root logger at the configured level.

        mode leaves the root logger at DEBUG and filters in the handler, so every
        ``log.debug`` of aiokafka and faust (one per message sent or fetched)
        built a LogRecord: about 12% of the worker's CPU under load.
        """

        def on_setup_root_logger(self, logger: logging.Logger, level: int) -> None:
            super().on_setup_root_logger(logger, level)
            if level:
                logger.setLevel(level)

    return QuietWorker


def run_worker(args) -> int:
    """``marginwatch worker``: blocks until SIGINT/SIGTERM; exit code of the worker."""
    from .app import create_app
    from .topics import ensure_topics

    overrides = {}
    if getattr(args, "web_port", None):
        overrides["web_port"] = args.web_port
    settings = Settings.from_env(**overrides)
    loglevel = (getattr(args, "loglevel", None) or settings.log_level).upper()
    logging.basicConfig(level=loglevel, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    log.info("settings: %s", settings.describe())
    asyncio.run(ensure_topics(settings))
    from .agents.ordering import commit_baseline

    asyncio.run(commit_baseline(settings))
    mapp = create_app(settings)
    app = mapp.app

    @app.task
    async def sequencer():
        from aiokafka.errors import CommitFailedError

        failures: list[float] = []
        while True:
            try:
                await mapp.sequencer.run()
                return
            except asyncio.CancelledError:
                raise
            except CommitFailedError as exc:
                # The sequencer group rebalanced during a commit (a worker joined or left):
                # the batch was forwarded but its input offsets not committed; the next
                # owner forwards it again (at-least-once, harmless: ids are idempotent).
                # Seen on the broker when a second worker joined or the first one stopped.
                now = time.monotonic()
                failures = [t for t in failures if now - t < 60] + [now]
                if len(failures) <= SEQUENCER_RESTARTS_PER_MINUTE:
                    log.warning("sequencer: commit failed in a rebalance (%s); restarting the sequencer",
                                str(exc).splitlines()[0][:200])
                    continue
                log.exception("sequencer: %d failed commits within a minute; stopping the worker", len(failures))
                os._exit(3)
            except Exception:  # the supervisor restarts us: never run without the sequencer
                log.exception("sequencer failed; stopping the worker")
                os._exit(3)

    @app.task
    async def install_commit_before_revoke():  # the consumer exists once the app runs
        commit_before_revoke(app.consumer)

    @app.task
    async def stall_watchdog():  # started with the app; the checks run in their own thread
        if settings.stall_timeout_s <= 0:
            log.warning("stall watchdog: disabled (MW_STALL_TIMEOUT_S=%g)", settings.stall_timeout_s)
            return
        start_watchdog(StallWatchdog(settings.stall_timeout_s, mapp.health.probe, clock=mapp.metrics.clock))

    @app.task
    async def heap_trim():  # glibc keeps freed buffers resident (streams/heap.py)
        await trim_heap_every(settings.malloc_trim_interval_s)

    @app.on_after_configured.connect
    def _noop(app_, **kwargs):  # keep faust's configuration hook quiet
        pass

    worker = _quiet_worker_class()(app, loglevel=loglevel, quiet=True, redirect_stdouts=False)
    worker.execute_from_commandline()
    return 0
