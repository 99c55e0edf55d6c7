"""Deferred margin-status bodies (``PartitionEngine.defer_status``) change when they
are built, never what is emitted: per topic, the same outputs in the same order,
and the same state records, as the engine building them inline (replay's way)."""
from __future__ import annotations

from collections import defaultdict

import orjson
import pytest

from streams import codec
from streams.margin import records
from streams.pipeline import PartitionProcessor, new_engine
from streams.settings import Settings
from streams.sim.market import SimConfig, generate


def run(envelopes, defer: bool, finish_late: bool = False):
    """Per-topic outputs and final account records of one partition over ``envelopes``.

    ``finish_late``: call ``finish_status`` only every 7th event (the engine must build
    what was left over before applying the next event, so nothing moves)."""
    proc = PartitionProcessor(new_engine(Settings.from_env({})), partition=0, clock=lambda: 0)
    proc.engine.defer_status = defer
    by_topic = defaultdict(list)
    counts = defaultdict(int)
    for n, env in enumerate(envelopes):
        key = env["key"].encode() if env.get("key") is not None else None
        value = env["value"].encode() if isinstance(env["value"], str) else orjson.dumps(env["value"])
        result = proc.process(env["topic"], key, value, n)
        outs = list(result.outputs)
        if defer:
            assert all(o.topic != "margin-status" for o in outs)
            counts["pending_max"] = max(counts["pending_max"], proc.engine.status_pending)
            if not finish_late or n % 7 == 0:
                outs += proc.engine.finish_status()
        for o in outs:
            by_topic[o.topic].append(o.value)
    if defer:
        for o in proc.engine.finish_status():
            by_topic[o.topic].append(o.value)
    recs = {a: records.account_record(proc.engine, a) for a in sorted(proc.engine.accounts)}
    return dict(by_topic), recs, counts


@pytest.mark.parametrize("finish_late", [False, True])
def test_deferred_status_emits_the_same_outputs(finish_late):
    envelopes = list(generate(SimConfig(seed=11, accounts=60, events=3000, crash_at=0.6, bad_share=0.01)))
    inline, inline_recs, _ = run(envelopes, defer=False)
    deferred, deferred_recs, counts = run(envelopes, defer=True, finish_late=finish_late)
    assert set(inline) >= {"margin-status", "margin-calls", "liquidations"}
    assert counts["pending_max"] > 1  # a tick deferred several bodies at once
    for topic in inline:
        assert deferred.get(topic) == inline[topic], topic
    assert deferred_recs == inline_recs
