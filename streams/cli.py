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


def build_parser() -> argparse.ArgumentParser:
    parser = OneLineParser(prog="marginwatch", description="Real-time maintenance-margin monitor (Kafka + Faust).")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", parser_class=OneLineParser)
    sub.required = True

    p = sub.add_parser("replay", help="run the margin engine over a JSON-lines log, without Kafka")
    p.add_argument("file", metavar="FILE", help="JSON-lines log of {topic, key, value} envelopes ('-' = stdin)")
    add_margin_options(p)
    p.add_argument("--final", action="store_true", help="add each account's final margin-status at the end")
    p.set_defaults(func=cmd_replay)

    p = sub.add_parser("worker", help="run the stream worker (Faust) against Kafka")
    p.add_argument("--web-port", type=int, help="HTTP port (default MW_WEB_PORT)")
    p.add_argument("--loglevel", default=None, help="log level (default MW_LOG_LEVEL)")
    p.set_defaults(func=cmd_worker)

    p = sub.add_parser("kafka", help="the local single-node Kafka broker (fetch jars, format, start, stop)")
    p.add_argument("action", choices=["up", "down", "status", "logs"])
    p.set_defaults(func=cmd_kafka)
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
