"""``marginwatch``: the command line. Errors are one clear line, never a traceback."""
from __future__ import annotations

import argparse
import os
import sys
from decimal import Decimal, InvalidOperation

from .margin.errors import MarginwatchError


class OneLineParser(argparse.ArgumentParser):
    """argparse with one-line errors and exit code 2."""

    def error(self, message: str) -> None:  # type: ignore[override]
        sys.stderr.write(f"marginwatch {self.prog.split(' ', 1)[-1]}: error: {message}\n")
        sys.exit(2)


def _decimal(text: str) -> Decimal:
    try:
        value = Decimal(text)
    except InvalidOperation:
        raise argparse.ArgumentTypeError(f"not a decimal: {text!r}") from None
    if not value.is_finite():
        raise argparse.ArgumentTypeError(f"not a finite decimal: {text!r}")
    return value


def _nonneg_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not an integer: {text!r}") from None
    if value < 0:
        raise argparse.ArgumentTypeError(f"must be >= 0: {text!r}")
    return value


def add_margin_options(p: argparse.ArgumentParser) -> None:
    """Options that mirror the worker's margin settings (default: the environment's)."""
    p.add_argument("--risk-params", metavar="FILE", help="start-up risk-params file (JSON lines)")
    p.add_argument("--status-interval-ms", type=_nonneg_int, metavar="MS")
    p.add_argument("--status-ratio-step", type=_decimal, metavar="X")
    p.add_argument("--call-level", type=_decimal, metavar="X")
    p.add_argument("--recovery-band", type=_decimal, metavar="X")
    p.add_argument("--valuation-currency", metavar="CCY")


def settings_from_args(args: argparse.Namespace):
    from .settings import Settings

    overrides = {}
    for name in ("status_interval_ms", "status_ratio_step", "call_level", "recovery_band", "valuation_currency"):
        value = getattr(args, name, None)
        if value is not None:
            overrides[name] = value
    if getattr(args, "risk_params", None):
        overrides["risk_params_file"] = args.risk_params
    base = Settings.from_env()
    return base.replace(**overrides) if overrides else base


def cmd_replay(args: argparse.Namespace) -> int:
    from . import replay

    if args.file != "-" and not os.path.isfile(args.file):
        raise MarginwatchError("config_error", f"replay: no such file: {args.file}", "FILE")
    return replay.run(args.file, settings_from_args(args), args.final)


def cmd_kafka(args: argparse.Namespace) -> int:
    from . import kafka_local

    return kafka_local.main([args.action])


def cmd_worker(args: argparse.Namespace) -> int:
    from .worker import run_worker

    return run_worker(args)



# ---------------------------------------------------------------------------
# Operator commands: simulate, demo, tail, status, dead-letters, settings.
# Every Kafka or HTTP failure becomes one line ("cannot reach Kafka at ...").


def _positive_float(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a number: {text!r}") from None
    if not value >= 0 or value == float("inf"):
        raise argparse.ArgumentTypeError(f"must be a finite number >= 0: {text!r}")
    return value


def _fraction(text: str) -> float:
    value = _positive_float(text)
    if not 0 <= value < 1:
        raise argparse.ArgumentTypeError(f"must be a fraction in [0, 1): {text!r}")
    return value


def _positive_int(text: str) -> int:
    value = _nonneg_int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be >= 1: {text!r}")
    return value


def _run_kafka(settings, coro_fn, *args, **kwargs):
    """Run a Kafka coroutine; connection and protocol failures become one-line errors."""
    import asyncio
    import logging

    from aiokafka.errors import KafkaConnectionError, KafkaError

    from .topics import bootstrap

    where = bootstrap(settings)
    # aiokafka logs every failed connection attempt; the one-line error below says it once
    for name in ("aiokafka", "asyncio"):
        logging.getLogger(name).setLevel(logging.CRITICAL)
    try:
        return asyncio.run(coro_fn(*args, **kwargs))
    except KafkaConnectionError:
        from .topics import check_kafka

        asyncio.run(check_kafka(settings))  # refused credentials / untrusted certificate: says which
        raise MarginwatchError("kafka_unreachable", f"cannot reach Kafka at {where}") from None
    except asyncio.TimeoutError:
        raise MarginwatchError("kafka_unreachable", f"cannot reach Kafka at {where} (timed out)") from None
    except KafkaError as exc:
        text = str(exc).strip() or type(exc).__name__
        if "bootstrap" in text.lower() or "connect" in text.lower():
            raise MarginwatchError("kafka_unreachable", f"cannot reach Kafka at {where}") from None
        raise MarginwatchError("kafka_error", f"Kafka at {where}: {type(exc).__name__}: {text}") from None
    except BrokenPipeError:
        raise
    except OSError as exc:
        raise MarginwatchError("kafka_unreachable", f"cannot reach Kafka at {where} ({exc.strerror or exc})") from None


def cmd_simulate(args: argparse.Namespace) -> int:
    from .settings import Settings
    from .sim.producer import RunOptions, produce_run

    settings = Settings.from_env()
    opts = RunOptions(
        accounts=args.accounts, events=args.events, rate=args.rate, seed=args.seed,
        crash_at=args.crash_at, crash_depth=args.crash_depth, crash_every=args.crash_every,
        duration=args.duration, clock=args.clock, run_id=args.run_id, max_leverage=max(2.0, args.max_leverage),
        progress=False if args.no_progress else None,
    )
    result = _run_kafka(settings, produce_run, settings, opts)
    counts = ", ".join(f"{t} {n:,}" for t, n in sorted(result.counts.items()))
    rate = result.produced / result.seconds if result.seconds > 0 else 0.0
    sys.stderr.write(
        f"simulate: produced {result.produced} events ({counts}) to {settings.topic('*')} in "
        f"{result.seconds:.1f}s ({rate:,.0f}/s), {result.crashes} crash(es)"
        f"{', stopped by signal' if result.stopped else ''}\n"
    )
    return 0


def cmd_demo(args: argparse.Namespace) -> int:
    from . import demo

    opts = demo.DemoOptions(
        duration=args.duration or None, accounts=args.accounts, rate=args.rate, seed=args.seed,
        crash_every=args.crash_every, partitions=args.partitions, keep_kafka=args.keep_kafka,
        keep_topics=args.keep_topics,
    )
    return demo.run(opts)


def cmd_tail(args: argparse.Namespace) -> int:
    from . import tail
    from .settings import Settings

    settings = Settings.from_env()
    _run_kafka(settings, tail.tail, settings, args.topic, from_beginning=args.from_beginning,
               limit=args.limit or None, follow=not args.no_follow, raw=args.raw)
    return 0


def cmd_status(args: argparse.Namespace) -> int:
    import json
    import urllib.error
    import urllib.parse
    import urllib.request

    from .settings import Settings

    settings = Settings.from_env()
    base = (args.url or f"http://127.0.0.1:{settings.web_port}").rstrip("/")
    url = f"{base}/accounts/{urllib.parse.quote(args.account, safe='')}"
    req = urllib.request.Request(url, headers={"Accept": "application/json"})
    if settings.api_token:
        req.add_header("Authorization", f"Bearer {settings.api_token}")
    try:
        with urllib.request.urlopen(req, timeout=args.timeout) as resp:
            body = resp.read()
    except urllib.error.HTTPError as exc:
        detail = ""
        try:
            detail = json.loads(exc.read() or b"{}").get("error", "")
        except (ValueError, AttributeError):
            pass
        if exc.code == 404:
            raise MarginwatchError("not_found", f"account {args.account!r} not found (404 from {base})") from None
        if exc.code == 401:
            raise MarginwatchError("unauthorized", f"{base} refused the request (401): set MW_API_TOKEN") from None
        raise MarginwatchError("http_error", f"{base} answered {exc.code}" + (f": {detail}" if detail else "")) from None
    except urllib.error.URLError as exc:
        reason = getattr(exc.reason, "strerror", None) or str(exc.reason)
        raise MarginwatchError("unreachable", f"cannot reach the worker at {base} ({reason})") from None
    except (OSError, ValueError) as exc:
        raise MarginwatchError("unreachable", f"cannot reach the worker at {base} ({exc})") from None
    try:
        status = json.loads(body)
    except ValueError:
        raise MarginwatchError("bad_response", f"{base} answered something that is not JSON") from None
    if args.json:
        print(json.dumps(status, indent=2))
        return 0
    _print_status(status)
    return 0


def _print_status(st: dict) -> None:
    from rich.console import Console
    from rich.table import Table

    from .tail import STATE_STYLE

    def state(s):
        return f"[{STATE_STYLE.get(str(s), 'white')}]{s}[/]"

    def ratio(r):
        return "∞ (equity <= 0)" if r is None else str(r)

    console = Console(highlight=False)
    cur = st.get("currency", "")
    console.print(f"[bold]{st.get('account_id')}[/]  state {state(st.get('state'))}  worst {state(st.get('worst_state'))}")
    console.print(f"  equity {st.get('equity')} {cur}   maintenance margin {st.get('maintenance_margin')}   "
                  f"margin ratio {ratio(st.get('margin_ratio'))}")
    console.print(f"  initial margin {st.get('initial_margin')}   free collateral {st.get('free_collateral')}")
    balances = st.get("balances") or {}
    console.print("  balances " + (", ".join(f"{k} {v}" for k, v in sorted(balances.items())) or "none"))
    if st.get("unpriced_assets"):
        console.print(f"  [yellow]unpriced assets: {', '.join(st['unpriced_assets'])}[/]")
    positions = st.get("positions") or []
    if positions:
        table = Table(show_edge=False)
        for col in ("symbol", "mode", "qty", "entry", "mark", "notional", "uPnL", "MM", "liq. price", "state"):
            table.add_column(col, justify="left" if col in ("symbol", "mode", "state") else "right",
                             no_wrap=col == "symbol", min_width=8 if col == "symbol" else None)
        for p in positions:
            table.add_row(str(p.get("symbol")), str(p.get("margin_mode")), str(p.get("qty")), str(p.get("entry_price")),
                          str(p.get("mark_price")), str(p.get("notional")), str(p.get("unrealized_pnl")),
                          str(p.get("maintenance_margin")), str(p.get("liquidation_price") or "-"),
                          state(p["state"]) if p.get("state") else "")
        console.print(table)
    else:
        console.print("  no open positions")
    ts, decided = st.get("ts"), st.get("decided_at")
    if isinstance(ts, int) and isinstance(decided, int):
        import time as _time

        def iso(ms: int) -> str:
            return _time.strftime("%Y-%m-%d %H:%M:%S", _time.gmtime(ms / 1000)) + f".{ms % 1000:03d}Z"

        console.print(f"[dim]  as of event time {iso(ts)}, read at {iso(decided)}[/]")


def cmd_dead_letters(args: argparse.Namespace) -> int:
    from . import tail
    from .margin.errors import ERROR_CODES
    from .settings import Settings

    for code in args.error or ():
        if code not in ERROR_CODES:
            raise MarginwatchError("config_error", f"unknown error code {code!r} (one of: {', '.join(ERROR_CODES)})")
    settings = Settings.from_env()
    report = _run_kafka(settings, tail.replay_dead_letters, settings, args.error or (), dry_run=args.dry_run)
    n = len(report.by_topic) and sum(report.by_topic.values())
    per_topic = ", ".join(f"{t} {c}" for t, c in sorted(report.by_topic.items()))
    verb = "would re-produce" if args.dry_run else "re-produced"
    print(f"dead-letters replay: {verb} {n} input(s)" + (f" ({per_topic})" if per_topic else "")
          + f" of {report.matched} matching dead letter(s), {report.read} read")
    if report.skipped:
        print("dead-letters replay: skipped " + ", ".join(f"{why} {c}" for why, c in sorted(report.skipped.items())))
    return 0


def cmd_settings(args: argparse.Namespace) -> int:
    from .settings import SETTINGS_DOC, Settings

    settings = Settings.from_env()
    values = settings.describe()
    if args.env or not sys.stdout.isatty():
        for name, (default, doc) in SETTINGS_DOC.items():
            print(f"MW_{name.upper()}={values[name]}  # {doc}" + ("" if values[name] == default else f" (default {default!r})"))
        return 0
    from rich.console import Console
    from rich.table import Table

    table = Table(title="marginwatch settings (environment MW_*)", show_lines=False)
    table.add_column("variable", style="bold")
    table.add_column("value")
    table.add_column("description")
    for name, (default, doc) in SETTINGS_DOC.items():
        value = values[name]
        shown = value if value == default else f"[yellow]{value}[/]"
        table.add_row(f"MW_{name.upper()}", shown, doc)
    Console(highlight=False).print(table)
    return 0


def add_operator_commands(sub) -> None:
    """Parser entries of the operator commands (simulate, demo, tail, status, dead-letters, settings)."""
    p = sub.add_parser("simulate", help="produce simulated fills, marks and collateral to Kafka (live)")
    p.add_argument("--accounts", type=_positive_int, default=200, help="number of accounts (200)")
    p.add_argument("--events", type=_nonneg_int, default=0, help="events to produce; 0 = until stopped or --duration (0)")
    p.add_argument("--rate", type=_positive_float, default=200.0, help="events per second; 0 = as fast as possible (200)")
    p.add_argument("--seed", type=int, default=7, help="random seed: same seed, same events (7)")
    p.add_argument("--crash-at", type=_fraction, default=None, metavar="FRACTION",
                   help="start a market crash at this fraction of the run (of --events, else of --duration)")
    p.add_argument("--crash-depth", type=_positive_float, default=0.18, metavar="X", help="relative fall per crash phase (0.18)")
    p.add_argument("--crash-every", type=_positive_float, default=0.0, metavar="S",
                   help="for endless runs: a crash every S seconds of wall time (0 = never)")
    p.add_argument("--duration", type=_positive_float, default=0.0, metavar="S", help="stop after S seconds (0 = no limit)")
    p.add_argument("--max-leverage", type=_positive_float, default=20.0, metavar="X",
                   help="leverage of a fill is drawn from 2..X (20)")
    p.add_argument("--clock", choices=("wall", "sim"), default="wall",
                   help="event time: wall clock (live, default) or simulated (fully deterministic output)")
    p.add_argument("--run-id", default=None, metavar="TEXT",
                   help="prefix of generated ids (default: from the start time with --clock wall, none with sim)")
    p.add_argument("--no-progress", action="store_true", help="no progress bar (default: shown on a terminal)")
    p.set_defaults(func=cmd_simulate)

    p = sub.add_parser("demo", help="run Kafka, a worker, the simulator and the liquidation bot, with a live view")
    p.add_argument("--duration", type=_positive_float, default=0.0, metavar="S",
                   help="seconds of simulation, then stop and print a summary (default: until Ctrl-C)")
    p.add_argument("--accounts", type=_positive_int, default=150, help="simulated accounts (150)")
    p.add_argument("--rate", type=_positive_float, default=40.0, help="simulated events per second (40)")
    p.add_argument("--seed", type=int, default=7, help="simulator seed (7)")
    p.add_argument("--crash-every", type=_positive_float, default=60.0, metavar="S",
                   help="without --duration: a crash every S seconds (60)")
    p.add_argument("--partitions", type=_positive_int, default=1, help="partitions of the demo's topics (1)")
    p.add_argument("--keep-kafka", action="store_true", help="leave the broker running if the demo started it")
    p.add_argument("--keep-topics", action="store_true", help="keep the demo's topics (default: deleted at the end)")
    p.set_defaults(func=cmd_demo)

    p = sub.add_parser("tail", help="print the messages of a topic, one line each")
    p.add_argument("topic", metavar="TOPIC", help="contract topic name (e.g. margin-calls); MW_TOPIC_PREFIX is added")
    p.add_argument("--from-beginning", action="store_true", help="start at the oldest message (default: new ones only)")
    p.add_argument("--limit", type=_nonneg_int, default=0, metavar="N", help="stop after N messages")
    p.add_argument("--no-follow", action="store_true", help="stop at the end of the topic instead of waiting")
    p.add_argument("--raw", action="store_true", help="print {topic, key, value} JSON lines (the replay format)")
    p.set_defaults(func=cmd_tail)

    p = sub.add_parser("status", help="an account's current margin status, from a worker's HTTP API")
    p.add_argument("account", metavar="ACCOUNT", help="account id")
    p.add_argument("--url", default=None, help="worker base URL (default http://127.0.0.1:$MW_WEB_PORT)")
    p.add_argument("--json", action="store_true", help="print the JSON as is")
    p.add_argument("--timeout", type=_positive_float, default=10.0, metavar="S", help=argparse.SUPPRESS)
    p.set_defaults(func=cmd_status)

    p = sub.add_parser("dead-letters", help="work with the dead-letters topic")
    dl = p.add_subparsers(dest="action", metavar="ACTION", parser_class=OneLineParser)
    dl.required = True
    r = dl.add_parser("replay", help="re-produce dead-lettered inputs to their source topic (after a fix)")
    r.add_argument("--error", action="append", metavar="CODE", help="only dead letters with this error code (repeatable)")
    r.add_argument("--dry-run", action="store_true", help="count what would be re-produced, produce nothing")
    r.set_defaults(func=cmd_dead_letters)

    p = sub.add_parser("settings", help="every setting with its current value and description")
    p.add_argument("--env", action="store_true", help="print MW_NAME=value lines (the default when not a terminal)")
    p.set_defaults(func=cmd_settings)


def build_parser() -> argparse.ArgumentParser:
    parser = OneLineParser(prog="marginwatch", description="Real-time maintenance-margin monitor (Kafka + Faust).")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", parser_class=OneLineParser)
    sub.required = True

    p = sub.add_parser("replay", help="run the margin engine over a JSON-lines log, without Kafka")
    p.add_argument("file", metavar="FILE", help="JSON-lines log of {topic, key, value} envelopes ('-' = stdin)")
    add_margin_options(p)
    p.add_argument("--final", action="store_true", help="add each account's final margin-status at the end")
    p.set_defaults(func=cmd_replay)

    from .stress_cli import add_stress_command

    add_stress_command(sub, add_margin_options)

    p = sub.add_parser("worker", help="run the stream worker (Faust) against Kafka")
    p.add_argument("--web-port", type=int, help="HTTP port (default MW_WEB_PORT)")
    p.add_argument("--loglevel", default=None, help="log level (default MW_LOG_LEVEL)")
    p.set_defaults(func=cmd_worker)

    p = sub.add_parser("kafka", help="the local single-node Kafka broker (fetch jars, format, start, stop)")
    p.add_argument("action", choices=["up", "down", "status", "logs"])
    p.set_defaults(func=cmd_kafka)
    add_operator_commands(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        return int(args.func(args) or 0)
    except MarginwatchError as err:
        sys.stderr.write(f"marginwatch {args.command}: error: {err.detail}\n")
        return 2 if err.code == "config_error" else 1
    except KeyboardInterrupt:
        return 130
    except BrokenPipeError:
        return 0


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
