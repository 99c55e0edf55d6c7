"""``marginwatch demo`` and the example liquidation bot on the real broker.

1. ``marginwatch demo --duration 45``: exits 0, its summary shows margin calls and
   liquidations, and nothing it started is left running; its topics are deleted.
2. A demo without ``--duration`` stopped by SIGTERM: exits 0 with a summary, no
   process left behind.
3. The liquidation bot: executes a plan once, skips redeliveries, older steps and
   steps of a half-executed plan, with fill ids derived from the event id.
"""
from __future__ import annotations

import asyncio
import json
import os
import re
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
from aiokafka import AIOKafkaProducer
from aiokafka.admin import AIOKafkaAdminClient

from streams.settings import Settings
from streams.topics import ensure_topics

from .harness import read_topic

pytestmark = [pytest.mark.kafka]
REPO = Path(__file__).resolve().parents[2]


def _env(bootstrap: str, **extra: str) -> dict:
    env = {k: v for k, v in os.environ.items() if not k.startswith("MW_")}
    env["MW_KAFKA_PORT"] = bootstrap.rsplit(":", 1)[1]
    env.update(extra)
    return env


def _alive(pid: int) -> bool:
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    return stat.rsplit(")", 1)[1].split()[0] not in ("Z", "X")


def _pgrep(pattern: str) -> list[str]:
    proc = subprocess.run(["pgrep", "-af", pattern], capture_output=True, text=True)
    return [line for line in proc.stdout.splitlines() if "pgrep" not in line]


def _child_pids(stderr: str) -> tuple[str, list[int]]:
    tag = re.search(r"topics (demo-[0-9a-f]+)\.", stderr)
    pids = [int(p) for p in re.findall(r"(?:worker|liquidation bot|simulator) pid (\d+)", stderr)]
    assert tag and len(pids) == 3, stderr
    return tag.group(1), pids


def _assert_cleaned_up(bootstrap: str, tag: str, pids: list[int]) -> None:
    deadline = time.time() + 10
    while time.time() < deadline and any(_alive(p) for p in pids):
        time.sleep(0.2)
    assert not [p for p in pids if _alive(p)], f"demo children still running: {pids}"
    assert not _pgrep(tag), _pgrep(tag)  # the simulator's command line carries the tag

    async def topics() -> list[str]:
        admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap)
        await admin.start()
        try:
            return [t for t in await admin.list_topics() if t.startswith(tag)]
        finally:
            await admin.close()

    assert asyncio.run(topics()) == []


def _summary_counts(stdout: str) -> dict[str, int]:
    assert "marginwatch demo: summary" in stdout, stdout
    summary = stdout[stdout.index("marginwatch demo: summary"):]
    out = {}
    for key in ("margin calls", "liquidations"):
        m = re.search(rf"^{key}: (\d+)", summary, re.M)
        assert m, summary
        out[key] = int(m.group(1))
    assert re.search(r"^accounts: healthy \d+, margin_call \d+, liquidation \d+", summary, re.M), summary
    assert re.search(r"^decision latency: p50 .+ ms, p99 .+ ms", summary, re.M), summary
    assert re.search(r"^inputs processed: [\d,]+", summary, re.M), summary
    return out


@pytest.mark.timeout(300)
def test_demo_runs_and_leaves_nothing_behind(kafka_bootstrap):
    proc = subprocess.run([sys.executable, "-m", "streams.cli", "demo", "--duration", "45"], cwd=REPO,
                          env=_env(kafka_bootstrap), capture_output=True, text=True, timeout=280,
                          stdin=subprocess.DEVNULL)
    assert proc.returncode == 0, f"exit {proc.returncode}\nstdout:\n{proc.stdout}\nstderr:\n{proc.stderr}"
    assert "Traceback" not in proc.stderr, proc.stderr
    counts = _summary_counts(proc.stdout)
    assert counts["margin calls"] > 0, proc.stdout
    assert counts["liquidations"] > 0, proc.stdout
    tag, pids = _child_pids(proc.stderr)
    _assert_cleaned_up(kafka_bootstrap, tag, pids)


@pytest.mark.timeout(300)
def test_demo_stops_cleanly_on_sigterm(kafka_bootstrap):
    proc = subprocess.Popen([sys.executable, "-m", "streams.cli", "demo"], cwd=REPO, env=_env(kafka_bootstrap),
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, stdin=subprocess.DEVNULL)
    err_lines: list[str] = []
    started = threading.Event()

    def read_err():
        for line in proc.stderr:
            err_lines.append(line)
            if "simulator pid" in line:
                started.set()

    reader = threading.Thread(target=read_err, daemon=True)
    reader.start()
    try:
        assert started.wait(180), "".join(err_lines)
        time.sleep(8)
        proc.send_signal(signal.SIGTERM)
        stdout = proc.stdout.read()
        assert proc.wait(120) == 0, "".join(err_lines) + stdout
    finally:
        if proc.poll() is None:
            proc.kill()
    reader.join(10)
    stderr = "".join(err_lines)
    assert "Traceback" not in stderr, stderr
    _summary_counts(stdout)
    tag, pids = _child_pids(stderr)
    _assert_cleaned_up(kafka_bootstrap, tag, pids)


def _liq(account: str, scope: str, episode: int, step: int, cause: dict, orders: list[dict]) -> dict:
    return {"event_id": f"liquidations:{account}:{scope}:{cause['topic']}:{cause['id']}", "account_id": account,
            "ts": 1, "decided_at": 1, "cause": dict(cause, ts=1), "schema_version": 1, "scope": scope,
            "currency": "USDT", "equity": "1", "maintenance_margin": "2", "margin_ratio": "2", "shortfall": "0",
            "episode": episode, "step": step, "orders": orders}


async def _produce(bootstrap: str, topic: str, values: list[dict]) -> None:
    producer = AIOKafkaProducer(bootstrap_servers=bootstrap, acks="all")
    await producer.start()
    try:
        for v in values:
            await producer.send_and_wait(topic, json.dumps(v).encode(), key=v["account_id"].encode())
    finally:
        await producer.stop()


def _fills(bootstrap: str, prefix: str) -> list[dict]:
    recs = asyncio.run(read_topic(bootstrap, f"{prefix}fills", idle_s=1.0))
    return [json.loads(r.value) for p in sorted(recs) for r in recs[p]]


def _wait_fills(bootstrap: str, prefix: str, n: int, timeout: float = 30) -> list[dict]:
    deadline = time.time() + timeout
    fills = []
    while time.time() < deadline:
        fills = _fills(bootstrap, prefix)
        if len(fills) >= n:
            return fills
        time.sleep(0.5)
    return fills


@pytest.mark.timeout(180)
def test_liquidation_bot_executes_each_plan_once(kafka_bootstrap, unique_prefix, tmp_path):
    env = _env(kafka_bootstrap, MW_BROKER=f"kafka://{kafka_bootstrap}", MW_TOPIC_PREFIX=unique_prefix,
               MW_APP_ID=f"{unique_prefix}mw", MW_PARTITIONS="2")
    settings = Settings.from_env(env)
    asyncio.run(ensure_topics(settings))
    topic = settings.topic("liquidations")
    orders = [{"symbol": "BTCUSDT", "side": "sell", "qty": "0.5", "mark_price": "50000"},
              {"symbol": "ETHUSDT", "side": "buy", "qty": "2", "mark_price": "3000"}]
    step1 = _liq("A1", "cross", 1, 1, {"topic": "mark-prices", "id": "BTCUSDT:7"}, orders)
    iso = _liq("A2", "SOLUSDT", 3, 1, {"topic": "mark-prices", "id": "SOLUSDT:9"},
               [{"symbol": "SOLUSDT", "side": "sell", "qty": "10", "mark_price": "150"}])
    asyncio.run(_produce(kafka_bootstrap, topic, [step1, iso]))
    log = open(tmp_path / "bot.log", "wb")
    bot = subprocess.Popen([sys.executable, str(REPO / "examples" / "liquidation_bot.py")], cwd=REPO, env=env,
                           stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    try:
        fills = _wait_fills(kafka_bootstrap, unique_prefix, 3)
        by_id = {f["fill_id"]: f for f in fills}
        assert set(by_id) == {f"liq:{step1['event_id']}:BTCUSDT", f"liq:{step1['event_id']}:ETHUSDT",
                              f"liq:{iso['event_id']}:SOLUSDT"}, fills
        btc = by_id[f"liq:{step1['event_id']}:BTCUSDT"]
        assert (btc["account_id"], btc["symbol"], btc["side"], btc["qty"], btc["price"], btc["margin_mode"]) == \
            ("A1", "BTCUSDT", "sell", "0.5", "50000", "cross")
        assert isinstance(btc["ts"], int) and abs(btc["ts"] - time.time() * 1000) < 120_000
        assert by_id[f"liq:{iso['event_id']}:SOLUSDT"]["margin_mode"] == "isolated"
        # a redelivery, the step after the plan's first fill (half-executed: skipped), an older step,
        # then the step after its last fill (the next plan)
        first, second = f"liq:{step1['event_id']}:BTCUSDT", f"liq:{step1['event_id']}:ETHUSDT"
        half = _liq("A1", "cross", 1, 2, {"topic": "fills", "id": first}, orders[1:])
        older = _liq("A1", "cross", 1, 1, {"topic": "mark-prices", "id": "BTCUSDT:6"}, orders)
        after = _liq("A1", "cross", 1, 3, {"topic": "fills", "id": second},
                     [{"symbol": "BTCUSDT", "side": "sell", "qty": "0.1", "mark_price": "49000"}])
        asyncio.run(_produce(kafka_bootstrap, topic, [step1]))
        time.sleep(2)
        asyncio.run(_produce(kafka_bootstrap, topic, [half]))
        time.sleep(2)
        asyncio.run(_produce(kafka_bootstrap, topic, [older, after]))
        fills = _wait_fills(kafka_bootstrap, unique_prefix, 4)
        time.sleep(3)
        fills = _fills(kafka_bootstrap, unique_prefix)
        ids = [f["fill_id"] for f in fills]
        assert len(ids) == len(set(ids)) == 4, ids
        assert f"liq:{after['event_id']}:BTCUSDT" in ids
    finally:
        os.killpg(bot.pid, signal.SIGTERM)
        code = bot.wait(30)
        log.close()
    assert code == 0, (tmp_path / "bot.log").read_text()
    assert "4 fills sent" in (tmp_path / "bot.log").read_text()
