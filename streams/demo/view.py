"""What the demo shows: the state behind the live view, its rich rendering and the final summary."""

from __future__ import annotations

import time
from collections import Counter, deque
from dataclasses import dataclass, field

from .metrics import STATES, Snapshot
from .options import DemoOptions


@dataclass
class View:
    """State shown by the live view and the summary."""

    tag: str
    calls: deque = field(default_factory=lambda: deque(maxlen=8))
    liqs: deque = field(default_factory=lambda: deque(maxlen=8))
    calls_total: int = 0
    calls_to: Counter = field(default_factory=Counter)
    liqs_total: int = 0
    episodes: set = field(default_factory=set)
    snap: Snapshot | None = None
    prev: deque = field(default_factory=lambda: deque(maxlen=20))
    sim_started: float | None = None
    sim_done: bool = False
    phase: str = "starting"

    def rate(self) -> float:
        """Inputs per second over the last few seconds of snapshots."""
        if self.snap is None or not self.prev:
            return 0.0
        old = self.prev[0]
        dt = self.snap.at - old.at
        return (self.snap.inputs - old.inputs) / dt if dt > 0 else 0.0


def _ms(x: float | None) -> str:
    return "-" if x is None else f"{x * 1000:.1f} ms"


def render(view: View, opts: DemoOptions):
    """The live view as a rich renderable: accounts, flow, recent margin calls and liquidations."""
    from rich.console import Group
    from rich.panel import Panel
    from rich.table import Table

    elapsed = time.monotonic() - view.sim_started if view.sim_started else 0.0
    if opts.duration:
        crash = opts.duration * opts.crash_at
        when = f"{elapsed:5.0f}/{opts.duration:.0f} s, crash at ~{crash:.0f} s"
    else:
        when = f"{elapsed:5.0f} s, a crash every {opts.crash_every:.0f} s, Ctrl-C stops"
    head = f"[bold]marginwatch demo[/]  prefix [cyan]{view.tag}.[/]  {when}  [dim]{view.phase}[/]"

    snap = view.snap
    acc = Table(title="accounts (worst state)", expand=True)
    for s, style in zip(STATES, ("green", "yellow", "red")):
        acc.add_column(s, justify="right", style=style)
    acc.add_row(*(f"{snap.accounts.get(s, 0):.0f}" if snap else "-" for s in STATES))

    stats = Table(title="flow", expand=True)
    for col in ("inputs", "inputs/s", "dead letters", "margin calls", "liquidations", "p50", "p99"):
        stats.add_column(col, justify="right")
    stats.add_row(
        f"{snap.inputs:,.0f}" if snap else "-", f"{view.rate():,.0f}",
        f"{snap.inputs_by_outcome.get('dead_letter', 0):,.0f}" if snap else "-",
        f"{view.calls_total:,}", f"{view.liqs_total:,}",
        _ms(snap.latency(0.5)) if snap else "-", _ms(snap.latency(0.99)) if snap else "-",
    )

    calls = Table(title="recent margin calls", expand=True, show_edge=False)
    for col in ("time", "account", "scope", "transition", "ratio"):
        calls.add_column(col)
    for v in reversed(view.calls):
        to = v.get("to")
        style = {"healthy": "green", "margin_call": "yellow", "liquidation": "red"}.get(to, "white")
        calls.add_row(_clock(v.get("ts")), str(v.get("account_id")), str(v.get("scope")),
                      f"{v.get('from')} → [{style}]{to}[/]", _ratio(v.get("margin_ratio")))

    liqs = Table(title="recent liquidations", expand=True, show_edge=False)
    for col in ("time", "account", "scope", "ep.step", "orders"):
        liqs.add_column(col)
    for v in reversed(view.liqs):
        orders = ", ".join(f"{o.get('side')} {o.get('qty')} {o.get('symbol')}" for o in v.get("orders") or ())
        liqs.add_row(_clock(v.get("ts")), str(v.get("account_id")), str(v.get("scope")),
                     f"{v.get('episode')}.{v.get('step')}", orders[:60])
    return Panel(Group(head, acc, stats, calls, liqs), border_style="blue")


def _clock(ts: object) -> str:
    if not isinstance(ts, int):
        return "-"
    return time.strftime("%H:%M:%S", time.localtime(ts / 1000))


def _ratio(r: object) -> str:
    try:
        return f"{float(r):.3f}"
    except (TypeError, ValueError):
        return "∞"


def summary_text(view: View, opts: DemoOptions, produced: int | None, live_s: float,
                 bot_fills: int | None = None) -> str:
    """The plain-text summary printed at the end of the demo."""
    snap = view.snap
    lines = [f"marginwatch demo: summary ({live_s:.0f} s of simulation, topic prefix {view.tag}.)"]
    if snap is not None:
        lines.append("accounts: " + ", ".join(f"{s} {snap.accounts.get(s, 0):.0f}" for s in STATES))
    else:
        lines.append("accounts: unknown (no metrics from the worker)")
    to = ", ".join(f"to {k} {v}" for k, v in sorted(view.calls_to.items()))
    lines.append(f"margin calls: {view.calls_total}" + (f" ({to})" if to else ""))
    lines.append(f"liquidations: {view.liqs_total} ({len(view.episodes)} episodes)")
    if snap is not None:
        outcomes = ", ".join(f"{k} {v:,.0f}" for k, v in sorted(snap.inputs_by_outcome.items()))
        sources = []
        if produced is not None:
            sources.append(f"{produced:,} events from the simulator")
        if bot_fills is not None:
            sources.append(f"{bot_fills:,} closing fills from the bot")
        lines.append(f"inputs processed: {snap.inputs:,.0f} ({outcomes})"
                     + (f"; produced: {', '.join(sources)}" if sources else ""))
        lines.append(f"decision latency: p50 {_ms(snap.latency(0.5))}, p99 {_ms(snap.latency(0.99))}")
    return "\n".join(lines)
