"""The faust app built from settings (no broker needed: nothing is started)."""
from __future__ import annotations

import pytest

from streams.app import create_app
from streams.settings import Settings


@pytest.mark.parametrize("guarantee, livelock_s", [("exactly_once", 315_360_000.0), ("at_least_once", 300.0)])
def test_commit_livelock_warning_off_under_exactly_once(guarantee, livelock_s, tmp_path):
    # faust's livelock check does not see transactional commits: under exactly-once it
    # logged a false "Has not committed" per partition every second after 5 minutes
    settings = Settings.from_env({"MW_BROKER": "kafka://127.0.0.1:1", "MW_GUARANTEE": guarantee,
                                  "MW_APP_ID": f"cfg-{guarantee}", "MW_DATA_DIR": str(tmp_path)})
    mapp = create_app(settings)
    assert mapp.app.conf.broker_commit_livelock_soft_timeout == livelock_s
    assert mapp.app.conf.processing_guarantee.value == guarantee
    assert mapp.app.conf.table_standby_replicas == 0


def test_tables_use_the_changelog_store_so_faust_recovery_reads_nothing(tmp_path):
    # engines rebuild from the committed changelog; faust's recovery of a memory store
    # re-read every record (>600 s for 1.1M) and once hung after a kill -9 under EOS
    import asyncio

    from faust.types import TP

    from streams import changelog_store
    from streams.changelog_store import CommittedChangelogStore

    settings = Settings.from_env({"MW_BROKER": "kafka://127.0.0.1:1", "MW_APP_ID": "cfg-store",
                                  "MW_DATA_DIR": str(tmp_path)})
    mapp = create_app(settings)
    ends = {0: 541, 1: 0, 2: 7, 3: 12}
    asked = []

    async def fake_end_offsets(tps):  # the broker's answer (streams.topics.end_offsets is used live)
        asked.append(sorted(tp.partition for tp in tps))
        return {tp: ends[tp.partition] for tp in tps}

    changelog_store.register(fake_end_offsets)
    other = TP("cfg-store-sequenced", 0)
    for table in (mapp.accounts, mapp.seen):
        store = table.data
        assert isinstance(store, CommittedChangelogStore), type(store)
        topic = table.changelog_topic.get_topic_name()
        assigned = {TP(topic, p) for p in (0, 1, 3)} | {other}
        asyncio.run(store.on_rebalance(assigned, set(), assigned))
        assert table.persisted_offset(TP(topic, 0)) == 540  # last offset = end - 1
        assert table.persisted_offset(TP(topic, 1)) == -1   # empty partition
        assert table.persisted_offset(TP(topic, 3)) == 11
        assert table.persisted_offset(TP(topic, 2)) is None  # not assigned: unknown
        store.apply_changelog_batch([object()], to_key=lambda k: k, to_value=lambda v: v)
        store[b"3\x1fA1"] = b"{}"
        assert dict(store.data) == {} and store.dropped_writes == 1
    assert asked == [[0, 1, 3], [0, 1, 3]]
    # faust's recovery: nothing remaining when the highwater is the end we reported
    recovery = mapp.app.tables.recovery
    tp = TP(mapp.accounts.changelog_topic.get_topic_name(), 0)
    recovery.add_active(mapp.accounts, tp)
    recovery.active_highwaters[tp] = 540
    assert recovery.active_offsets[tp] == 540
    assert not recovery.need_recovery()

    async def broken(tps):
        raise ConnectionError("broker down")

    changelog_store.register(broken)  # recovery the slow way: nothing reported as held
    asyncio.run(mapp.accounts.data.on_rebalance({tp}, set(), {tp}))
    assert mapp.accounts.persisted_offset(tp) is None
    assert mapp.app.conf.recovery_consistency_check is False



def test_one_end_offsets_query_per_rebalance_serves_both_tables(tmp_path):
    import asyncio

    from faust.types import TP

    from streams import changelog_store

    settings = Settings.from_env({"MW_BROKER": "kafka://127.0.0.1:1", "MW_APP_ID": "cfg-shared",
                                  "MW_DATA_DIR": str(tmp_path)})
    mapp = create_app(settings)
    asked = []

    async def fake_end_offsets(tps):
        asked.append(sorted(tps))
        return {tp: 100 * (tp.topic == acc_topic) + tp.partition + 1 for tp in tps}

    changelog_store.register(fake_end_offsets)
    acc_topic = mapp.accounts.changelog_topic.get_topic_name()
    seen_topic = mapp.seen.changelog_topic.get_topic_name()
    assigned = {TP(acc_topic, 0), TP(acc_topic, 2), TP(seen_topic, 0), TP(seen_topic, 2),
                TP("cfg-shared-sequenced", 0)}

    async def rebalance(generation):
        for table in (mapp.accounts, mapp.seen):  # faust's TableManager: one table after the other
            await table.data.on_rebalance(assigned, set(), assigned, generation)

    asyncio.run(rebalance(7))
    assert len(asked) == 1 and len(asked[0]) == 4  # the changelog partitions of both tables, once
    assert mapp.accounts.persisted_offset(TP(acc_topic, 2)) == 102
    assert mapp.seen.persisted_offset(TP(seen_topic, 2)) == 2
    assert mapp.seen.persisted_offset(TP(acc_topic, 2)) is None  # another table's partition
    asyncio.run(rebalance(8))  # the next rebalance asks again, even for the same partitions
    assert len(asked) == 2


def test_memory_store_still_selectable(tmp_path):
    settings = Settings.from_env({"MW_BROKER": "kafka://127.0.0.1:1", "MW_APP_ID": "cfg-mem",
                                  "MW_DATA_DIR": str(tmp_path), "MW_STORE": "memory://"})
    mapp = create_app(settings)
    assert type(mapp.accounts.data).__module__ == "faust.stores.memory"
    assert mapp.app.conf.recovery_consistency_check is False
