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
