"""``marginwatch stress`` as a user meets it: over a replay log, JSON (validated against
schemas/http/stress-response.schema.json) and table output, one-line errors (exit 2)."""
from __future__ import annotations

import json
from pathlib import Path

import jsonschema
import pytest

from tests.unit.test_cli import assert_one_line_error, mw

REPO = Path(__file__).resolve().parents[2]
SCHEMA = json.loads((REPO / "schemas" / "http" / "stress-response.schema.json").read_text())

# The default risk-params seed: BTCUSDT linear, contract size 1, N < 50000: mmr 0.004;
# N < 250000: mmr 0.005, amount 50; ETHUSDT N < 10000: mmr 0.005. The accounts of
# tests/unit/test_stress.py's table (A, B long 1 BTC; C short 0.5 BTC isolated; D short 1 ETH).
LOG = [
    {"topic": "mark-prices", "key": "BTCUSDT", "value": {"symbol": "BTCUSDT", "mark_price": "60000", "ts": 1}},
    {"topic": "mark-prices", "key": "ETHUSDT", "value": {"symbol": "ETHUSDT", "mark_price": "3000", "ts": 1}},
]
for acct, usdt in (("A", "548.5"), ("B", "610.625"), ("C", "400"), ("D", "100")):
    LOG.append({"topic": "collateral", "key": acct, "value": {"event_id": f"{acct}-d", "account_id": acct, "asset": "USDT",
                                                                "amount": usdt, "reason": "deposit", "ts": 2}})
for acct in ("A", "B"):
    LOG.append({"topic": "fills", "key": acct, "value": {"fill_id": f"{acct}1", "account_id": acct, "symbol": "BTCUSDT",
                                                           "side": "buy", "qty": "1", "price": "60000", "ts": 3}})
LOG += [
    {"topic": "collateral", "key": "C", "value": {"event_id": "C-i", "account_id": "C", "asset": "USDT", "amount": "400",
                                                  "reason": "isolated_margin", "symbol": "BTCUSDT", "ts": 3}},
    {"topic": "fills", "key": "C", "value": {"fill_id": "C1", "account_id": "C", "symbol": "BTCUSDT", "side": "sell",
                                             "qty": "0.5", "price": "60000", "margin_mode": "isolated", "ts": 4}},
    {"topic": "fills", "key": "D", "value": {"fill_id": "D1", "account_id": "D", "symbol": "ETHUSDT", "side": "sell",
                                             "qty": "1", "price": "3000", "ts": 3}},
    "not an envelope",
]


@pytest.fixture
def log(tmp_path) -> str:
    p = tmp_path / "book.jsonl"
    p.write_text("\n".join(x if isinstance(x, str) else json.dumps(x) for x in LOG) + "\n")
    return str(p)


def stress(*args: str) -> dict:
    proc = mw("stress", *args)
    assert proc.returncode == 0, proc.stderr
    out = json.loads(proc.stdout)
    jsonschema.Draft7Validator(SCHEMA).validate(out)
    return out


def test_schema_examples_validate():
    jsonschema.Draft7Validator.check_schema(SCHEMA)
    for ex in SCHEMA["examples"]:
        jsonschema.Draft7Validator(SCHEMA).validate(ex)


def test_one_shock(log):
    out = stress("--log", log, "--shock", "BTCUSDT=-1%")
    # A: equity 548.5 − 600 = −51.5, MM 0.005·59400 − 50 = 247; B: 10.625 vs 247
    assert out["marks"] == {"BTCUSDT": "59400"}
    assert out["accounts_liquidation"] == ["A", "B"] and out["accounts_margin_call"] == []
    assert out["shortfall"] == "534.875" and out["bad_debt"] == "51.5"
    assert out["accounts"] == 4 and out["scopes"] == 5
    assert [c["account_id"] for c in out["top"]] == ["A", "B"]
    assert out["log"]["lines"] == {"applied": 11, "dead_letter": 1}


def test_grid(log):
    out = stress("--log", log, "--grid", "8", "--top", "1")
    assert [s["scenario"] for s in out["scenarios"]] == ["all -8%", "all 0%", "all +8%"]
    assert out["scenarios"][0]["accounts_liquidation"] == ["A", "B"]
    assert out["scenarios"][2]["accounts_liquidation"] == ["C", "D"]
    assert out["worst_scenario"] == 0 and out["accounts_liquidation"] == ["A", "B"]
    assert len(out["top"]) == 1


def test_shock_then_grid_and_exact(log):
    a = stress("--log", log, "--shock", "ETHUSDT=3100", "--grid", "1")
    b = stress("--log", log, "--shock", "ETHUSDT=3100", "--grid", "1", "--exact")
    assert [s["marks"] for s in a["scenarios"]][1] == {"ETHUSDT": "3100"}
    assert a["scenarios"][0]["marks"] == {"BTCUSDT": "59400", "ETHUSDT": "3069"}
    for x, y in zip(a["scenarios"], b["scenarios"]):
        assert (x["accounts_liquidation"], x["accounts_margin_call"], x["shortfall"]) == \
               (y["accounts_liquidation"], y["accounts_margin_call"], y["shortfall"])


def test_cascade(log):
    """Depth 1,000,000: round 1 at 59700 closes A (sells 59700) → −5.97 %; round 2 at
    56135.91 closes B → round 3 at 52984.6696085: C (short) and D (ETH) healthy: fixed point."""
    out = stress("--log", log, "--shock", "BTCUSDT=-0.5%", "--cascade", "--depth", "BTCUSDT=1000000")
    assert [(r["round"], r["marks"], r["accounts_liquidated"]) for r in out["rounds"]] == [
        (1, {"BTCUSDT": "59700"}, ["A"]), (2, {"BTCUSDT": "56135.91"}, ["B"]),
        (3, {"BTCUSDT": "52984.6696085"}, [])]
    assert out["converged"] is True and out["accounts_liquidation"] == ["A", "B"]
    assert out["shortfall"] == "3484.14455" and out["bad_debt"] == "3253.465"


def test_table_output(log):
    proc = mw("stress", "--log", log, "--grid", "4,8", "--format", "table")
    assert proc.returncode == 0, proc.stderr
    assert "stress scenarios" in proc.stdout and "all -8%" in proc.stdout and "largest contributors" in proc.stdout
    proc = mw("stress", "--log", log, "--shock", "BTCUSDT=-0.5%", "--cascade", "--depth", "BTCUSDT=1e6", "--format", "table")
    assert proc.returncode == 0, proc.stderr
    assert "cascade from BTCUSDT -0.5%" in proc.stdout and "56135.91" in proc.stdout


@pytest.mark.parametrize("args,needle", [
    (["--shock", "BTCUSDT"], "--shock"),
    (["--shock", "BTCUSDT=abc%"], "--shock"),
    (["--shock", "BTCUSDT=-120%"], "--shock"),
    (["--shock", "NOPE=-5%"], "--shock: unknown symbol"),
    (["--shock", "BTCUSDT=-1%", "--shock", "BTCUSDT=-2%"], "given twice"),
    ([], "--shock"),
    (["--grid", "x"], "--grid"),
    (["--grid", "200"], "--grid"),
    (["--grid", "4", "--cascade"], "--grid"),
    (["--shock", "BTCUSDT=-1%", "--cascade", "--rounds", "0"], "--rounds"),
    (["--shock", "BTCUSDT=-1%", "--cascade", "--depth", "BTCUSDT"], "--depth"),
    (["--shock", "BTCUSDT=-1%", "--cascade", "--depth", "BTCUSDT=-5"], "--depth"),
    (["--shock", "BTCUSDT=-1%", "--cascade", "--max-move", "1.5"], "--max-move"),
    (["--shock", "BTCUSDT=-1%", "--depth", "BTCUSDT=5"], "--depth"),
    (["--shock", "BTCUSDT=-1%", "--top", "x"], "--top"),
    (["--shock", "BTCUSDT=-1%", "--format", "xml"], "--format"),
])
def test_bad_arguments(log, args, needle):
    assert_one_line_error(mw("stress", "--log", log, *args), 2, needle)


def test_missing_log():
    assert_one_line_error(mw("stress", "--log", "/nonexistent/x.jsonl", "--shock", "BTCUSDT=-1%"), 2, "--log")
    assert_one_line_error(mw("stress", "--shock", "BTCUSDT=-1%"), 2, "--log")
