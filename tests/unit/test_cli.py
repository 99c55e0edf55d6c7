"""The command line as a user meets it: help, one-line errors, the README, the tools' logic.

Subprocess tests run ``python -m streams.cli`` (what the ``marginwatch`` entry point
calls) and need no Kafka: where one is named, it is a closed port.
"""
from __future__ import annotations

import importlib.util
import json
import os
import socket
import subprocess
import sys
import threading
from http.server import BaseHTTPRequestHandler, HTTPServer
from pathlib import Path

import pytest

from streams.demo import Snapshot, histogram_quantile, parse_metrics, summary_text, View, DemoOptions
from streams.settings import SETTINGS_DOC
from streams.sim.producer import RunOptions, iter_run
from streams.tail import dead_letter_input, resolve_topic, summarize
from streams.settings import Settings

REPO = Path(__file__).resolve().parents[2]
SUBCOMMANDS = ("replay", "worker", "kafka", "simulate", "demo", "tail", "status", "dead-letters", "settings")


def mw(*args: str, env: dict | None = None, timeout: float = 60) -> subprocess.CompletedProcess:
    full_env = dict(os.environ, **(env or {}))
    return subprocess.run([sys.executable, "-m", "streams.cli", *args], cwd=REPO, env=full_env,
                          capture_output=True, text=True, timeout=timeout, stdin=subprocess.DEVNULL)


def closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def assert_one_line_error(proc: subprocess.CompletedProcess, code: int, *needles: str) -> str:
    assert proc.returncode == code, (proc.returncode, proc.stdout, proc.stderr)
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1, proc.stderr
    assert "Traceback" not in proc.stderr
    assert lines[0].startswith("marginwatch "), lines[0]
    for needle in needles:
        assert needle in lines[0], lines[0]
    return lines[0]


# ------------------------------------------------------------------ the CLI


def test_help_lists_every_subcommand():
    proc = mw("--help")
    assert proc.returncode == 0, proc.stderr
    for name in SUBCOMMANDS:
        assert name in proc.stdout, name


@pytest.mark.parametrize("args", [
    ("simulate", "--rate", "fast"),
    ("simulate", "--crash-at", "1.5"),
    ("demo", "--duration", "-3"),
    ("tail",),
    ("dead-letters", "replay", "--bogus"),
    ("nonsense",),
])
def test_bad_argument_is_one_line_and_exit_2(args):
    line = assert_one_line_error(mw(*args), 2)
    assert "error:" in line


def test_replay_of_a_missing_file_is_one_line():
    assert_one_line_error(mw("replay", "/nonexistent/inputs.jsonl"), 2, "no such file", "/nonexistent/inputs.jsonl")


def test_kafka_unreachable_is_one_line():
    port = closed_port()
    env = {"MW_BROKER": f"kafka://127.0.0.1:{port}"}
    for args in (("simulate", "--events", "10"), ("tail", "margin-calls"), ("dead-letters", "replay")):
        assert_one_line_error(mw(*args, env=env), 1, f"cannot reach Kafka at 127.0.0.1:{port}")


def test_bad_setting_is_one_line():
    assert_one_line_error(mw("settings", env={"MW_PARTITIONS": "many"}), 2, "MW_PARTITIONS")


def test_dead_letters_unknown_error_code():
    assert_one_line_error(mw("dead-letters", "replay", "--error", "oops"), 2, "unknown error code")


def test_settings_prints_every_setting_and_masks_secrets():
    proc = mw("settings", env={"MW_API_TOKEN": "s3cret-token", "MW_CALL_LEVEL": "0.85"})
    assert proc.returncode == 0, proc.stderr
    for name, (_, doc) in SETTINGS_DOC.items():
        assert f"MW_{name.upper()}=" in proc.stdout
        assert doc in proc.stdout
    assert "s3cret-token" not in proc.stdout
    assert "MW_API_TOKEN=***" in proc.stdout
    assert "MW_CALL_LEVEL=0.85" in proc.stdout


class _Handler(BaseHTTPRequestHandler):
    def do_GET(self):  # noqa: N802 - http.server API
        if self.path == "/accounts/A1":
            body = {"account_id": "A1", "state": "margin_call", "worst_state": "liquidation", "equity": "100",
                    "maintenance_margin": "85", "margin_ratio": "0.85", "initial_margin": "120",
                    "free_collateral": "-20", "currency": "USDT", "balances": {"USDT": "90"},
                    "unpriced_assets": [], "ts": 1, "decided_at": 2,
                    "positions": [{"symbol": "BTCUSDT", "qty": "1", "entry_price": "60000", "mark_price": "59990",
                                   "notional": "59990", "unrealized_pnl": "-10", "maintenance_margin": "85",
                                   "margin_mode": "cross", "liquidation_price": "59975", "isolated_margin": "0"}]}
            data, code = json.dumps(body).encode(), 200
        else:
            data, code = json.dumps({"error": "unknown account"}).encode(), 404
        self.send_response(code)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def log_message(self, *args):  # quiet
        pass


@pytest.fixture
def fake_worker():
    server = HTTPServer(("127.0.0.1", 0), _Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}"
    server.shutdown()
    server.server_close()


def test_status_prints_the_account(fake_worker):
    proc = mw("status", "A1", "--url", fake_worker)
    assert proc.returncode == 0, proc.stderr
    assert "A1" in proc.stdout and "margin_call" in proc.stdout and "BTCUSDT" in proc.stdout
    proc = mw("status", "A1", "--url", fake_worker, "--json")
    assert json.loads(proc.stdout)["worst_state"] == "liquidation"


def test_status_unknown_account_and_unreachable_worker(fake_worker):
    assert_one_line_error(mw("status", "nobody", "--url", fake_worker), 1, "not found", "404")
    port = closed_port()
    assert_one_line_error(mw("status", "A1", "--url", f"http://127.0.0.1:{port}"), 1,
                          f"cannot reach the worker at http://127.0.0.1:{port}")


# --------------------------------------------------------------------- README


def test_readme_lists_every_setting():
    readme = (REPO / "README.md").read_text()
    missing = [f"MW_{name.upper()}" for name in SETTINGS_DOC if f"`MW_{name.upper()}`" not in readme]
    assert not missing, f"README.md lacks settings {missing}: regenerate its settings table from SETTINGS_DOC"


def test_readme_links_existing_schemas():
    readme = (REPO / "README.md").read_text()
    for schema in (REPO / "schemas").glob("*.schema.json"):
        assert f"schemas/{schema.name}" in readme, schema.name


# ------------------------------------------------------------------ simulator


def _events(opts: RunOptions) -> list[dict]:
    return [env for _, envs in iter_run(opts) for env in envs]


def test_simulator_is_deterministic_with_a_seed():
    opts = RunOptions(accounts=30, events=2500, seed=5, clock="sim", crash_at=0.5)
    a, b = _events(opts), _events(opts)
    assert a == b and len(a) == 2500
    assert _events(RunOptions(accounts=30, events=2500, seed=6, clock="sim")) != a


def test_simulator_wall_clock_keeps_content_and_makes_ticks_fresh():
    sim = _events(RunOptions(accounts=20, events=800, seed=5, clock="sim", run_id=""))
    wall = _events(RunOptions(accounts=20, events=800, seed=5, clock="wall", run_id="x-"))
    strip = lambda e: {k: v for k, v in e["value"].items() if k not in ("ts", "seq", "fill_id", "event_id")} \
        if isinstance(e["value"], dict) else e["value"]  # noqa: E731
    assert [strip(e) for e in sim] == [strip(e) for e in wall]
    seqs: dict[str, int] = {}
    for e in wall:
        if e["topic"] == "mark-prices" and isinstance(e["value"], dict) and "seq" in e["value"]:
            assert e["value"]["seq"] > seqs.get(e["key"], 0)
            seqs[e["key"]] = e["value"]["seq"]
    assert all(e["value"]["fill_id"].startswith("x-") for e in wall if e["topic"] == "fills"
               and isinstance(e["value"], dict) and e["value"]["fill_id"] != "broken")


def test_simulator_crashes_and_recovers():
    steps = list(iter_run(RunOptions(accounts=30, events=6000, seed=5, clock="sim", crash_at=0.3)))
    phases = [p for p, _ in steps]
    first_crash = phases.index("crash")
    assert "recovery" in phases[first_crash:]
    prices = [float(e["value"]["mark_price"]) for _, envs in steps for e in envs
              if e["topic"] == "mark-prices" and e["key"] == "BTCUSDT" and e["value"].get("mark_price") != "NaN"]
    assert min(prices) < 0.8 * prices[0]
    assert prices[-1] > 1.1 * min(prices)


# ------------------------------------------------------------------ tools


def test_parse_metrics_and_quantiles():
    text = "\n".join([
        "# HELP marginwatch_accounts x",
        'marginwatch_accounts{state="healthy"} 7.0',
        'marginwatch_accounts{state="liquidation"} 2.0',
        'marginwatch_input_messages_total{topic="fills",outcome="applied"} 10.0',
        'marginwatch_input_messages_total{topic="mark-prices",outcome="stale"} 5.0',
        'marginwatch_decision_latency_seconds_bucket{output="margin-calls",le="0.001"} 0.0',
        'marginwatch_decision_latency_seconds_bucket{output="margin-calls",le="0.01"} 50.0',
        'marginwatch_decision_latency_seconds_bucket{output="margin-calls",le="0.1"} 100.0',
        'marginwatch_decision_latency_seconds_bucket{output="margin-calls",le="+Inf"} 100.0',
    ])
    assert ("marginwatch_accounts", {"state": "healthy"}, 7.0) in parse_metrics(text)
    snap = Snapshot.parse(text, 0.0)
    assert snap.accounts == {"healthy": 7.0, "margin_call": 0.0, "liquidation": 2.0}
    assert snap.inputs == 15.0
    assert snap.latency(0.5) == pytest.approx(0.01)
    assert snap.latency(0.99) == pytest.approx(0.01 + 0.09 * 49 / 50)
    assert histogram_quantile(0.5, {}) is None
    view = View("demo-x", calls_total=3, liqs_total=2, snap=snap)
    text = summary_text(view, DemoOptions(duration=10), 20, 10.0)
    assert "margin calls: 3" in text and "liquidations: 2" in text and "p99" in text


def test_tail_formatting_and_topics():
    s = Settings.from_env({"MW_TOPIC_PREFIX": "p."})
    assert resolve_topic(s, "margin-calls") == ("p.margin-calls", "margin-calls")
    assert resolve_topic(s, "p.fills") == ("p.fills", "fills")
    assert resolve_topic(s, "other") == ("other", None)
    line = summarize("liquidations", {"scope": "cross", "episode": 2, "step": 1, "margin_ratio": None,
                                      "shortfall": "5", "orders": [{"side": "sell", "qty": "1", "symbol": "BTCUSDT",
                                                                    "mark_price": "50000"}]})
    assert "episode 2 step 1" in line and "sell 1 BTCUSDT@50000" in line
    assert "[" in summarize("fills", "not json [at all]")  # raw text is escaped, not markup


def test_dead_letter_input():
    assert dead_letter_input({"source_topic": "fills", "key": "A1", "raw": "{}"}) == ("fills", b"A1", b"{}")
    assert dead_letter_input({"source_topic": "fills", "key": None, "raw_b64": "/w=="}) == ("fills", None, b"\xff")
    assert dead_letter_input({"source_topic": "replay", "raw": "x"}) == "not an input topic"
    assert dead_letter_input({"source_topic": "fills", "raw": "x", "raw_truncated": True}) == "value truncated"


def _bot():
    spec = importlib.util.spec_from_file_location("liquidation_bot", REPO / "examples" / "liquidation_bot.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def test_liquidation_bot_acts_on_the_latest_step_only():
    bot = _bot()
    liq = {"event_id": "liquidations:A1:BTCUSDT:mark-prices:BTCUSDT:9", "account_id": "A1", "scope": "BTCUSDT",
           "episode": 1, "step": 1,
           "orders": [{"symbol": "BTCUSDT", "side": "sell", "qty": "0.5", "mark_price": "50000"}]}
    (fill,) = bot.closing_fills(liq, 123)
    assert fill == {"fill_id": "liq:liquidations:A1:BTCUSDT:mark-prices:BTCUSDT:9:BTCUSDT", "account_id": "A1",
                    "symbol": "BTCUSDT", "side": "sell", "qty": "0.5", "price": "50000", "fee": "0",
                    "margin_mode": "isolated", "ts": 123}
    assert bot.closing_fills(dict(liq, scope="cross"), 1)[0]["margin_mode"] == "cross"
    latest = bot.Latest()
    assert latest.newer(liq)
    assert not latest.newer(liq)  # redelivered
    assert latest.newer(dict(liq, step=2))
    assert not latest.newer(dict(liq, step=1))  # superseded
    assert latest.newer(dict(liq, episode=2, step=1))
    assert latest.newer(dict(liq, scope="cross"))  # another scope
    batch = [dict(liq, step=1), dict(liq, step=3), dict(liq, step=2), dict(liq, account_id="A2")]
    assert [(v["account_id"], v["step"]) for v in bot.latest_of_batch(batch)] == [("A1", 3), ("A2", 1)]


def test_liquidation_bot_waits_for_its_own_fills():
    bot = _bot()
    inflight = bot.InFlight(timeout_s=5)
    plan = {"event_id": "liquidations:A1:cross:mark-prices:X:1", "account_id": "A1", "scope": "cross",
            "episode": 1, "step": 1, "cause": {"topic": "mark-prices", "id": "X:1"},
            "orders": [{"symbol": "BTCUSDT", "side": "sell", "qty": "1", "mark_price": "1"},
                       {"symbol": "ETHUSDT", "side": "sell", "qty": "2", "mark_price": "1"}]}
    assert inflight.should_act(plan, 0.0)
    fills = bot.closing_fills(plan, 0)
    inflight.executed(plan, fills, 0.0)
    # the step after the first fill describes a half-executed plan: skipped
    half = dict(plan, step=2, cause={"topic": "fills", "id": fills[0]["fill_id"]})
    assert not inflight.should_act(half, 1.0)
    # a mark tick while a fill is still in flight: skipped too
    assert not inflight.should_act(dict(plan, step=3, cause={"topic": "mark-prices", "id": "X:2"}), 1.5)
    # the step caused by the plan's last fill is the next plan
    assert inflight.should_act(dict(plan, step=4, cause={"topic": "fills", "id": fills[1]["fill_id"]}), 2.0)
    # a fill that never lands does not block the scope for ever, nor a new episode
    inflight.executed(plan, fills, 10.0)
    assert not inflight.should_act(dict(plan, step=5), 11.0)
    assert inflight.should_act(dict(plan, step=6), 16.0)
    inflight.executed(plan, fills, 20.0)
    assert inflight.should_act(dict(plan, episode=2, step=1), 20.5)
