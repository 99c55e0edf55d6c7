"""Every Prometheus metric of marginwatch, created in one place by :func:`create_metrics`.

The worker serves ``Metrics.render()`` on ``GET /metrics``. All names carry the
``marginwatch_`` prefix, use base units (seconds, messages) and counters end in
``_total``. No label ever carries an account id: cardinality is bounded by the
contract's topics, outcomes, error codes and states, by symbols and by partitions.
Topic labels use the contract's topic names (without ``MW_TOPIC_PREFIX``).

Metrics (name ``{labels}`` — meaning):

- ``marginwatch_input_messages_total{topic, outcome}`` — input messages handled at ingress, outcome applied|duplicate|stale|dead_letter.
- ``marginwatch_dead_letters_total{topic, error}`` — inputs dead-lettered, by source topic and the contract's error code.
- ``marginwatch_outputs_total{topic}`` — output messages produced (margin-status, margin-calls, liquidations, dead-letters).
- ``marginwatch_decision_latency_seconds{output}`` — histogram, event time of the causing input → output produced (wall clock), 1 ms … 10 s.
- ``marginwatch_evaluation_duration_seconds`` — histogram, wall time to apply and evaluate one batch, 0.1 ms … 5 s.
- ``marginwatch_batch_events`` — histogram, number of input events per evaluated batch.
- ``marginwatch_accounts{state}`` — accounts held by this worker by worst state over their scopes (healthy|margin_call|liquidation).
- ``marginwatch_isolated_positions{state}`` — isolated positions held by this worker by state.
- ``marginwatch_margin_calls_total{to}`` — scope state transitions (margin-calls outputs) by target state.
- ``marginwatch_liquidations_total`` — liquidation events emitted (every step of every episode).
- ``marginwatch_liquidation_episodes_total`` — scopes that entered liquidation (episodes started).
- ``marginwatch_positions`` — open positions held by this worker.
- ``marginwatch_accounts_held`` — accounts held by this worker.
- ``marginwatch_remembered_input_ids`` — input ids (fills, collateral, snapshots) this worker remembers to tell redeliveries from new events; the state that grows with input until it spans 24 h of event time per account (older ids are forgotten, ``streams/margin/dedup.py``).
- ``process_resident_memory_bytes``, ``process_cpu_seconds_total``, ``process_open_fds`` … — prometheus_client's standard process collector (the worker's RSS, CPU, descriptors).
- ``marginwatch_mark_price_age_seconds{symbol}`` — wall-clock seconds since a mark tick of the symbol was last applied; computed at scrape time, keeps growing when no tick arrives.
- ``marginwatch_mark_price_last_timestamp_seconds{symbol}`` — event time (ts) of the last applied mark tick of the symbol, Unix seconds.
- ``marginwatch_consumer_lag_messages{topic, partition}`` — messages between the consumer position and the high watermark: topic ``sequenced`` for the margin agent's ordered log (high watermark − last processed offset − 1), the contract's input topic names for the sequencer.
- ``marginwatch_consumer_lag_seconds{partition}`` — wall clock minus event time of the last applied input of the partition; computed at scrape time, grows while the partition is stuck.
- ``marginwatch_table_recovery_duration_seconds`` — duration of the last completed table (changelog) recovery.
- ``marginwatch_recovering`` — 1 while tables are recovering, else 0.
- ``marginwatch_rebalances_total`` — consumer-group rebalances seen by this worker.
- ``marginwatch_sequencer_forwarded_total{topic}`` — input records the sequencer forwarded to the sequenced log, by source topic (a broadcast record counts once, whatever its fan-out).
- ``marginwatch_build_info{version, python, faust}`` — always 1; the labels carry the versions.
- ``marginwatch_worker_last_progress_timestamp_seconds`` — wall clock of the last handled input (applied, duplicate, stale or dead-lettered), initialised at creation; the stall watchdog reads it.

``_created`` series are disabled process-wide (``prometheus_client.disable_created_metrics``):
they double the series count and nothing here uses them.

Typical use by the agents::

    metrics = create_metrics(CollectorRegistry())
    metrics.observe_input("fills", "applied")
    metrics.observe_input("fills", "dead_letter", error="unknown_instrument")
    metrics.set_mark("BTCUSDT", event_ts_ms=tick.ts)
    metrics.set_partition_progress(3, event_ts_ms)
    metrics.observe_output("margin-calls", event_ts_ms=cause_ts)
    body = metrics.render()
"""
from __future__ import annotations

import platform
import threading
import time
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Callable, Iterable, Iterator, Mapping

from prometheus_client import (
    CONTENT_TYPE_LATEST,
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    ProcessCollector,
    disable_created_metrics,
    generate_latest,
)
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.registry import Collector

from .margin.errors import ERROR_CODES

disable_created_metrics()

PREFIX = "marginwatch_"
CONTENT_TYPE = CONTENT_TYPE_LATEST

INPUT_TOPICS: tuple[str, ...] = ("fills", "mark-prices", "collateral", "account-snapshots", "risk-params")
OUTPUT_TOPICS: tuple[str, ...] = ("margin-status", "margin-calls", "liquidations", "dead-letters")
DECISION_OUTPUTS: tuple[str, ...] = ("margin-status", "margin-calls", "liquidations")
OUTCOMES: tuple[str, ...] = ("applied", "duplicate", "stale", "dead_letter", "conflated")
STATES: tuple[str, ...] = ("healthy", "margin_call", "liquidation")
#: ``topic`` label of the margin agent's consumer lag (the internal sequenced log)
SEQUENCED_LAG_TOPIC = "sequenced"

DECISION_LATENCY_BUCKETS: tuple[float, ...] = (
    0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0,
)
EVALUATION_BUCKETS: tuple[float, ...] = (
    0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0,
)
BATCH_EVENTS_BUCKETS: tuple[float, ...] = (1, 2, 5, 10, 25, 50, 100, 250, 500, 1000, 2500, 5000)

Clock = Callable[[], float]


def _version() -> str:
    try:
        from importlib.metadata import version

        return version("marginwatch")
    except Exception:  # not installed: running from a checkout
        pass
    try:
        import tomllib
        from pathlib import Path

        pyproject = Path(__file__).resolve().parent.parent / "pyproject.toml"
        return str(tomllib.loads(pyproject.read_text())["project"]["version"])
    except Exception:
        return "unknown"


def _faust_version() -> str:
    try:
        import faust

        return str(faust.__version__)
    except Exception:
        return "unknown"


class _ClockCollector(Collector):
    """Gauges whose value depends on the wall clock at scrape time.

    Holds, per symbol, the wall time and event time of the last applied mark, and
    per partition the event time of the last applied input and the consumer lag in
    messages. ``collect`` turns them into ages with the injected clock, so an age
    keeps growing while nothing arrives.
    """

    def __init__(self, clock: Clock) -> None:
        self._clock = clock
        self._lock = threading.Lock()
        self.marks: dict[str, tuple[float, float]] = {}  # symbol -> (wall_s, event_ts_s)
        self.progress: dict[str, float] = {}  # partition -> event ts of last applied input, s
        self.lag: dict[tuple[str, str], float] = {}  # (topic, partition) -> messages

    def _families(self) -> tuple[GaugeMetricFamily, ...]:
        return (
            GaugeMetricFamily(
                PREFIX + "mark_price_age_seconds",
                "Wall-clock seconds since a mark tick of the symbol was last applied (grows while no tick arrives).",
                labels=["symbol"],
            ),
            GaugeMetricFamily(
                PREFIX + "mark_price_last_timestamp_seconds",
                "Event time (ts) of the last applied mark tick of the symbol, Unix seconds.",
                labels=["symbol"],
            ),
            GaugeMetricFamily(
                PREFIX + "consumer_lag_messages",
                "Messages between the consumer position and the high watermark, per topic partition.",
                labels=["topic", "partition"],
            ),
            GaugeMetricFamily(
                PREFIX + "consumer_lag_seconds",
                "Wall clock minus event time of the last applied input of the partition (grows while stuck).",
                labels=["partition"],
            ),
        )

    def describe(self) -> Iterable[GaugeMetricFamily]:
        return self._families()

    def collect(self) -> Iterable[GaugeMetricFamily]:
        age, last_ts, lag_msgs, lag_s = self._families()
        now = self._clock()
        with self._lock:
            marks = sorted(self.marks.items())
            progress = sorted(self.progress.items())
            lag = sorted(self.lag.items())
        for symbol, (wall_s, event_s) in marks:
            age.add_metric([symbol], max(0.0, now - wall_s))
            last_ts.add_metric([symbol], event_s)
        for (topic, partition), messages in lag:
            lag_msgs.add_metric([topic, partition], messages)
        for partition, event_s in progress:
            lag_s.add_metric([partition], max(0.0, now - event_s))
        return (age, last_ts, lag_msgs, lag_s)


@dataclass(eq=False)
class Metrics:
    """The metric objects of one registry, plus the helpers the agents call.

    All helpers are cheap and never block; they are safe to call from the event
    loop. ``clock`` returns wall-clock seconds (``time.time``); tests inject one.
    """

    registry: CollectorRegistry
    clock: Clock
    input_messages: Counter
    dead_letters: Counter
    outputs: Counter
    decision_latency: Histogram
    evaluation_duration: Histogram
    batch_events: Histogram
    accounts: Gauge
    isolated_positions: Gauge
    margin_calls: Counter
    liquidations: Counter
    liquidation_episodes: Counter
    positions: Gauge
    accounts_held: Gauge
    remembered_ids: Gauge
    table_recovery_duration: Gauge
    recovering: Gauge
    rebalances: Counter
    sequencer_forwarded: Counter
    build_info: Gauge
    worker_last_progress: Gauge
    _clocked: _ClockCollector = field(repr=False)
    _recovery_started_at: float | None = field(default=None, repr=False)
    _last_progress_s: float = field(default=0.0, repr=False)
    _recovering: bool = field(default=False, repr=False)

    # ----------------------------------------------------------------- inputs
    def observe_input(self, topic: str, outcome: str, error: str | None = None) -> None:
        """Count one input message at ingress.

        ``outcome`` is applied|duplicate|stale|dead_letter|conflated (a tick superseded
        within its batch, ``MW_CONFLATE_TICKS``); a dead-letter needs
        ``error``, one of the contract's codes (:data:`ERROR_CODES`), and is also
        counted in ``marginwatch_dead_letters_total``. Every handled input counts
        as worker progress. Raises ``ValueError`` on an unknown outcome or code.
        """
        if outcome not in OUTCOMES:
            raise ValueError(f"unknown input outcome {outcome!r}; expected one of {OUTCOMES}")
        if outcome == "dead_letter":
            if error not in ERROR_CODES:
                raise ValueError(f"a dead_letter needs a contract error code, got {error!r}")
            self.dead_letters.labels(topic, error).inc()
        elif error is not None:
            raise ValueError(f"error={error!r} given for outcome {outcome!r}")
        self.input_messages.labels(topic, outcome).inc()
        self.mark_progress()

    def mark_progress(self, wall_s: float | None = None) -> None:
        """Record that the worker handled an input now (or at ``wall_s``)."""
        now = self.clock() if wall_s is None else wall_s
        self._last_progress_s = now
        self.worker_last_progress.set(now)

    def seconds_since_progress(self) -> float:
        """Wall-clock seconds since the last handled input (or since creation)."""
        return max(0.0, self.clock() - self._last_progress_s)

    @property
    def last_progress_s(self) -> float:
        """Wall clock (``clock()``) of the last handled input, or of creation."""
        return self._last_progress_s

    # ------------------------------------------------------------------ marks
    def set_mark(self, symbol: str, event_ts_ms: int, wall_s: float | None = None) -> None:
        """Record an applied mark tick of ``symbol`` (event ``ts`` in ms) at wall time ``wall_s``.

        Keeps the latest wall time and the greatest event time seen for the symbol
        (a tick applied on several partitions is recorded more than once).
        """
        now = self.clock() if wall_s is None else wall_s
        event_s = event_ts_ms / 1000.0
        c = self._clocked
        with c._lock:
            old = c.marks.get(symbol)
            if old is not None:
                now, event_s = max(now, old[0]), max(event_s, old[1])
            c.marks[symbol] = (now, event_s)

    def clear_marks(self) -> None:
        """Forget every symbol (e.g. when this worker holds no partition any more)."""
        with self._clocked._lock:
            self._clocked.marks.clear()

    # ------------------------------------------------------------- partitions
    def set_partition_progress(self, partition: int | str, event_ts_ms: int) -> None:
        """Record the event time (ms) of the last applied input of an account partition."""
        with self._clocked._lock:
            self._clocked.progress[str(partition)] = event_ts_ms / 1000.0

    def set_lag(self, topic: str, partition: int | str, messages: int | float) -> None:
        """Set the consumer lag in messages of one topic partition (high watermark − position)."""
        with self._clocked._lock:
            self._clocked.lag[(topic, str(partition))] = max(0.0, float(messages))

    def forget_partition(self, partition: int | str, topic: str | None = None) -> None:
        """Drop the lag series of a partition (call when it is revoked from this worker).

        With ``topic``, only that topic's message lag is dropped (the event-time lag
        of the account partition too); without, the message lag of every topic.
        """
        p = str(partition)
        c = self._clocked
        with c._lock:
            c.progress.pop(p, None)
            for key in [k for k in c.lag if k[1] == p and (topic is None or k[0] == topic)]:
                del c.lag[key]

    def forget_lag(self, topic: str, partition: int | str) -> None:
        """Drop the message-lag series of one topic partition (e.g. no longer assigned)."""
        with self._clocked._lock:
            self._clocked.lag.pop((topic, str(partition)), None)

    def lag_snapshot(self, topic: str | None = None) -> dict[tuple[str, str], float]:
        """The current message lags, ``(topic, partition) -> messages`` (of ``topic`` only, if given)."""
        with self._clocked._lock:
            return {k: v for k, v in self._clocked.lag.items() if topic is None or k[0] == topic}

    # ---------------------------------------------------------------- outputs
    def observe_output(self, topic: str, event_ts_ms: int | None = None, wall_s: float | None = None) -> None:
        """Count one produced output; for a decision output with the causing
        input's event time ``event_ts_ms``, also observe the decision latency."""
        self.outputs.labels(topic).inc()
        if event_ts_ms is not None and topic in DECISION_OUTPUTS:
            self.observe_decision_latency(topic, event_ts_ms, wall_s)

    def observe_decision_latency(self, output: str, event_ts_ms: int, wall_s: float | None = None) -> None:
        """Observe input event time → output produced, in seconds (clamped at 0)."""
        now = self.clock() if wall_s is None else wall_s
        self.decision_latency.labels(output).observe(max(0.0, now - event_ts_ms / 1000.0))

    def observe_transition(self, to: str) -> None:
        """Count a scope state transition (a margin-calls output) to state ``to``."""
        if to not in STATES:
            raise ValueError(f"unknown state {to!r}; expected one of {STATES}")
        self.margin_calls.labels(to).inc()

    def observe_liquidation(self, new_episode: bool) -> None:
        """Count a liquidations output; ``new_episode`` when it opens an episode (step 1)."""
        self.liquidations.inc()
        if new_episode:
            self.liquidation_episodes.inc()

    # ------------------------------------------------------------- evaluation
    def observe_batch(self, events: int, duration_s: float) -> None:
        """Observe one evaluated batch: its size in events and its wall duration."""
        self.batch_events.observe(events)
        self.evaluation_duration.observe(max(0.0, duration_s))

    @contextmanager
    def time_batch(self, events: int) -> Iterator[None]:
        """``with metrics.time_batch(len(batch)): ...`` — observe_batch around a block."""
        start = time.perf_counter()
        try:
            yield
        finally:
            self.observe_batch(events, time.perf_counter() - start)

    # ------------------------------------------------------------------ state
    def set_account_states(
        self, accounts: Mapping[str, int], isolated_positions: Mapping[str, int] | None = None
    ) -> None:
        """Set the accounts (by worst state) and, if given, isolated positions by state.

        States missing from a mapping are set to 0.
        """
        for state in STATES:
            self.accounts.labels(state).set(accounts.get(state, 0))
        if isolated_positions is not None:
            for state in STATES:
                self.isolated_positions.labels(state).set(isolated_positions.get(state, 0))

    def set_held(self, accounts: int, positions: int, remembered_ids: int | None = None) -> None:
        """Set the accounts, open positions and (if given) remembered input ids held by this worker."""
        self.accounts_held.set(accounts)
        self.positions.set(positions)
        if remembered_ids is not None:
            self.remembered_ids.set(remembered_ids)

    # ------------------------------------------------------- recovery, group
    def recovery_started(self) -> None:
        """Tables started recovering (marginwatch_recovering = 1); the duration counts from the last call."""
        self._recovery_started_at = time.monotonic()
        self._recovering = True
        self.recovering.set(1)

    def recovery_finished(self, duration_s: float | None = None) -> None:
        """Recovery completed: recovering = 0, duration = ``duration_s`` or time since started."""
        if duration_s is None and self._recovery_started_at is not None:
            duration_s = time.monotonic() - self._recovery_started_at
        self._recovery_started_at = None
        self._recovering = False
        self.recovering.set(0)
        if duration_s is not None:
            self.table_recovery_duration.set(duration_s)

    @property
    def is_recovering(self) -> bool:
        """True between :meth:`recovery_started` and :meth:`recovery_finished`."""
        return self._recovering

    def observe_rebalance(self) -> None:
        """Count a consumer-group rebalance (partitions revoked/assigned)."""
        self.rebalances.inc()

    # -------------------------------------------------------------- sequencer
    def observe_forwarded(self, topic: str, records: int = 1) -> None:
        """Count input records of contract topic ``topic`` forwarded by the sequencer."""
        self.sequencer_forwarded.labels(topic).inc(records)

    # --------------------------------------------------------------- exposure
    def render(self) -> bytes:
        """The text exposition of the registry (serve with :data:`CONTENT_TYPE`)."""
        return generate_latest(self.registry)


def create_metrics(registry: CollectorRegistry, *, clock: Clock = time.time) -> Metrics:
    """Create every marginwatch metric in ``registry`` and return them.

    Known label values (topics × outcomes, topics × error codes, states, outputs)
    are pre-initialised to 0 so ``rate()`` sees the first increment. ``clock``
    gives wall-clock seconds for the scrape-time ages and progress timestamps.
    """
    r = registry
    # process_resident_memory_bytes, process_cpu_seconds_total, open fds: what a memory
    # or CPU alert of an SRE starts from (read from /proc at scrape time)
    ProcessCollector(registry=r)
    m = Metrics(
        registry=r,
        clock=clock,
        input_messages=Counter(
            PREFIX + "input_messages", "Input messages handled at ingress, by topic and outcome.",
            ["topic", "outcome"], registry=r,
        ),
        dead_letters=Counter(
            PREFIX + "dead_letters", "Inputs dead-lettered, by source topic and contract error code.",
            ["topic", "error"], registry=r,
        ),
        outputs=Counter(PREFIX + "outputs", "Output messages produced, by topic.", ["topic"], registry=r),
        decision_latency=Histogram(
            PREFIX + "decision_latency_seconds",
            "Event time of the causing input to output produced (wall clock), seconds.",
            ["output"], buckets=DECISION_LATENCY_BUCKETS, registry=r,
        ),
        evaluation_duration=Histogram(
            PREFIX + "evaluation_duration_seconds", "Wall time to apply and evaluate one batch, seconds.",
            buckets=EVALUATION_BUCKETS, registry=r,
        ),
        batch_events=Histogram(
            PREFIX + "batch_events", "Input events per evaluated batch.", buckets=BATCH_EVENTS_BUCKETS, registry=r,
        ),
        accounts=Gauge(
            PREFIX + "accounts", "Accounts held by this worker, by worst state over their scopes.",
            ["state"], registry=r,
        ),
        isolated_positions=Gauge(
            PREFIX + "isolated_positions", "Isolated positions held by this worker, by state.",
            ["state"], registry=r,
        ),
        margin_calls=Counter(
            PREFIX + "margin_calls", "Scope state transitions (margin-calls outputs), by target state.",
            ["to"], registry=r,
        ),
        liquidations=Counter(PREFIX + "liquidations", "Liquidation events emitted (every step).", registry=r),
        liquidation_episodes=Counter(
            PREFIX + "liquidation_episodes", "Liquidation episodes started (scope entered liquidation).", registry=r,
        ),
        positions=Gauge(PREFIX + "positions", "Open positions held by this worker.", registry=r),
        accounts_held=Gauge(PREFIX + "accounts_held", "Accounts held by this worker.", registry=r),
        remembered_ids=Gauge(
            PREFIX + "remembered_input_ids",
            "Input ids (fills, collateral, snapshots) remembered by this worker to detect redeliveries.", registry=r,
        ),
        table_recovery_duration=Gauge(
            PREFIX + "table_recovery_duration_seconds", "Duration of the last completed table recovery, seconds.",
            registry=r,
        ),
        recovering=Gauge(PREFIX + "recovering", "1 while tables are recovering, else 0.", registry=r),
        rebalances=Counter(PREFIX + "rebalances", "Consumer-group rebalances seen by this worker.", registry=r),
        sequencer_forwarded=Counter(
            PREFIX + "sequencer_forwarded",
            "Input records forwarded by the sequencer to the sequenced log, by source topic (once per input).",
            ["topic"], registry=r,
        ),
        build_info=Gauge(
            PREFIX + "build_info", "Build information; always 1.", ["version", "python", "faust"], registry=r,
        ),
        worker_last_progress=Gauge(
            PREFIX + "worker_last_progress_timestamp_seconds",
            "Wall clock of the last handled input (or of start-up), Unix seconds.", registry=r,
        ),
        _clocked=_ClockCollector(clock),
    )
    r.register(m._clocked)

    for topic in INPUT_TOPICS:
        for outcome in OUTCOMES:
            m.input_messages.labels(topic, outcome)
        for code in ERROR_CODES:
            m.dead_letters.labels(topic, code)
        m.sequencer_forwarded.labels(topic)
    for topic in OUTPUT_TOPICS:
        m.outputs.labels(topic)
    for output in DECISION_OUTPUTS:
        m.decision_latency.labels(output)
    for state in STATES:
        m.accounts.labels(state).set(0)
        m.isolated_positions.labels(state).set(0)
        m.margin_calls.labels(state)
    m.build_info.labels(_version(), platform.python_version(), _faust_version()).set(1)
    m.mark_progress()
    return m


def metric_names() -> frozenset[str]:
    """Sample names exposed by a fresh :func:`create_metrics` registry, every labelled
    metric touched once: ``_total``, ``_bucket``/``_sum``/``_count`` forms included."""
    m = create_metrics(CollectorRegistry(), clock=lambda: 0.0)
    m.set_mark("X", 0, 0.0)
    m.set_partition_progress(0, 0)
    m.set_lag("t", 0, 0)
    names: set[str] = set()
    for family in m.registry.collect():
        for sample in family.samples:
            names.add(sample.name)
    return frozenset(names)


def metric_labels() -> dict[str, frozenset[str]]:
    """Label names of each exposed sample name (``le`` included for ``_bucket``)."""
    m = create_metrics(CollectorRegistry(), clock=lambda: 0.0)
    m.set_mark("X", 0, 0.0)
    m.set_partition_progress(0, 0)
    m.set_lag("t", 0, 0)
    out: dict[str, set[str]] = {}
    for family in m.registry.collect():
        for sample in family.samples:
            out.setdefault(sample.name, set()).update(sample.labels)
    return {k: frozenset(v) for k, v in out.items()}


METRIC_NAMES: frozenset[str] = metric_names()

__all__ = [
    "CONTENT_TYPE",
    "DECISION_OUTPUTS",
    "INPUT_TOPICS",
    "METRIC_NAMES",
    "Metrics",
    "OUTCOMES",
    "OUTPUT_TOPICS",
    "SEQUENCED_LAG_TOPIC",
    "STATES",
    "create_metrics",
    "metric_labels",
    "metric_names",
]
