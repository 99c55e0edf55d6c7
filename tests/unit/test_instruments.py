"""Instruments and tier tables (streams/margin/instruments.py)."""
from __future__ import annotations

from decimal import Decimal

import numpy as np
import pytest

from streams.margin.errors import PARAMS_CONFLICT, SCHEMA_VIOLATION, InputRejected
from streams.margin.instruments import InverseContract, Instrument, LinearContract, TierTable
from tests.unit.conftest import instrument, tierspecs

D = Decimal

# bounds 10k / 50k / 200k, mmr 1% / 2% / 5% / 10%, amounts derived:
#   amount_0 = 0
#   amount_1 = 0    + 10000  * (0.02 - 0.01) = 100
#   amount_2 = 100  + 50000  * (0.05 - 0.02) = 100 + 1500 = 1600
#   amount_3 = 1600 + 200000 * (0.10 - 0.05) = 1600 + 10000 = 11600
DERIVED = TierTable.from_specs(tierspecs((10000, "0.01"), (50000, "0.02"), (200000, "0.05"), (None, "0.1")))


def test_derived_amounts():
    assert [t.maintenance_amount for t in DERIVED.tiers] == [0, 100, 1600, 11600]
    assert list(DERIVED.amounts) == [0.0, 100.0, 1600.0, 11600.0]


@pytest.mark.parametrize("notional,k", [
    ("0", 0), ("1", 0), ("9999.999999", 0),
    ("10000", 1),  # exactly AT a bound goes to the next tier (N < max_notional rule)
    ("10000.000001", 1), ("49999.99", 1),
    ("50000", 2), ("199999", 2),
    ("200000", 3), ("1e12", 3),
])
def test_tier_lookup(notional, k):
    n = D(notional)
    assert DERIVED.index(n) == k
    assert int(DERIVED.index_f(np.array([float(n)]))[0]) == k  # the float lookup uses the same rule


@pytest.mark.parametrize("notional,mm", [
    # N * mmr_k - amount_k
    ("5000", "50"),  # 5000*0.01
    ("10000", "100"),  # tier 1: 10000*0.02 - 100 = 100 = 10000*0.01 (continuous at the bound)
    ("30000", "500"),  # 30000*0.02 - 100
    ("50000", "900"),  # tier 2: 50000*0.05 - 1600 = 900 = 50000*0.02 - 100
    ("100000", "3400"),  # 100000*0.05 - 1600
    ("200000", "8400"),  # tier 3: 200000*0.1 - 11600 = 8400 = 200000*0.05 - 1600
    ("1000000", "88400"),  # 1e6*0.1 - 11600
    ("0", "0"),
])
def test_maintenance_values(notional, mm):
    assert DERIVED.maintenance(D(notional)) == D(mm)


@pytest.mark.parametrize("bound", ["10000", "50000", "200000"])
def test_derived_mm_continuous_at_bounds(bound):
    b = D(bound)
    k = DERIVED.index(b)
    below = DERIVED.tiers[k - 1]
    # the formula of the lower tier evaluated at the bound equals MM at the bound (upper tier)
    assert b * below.mmr - below.maintenance_amount == DERIVED.maintenance(b)
    eps = D("1e-12")
    assert abs(DERIVED.maintenance(b - eps) - DERIVED.maintenance(b)) < D("1e-12")


def test_given_amounts_used_as_is():
    # given amounts 0 / 5 (continuity would give 1000*(0.02-0.01) = 10): used verbatim, MM jumps
    t = TierTable.from_specs(tierspecs((1000, "0.01", "0"), (None, "0.02", "5")))
    assert [x.maintenance_amount for x in t.tiers] == [0, 5]
    assert t.maintenance(D("999")) == D("9.99")  # 999*0.01
    assert t.maintenance(D("1000")) == D(15)  # 1000*0.02 - 5 (not 10)


def test_single_tier():
    t = TierTable.from_specs(tierspecs((None, "0.005")))
    assert t.index(D("1e20")) == 0
    assert t.maintenance(D(12345)) == D("61.725")
    assert int(t.index_f(np.array([1e30]))[0]) == 0


def test_imr_defaults_to_mmr_and_given_imr_used():
    t = TierTable.from_specs(tierspecs((1000, "0.01"), (None, "0.02")))
    assert [x.imr for x in t.tiers] == [D("0.01"), D("0.02")]
    assert t.initial(D(2000)) == D(40)  # 2000*0.02
    g = TierTable.from_specs(tierspecs((1000, "0.01", None, "0.05"), (None, "0.02", None, "0.1")))
    assert [x.imr for x in g.tiers] == [D("0.05"), D("0.1")]
    assert g.initial(D(500)) == D(25)  # 500*0.05
    assert g.initial(D(1000)) == D(100)  # at the bound: tier 1, 1000*0.1
    assert list(g.imrs) == [0.05, 0.1]


def test_contract_formulas():
    # linear: N = |q| c m, uPnL = q c (m - e)
    assert LinearContract.notional(D(-3), D("0.01"), D(2000)) == D(60)
    assert LinearContract.upnl(D(-3), D("0.01"), D(2100), D(2000)) == D(3)  # -3*0.01*(2000-2100)
    # inverse: N = |q| c / m (coin), uPnL = q c (1/e - 1/m)
    assert InverseContract.notional(D(-200), D(100), D(50000)) == D("0.4")
    assert InverseContract.upnl(D(100), D(100), D(40000), D(50000)) == D("0.05")  # 1e4*(1/4e4-1/5e4)


def test_instrument_update_rules():
    old = Instrument.from_params(instrument("X", "linear", "USDT", "0.001", ((1000, "0.01"), (None, "0.02"))))
    old.check_update(Instrument.from_params(instrument("X", "linear", "USDT", "0.001", ((None, "0.03"),), qty_step="1")))
    for kw, name in ((dict(kind="inverse"), "kind"), (dict(settle="USDC"), "settle_asset"), (dict(c="0.01"), "contract_size")):
        args = dict(kind="linear", settle="USDT", c="0.001")
        args.update(kw)
        new = Instrument.from_params(instrument("X", args["kind"], args["settle"], args["c"]))
        with pytest.raises(InputRejected) as ei:
            old.check_update(new)
        assert ei.value.code == PARAMS_CONFLICT and ei.value.field == name


def test_unknown_kind_rejected():
    with pytest.raises(InputRejected) as ei:
        Instrument.from_params(instrument("X", "quanto"))
    assert ei.value.code == SCHEMA_VIOLATION
