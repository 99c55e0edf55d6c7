"""``POST /stress``: what-if shocks and liquidation cascades over the live state of every worker.

Body (JSON object; every field optional but one of ``shocks``/``grid``)::

    {"shocks": {"BTCUSDT": "-15%", "ETHUSDT": "2900"},   # relative or absolute marks
     "grid": [4, 8, 12, 16],                             # also every marked symbol moved by 0, ±P %
     "cascade": {"rounds": 10, "depth": {"BTCUSDT": "5e7"}, "default_depth": "5e7",
                 "impact": "1", "max_move": "0.5"},      # or true for the defaults
     "top": 10, "exact": false}

Answer: the JSON of ``marginwatch stress`` (``accounts_liquidation``, ``accounts_margin_call``,
``shortfall``, ``bad_debt``, ``top``; ``scenarios`` for a grid; ``rounds`` for a cascade) plus
``partitions`` and ``workers``. A bad body is a 400 whose ``error`` names the field; with
``MW_API_TOKEN`` set, ``Authorization: Bearer <token>`` is required (401).

Gathering. The receiving worker (the coordinator) reads from faust's assignor which worker
(web URL) holds which partitions of the accounts table (``app.router.table_metadata``) and
posts the scenarios to each one's internal ``POST /stress/local`` (its own partitions it
evaluates in place), forwarding the token. ``/stress/local`` evaluates
``streams.margin.stress.BookStress`` over the engine of every partition asked for and answers
the merged, mergeable results (``StressResult.to_wire``). The coordinator merges the workers'
results per scenario. For a cascade it runs ``cascade.run_cascade_async`` and every round is
one such fan-out, carrying the round's marks and the scopes closed so far. Every partition is
read at one instant of its own (the evaluation does not await); live marks may move between
the rounds of a cascade or between workers.
"""
from __future__ import annotations

import asyncio
import json
import logging
from decimal import Decimal, InvalidOperation

import aiohttp
from faust.web import View
from yarl import URL

from .margin.cascade import DEFAULT_DEPTH, DEFAULT_MAX_MOVE, ImpactModel, run_cascade_async
from .margin.stress import (
    DEFAULT_TOP,
    BookStress,
    Scenario,
    StressError,
    StressResult,
    grid_report,
    grid_scenarios,
    parse_grid,
    parse_shock,
)
from .web import authorized, held_partitions, ready

log = logging.getLogger(__name__)

FIELDS = ("shocks", "grid", "cascade", "top", "exact")
CASCADE_FIELDS = ("rounds", "depth", "default_depth", "impact", "max_move")
LOCAL_TIMEOUT_S = 60.0


class BadRequest(Exception):
    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message


def _num(value, field: str, positive: bool = True) -> Decimal:
    if isinstance(value, bool) or not isinstance(value, (str, int, float)):
        raise BadRequest(f"field '{field}' must be a number or a decimal string, got {value!r}")
    try:
        d = Decimal(str(value).strip())
    except InvalidOperation:
        raise BadRequest(f"field '{field}' is not a number: {value!r}") from None
    if not d.is_finite() or (d <= 0 if positive else d < 0):
        raise BadRequest(f"field '{field}' must be a finite number {'> 0' if positive else '>= 0'}: {value!r}")
    return d


def _int(value, field: str, lo: int) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < lo:
        raise BadRequest(f"field '{field}' must be an integer >= {lo}, got {value!r}")
    return value


def parse_body(raw: bytes):
    """(scenarios, impact model or None, rounds, top, exact) of a request body, or BadRequest."""
    try:
        body = json.loads(raw or b"null")
    except ValueError:
        raise BadRequest("the body is not JSON") from None
    if not isinstance(body, dict):
        raise BadRequest("the body must be a JSON object with 'shocks' and/or 'grid'")
    for k in body:
        if k not in FIELDS:
            raise BadRequest(f"field '{k}' is unknown (expected: {', '.join(FIELDS)})")
    shocks_in = body.get("shocks", {})
    if not isinstance(shocks_in, dict):
        raise BadRequest("field 'shocks' must be an object {SYMBOL: '-15%' or a price}")
    try:
        shocks = tuple(parse_shock(sym, v) for sym, v in shocks_in.items())
        moves = None
        if "grid" in body:
            if not isinstance(body["grid"], list) or not body["grid"]:
                raise BadRequest("field 'grid' must be a non-empty list of steps in percent, e.g. [4, 8, 12, 16]")
            moves = parse_grid(body["grid"])
    except StressError as err:
        raise BadRequest(f"field '{err.field}': {err.message.split(': ', 1)[-1]}") from None
    if not shocks and moves is None:
        raise BadRequest("field 'shocks' is missing or empty (give shocks or a grid)")
    top = _int(body.get("top", DEFAULT_TOP), "top", 0)
    exact = body.get("exact", False)
    if not isinstance(exact, bool):
        raise BadRequest(f"field 'exact' must be true or false, got {exact!r}")
    model, rounds = None, 10
    casc = body.get("cascade", False)
    if casc is True:
        casc = {}
    if casc is not False and casc is not None:
        if not isinstance(casc, dict):
            raise BadRequest("field 'cascade' must be an object (or true/false)")
        for k in casc:
            if k not in CASCADE_FIELDS:
                raise BadRequest(f"field 'cascade.{k}' is unknown (expected: {', '.join(CASCADE_FIELDS)})")
        if moves is not None:
            raise BadRequest("field 'grid' cannot be combined with 'cascade' (a cascade starts from one scenario)")
        rounds = _int(casc.get("rounds", 10), "cascade.rounds", 1)
        depth = casc.get("depth", {})
        if not isinstance(depth, dict):
            raise BadRequest("field 'cascade.depth' must be an object {SYMBOL: notional}")
        max_move = _num(casc.get("max_move", str(DEFAULT_MAX_MOVE)), "cascade.max_move")
        if max_move >= 1:
            raise BadRequest(f"field 'cascade.max_move' must be < 1: {casc.get('max_move')!r}")
        model = ImpactModel(
            tuple((s, _num(v, f"cascade.depth.{s}")) for s, v in depth.items()),
            _num(casc.get("default_depth", str(DEFAULT_DEPTH)), "cascade.default_depth"),
            _num(casc.get("impact", "1"), "cascade.impact", positive=False),
            max_move,
        )
    scenarios = grid_scenarios(shocks, moves) if moves is not None else [Scenario(shocks)]
    return scenarios, model, rounds, top, exact


def attach_stress_pages(mapp) -> None:
    """Add ``POST /stress`` (the coordinator) and ``POST /stress/local`` (one worker's partitions)."""
    app = mapp.app
    settings = mapp.settings
    token = settings.api_token

    async def evaluate_local(partitions: list[int], scenarios: list[Scenario], closed, top: int, exact: bool,
                             want_liquidated: bool) -> list[StressResult]:
        """The scenarios over this worker's engines of ``partitions`` (merged per scenario)."""
        held = held_partitions(mapp)
        procs = []
        for p in partitions:
            proc = mapp.processors.get(p)
            if proc is None:
                if p not in held:
                    raise LookupError(f"partition {p} is not held here")
                from .agents.accounts import build_processor

                proc = await build_processor(mapp, p)  # for this request only (see web.py)
            procs.append(proc)
        # no await from here on: each engine is read at one instant
        books = [BookStress(proc.engine, top=top) for proc in procs]
        return [StressResult.merge([b.evaluate(sc, closed, exact, want_liquidated) for b in books], top)
                for sc in scenarios]

    def owners() -> dict[str, list[int]]:
        """Worker URL → partitions of the accounts table it holds (faust's assignor metadata)."""
        meta = app.router.table_metadata(mapp.accounts.name)
        out: dict[str, list[int]] = {}
        for url, topics in meta.items():
            parts = sorted({p for ps in topics.values() for p in ps})
            if parts:
                out[str(url)] = parts
        return out

    def is_self(url: str) -> bool:
        a, b = URL(url), URL(str(app.conf.canonical_url))
        return (a.host, a.port) == (b.host, b.port)

    async def fan_out(by_url: dict[str, list[int]], scenarios, closed, top, exact, want_liquidated):
        """Every worker's results, merged per scenario."""
        async def one(url: str, parts: list[int]) -> list[StressResult]:
            if is_self(url):
                return await evaluate_local(parts, scenarios, closed, top, exact, want_liquidated)
            body = {"partitions": parts, "scenarios": [s.to_wire() for s in scenarios],
                    "closed": [list(x) for x in closed or ()], "top": top, "exact": exact,
                    "want_liquidated": want_liquidated}
            headers = {"Content-Type": "application/json"}
            if token:
                headers["Authorization"] = f"Bearer {token}"
            target = str(URL(url).with_path("/stress/local"))
            async with app.http_client.post(target, data=json.dumps(body), headers=headers,
                                            timeout=aiohttp.ClientTimeout(total=LOCAL_TIMEOUT_S)) as resp:
                text = await resp.text()
                if resp.status == 400:  # a scenario this worker's book rejects (e.g. an unknown symbol)
                    err = json.loads(text)
                    raise StressError(err.get("field") or "body", err.get("error", text))
                if resp.status == 503:
                    raise LookupError(f"{url}: {json.loads(text).get('error', text)}")
                if resp.status != 200:
                    raise RuntimeError(f"{target} answered {resp.status}: {text[:300]}")
                return [StressResult.from_wire(r) for r in json.loads(text)["results"]]

        parts_of = list(by_url.items())
        answers = await asyncio.gather(*(one(u, ps) for u, ps in parts_of))
        return [StressResult.merge([a[i] for a in answers], top) for i in range(len(scenarios))]

    class StressLocal(View):
        async def post(self, request):
            if not authorized(request, token):
                return self.json({"error": "unauthorized"}, status=401)
            try:
                body = json.loads(await request.read())
                parts = [int(p) for p in body["partitions"]]
                scenarios = [Scenario.from_wire(s) for s in body["scenarios"]]
                closed = [tuple(x) for x in body.get("closed") or ()]
                top = int(body.get("top", DEFAULT_TOP))
            except (ValueError, KeyError, TypeError, StressError) as exc:
                return self.json({"error": f"bad request: {exc}"}, status=400)
            try:
                results = await evaluate_local(parts, scenarios, closed, top, bool(body.get("exact")),
                                               bool(body.get("want_liquidated")))
            except LookupError as exc:
                return self.json({"error": str(exc)}, status=503)
            except StressError as exc:
                return self.json({"error": exc.message, "field": exc.field}, status=400)
            return self.json({"partitions": parts, "results": [r.to_wire() for r in results]})

    class Stress(View):
        async def post(self, request):
            if not authorized(request, token):
                return self.json({"error": "unauthorized"}, status=401)
            try:
                scenarios, model, rounds, top, exact = parse_body(await request.read())
            except BadRequest as exc:
                return self.json({"error": exc.message}, status=400)
            if not ready(mapp):
                return self.json({"error": "not ready: tables recovering or rebalancing"}, status=503)
            try:
                by_url = owners()
            except (KeyError, TypeError, AssertionError) as exc:
                log.info("POST /stress: partition owners unknown: %r", exc)
                return self.json({"error": "not ready: partition owners unknown"}, status=503)
            covered = sorted({p for ps in by_url.values() for p in ps})
            if covered != list(range(settings.partitions)):
                return self.json({"error": "not ready: not every partition has an owner",
                                  "partitions": covered}, status=503)
            currency = settings.valuation_currency
            try:
                if model is not None:
                    async def round_eval(sc, closed):
                        return (await fan_out(by_url, [sc], closed, top, exact, True))[0]

                    casc = await run_cascade_async(round_eval, scenarios[0], model, rounds)
                    out = casc.report(currency, top)
                else:
                    results = await fan_out(by_url, scenarios, None, top, exact, False)
                    if len(scenarios) == 1:
                        out = results[0].report(currency, scenarios[0].label())
                    else:
                        out = grid_report(results, scenarios, currency)
            except StressError as exc:
                return self.json({"error": f"field '{exc.field}': {exc.message.split(': ', 1)[-1]}"}, status=400)
            except LookupError as exc:
                return self.json({"error": f"not ready: {exc}"}, status=503)
            except (RuntimeError, OSError, asyncio.TimeoutError) as exc:
                log.warning("POST /stress: a worker failed: %r", exc)
                return self.json({"error": f"a worker failed: {exc}"}, status=502)
            out["partitions"] = covered
            out["workers"] = len(by_url)
            return self.json(out)

    app.page("/stress/local")(StressLocal)
    app.page("/stress")(Stress)
