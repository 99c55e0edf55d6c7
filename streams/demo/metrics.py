"""Reading the worker's ``/metrics``: the Prometheus text format, histogram quantiles, a snapshot."""

from __future__ import annotations

import urllib.error
import urllib.request
from collections import Counter
from dataclasses import dataclass

STATES = ("healthy", "margin_call", "liquidation")
DECISION_OUTPUTS = ("margin-status", "margin-calls", "liquidations")


def parse_metrics(text: str) -> list[tuple[str, dict, float]]:
    """Samples of a Prometheus text exposition as (name, labels, value)."""
    out = []
    for line in text.splitlines():
        if not line or line.startswith("#"):
            continue
        head, _, value = line.rpartition(" ")
        name, labels = head, {}
        if "{" in head:
            name, _, rest = head.partition("{")
            rest = rest.rsplit("}", 1)[0]
            for part in _split_labels(rest):
                k, _, v = part.partition("=")
                labels[k.strip()] = v.strip().strip('"')
        try:
            out.append((name, labels, float(value)))
        except ValueError:
            continue
    return out


def _split_labels(text: str) -> list[str]:
    parts, cur, quoted = [], [], False
    for ch in text:
        if ch == '"':
            quoted = not quoted
        if ch == "," and not quoted:
            parts.append("".join(cur))
            cur = []
        else:
            cur.append(ch)
    if cur:
        parts.append("".join(cur))
    return [p for p in parts if p.strip()]


def histogram_quantile(q: float, buckets: dict[float, float]) -> float | None:
    """Prometheus' histogram_quantile over cumulative ``{le: count}`` (linear in the bucket)."""
    if not buckets:
        return None
    les = sorted(buckets)
    total = buckets[les[-1]]
    if total <= 0:
        return None
    rank = q * total
    prev_le, prev_count = 0.0, 0.0
    for le in les:
        count = buckets[le]
        if count >= rank:
            if le == float("inf"):
                return prev_le
            if count == prev_count:
                return le
            return prev_le + (le - prev_le) * (rank - prev_count) / (count - prev_count)
        prev_le, prev_count = le, count
    return les[-1]


@dataclass
class Snapshot:
    """What the demo reads from one scrape of the worker's /metrics."""

    at: float
    accounts: dict[str, float]
    inputs: float
    inputs_by_outcome: dict[str, float]
    margin_calls: float
    liquidations: float
    episodes: float
    latency_buckets: dict[float, float]
    lag: float = 0.0

    @classmethod
    def parse(cls, text: str, at: float) -> "Snapshot":
        accounts = {s: 0.0 for s in STATES}
        by_outcome: Counter = Counter()
        buckets: Counter = Counter()
        calls = liqs = episodes = lag = 0.0
        for name, labels, value in parse_metrics(text):
            if name == "marginwatch_consumer_lag_messages":
                lag += value
            if name == "marginwatch_accounts" and labels.get("state") in accounts:
                accounts[labels["state"]] += value
            elif name == "marginwatch_input_messages_total":
                by_outcome[labels.get("outcome", "?")] += value
            elif name == "marginwatch_margin_calls_total":
                calls += value
            elif name == "marginwatch_liquidations_total":
                liqs += value
            elif name == "marginwatch_liquidation_episodes_total":
                episodes += value
            elif name == "marginwatch_decision_latency_seconds_bucket" and labels.get("output") in DECISION_OUTPUTS:
                buckets[float(labels["le"])] += value
        return cls(at, accounts, sum(by_outcome.values()), dict(by_outcome), calls, liqs, episodes, dict(buckets), lag)

    def latency(self, q: float) -> float | None:
        """Decision latency quantile ``q`` in seconds, None before any decision."""
        return histogram_quantile(q, self.latency_buckets)


def scrape(url: str, timeout: float = 2.0) -> str | None:
    """The body of ``url`` (the worker's /metrics), or None if it does not answer."""
    try:
        with urllib.request.urlopen(url, timeout=timeout) as resp:
            return resp.read().decode()
    except (OSError, urllib.error.URLError):
        return None
