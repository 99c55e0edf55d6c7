"""The stream pipeline on the real broker equals ``marginwatch replay``.

1. A generated log (≥ 20,000 events, ≥ 200 accounts, several symbols, margin calls
   and liquidations among the outputs) through the worker: replaying each exported
   partition of the sequenced log gives exactly the worker's outputs.
2. Input produced in phases (collateral, then fills, then marks of one symbol), so
   its order is fixed: the outputs equal ``replay`` of the original file.
3. Two workers in one group, one killed mid-stream: the survivor restores state
   from the committed changelog and the outputs still equal the replay. The test
   plays the supervisor: a worker that exits deliberately (the ordering guard's 5
   when faust resumed a partition past unapplied records, the watchdog's 4) is
   restarted, as compose's restart policy or systemd would.
"""
from __future__ import annotations

import asyncio
import time
from collections import defaultdict

import pytest

from streams.sim.market import SimConfig, generate
from streams.topics import sequenced_topic

from .harness import (
    WorkerProcess,
    envelope_bytes,
    produce,
    read_topic,
    replay_partition,
    sequenced_as_replay_lines,
    settings_for,
    expected_sequenced,
    wait_committed,
    wait_processed,
    wait_up,
    worker_env,
    worker_outputs,
)

pytestmark = [pytest.mark.kafka]
PARTITIONS = 4


def assert_equal_to_replay(bootstrap: str, env: dict) -> dict[str, int]:
    """Per partition: worker outputs == replay of the exported sequenced log. Returns counts."""
    settings = settings_for(env)
    seq = asyncio.run(read_topic(bootstrap, sequenced_topic(settings)))
    outputs = asyncio.run(worker_outputs(bootstrap, env["MW_TOPIC_PREFIX"]))
    counts: dict[str, int] = defaultdict(int)
    events = 0
    for p in range(PARTITIONS):
        lines = sequenced_as_replay_lines(seq.get(p, []))
        events += len(lines)
        expected = replay_partition(lines, settings)
        for topic in ("margin-status", "margin-calls", "liquidations", "dead-letters"):
            got = outputs[topic].get(p, [])
            want = expected.get(topic, [])
            counts[topic] += len(got)
            if got != want:
                first = next((i for i, (a, b) in enumerate(zip(got, want)) if a != b), min(len(got), len(want)))
                a = got[first] if first < len(got) else {}
                b = want[first] if first < len(want) else {}
                diff = {k: (a.get(k), b.get(k)) for k in sorted(set(a) | set(b)) if a.get(k) != b.get(k)}
                raise AssertionError(
                    f"partition {p} topic {topic}: worker {len(got)} vs replay {len(want)} outputs; "
                    f"first difference at {first} ({a.get('event_id')} / {b.get('event_id')}): "
                    f"(worker, replay) = {diff}"
                )
    counts["sequenced_events"] = events
    return dict(counts)


@pytest.mark.timeout(600)
def test_generated_log_equals_replay_of_sequenced_log(kafka_bootstrap, unique_prefix, tmp_path):
    envelopes = list(generate(SimConfig(seed=11, accounts=220, events=20000)))
    assert len(envelopes) >= 20000
    env = worker_env(kafka_bootstrap, unique_prefix, PARTITIONS)
    worker = WorkerProcess(env, tmp_path, "a").start()
    try:
        wait_up(worker)
        t0 = time.time()
        asyncio.run(produce(kafka_bootstrap, unique_prefix, envelopes))
        wait_processed(kafka_bootstrap, env["MW_APP_ID"], sequenced_topic(settings_for(env)),
                       expected_sequenced(envelopes, PARTITIONS), 400, [worker])
        elapsed = time.time() - t0
    finally:
        worker.stop()
    counts = assert_equal_to_replay(kafka_bootstrap, env)
    print(f"\n{len(envelopes)} inputs, {counts} in {elapsed:.1f}s")
    assert counts["margin-calls"] > 0 and counts["liquidations"] > 0 and counts["dead-letters"] > 0


@pytest.mark.timeout(600)
@pytest.mark.parametrize("guarantee", ["exactly_once", "at_least_once"])
def test_phased_input_equals_replay_of_original_file(kafka_bootstrap, unique_prefix, tmp_path, guarantee):
    # at-least-once also ships a crash tick's decisions before its margin-status bodies
    cfg = SimConfig(seed=5, accounts=120, events=4000, symbols=("BTCUSDT",), bad_share=0.0, crash_at=0.6)
    original = list(generate(cfg))
    phases = [
        [e for e in original if e["topic"] == "collateral"],
        [e for e in original if e["topic"] == "fills"],
        [e for e in original if e["topic"] == "mark-prices"],
    ]
    phased = [e for phase in phases for e in phase]
    env = worker_env(kafka_bootstrap, unique_prefix, PARTITIONS, MW_GUARANTEE=guarantee)
    worker = WorkerProcess(env, tmp_path, "a").start()
    try:
        wait_up(worker)
        topic = sequenced_topic(settings_for(env))
        total = 0
        for phase in phases:
            asyncio.run(produce(kafka_bootstrap, unique_prefix, phase))
            total += expected_sequenced(phase, PARTITIONS)
            wait_processed(kafka_bootstrap, env["MW_APP_ID"], topic, total, 300, [worker])
    finally:
        worker.stop()
    outputs = asyncio.run(worker_outputs(kafka_bootstrap, unique_prefix))
    import orjson

    lines = [orjson.dumps({"topic": e["topic"], "key": e["key"], "value": envelope_bytes(e)[1].decode()}) for e in phased]
    expected = replay_partition(lines, settings_for(env))
    for t in ("margin-status", "margin-calls", "liquidations"):
        got = defaultdict(list)
        for p, values in outputs[t].items():
            for v in values:
                got[v["account_id"]].append(v)
        want = defaultdict(list)
        for v in expected.get(t, []):
            want[v["account_id"]].append(v)
        assert got == want, f"{t}: worker and replay differ"
    assert len(expected.get("margin-calls", [])) > 0 and len(expected.get("liquidations", [])) > 0


@pytest.mark.timeout(900)
def test_killed_worker_partitions_taken_over_outputs_equal_replay(kafka_bootstrap, unique_prefix, tmp_path):
    envelopes = list(generate(SimConfig(seed=23, accounts=200, events=12000)))
    env = worker_env(kafka_bootstrap, unique_prefix, PARTITIONS)
    # the test plays the supervisor: a worker that exits deliberately (4, 5) is restarted
    a = WorkerProcess(env, tmp_path, "a", supervised=True).start()
    b = WorkerProcess(env, tmp_path, "b", supervised=True).start()
    try:
        wait_up(a)
        wait_up(b)
        half = len(envelopes) // 2
        asyncio.run(produce(kafka_bootstrap, unique_prefix, envelopes[:half]))
        deadline = time.time() + 120
        while a.inputs_handled() < 2000 and time.time() < deadline:
            a.check()
            b.check()
            time.sleep(0.2)
        a.kill()  # SIGKILL mid-stream
        asyncio.run(produce(kafka_bootstrap, unique_prefix, envelopes[half:]))
        wait_processed(kafka_bootstrap, env["MW_APP_ID"], sequenced_topic(settings_for(env)),
                       expected_sequenced(envelopes, PARTITIONS), 600, [b])
    finally:
        a.kill()
        b.stop()
    counts = assert_equal_to_replay(kafka_bootstrap, env)
    print(f"\nrestarts by the supervisor: a={a.restarts} b={b.restarts}; {counts}")
    assert counts["liquidations"] > 0
