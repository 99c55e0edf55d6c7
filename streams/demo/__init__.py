"""``marginwatch demo``: the whole system on one machine, with a live terminal view.

1. Ensures the local Kafka broker is up (:func:`streams.kafka_local.start`,
   idempotent; a broker already answering on ``MW_KAFKA_PORT`` is used as is).
2. Starts a worker (``python -m streams.cli worker``) with its own topic prefix
   and app id (``demo-<id>.``), status interval 1000 ms, on a free web port.
3. Starts the liquidation bot (``examples/liquidation_bot.py``) and the live
   simulator (``python -m streams.cli simulate``), with a market crash after about
   a third of ``--duration`` and a recovery after it (without ``--duration``: a
   crash every ``--crash-every`` seconds).
4. Shows accounts per state (the worker's ``marginwatch_accounts{state}``), the
   input rate, decision latency p50/p99 (from the ``/metrics`` histograms) and the
   latest margin calls and liquidations (consumed from the output topics).
5. At the end (``--duration`` reached, Ctrl-C or SIGTERM) stops the children
   (SIGTERM to each process group, SIGKILL after a grace period), deletes the
   demo's topics (``--keep-topics`` keeps them), stops the broker if the demo
   started it (``--keep-kafka`` keeps it), and prints a plain-text summary.

Every child runs in its own process group and is killed as a group, so nothing is
left behind. Logs of the children go to ``<cache>/demo/<id>/`` and are kept when
something failed.

Modules: :mod:`.options`, :mod:`.metrics` (the worker's /metrics), :mod:`.children`
(the child processes), :mod:`.view` (live view and summary), :mod:`.topics` (the
output reader, topic clean-up) and :mod:`.orchestrator` (the run itself).
"""
from __future__ import annotations

from .children import STOP_GRACE_S, Child, free_port
from .metrics import DECISION_OUTPUTS, STATES, Snapshot, histogram_quantile, parse_metrics, scrape
from .options import BOT, REPO, DemoOptions
from .orchestrator import Demo, run
from .topics import OutputReader
from .view import View, render, summary_text

__all__ = [
    "BOT",
    "DECISION_OUTPUTS",
    "REPO",
    "STATES",
    "STOP_GRACE_S",
    "Child",
    "Demo",
    "DemoOptions",
    "OutputReader",
    "Snapshot",
    "View",
    "free_port",
    "histogram_quantile",
    "parse_metrics",
    "render",
    "run",
    "scrape",
    "summary_text",
]
