"""A real Prometheus scrapes marginwatch metrics (the live-worker e2e test comes later)."""
from __future__ import annotations

import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest
from prometheus_client import CollectorRegistry

from streams.metrics import CONTENT_TYPE, Metrics, create_metrics

try:  # tests/integration may or may not be a package
    from .prom_helpers import PrometheusServer, free_port
except ImportError:
    from prom_helpers import PrometheusServer, free_port

ROOT = Path(__file__).resolve().parents[2]


def serve_metrics(metrics: Metrics) -> ThreadingHTTPServer:
    """Serve ``metrics.render()`` on GET /metrics at a free loopback port (daemon thread)."""

    class Handler(BaseHTTPRequestHandler):
        def do_GET(self):  # noqa: N802
            if self.path.split("?")[0] != "/metrics":
                self.send_error(404)
                return
            body = metrics.render()
            self.send_response(200)
            self.send_header("Content-Type", CONTENT_TYPE)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *args):
            pass

    server = ThreadingHTTPServer(("127.0.0.1", free_port()), Handler)
    threading.Thread(target=server.serve_forever, name="metrics-http", daemon=True).start()
    return server


@pytest.mark.timeout(120)
def test_prometheus_scrapes_a_metrics_endpoint(tmp_path):
    metrics = create_metrics(CollectorRegistry())
    for _ in range(3):
        metrics.observe_input("fills", "applied")
    metrics.observe_input("fills", "dead_letter", error="unknown_instrument")
    metrics.set_mark("BTCUSDT", event_ts_ms=1_700_000_000_000)
    http = serve_metrics(metrics)
    target = f"127.0.0.1:{http.server_address[1]}"
    try:
        with PrometheusServer([target], tmp_path / "prom", job="marginwatch",
                              rule_files=[ROOT / "monitoring" / "alerts.yml"]) as prom:
            assert prom.wait_for('up{job="marginwatch"}', lambda v: v == 1, timeout=60) == 1
            applied = 'marginwatch_input_messages_total{job="marginwatch", topic="fills", outcome="applied"}'
            assert prom.wait_for(applied, lambda v: v == 3, timeout=30) == 3
            assert prom.query_value(
                'marginwatch_dead_letters_total{topic="fills", error="unknown_instrument"}'
            ) == 1

            # a later increment shows up on a later scrape
            metrics.observe_input("fills", "applied")
            assert prom.wait_for(applied, lambda v: v == 4, timeout=30) == 4

            # the mark age is computed at scrape time: it grows with no new tick
            age = 'marginwatch_mark_price_age_seconds{symbol="BTCUSDT"}'
            first = prom.wait_for(age, lambda v: v >= 0, timeout=30)
            assert prom.wait_for(age, lambda v: v >= first + 1.0, timeout=30) >= first + 1.0

            # the real Prometheus loads every alert rule of monitoring/alerts.yml
            rules = prom.rules()
            assert len(rules) >= 10
            assert all(rule["health"] in {"ok", "unknown"} for rule in rules), rules
            assert {r["name"] for r in rules} >= {"MarginwatchWorkerDown", "MarginwatchMarkPriceStale"}
    finally:
        http.shutdown()
        http.server_close()
