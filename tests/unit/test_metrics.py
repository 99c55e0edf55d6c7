"""streams.metrics: one factory per registry, Prometheus naming conventions, scrape-time ages."""
from __future__ import annotations

import re

import pytest
from prometheus_client import CollectorRegistry
from prometheus_client.parser import text_string_to_metric_families

import streams.metrics as metrics_module
from streams.margin.errors import ERROR_CODES
from streams.metrics import (
    DECISION_LATENCY_BUCKETS,
    EVALUATION_BUCKETS,
    INPUT_TOPICS,
    METRIC_NAMES,
    OUTCOMES,
    STATES,
    create_metrics,
    metric_labels,
    metric_names,
)


class FakeClock:
    def __init__(self, now: float = 1_700_000_000.0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds


def sample(m, name: str, **labels) -> float | None:
    value = m.registry.get_sample_value(name, labels)
    return value


def touched(clock=None):
    """A Metrics with every labelled metric touched once."""
    m = create_metrics(CollectorRegistry(), clock=clock or FakeClock())
    m.set_mark("BTCUSDT", 1_700_000_000_000)
    m.set_partition_progress(0, 1_700_000_000_000)
    m.set_lag("fills", 0, 3)
    m.observe_output("margin-calls", event_ts_ms=1_700_000_000_000)
    m.observe_batch(10, 0.002)
    return m


# ------------------------------------------------------------------ factory
def test_factory_twice_with_two_registries_does_not_collide():
    a = create_metrics(CollectorRegistry())
    b = create_metrics(CollectorRegistry())
    a.observe_input("fills", "applied")
    assert sample(a, "marginwatch_input_messages_total", topic="fills", outcome="applied") == 1
    assert sample(b, "marginwatch_input_messages_total", topic="fills", outcome="applied") == 0
    a.set_mark("BTCUSDT", 1)
    assert sample(b, "marginwatch_mark_price_last_timestamp_seconds", symbol="BTCUSDT") is None


def test_factory_twice_on_one_registry_is_refused():
    registry = CollectorRegistry()
    create_metrics(registry)
    with pytest.raises(ValueError, match="Duplicated timeseries"):
        create_metrics(registry)


def test_render_is_valid_text_exposition_without_created_series():
    m = touched()
    body = m.render()
    assert isinstance(body, bytes)
    families = {f.name for f in text_string_to_metric_families(body.decode())}
    assert "marginwatch_input_messages" in families
    assert b"_created" not in body
    assert metrics_module.CONTENT_TYPE.startswith("text/plain")


# --------------------------------------------------------------- conventions
def test_names_follow_prometheus_conventions():
    m = touched()
    for family in m.registry.collect():
        # ours, and prometheus_client's standard process collector
        assert family.name.startswith(("marginwatch_", "process_")), family.name
        assert re.fullmatch(r"[a-z][a-z0-9_]*", family.name), family.name
        for s in family.samples:
            if family.type == "counter":
                assert s.name.endswith("_total"), s.name
            else:
                assert not s.name.endswith("_total"), s.name
            if family.type == "histogram":
                assert s.name.rsplit("_", 1)[-1] in {"bucket", "sum", "count"}, s.name
            for label in s.labels:
                assert "account" not in label, f"{s.name} has an account label {label!r}"
                assert re.fullmatch(r"[a-z][a-z0-9_]*", label), label
        if family.name.startswith("marginwatch_") and (family.name.endswith("_seconds") or "_seconds_" in family.name):
            assert family.type in {"gauge", "histogram"}, family.name
        assert not re.search(r"_(ms|milliseconds|minutes)\b", family.name), family.name


def test_no_account_label_anywhere():
    for name, labels in metric_labels().items():
        assert not {lb for lb in labels if "account" in lb}, name


def test_metric_names_lists_exposed_sample_names():
    assert METRIC_NAMES == metric_names()
    for expected in (
        "marginwatch_input_messages_total",
        "marginwatch_dead_letters_total",
        "marginwatch_decision_latency_seconds_bucket",
        "marginwatch_decision_latency_seconds_sum",
        "marginwatch_decision_latency_seconds_count",
        "marginwatch_evaluation_duration_seconds_bucket",
        "marginwatch_batch_events_bucket",
        "marginwatch_accounts",
        "marginwatch_isolated_positions",
        "marginwatch_margin_calls_total",
        "marginwatch_liquidations_total",
        "marginwatch_liquidation_episodes_total",
        "marginwatch_positions",
        "marginwatch_accounts_held",
        "marginwatch_mark_price_age_seconds",
        "marginwatch_mark_price_last_timestamp_seconds",
        "marginwatch_consumer_lag_messages",
        "marginwatch_consumer_lag_seconds",
        "marginwatch_table_recovery_duration_seconds",
        "marginwatch_recovering",
        "marginwatch_rebalances_total",
        "marginwatch_outputs_total",
        "marginwatch_build_info",
        "marginwatch_worker_last_progress_timestamp_seconds",
    ):
        assert expected in METRIC_NAMES, expected
    # the base name of a histogram is not a series
    assert "marginwatch_decision_latency_seconds" not in METRIC_NAMES


def test_module_docstring_lists_every_metric():
    documented = set(re.findall(r"``(marginwatch_[a-z0-9_]+)", metrics_module.__doc__))
    exposed = {
        f.name + "_total" if f.type == "counter" else f.name for f in touched().registry.collect()
        if f.name.startswith("marginwatch_")
    }
    assert exposed == documented
    assert "``process_resident_memory_bytes``" in metrics_module.__doc__


def test_histogram_buckets():
    assert DECISION_LATENCY_BUCKETS[0] == 0.001 and DECISION_LATENCY_BUCKETS[-1] == 10.0
    assert EVALUATION_BUCKETS[0] == 0.0001 and EVALUATION_BUCKETS[-1] == 5.0
    m = touched()
    les = {
        s.labels["le"]
        for f in m.registry.collect()
        if f.name == "marginwatch_decision_latency_seconds"
        for s in f.samples
        if s.name.endswith("_bucket")
    }
    assert {"0.001", "10.0", "+Inf"} <= les


def test_known_label_values_are_preinitialised():
    m = create_metrics(CollectorRegistry())
    for topic in INPUT_TOPICS:
        for outcome in OUTCOMES:
            assert sample(m, "marginwatch_input_messages_total", topic=topic, outcome=outcome) == 0
        for code in ERROR_CODES:
            assert sample(m, "marginwatch_dead_letters_total", topic=topic, error=code) == 0
    for state in STATES:
        assert sample(m, "marginwatch_accounts", state=state) == 0
        assert sample(m, "marginwatch_margin_calls_total", to=state) == 0


def test_build_info():
    m = create_metrics(CollectorRegistry())
    [s] = [s for f in m.registry.collect() if f.name == "marginwatch_build_info" for s in f.samples]
    assert s.value == 1
    assert set(s.labels) == {"version", "python", "faust"}
    assert all(s.labels.values())


# ------------------------------------------------------------------- helpers
def test_observe_input_counts_outcomes_dead_letters_and_progress():
    clock = FakeClock(1000.0)
    m = create_metrics(CollectorRegistry(), clock=clock)
    assert sample(m, "marginwatch_worker_last_progress_timestamp_seconds") == 1000.0
    clock.advance(5)
    m.observe_input("fills", "applied")
    m.observe_input("fills", "duplicate")
    m.observe_input("mark-prices", "stale")
    m.observe_input("fills", "dead_letter", error="unknown_instrument")
    assert sample(m, "marginwatch_input_messages_total", topic="fills", outcome="applied") == 1
    assert sample(m, "marginwatch_input_messages_total", topic="fills", outcome="duplicate") == 1
    assert sample(m, "marginwatch_input_messages_total", topic="mark-prices", outcome="stale") == 1
    assert sample(m, "marginwatch_input_messages_total", topic="fills", outcome="dead_letter") == 1
    assert sample(m, "marginwatch_dead_letters_total", topic="fills", error="unknown_instrument") == 1
    assert sample(m, "marginwatch_worker_last_progress_timestamp_seconds") == 1005.0
    clock.advance(7)
    assert m.seconds_since_progress() == 7


def test_observe_input_rejects_bad_outcome_or_code():
    m = create_metrics(CollectorRegistry())
    with pytest.raises(ValueError):
        m.observe_input("fills", "ok")
    with pytest.raises(ValueError):
        m.observe_input("fills", "dead_letter")
    with pytest.raises(ValueError):
        m.observe_input("fills", "dead_letter", error="whatever")
    with pytest.raises(ValueError):
        m.observe_input("fills", "applied", error="invalid_json")


def test_mark_price_age_grows_with_time_until_next_tick():
    clock = FakeClock(1000.0)
    m = create_metrics(CollectorRegistry(), clock=clock)
    m.set_mark("BTCUSDT", event_ts_ms=999_500)
    assert sample(m, "marginwatch_mark_price_age_seconds", symbol="BTCUSDT") == 0
    assert sample(m, "marginwatch_mark_price_last_timestamp_seconds", symbol="BTCUSDT") == 999.5
    clock.advance(5)
    assert sample(m, "marginwatch_mark_price_age_seconds", symbol="BTCUSDT") == 5
    clock.advance(60)
    assert sample(m, "marginwatch_mark_price_age_seconds", symbol="BTCUSDT") == 65
    m.set_mark("BTCUSDT", event_ts_ms=1_064_000)
    assert sample(m, "marginwatch_mark_price_age_seconds", symbol="BTCUSDT") == 0
    assert sample(m, "marginwatch_mark_price_last_timestamp_seconds", symbol="BTCUSDT") == 1064.0
    # an older tick applied later (on another partition) does not move the event time back
    clock.advance(1)
    m.set_mark("BTCUSDT", event_ts_ms=1_000_000)
    assert sample(m, "marginwatch_mark_price_last_timestamp_seconds", symbol="BTCUSDT") == 1064.0
    assert sample(m, "marginwatch_mark_price_age_seconds", symbol="BTCUSDT") == 0
    m.clear_marks()
    assert sample(m, "marginwatch_mark_price_age_seconds", symbol="BTCUSDT") is None


def test_consumer_lag_seconds_grows_while_stuck_and_is_forgotten_on_revoke():
    clock = FakeClock(2000.0)
    m = create_metrics(CollectorRegistry(), clock=clock)
    m.set_partition_progress(3, 1_998_000)
    m.set_lag("fills", 3, 42)
    m.set_lag("marginwatch-sequenced", 3, 7)
    assert sample(m, "marginwatch_consumer_lag_seconds", partition="3") == 2
    clock.advance(10)
    assert sample(m, "marginwatch_consumer_lag_seconds", partition="3") == 12
    assert sample(m, "marginwatch_consumer_lag_messages", topic="fills", partition="3") == 42
    m.set_partition_progress(3, 2_012_000)
    assert sample(m, "marginwatch_consumer_lag_seconds", partition="3") == 0
    m.forget_partition(3)
    assert sample(m, "marginwatch_consumer_lag_seconds", partition="3") is None
    assert sample(m, "marginwatch_consumer_lag_messages", topic="fills", partition="3") is None
    assert sample(m, "marginwatch_consumer_lag_messages", topic="marginwatch-sequenced", partition="3") is None


def test_outputs_and_decision_latency():
    clock = FakeClock(10.5)
    m = create_metrics(CollectorRegistry(), clock=clock)
    m.observe_output("liquidations", event_ts_ms=10_000)
    m.observe_output("dead-letters", event_ts_ms=10_000)  # not a decision: no latency
    m.observe_output("margin-status")
    assert sample(m, "marginwatch_outputs_total", topic="liquidations") == 1
    assert sample(m, "marginwatch_outputs_total", topic="dead-letters") == 1
    assert sample(m, "marginwatch_outputs_total", topic="margin-status") == 1
    assert sample(m, "marginwatch_decision_latency_seconds_count", output="liquidations") == 1
    assert sample(m, "marginwatch_decision_latency_seconds_sum", output="liquidations") == 0.5
    assert sample(m, "marginwatch_decision_latency_seconds_bucket", output="liquidations", le="0.25") == 0
    assert sample(m, "marginwatch_decision_latency_seconds_bucket", output="liquidations", le="0.5") == 1
    assert sample(m, "marginwatch_decision_latency_seconds_count", output="margin-status") == 0
    # an input from the future never gives a negative latency
    m.observe_decision_latency("margin-calls", 99_000)
    assert sample(m, "marginwatch_decision_latency_seconds_sum", output="margin-calls") == 0


def test_transitions_liquidations_batches_states_and_recovery():
    m = create_metrics(CollectorRegistry())
    m.observe_transition("margin_call")
    m.observe_transition("liquidation")
    with pytest.raises(ValueError):
        m.observe_transition("bankrupt")
    m.observe_liquidation(new_episode=True)
    m.observe_liquidation(new_episode=False)
    assert sample(m, "marginwatch_margin_calls_total", to="margin_call") == 1
    assert sample(m, "marginwatch_liquidations_total") == 2
    assert sample(m, "marginwatch_liquidation_episodes_total") == 1

    m.observe_batch(100, 0.003)
    with m.time_batch(5):
        pass
    assert sample(m, "marginwatch_batch_events_count") == 2
    assert sample(m, "marginwatch_batch_events_sum") == 105
    assert sample(m, "marginwatch_evaluation_duration_seconds_count") == 2

    m.set_account_states({"healthy": 10, "liquidation": 1}, {"margin_call": 2})
    assert sample(m, "marginwatch_accounts", state="healthy") == 10
    assert sample(m, "marginwatch_accounts", state="margin_call") == 0
    assert sample(m, "marginwatch_accounts", state="liquidation") == 1
    assert sample(m, "marginwatch_isolated_positions", state="margin_call") == 2
    m.set_held(accounts=11, positions=25)
    assert sample(m, "marginwatch_accounts_held") == 11
    assert sample(m, "marginwatch_positions") == 25
    assert sample(m, "marginwatch_remembered_input_ids") == 0
    m.set_held(accounts=11, positions=25, remembered_ids=4096)
    assert sample(m, "marginwatch_remembered_input_ids") == 4096

    m.recovery_started()
    assert sample(m, "marginwatch_recovering") == 1
    m.recovery_finished(12.5)
    assert sample(m, "marginwatch_recovering") == 0
    assert sample(m, "marginwatch_table_recovery_duration_seconds") == 12.5
    m.recovery_started()
    m.recovery_finished()
    assert 0 <= sample(m, "marginwatch_table_recovery_duration_seconds") < 1
    m.observe_rebalance()
    assert sample(m, "marginwatch_rebalances_total") == 1
