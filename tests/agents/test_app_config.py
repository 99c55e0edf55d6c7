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
    from faust.types import TP

    from streams.changelog_store import HELD_TO_END, CommittedChangelogStore

    settings = Settings.from_env({"MW_BROKER": "kafka://127.0.0.1:1", "MW_APP_ID": "cfg-store",
                                  "MW_DATA_DIR": str(tmp_path)})
    mapp = create_app(settings)
    for table in (mapp.accounts, mapp.seen):
        store = table.data
        assert isinstance(store, CommittedChangelogStore), type(store)
        tp = TP(table.changelog_topic.get_topic_name(), 3)
        assert table.persisted_offset(tp) == HELD_TO_END
        store.apply_changelog_batch([object()], to_key=lambda k: k, to_value=lambda v: v)
        store[b"3\x1fA1"] = b"{}"
        assert dict(store.data) == {} and store.dropped_writes == 1
    # with the persisted offset past any highwater faust's recovery has nothing remaining
    recovery = mapp.app.tables.recovery
    tp = TP(mapp.accounts.changelog_topic.get_topic_name(), 0)
    recovery.add_active(mapp.accounts, tp)
    recovery.active_highwaters[tp] = 10_000_000
    assert recovery.active_offsets[tp] == HELD_TO_END
    assert not recovery.need_recovery()
    # faust's consistency check would reject an offset past the highwater
    assert mapp.app.conf.recovery_consistency_check is False
