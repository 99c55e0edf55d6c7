"""HTTP pages on faust's web server.

``GET /accounts/{account_id}``: the account's current margin-status, routed to
the worker that owns its partition; ``GET /healthz`` (alive), ``GET /readyz``
(503 from start-up until the first assignment is recovered, and while tables
recover or a rebalance is in progress), ``GET /metrics``.
With ``MW_API_TOKEN`` set, account queries need ``Authorization: Bearer <token>``.
"""
from __future__ import annotations

import hmac
import logging

from .margin.engine import current_status
from .pipeline import wall_ms
from .topics import account_partition

log = logging.getLogger(__name__)


def authorized(request, token: str | None) -> bool:
    """Whether ``request`` may query: always when no API token is set, otherwise it must
    carry ``Authorization: Bearer <token>`` (compared in constant time)."""
    if not token:
        return True
    given = request.headers.get("Authorization", "")
    return hmac.compare_digest(given.encode(), f"Bearer {token}".encode())


def ready(mapp) -> bool:
    """Whether the worker answers queries: its health tracker's verdict, or, without one,
    neither recovering tables nor rebalancing."""
    health = getattr(mapp, "health", None)
    if health is not None:
        return health.ready()
    app = mapp.app
    return not (getattr(app, "in_recovery", False) or app.rebalancing)


def held_partitions(mapp) -> set[int]:
    """Partitions of the sequenced topic assigned to this worker."""
    topic = mapp.sequenced.get_topic_name()
    return {tp.partition for tp in mapp.app.consumer.assignment() if tp.topic == topic}


def attach_pages(mapp) -> None:
    """Add the account query, health, readiness and metrics pages (module docstring)."""
    app = mapp.app
    token = mapp.settings.api_token

    async def local_status(web, request, account_id: str):
        if not authorized(request, token):
            return web.json({"error": "unauthorized"}, status=401)
        p = account_partition(account_id.encode(), mapp.settings.partitions)
        proc = mapp.processors.get(p)
        if proc is None:
            if p not in held_partitions(mapp):
                return web.json({"error": "partition not held here", "partition": p}, status=503)
            from .agents.accounts import build_processor

            # Built for this query only, never stored: the agent owns mapp.processors
            # (a stored one would lack the agent's per-partition bookkeeping, and one
            # finished after a revocation would outlive the partition's state).
            proc = await build_processor(mapp, p)
        out = current_status(proc.engine, account_id, {"topic": "query", "id": account_id, "ts": proc.engine.last_ts})
        if out is None:
            return web.json({"error": "unknown account", "account_id": account_id}, status=404)
        out.value["decided_at"] = wall_ms()
        return web.json(out.value)

    routed = app.table_route(table=mapp.accounts, match_info="account_id")(local_status)

    @app.page("/accounts/{account_id}")
    async def account_status(web, request, account_id: str):
        if not authorized(request, token):
            return web.json({"error": "unauthorized"}, status=401)
        if not ready(mapp):
            return web.json({"error": "not ready: tables recovering or rebalancing"}, status=503)
        try:
            return await routed(web, request, account_id=account_id)
        except (TypeError, KeyError, AssertionError) as exc:  # routing table/metadata not known yet
            log.info("GET /accounts/%s not routable yet: %r", account_id, exc)
            return web.json({"error": "not ready: partition owner unknown"}, status=503)

    @app.page("/healthz")
    async def healthz(web, request):
        return web.json({"alive": True})

    @app.page("/readyz")
    async def readyz(web, request):
        ok = ready(mapp)
        body = {"ready": ok, "recovering": bool(getattr(mapp, "health", None) and mapp.health.recovering)
                or bool(getattr(app, "in_recovery", False)),
                "rebalancing": bool(app.rebalancing), "partitions": sorted(mapp.processors),
                "assigned": sorted(getattr(getattr(mapp, "health", None), "assigned", ()))}
        return web.json(body, status=200 if ok else 503)

    @app.page("/metrics")
    async def metrics(web, request):
        return web.bytes(mapp.metrics.render(), content_type="text/plain; version=0.0.4")
