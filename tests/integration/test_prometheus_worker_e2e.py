"""A real Prometheus scrapes a live ``marginwatch worker``: its numbers equal ``marginwatch replay``.

The scenario (one symbol, a crash half-way, a few hostile messages) is produced in
phases — all collateral, then all fills, then all marks, each phase processed
before the next — so the order of every account's log is fixed and the replay of
the phased file is what the worker must have done. Prometheus scrapes the
worker's ``/metrics`` every second; through its HTTP API:

- ``up == 1``;
- ``sum(marginwatch_input_messages_total)`` = the records of the sequenced log
  (account events once, marks once per partition); the sequencer forwarded
  each input once;
- margin calls (by target state), liquidations, episodes, outputs per topic and
  dead letters per (topic, error) = the replay's outputs (dead letters of marks
  once per partition), and = the worker's committed output topics;
- decision latency observed once per decision output; lag 0, not recovering, a
  table recovery duration, at least one rebalance, the state gauges add up.

Before any input, ``/readyz`` turns 200 and an account query answers 404: a
query must not leave the agent unable to process that partition afterwards.
"""
from __future__ import annotations

import asyncio
import time
import urllib.error
import urllib.request
from collections import Counter
from pathlib import Path

import orjson
import pytest

from streams.sim.market import SimConfig, generate
from streams.topics import BROADCAST_TOPICS, sequenced_topic

from .harness import (
    WorkerProcess,
    envelope_bytes,
    expected_sequenced,
    produce,
    replay_partition,
    settings_for,
    wait_processed,
    wait_up,
    worker_env,
    worker_outputs,
)
from .prom_helpers import PrometheusServer

pytestmark = [pytest.mark.kafka]
PARTITIONS = 4
ROOT = Path(__file__).resolve().parents[2]
JOB = "marginwatch"


def http_get(port: int, path: str) -> tuple[int | None, bytes]:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}{path}", timeout=10) as resp:
            return resp.status, resp.read()
    except urllib.error.HTTPError as e:
        return e.code, e.read()
    except OSError as e:
        return None, str(e).encode()


def wait_ready(worker: WorkerProcess, timeout: float = 90) -> None:
    deadline = time.time() + timeout
    status, body = None, b""
    while time.time() < deadline:
        status, body = http_get(worker.port, "/readyz")
        if status == 200:
            return
        if worker.proc and worker.proc.poll() is not None:
            raise AssertionError(f"worker exited with {worker.proc.returncode}:\n{worker.tail()}")
        time.sleep(0.25)
    raise AssertionError(f"/readyz still {status} {body!r} after {timeout}s:\n{worker.tail()}")


def by_labels(prom: PrometheusServer, expr: str, *labels: str) -> dict:
    """``{label values: value}`` of a vector query, zero values dropped."""
    out = {}
    for r in prom.query(expr):
        if r["value"]:
            key = tuple(r["metric"].get(lb, "") for lb in labels)
            out[key if len(labels) > 1 else key[0]] = r["value"]
    return out


@pytest.mark.timeout(300)
def test_prometheus_scraping_a_live_worker_agrees_with_replay(kafka_bootstrap, unique_prefix, tmp_path):
    cfg = SimConfig(seed=5, accounts=100, events=3000, symbols=("BTCUSDT",), crash_at=0.5)
    original = list(generate(cfg))
    order = ["collateral", "fills", "mark-prices", "account-snapshots", "risk-params"]
    assert {e["topic"] for e in original} <= set(order)
    phases = [p for p in ([e for e in original if e["topic"] == t] for t in order) if p]
    phased = [e for phase in phases for e in phase]

    # what the worker must have done: replay of the phased file
    env = worker_env(kafka_bootstrap, unique_prefix, PARTITIONS)
    settings = settings_for(env)
    lines = [orjson.dumps({"topic": e["topic"], "key": e["key"], "value": envelope_bytes(e)[1].decode()})
             for e in phased]
    replay = replay_partition(lines, settings)
    fan_out = {t: (PARTITIONS if t in BROADCAST_TOPICS else 1) for t in order}
    want_calls = Counter(v["to"] for v in replay["margin-calls"])
    want_liquidations = len(replay["liquidations"])
    want_episodes = sum(1 for v in replay["liquidations"] if v["step"] == 1)
    want_dead = Counter()
    for v in replay["dead-letters"]:
        want_dead[(v["source_topic"], v["error"])] += fan_out[v["source_topic"]]
    want_outputs = {
        "margin-status": len(replay["margin-status"]),
        "margin-calls": len(replay["margin-calls"]),
        "liquidations": want_liquidations,
        "dead-letters": sum(want_dead.values()),
    }
    want_sequenced = expected_sequenced(phased, PARTITIONS)
    assert want_calls["liquidation"] > 0 and want_liquidations > 0 and want_dead, "scenario too tame"

    worker = WorkerProcess(env, tmp_path, "a").start()
    try:
        wait_up(worker)
        wait_ready(worker)
        account = next(e["key"] for e in phased if e["topic"] == "collateral")
        status, body = http_get(worker.port, f"/accounts/{account}")
        assert status == 404, (status, body)

        topic = sequenced_topic(settings)
        total = 0
        t0 = time.time()
        for phase in phases:
            asyncio.run(produce(kafka_bootstrap, unique_prefix, phase))
            total += expected_sequenced(phase, PARTITIONS)
            wait_processed(kafka_bootstrap, env["MW_APP_ID"], topic, total, 150, [worker])
        processed_in = time.time() - t0
        assert total == want_sequenced

        with PrometheusServer([f"127.0.0.1:{worker.port}"], tmp_path / "prom", job=JOB,
                              rule_files=[ROOT / "monitoring" / "alerts.yml"]) as prom:
            assert prom.wait_for(f'up{{job="{JOB}"}}', lambda v: v == 1, timeout=60) == 1
            sel = f'{{job="{JOB}"}}'
            got_inputs = prom.wait_for(f"sum(marginwatch_input_messages_total{sel})",
                                       lambda v: v == want_sequenced, timeout=30)
            # the 1 s lag refresh and 5 s state gauges have caught up once these hold
            prom.wait_for(f'sum(marginwatch_consumer_lag_messages{{job="{JOB}", topic="sequenced"}})',
                          lambda v: v == 0, timeout=30)
            held = prom.wait_for(f"marginwatch_accounts_held{sel}", lambda v: v > 0, timeout=30)

            got_calls = by_labels(prom, f"sum by (to) (marginwatch_margin_calls_total{sel})", "to")
            got_liquidations = prom.query_value(f"sum(marginwatch_liquidations_total{sel})")
            got_episodes = prom.query_value(f"sum(marginwatch_liquidation_episodes_total{sel})")
            got_outputs = by_labels(prom, f"sum by (topic) (marginwatch_outputs_total{sel})", "topic")
            got_dead = by_labels(prom, f"sum by (topic, error) (marginwatch_dead_letters_total{sel})",
                                 "topic", "error")
            got_dead_inputs = prom.query_value(
                f'sum(marginwatch_input_messages_total{{job="{JOB}", outcome="dead_letter"}})')
            got_forwarded = prom.query_value(f"sum(marginwatch_sequencer_forwarded_total{sel})")
            got_latency = by_labels(
                prom, f"sum by (output) (marginwatch_decision_latency_seconds_count{sel})", "output")
            got_states = prom.query_value(f"sum(marginwatch_accounts{sel})")
            recovering = prom.query_value(f"marginwatch_recovering{sel}")
            recovery_s = prom.query_value(f"marginwatch_table_recovery_duration_seconds{sel}")
            rebalances = prom.query_value(f"marginwatch_rebalances_total{sel}")
            applied_account_events = prom.query_value(
                f'sum(marginwatch_input_messages_total{{job="{JOB}", outcome="applied", '
                f'topic=~"fills|collateral|account-snapshots"}})')
            # a 5 s gauge: wait for the refresh after the last input
            remembered = prom.wait_for(f"marginwatch_remembered_input_ids{sel}",
                                       lambda v: v == applied_account_events, timeout=30)
            rules = prom.rules()

        print(f"\nprocessed {len(phased)} inputs ({want_sequenced} sequenced records) in {processed_in:.1f}s")
        print(f"inputs handled:      prometheus {got_inputs:.0f}  sequenced log {want_sequenced}")
        print(f"forwarded inputs:    prometheus {got_forwarded:.0f}  produced {len(phased)}")
        print(f"margin calls by to:  prometheus {dict(sorted(got_calls.items()))}  replay {dict(sorted(want_calls.items()))}")
        print(f"liquidations:        prometheus {got_liquidations:.0f}  replay {want_liquidations}")
        print(f"episodes:            prometheus {got_episodes:.0f}  replay {want_episodes}")
        print(f"outputs by topic:    prometheus {dict(sorted(got_outputs.items()))}  replay {dict(sorted(want_outputs.items()))}")
        print(f"dead letters:        prometheus {dict(sorted(got_dead.items()))}  replay {dict(sorted(want_dead.items()))}")
        print(f"recovering {recovering}, last table recovery {recovery_s:.3f}s, rebalances {rebalances:.0f}, "
              f"accounts held {held:.0f}, remembered ids {remembered:.0f}")

        assert got_inputs == want_sequenced
        assert got_forwarded == len(phased)
        assert got_calls == {to: float(n) for to, n in want_calls.items()}
        assert sum(got_calls.values()) == len(replay["margin-calls"])
        assert got_liquidations == want_liquidations
        assert got_episodes == want_episodes
        assert got_outputs == {t: float(n) for t, n in want_outputs.items() if n}
        assert got_dead == {k: float(n) for k, n in want_dead.items()}
        assert got_dead_inputs == sum(want_dead.values())
        decisions = ("margin-status", "margin-calls", "liquidations")
        assert got_latency == {t: float(want_outputs[t]) for t in decisions if want_outputs[t]}
        assert got_states == held
        assert recovering == 0 and recovery_s is not None and recovery_s > 0
        assert rebalances >= 1
        # every applied account event leaves exactly its id behind (the state that grows with input)
        assert remembered == applied_account_events > 0, (remembered, applied_account_events)
        assert all(rule["health"] in {"ok", "unknown"} for rule in rules), rules
    finally:
        worker.stop()

    # the worker's committed output topics hold the same numbers
    outputs = asyncio.run(worker_outputs(kafka_bootstrap, unique_prefix))
    committed = {t: sum(len(v) for v in outputs[t].values()) for t in want_outputs}
    print(f"committed outputs:   {committed}")
    assert committed == want_outputs
