"""Security on a real broker: SCRAM-SHA-512 over TLS, secrets never shown, the HTTP API.

1. A second broker (``secure_broker.SecureBroker``: CA and server certificate made
   by the test, a SASL_SSL listener requiring SCRAM-SHA-512, credentials created at
   format time). A worker configured only through ``MW_KAFKA_*`` settings works
   end to end over it (fills, collateral and a mark in, a margin-status out); the
   password (and the API token) appear nowhere in its log at debug level, its
   ``/metrics`` or its other pages.
2. A wrong password is refused with one clear line ("authentication failed"), exit
   status 1, no traceback, no password: for the worker, ``tail`` and ``simulate``;
   an untrusted certificate likewise ("not trusted").
3. On the shared broker, two workers with ``MW_API_TOKEN``: an account query without
   the token is refused (401) by either worker; with it, an account owned by the
   other worker is answered (200) through faust's router, which forwards the
   token; ``/metrics``, ``/healthz`` and ``/readyz`` stay open; the API binds to
   127.0.0.1 unless ``MW_WEB_HOST`` widens it.
"""
from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
import time
import urllib.error
import urllib.request
import uuid
from pathlib import Path

import orjson
import pytest
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition

from streams.settings import Settings
from streams.topics import account_partition, bootstrap, kafka_security

from streams.topics import sequenced_topic

from .harness import (
    REPO,
    WorkerProcess,
    produce,
    settings_for,
    wait_committed,
    wait_handled,
    wait_up,
    worker_env,
)
from .secure_broker import SecureBroker

pytestmark = [pytest.mark.kafka]

USER = "alice"
PASSWORD = f"Pw{uuid.uuid4().hex}Zq"  # distinctive: grep for it everywhere
TS = 1_717_000_000_000


def _valid_inputs(account: str) -> list[tuple[str, str, dict]]:
    return [
        ("collateral", account, {"event_id": f"{account}-dep-1", "account_id": account, "asset": "USDT",
                                 "amount": "1000", "reason": "deposit", "ts": TS}),
        ("fills", account, {"fill_id": f"{account}-f-1", "account_id": account, "symbol": "BTCUSDT", "side": "buy",
                            "qty": "0.1", "price": "60000", "ts": TS + 1}),
        ("mark-prices", "BTCUSDT", {"symbol": "BTCUSDT", "mark_price": "59000", "ts": TS + 2, "seq": 1}),
    ]


async def _produce_secure(settings: Settings, prefix: str, messages: list[tuple[str, str, dict]]) -> None:
    producer = AIOKafkaProducer(bootstrap_servers=bootstrap(settings), acks="all", **kafka_security(settings))
    await producer.start()
    try:
        for topic, key, value in messages:
            await producer.send_and_wait(prefix + topic, orjson.dumps(value), key=key.encode())
    finally:
        await producer.stop()


async def _read_secure(settings: Settings, topic: str, until, timeout: float) -> list:
    """Records of ``topic`` (read_committed) until ``until(records)`` holds or the timeout."""
    consumer = AIOKafkaConsumer(bootstrap_servers=bootstrap(settings), enable_auto_commit=False,
                                auto_offset_reset="earliest", isolation_level="read_committed",
                                **kafka_security(settings))
    await consumer.start()
    try:
        deadline = time.time() + timeout
        parts = None
        while time.time() < deadline and not parts:
            await consumer._client.force_metadata_update()
            parts = consumer.partitions_for_topic(topic)
            if not parts:
                await asyncio.sleep(0.5)
        tps = [TopicPartition(topic, p) for p in sorted(parts or ())]
        consumer.assign(tps)
        await consumer.seek_to_beginning(*tps)
        out = []
        while time.time() < deadline and not until(out):
            for recs in (await consumer.getmany(timeout_ms=500)).values():
                out.extend(recs)
        return out
    finally:
        await consumer.stop()


def _get(url: str, token: str | None = None, timeout: float = 5.0) -> tuple[int, bytes]:
    req = urllib.request.Request(url)
    if token is not None:
        req.add_header("Authorization", f"Bearer {token}")
    try:
        with urllib.request.urlopen(req, timeout=timeout) as resp:
            return resp.status, resp.read()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read()


def _cli(env: dict, *args: str, timeout: float = 90) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "streams.cli", *args], cwd=REPO, env=dict(os.environ, **env),
                          capture_output=True, text=True, timeout=timeout)


@pytest.fixture(scope="module")
def secure_broker(tmp_path_factory):
    broker = SecureBroker(tmp_path_factory.mktemp("secure-broker"), users={USER: PASSWORD})
    t0 = time.monotonic()
    try:
        broker.start()
        print(f"secure broker up in {time.monotonic() - t0:.1f}s on {broker.bootstrap} (SASL_SSL, SCRAM-SHA-512)")
        yield broker
    finally:
        broker.stop()


def test_worker_over_scram_tls(secure_broker: SecureBroker, tmp_path: Path, unique_prefix: str) -> None:
    token = f"Tok{uuid.uuid4().hex}"
    env = worker_env(secure_broker.bootstrap, unique_prefix, partitions=2,
                     MW_STATUS_INTERVAL_MS="0", MW_STATUS_RATIO_STEP="0", MW_API_TOKEN=token, MW_LOG_LEVEL="debug",
                     **secure_broker.env(USER, PASSWORD))
    settings = Settings.from_env(env)
    assert PASSWORD not in repr(settings) and token not in repr(settings)
    assert PASSWORD not in json.dumps(settings.describe()) and token not in json.dumps(settings.describe())
    worker = WorkerProcess(env, tmp_path, "secure")
    worker.start()
    try:
        wait_up(worker, timeout=90)
        account = "SEC-1"
        asyncio.run(_produce_secure(settings, unique_prefix, _valid_inputs(account)))
        def marked(recs):
            return any(orjson.loads(r.value)["positions"] and orjson.loads(r.value)["positions"][0]["mark_price"]
                       == "59000" for r in recs)

        records = asyncio.run(_read_secure(settings, unique_prefix + "margin-status", marked, timeout=90))
        statuses = [orjson.loads(r.value) for r in records]
        assert statuses, f"no margin-status over SASL_SSL:\n{worker.tail()}"
        assert all(s["account_id"] == account for s in statuses)
        last = statuses[-1]
        assert last["positions"] and last["positions"][0]["symbol"] == "BTCUSDT"
        assert last["positions"][0]["mark_price"] == "59000"
        print(f"over SCRAM-SHA-512/TLS: {len(statuses)} margin-status for {account}, last equity {last['equity']}")
        # the password is nowhere: pages, metrics (token given or not), the log
        base = f"http://127.0.0.1:{worker.port}"
        deadline = time.monotonic() + 60  # account queries answer 503 until recovery is over (by design)
        while _get(base + "/readyz")[0] != 200 and time.monotonic() < deadline:
            time.sleep(0.5)
        bodies = [_get(base + path)[1] for path in ("/metrics", "/healthz", "/readyz", "/", "/router/",
                                                     f"/accounts/{account}")]
        bodies.append(_get(f"{base}/accounts/{account}", token)[1])
        status, body = _get(f"{base}/accounts/{account}", token)
        assert status == 200 and orjson.loads(body)["account_id"] == account
        assert _get(f"{base}/accounts/{account}")[0] == 401
        for body in bodies:
            assert PASSWORD.encode() not in body and token.encode() not in body
    finally:
        worker.stop()
    text = worker.log_path.read_text(errors="replace")
    assert "SASL_SSL" in text or "kafka_security_protocol" in text  # settings are logged, masked
    assert PASSWORD not in text and token not in text
    assert "Traceback" not in text, worker.tail()


def _assert_clear_refusal(proc: subprocess.CompletedProcess, what: str, *secrets: str) -> str:
    out = proc.stdout + proc.stderr
    assert proc.returncode == 1, f"{what}: exit {proc.returncode}\n{out[-3000:]}"
    assert what in out, out[-3000:]
    assert "Traceback" not in out, out[-3000:]
    for secret in secrets:
        assert secret not in out
    return proc.stderr.strip().splitlines()[-1]


def test_wrong_password_refused(secure_broker: SecureBroker, tmp_path: Path, unique_prefix: str) -> None:
    wrong = f"Wrong{uuid.uuid4().hex}"
    env = worker_env(secure_broker.bootstrap, unique_prefix, partitions=2, **secure_broker.env(USER, wrong),
                     MW_WEB_PORT=str(_free()), MW_DATA_DIR=str(tmp_path / "data"))
    lines = []
    t0 = time.monotonic()
    worker = _cli(env, "worker")
    lines.append(_assert_clear_refusal(worker, "authentication failed", wrong, PASSWORD))
    assert time.monotonic() - t0 < 60
    lines.append(_assert_clear_refusal(_cli(env, "tail", "margin-status", "--no-follow"),
                                       "authentication failed", wrong, PASSWORD))
    lines.append(_assert_clear_refusal(_cli(env, "simulate", "--events", "1", "--no-progress"),
                                       "authentication failed", wrong, PASSWORD))
    unknown_user = dict(env, MW_KAFKA_SASL_USERNAME="mallory", MW_KAFKA_SASL_PASSWORD=PASSWORD)
    lines.append(_assert_clear_refusal(_cli(unknown_user, "tail", "margin-status", "--no-follow"),
                                       "authentication failed", PASSWORD))
    # the right password, but a CA that did not sign the broker's certificate (the system store)
    untrusted = dict(env, MW_KAFKA_SASL_PASSWORD=PASSWORD, MW_KAFKA_SSL_CAFILE="")
    lines.append(_assert_clear_refusal(_cli(untrusted, "tail", "margin-status", "--no-follow"),
                                       "not trusted", PASSWORD))
    # no TLS towards a TLS listener: refused, not hung
    plaintext = dict(env, MW_KAFKA_SECURITY_PROTOCOL="SASL_PLAINTEXT", MW_KAFKA_SASL_PASSWORD=PASSWORD)
    proc = _cli(plaintext, "tail", "margin-status", "--no-follow")
    assert proc.returncode == 1 and "Traceback" not in proc.stderr and PASSWORD not in proc.stdout + proc.stderr
    assert "SASL_SSL" in proc.stderr, proc.stderr
    lines.append(proc.stderr.strip().splitlines()[-1])
    print("refusals:\n  " + "\n  ".join(lines))


def _free() -> int:
    from .harness import free_port

    return free_port()


def test_web_binds_loopback_by_default() -> None:
    assert Settings.from_env({}).web_host == "127.0.0.1"
    assert Settings.from_env({"MW_WEB_HOST": "0.0.0.0"}).web_host == "0.0.0.0"
    compose = (REPO / "docker" / "compose.yaml").read_text()
    assert "MW_WEB_HOST: 0.0.0.0" in compose


def test_api_token_routed_between_workers(kafka_bootstrap: str, tmp_path: Path, unique_prefix: str) -> None:
    """Two workers on the shared broker; the token is needed, and forwarded by the router."""
    token = f"Tok{uuid.uuid4().hex}"
    partitions = 4
    env = worker_env(kafka_bootstrap, unique_prefix, partitions=partitions, MW_API_TOKEN=token,
                     MW_STATUS_INTERVAL_MS="0")
    workers = [WorkerProcess(env, tmp_path, "a"), WorkerProcess(env, tmp_path, "b")]
    try:
        # The first worker takes every input; the second joins afterwards and takes over
        # half the partitions from the committed changelog (it needs no input of its own).
        workers[0].start()
        wait_up(workers[0], timeout=90)
        accounts = [f"TOK-{i}" for i in range(16)]
        envelopes = []
        for a in accounts:
            for topic, key, value in _valid_inputs(a)[:2]:
                envelopes.append({"topic": topic, "key": key, "value": value})
        envelopes.append({"topic": "mark-prices", "key": "BTCUSDT",
                          "value": {"symbol": "BTCUSDT", "mark_price": "59000", "ts": TS + 5, "seq": 1}})
        asyncio.run(produce(kafka_bootstrap, unique_prefix, envelopes))
        wait_handled(workers[:1], 2 * len(accounts) + partitions, timeout=120)
        wait_committed(kafka_bootstrap, env["MW_APP_ID"], sequenced_topic(settings_for(env)), 60, workers[:1])
        workers[1].start()
        wait_up(workers[1], timeout=90)
        # both workers hold partitions, every account answered by its owner
        deadline = time.time() + 120
        owners: dict[int, set[int]] = {}
        while time.time() < deadline:
            for w in workers:
                w.check()
            owners = {}
            for i, w in enumerate(workers):
                status, body = _get(f"http://127.0.0.1:{w.port}/readyz")
                if status == 200:
                    owners[i] = set(orjson.loads(body).get("assigned", []))
            if len(owners) == 2 and all(owners.values()) and set().union(*owners.values()) == set(range(partitions)):
                ok = all(_get(f"http://127.0.0.1:{workers[0].port}/accounts/{a}", token)[0] == 200 for a in accounts)
                if ok:
                    break
            time.sleep(1.0)
        else:
            raise AssertionError(f"workers not both ready and answering: {owners}\n"
                                 + "\n".join(w.tail() for w in workers))
        routed = {0: 0, 1: 0}
        for i, w in enumerate(workers):
            other = owners[1 - i]
            base = f"http://127.0.0.1:{w.port}"
            for a in accounts:
                p = account_partition(a.encode(), partitions)
                status, body = _get(f"{base}/accounts/{a}", token)
                assert status == 200, (a, status, body)
                assert orjson.loads(body)["account_id"] == a
                assert _get(f"{base}/accounts/{a}")[0] == 401
                assert _get(f"{base}/accounts/{a}", "not-the-token")[0] == 401
                if p in other:
                    routed[i] += 1
            for path in ("/metrics", "/healthz", "/readyz"):
                status, body = _get(base + path)
                assert status == 200, (path, status)
                assert token.encode() not in body
        assert routed[0] > 0 and routed[1] > 0, (routed, owners)
        print(f"token auth: {len(accounts)} accounts x 2 workers; routed to the other worker with the token: "
              f"{routed[0]} + {routed[1]} queries (200); without / with a wrong token: 401")
    finally:
        for w in workers:
            w.stop()
    for w in workers:
        assert token not in w.log_path.read_text(errors="replace")
