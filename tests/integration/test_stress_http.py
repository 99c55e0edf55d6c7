"""``POST /stress`` on real workers on the real broker: the answer over the live state equals the
stress evaluation of the replayed sequenced log, with one worker and after a second joined
(the coordinator fans out to the other worker's ``/stress/local``, forwarding the token).

The simulated log is produced, the workers process it; the sequenced log is read back and
each partition folded like ``marginwatch replay`` (``stress_cli.fold_log``): the expected
answers are ``stress.evaluate_books`` / ``cascade.run_cascade`` over those engines.
"""
from __future__ import annotations

import asyncio
import json
import time
import urllib.error
import urllib.request
import uuid
from decimal import Decimal
from pathlib import Path

import jsonschema
import pytest

from streams.margin.cascade import ImpactModel, run_cascade
from streams.margin.stress import BookStress, Scenario, evaluate_books, grid_report, grid_scenarios, parse_grid, parse_shock
from streams.sim.market import SimConfig, generate
from streams.stress_cli import fold_log
from streams.topics import sequenced_topic

from .harness import (
    WorkerProcess,
    expected_sequenced,
    produce,
    read_topic,
    sequenced_as_replay_lines,
    settings_for,
    wait_processed,
    wait_up,
    worker_env,
)

pytestmark = [pytest.mark.kafka]
PARTITIONS = 2
ROOT = Path(__file__).resolve().parents[2]
SCHEMA = json.loads((ROOT / "schemas" / "http" / "stress-response.schema.json").read_text())


def post(port: int, body, token: str | None = None, path: str = "/stress") -> tuple[int | None, dict]:
    data = body if isinstance(body, bytes) else json.dumps(body).encode()
    req = urllib.request.Request(f"http://127.0.0.1:{port}{path}", data=data, method="POST",
                                 headers={"Content-Type": "application/json"})
    if token:
        req.add_header("Authorization", f"Bearer {token}")
    try:
        with urllib.request.urlopen(req, timeout=120) as resp:
            return resp.status, json.loads(resp.read())
    except urllib.error.HTTPError as e:
        return e.code, json.loads(e.read() or b"{}")


def get(port: int, path: str) -> tuple[int | None, dict]:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}{path}", timeout=10) as resp:
            return resp.status, json.loads(resp.read())
    except urllib.error.HTTPError as e:
        return e.code, {}
    except OSError:
        return None, {}


def expected_engines(bootstrap: str, env: dict, tmp: Path) -> list:
    settings = settings_for(env)
    records = asyncio.run(read_topic(bootstrap, sequenced_topic(settings)))
    engines = []
    for p in range(PARTITIONS):
        path = tmp / f"sequenced-{p}.jsonl"
        path.write_bytes(b"\n".join(sequenced_as_replay_lines(records.get(p, []))) + b"\n")
        engines.append(fold_log(str(path), settings)[0])
    return engines


SHOCK = {"BTCUSDT": "-12%", "ETHUSDT": "-15%"}
CASCADE = {"rounds": 6, "default_depth": "2000000"}


def expectations(engines) -> dict:
    books = lambda: [BookStress(e) for e in engines]  # noqa: E731
    shocks = tuple(parse_shock(s, v) for s, v in SHOCK.items())
    single = evaluate_books(books(), Scenario(shocks)).report("USDT", Scenario(shocks).label())
    scs = grid_scenarios((), parse_grid([5, 10]))
    bs = books()
    grid = grid_report([evaluate_books(bs, s) for s in scs], scs, "USDT")
    bs = books()
    model = ImpactModel(default_depth=Decimal(CASCADE["default_depth"]))
    casc = run_cascade(lambda sc, closed: evaluate_books(bs, sc, closed, want_liquidated=True),
                       Scenario(shocks), model, CASCADE["rounds"]).report("USDT")
    return {"single": single, "grid": grid, "cascade": casc}


def same(got: dict, want: dict) -> None:
    for k in ("accounts", "accounts_liquidation", "accounts_margin_call", "marks"):
        assert got[k] == want[k], k
    for k in ("shortfall", "bad_debt"):
        assert float(got[k]) == pytest.approx(float(want[k]), rel=1e-9, abs=1e-9), k


def check_answers(port: int, token: str, want: dict) -> dict:
    timings = {}
    t = time.perf_counter()
    status, single = post(port, {"shocks": SHOCK}, token)
    timings["single_ms"] = round((time.perf_counter() - t) * 1e3, 1)
    assert status == 200, single
    jsonschema.Draft7Validator(SCHEMA).validate(single)
    same(single, want["single"])
    assert single["partitions"] == list(range(PARTITIONS))
    assert single["accounts_liquidation"], "the shock liquidates someone"
    t = time.perf_counter()
    status, grid = post(port, {"grid": [5, 10], "top": 10}, token)
    timings["grid_ms"] = round((time.perf_counter() - t) * 1e3, 1)
    assert status == 200, grid
    jsonschema.Draft7Validator(SCHEMA).validate(grid)
    assert len(grid["scenarios"]) == 5
    for g, w in zip(grid["scenarios"], want["grid"]["scenarios"]):
        same(g, w)
    t = time.perf_counter()
    status, casc = post(port, {"shocks": SHOCK, "cascade": CASCADE}, token)
    timings["cascade_ms"] = round((time.perf_counter() - t) * 1e3, 1)
    assert status == 200, casc
    jsonschema.Draft7Validator(SCHEMA).validate(casc)
    assert [r["marks"] for r in casc["rounds"]] == [r["marks"] for r in want["cascade"]["rounds"]]
    assert [r["accounts_liquidated"] for r in casc["rounds"]] == [r["accounts_liquidated"] for r in want["cascade"]["rounds"]]
    assert casc["accounts_liquidation"] == want["cascade"]["accounts_liquidation"]
    assert float(casc["shortfall"]) == pytest.approx(float(want["cascade"]["shortfall"]), rel=1e-9)
    assert len(casc["rounds"]) >= 2
    return {"workers": single["workers"], **timings, "rounds": len(casc["rounds"])}


def check_errors(port: int, token: str) -> None:
    assert post(port, {"shocks": SHOCK})[0] == 401
    assert post(port, {"shocks": SHOCK}, "not-the-token")[0] == 401
    assert post(port, {"partitions": [0], "scenarios": []}, path="/stress/local")[0] == 401
    for body, needle in [
        (b"{nope", "not JSON"),
        ([1, 2], "JSON object"),
        ({}, "'shocks'"),
        ({"shocks": {"BTCUSDT": "abc"}}, "'shocks.BTCUSDT'"),
        ({"shocks": {"BTCUSDT": "-150%"}}, "'shocks.BTCUSDT'"),
        ({"shocks": {"NOPE": "-5%"}}, "'shocks.NOPE'"),
        ({"grid": "x"}, "'grid'"),
        ({"grid": [4, "y"]}, "'grid[1]'"),
        ({"shocks": SHOCK, "typo": 1}, "'typo'"),
        ({"shocks": SHOCK, "cascade": {"rounds": 0}}, "'cascade.rounds'"),
        ({"shocks": SHOCK, "cascade": {"depth": {"BTCUSDT": "-1"}}}, "'cascade.depth.BTCUSDT'"),
        ({"grid": [4], "cascade": True}, "'grid'"),
        ({"shocks": SHOCK, "top": -1}, "'top'"),
    ]:
        status, answer = post(port, body, token)
        assert status == 400, (body, status, answer)
        assert needle in answer["error"], (body, answer)


@pytest.mark.timeout(900)
def test_post_stress_equals_replayed_state(kafka_bootstrap, unique_prefix, tmp_path):
    token = f"Tok{uuid.uuid4().hex}"
    env = worker_env(kafka_bootstrap, unique_prefix, PARTITIONS, MW_API_TOKEN=token)
    workers = [WorkerProcess(env, tmp_path, "a"), WorkerProcess(env, tmp_path, "b")]
    try:
        workers[0].start()
        wait_up(workers[0], timeout=120)
        envelopes = list(generate(SimConfig(seed=3, accounts=80, events=3000, symbols=("BTCUSDT", "ETHUSDT"))))
        asyncio.run(produce(kafka_bootstrap, unique_prefix, envelopes))
        wait_processed(kafka_bootstrap, env["MW_APP_ID"], sequenced_topic(settings_for(env)),
                       expected_sequenced(envelopes, PARTITIONS), 300, workers[:1])
        want = expectations(expected_engines(kafka_bootstrap, env, tmp_path))
        check_errors(workers[0].port, token)
        one = check_answers(workers[0].port, token, want)
        assert one["workers"] == 1
        # a second worker takes over a partition from the changelog; the coordinator fans out
        workers[1].start()
        wait_up(workers[1], timeout=120)
        deadline = time.time() + 180
        while time.time() < deadline:
            for w in workers:
                w.check()
            held = [get(w.port, "/readyz") for w in workers]
            if all(s == 200 and b.get("assigned") for s, b in held):
                status, answer = post(workers[0].port, {"shocks": SHOCK}, token)
                if status == 200 and answer.get("workers") == 2:
                    break
            time.sleep(1.0)
        else:
            raise AssertionError("the second worker never held a partition:\n" + "\n".join(w.tail() for w in workers))
        two = [check_answers(w.port, token, want) for w in workers]
        assert all(t["workers"] == 2 for t in two)
        print(f"\nPOST /stress, {len(envelopes)} inputs, 80 accounts: one worker {one}; two workers {two}")
    finally:
        for w in workers:
            w.stop()
