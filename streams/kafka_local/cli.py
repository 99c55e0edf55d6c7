"""The command line: ``python -m streams.kafka_local up|down|restart|status|logs|jars|clean|path``."""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import time
from typing import Sequence

from .jars import ensure_jars, kafka_version
from .lifecycle import clean, restart, start, status, stop
from .process import _port_open, running_pid
from .readiness import is_reachable
from .settings import READY_TIMEOUT_S, KafkaLocalError, bootstrap_servers, cache_dir, default_port, libs_dir, log_path


def _cmd_logs(lines: int, follow: bool) -> int:
    path = log_path()
    if not path.exists():
        print(f"kafka_local: no log yet at {path}", file=sys.stderr)
        return 1
    print(f"==> {path} <==", file=sys.stderr)
    if follow:
        tail = shutil.which("tail")
        if tail:
            try:
                return subprocess.call([tail, "-n", str(lines), "-F", str(path)])
            except KeyboardInterrupt:
                return 0
    with open(path, errors="replace") as fh:
        sys.stdout.writelines(fh.readlines()[-lines:])
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    """Run one command (``up``, ``down``, ``status``, ...); return the exit code."""
    parser = argparse.ArgumentParser(
        prog="python -m streams.kafka_local",
        description="Run a local single-node Kafka 4.x broker (KRaft) for marginwatch.",
    )
    sub = parser.add_subparsers(dest="cmd", metavar="COMMAND")
    up = sub.add_parser("up", help="fetch jars if needed, start the broker, wait until ready")
    up.add_argument("--no-wait", action="store_true", help="return once the JVM is launched")
    up.add_argument("--timeout", type=float, default=READY_TIMEOUT_S, help="readiness timeout, s (120)")
    sub.add_parser("down", help="stop the broker (SIGTERM, SIGKILL after 30 s)")
    rs = sub.add_parser("restart", help="stop and start the broker, keeping its data")
    rs.add_argument("--timeout", type=float, default=READY_TIMEOUT_S)
    st = sub.add_parser("status", help="is it running and reachable (exit 1 if not)")
    st.add_argument("--json", action="store_true", help="print the status as JSON")
    lg = sub.add_parser("logs", help="print the end of server.log")
    lg.add_argument("-n", "--lines", type=int, default=100)
    lg.add_argument("-f", "--follow", action="store_true")
    sub.add_parser("jars", help="fetch the broker's jars with Maven if missing")
    sub.add_parser("clean", help="delete the broker's data dir (broker must be stopped)")
    sub.add_parser("path", help="print the cache, log and data paths")

    try:
        args = parser.parse_args(argv)
    except SystemExit as exc:  # argparse: 2 on bad usage, 0 on --help
        return int(exc.code or 0)
    if args.cmd is None:
        parser.print_usage(sys.stderr)
        return 2

    try:
        if args.cmd == "up":
            t0 = time.monotonic()
            info = start(wait=not args.no_wait, timeout=args.timeout)
            if info.get("external"):
                print(f"kafka_local: a Kafka broker not managed from {cache_dir()} already answers on "
                      f"{info['bootstrap']}; using it")
            elif args.no_wait:
                print(f"kafka_local: Kafka {info['version']} launched (pid {info['pid']}) on {info['bootstrap']}")
            else:
                print(f"kafka_local: Kafka {info['version']} ready on {info['bootstrap']} "
                      f"(pid {info['pid']}, {time.monotonic() - t0:.1f}s; log {info['log']})")
            return 0
        if args.cmd == "down":
            pid = running_pid()
            if stop():
                print(f"kafka_local: Kafka (pid {pid}) stopped")
            elif _port_open(default_port()):
                print(f"kafka_local: no broker managed from {cache_dir()}; the one on "
                      f"{bootstrap_servers()} is not ours, left running")
            else:
                print("kafka_local: Kafka was not running")
            return 0
        if args.cmd == "restart":
            info = restart(timeout=args.timeout)
            print(f"kafka_local: Kafka restarted (pid {info['pid']}) on {info['bootstrap']}")
            return 0
        if args.cmd == "status":
            info = status()
            info["reachable"] = is_reachable(info["port"])
            if args.json:
                print(json.dumps(info, indent=2))
            elif info["running"]:
                print(f"kafka_local: running, pid {info['pid']}, {info['bootstrap']}, "
                      f"{'reachable' if info['reachable'] else 'NOT reachable'}; log {info['log']}")
            elif info["reachable"]:
                print(f"kafka_local: not managed from {cache_dir()}, but a broker answers on {info['bootstrap']}")
            else:
                print("kafka_local: not running")
            return 0 if info["reachable"] else 1
        if args.cmd == "logs":
            return _cmd_logs(args.lines, args.follow)
        if args.cmd == "jars":
            ensure_jars()
            print(f"kafka_local: Kafka {kafka_version()} jars in {libs_dir()}")
            return 0
        if args.cmd == "clean":
            print("kafka_local: data deleted" if clean() else "kafka_local: no data to delete")
            return 0
        if args.cmd == "path":
            print(f"cache {cache_dir()}\nlog   {log_path()}\ndata  {status()['data_dir']}")
            return 0
    except KafkaLocalError as exc:
        msg = str(exc)
        first, _, rest = msg.partition("\n")
        print(f"kafka_local: error: {first}", file=sys.stderr)
        if rest and (os.environ.get("MW_KAFKA_VERBOSE") or os.environ.get("CI")):
            print(rest, file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("kafka_local: interrupted", file=sys.stderr)
        return 1
    except OSError as exc:
        print(f"kafka_local: error: {exc}", file=sys.stderr)
        return 1
    parser.print_usage(sys.stderr)
    return 2
