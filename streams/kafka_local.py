"""A local single-node Apache Kafka 4.x broker for developers, tests and CI.

No Docker and no Kafka distribution: the broker's jars come from Maven Central
(``kafka/pom.xml``), fetched once into ``<cache>/kafka-libs`` and run with the
system ``java`` (17+).  The broker runs KRaft in combined mode (broker and
controller in one JVM) on 127.0.0.1, its storage formatted once with
``kafka.tools.StorageTool format --standalone``.

Layout under the cache directory (``$MW_CACHE_DIR``, else ``<repo>/.cache``)::

    kafka-libs/           jars + .stamp (sha256 of kafka/pom.xml)
    kafka/server.properties   rendered from kafka/server.properties.template
    kafka/data/           log.dirs (formatted once; ``clean()`` deletes it)
    kafka/logs/server.log     broker log (kafkaServer.out: the JVM's stdout/stderr)
    kafka/kafka.pid       pid of the broker JVM

Environment: ``MW_KAFKA_PORT`` (9092), ``MW_KAFKA_CONTROLLER_PORT`` (9093),
``MW_KAFKA_HEAP`` (1G), ``MW_PARTITIONS`` (8: ``num.partitions`` of auto-created
topics), ``MW_CACHE_DIR``, ``MW_KAFKA_LIBS_DIR`` (the jars' folder, default
``<cache>/kafka-libs``: a second broker with its own cache dir can share them),
``JAVA_HOME``.

Command line: ``python -m streams.kafka_local up|down|restart|status|logs|jars|clean``.

Only the standard library is used, plus aiokafka for the readiness check.
"""

from __future__ import annotations

import argparse
import asyncio
import hashlib
import json
import os
import shutil
import signal
import socket
import string
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any, Mapping, Sequence

__all__ = [
    "KafkaLocalError",
    "ensure_jars",
    "start",
    "stop",
    "restart",
    "status",
    "wait_ready",
    "is_reachable",
    "clean",
    "bootstrap_servers",
    "log_path",
    "main",
]

REPO_ROOT = Path(__file__).resolve().parents[1]
KAFKA_DIR = REPO_ROOT / "kafka"
POM = KAFKA_DIR / "pom.xml"
TEMPLATE = KAFKA_DIR / "server.properties.template"
LOG4J_CONFIG = KAFKA_DIR / "log4j2.properties"

HOST = "127.0.0.1"
DEFAULT_PORT = 9092
DEFAULT_CONTROLLER_PORT = 9093
STOP_TIMEOUT_S = 30.0
READY_TIMEOUT_S = 120.0

# = KAFKA_JVM_PERFORMANCE_OPTS of bin/kafka-run-class.sh
JVM_PERFORMANCE_OPTS = [
    "-server",
    "-XX:+UseG1GC",
    "-XX:MaxGCPauseMillis=20",
    "-XX:InitiatingHeapOccupancyPercent=35",
    "-XX:+ExplicitGCInvokesConcurrent",
    "-XX:MaxInlineLevel=15",
    "-Djava.awt.headless=true",
]
TOOL_HEAP = "-Xmx256M"  # bin/kafka-run-class.sh default for tools

# Popen objects of brokers started by this process: lets stop() reap its own
# child (a dead child stays a zombie, and "alive" for os.kill(pid, 0), until
# waited for).
_CHILDREN: dict[int, subprocess.Popen] = {}
_LOCK = threading.RLock()


class KafkaLocalError(RuntimeError):
    """The local broker could not be fetched, started, reached or stopped."""


# --------------------------------------------------------------------------- paths


def cache_dir() -> Path:
    env = os.environ.get("MW_CACHE_DIR")
    return Path(env).expanduser().resolve() if env else REPO_ROOT / ".cache"


def libs_dir() -> Path:
    """The broker's jars: ``$MW_KAFKA_LIBS_DIR``, else ``<cache>/kafka-libs``.

    Setting it lets a second broker with its own ``MW_CACHE_DIR`` (data, logs,
    pid file, ports) reuse jars fetched already, e.g. a test's dedicated broker.
    """
    env = os.environ.get("MW_KAFKA_LIBS_DIR")
    return Path(env).expanduser().resolve() if env else cache_dir() / "kafka-libs"


def home_dir() -> Path:
    return cache_dir() / "kafka"


def default_data_dir() -> Path:
    return home_dir() / "data"


def logs_dir() -> Path:
    return home_dir() / "logs"


def log_path() -> Path:
    """The broker's log file (log4j2 ``server.log``)."""
    return logs_dir() / "server.log"


def stdout_path() -> Path:
    return logs_dir() / "kafkaServer.out"


def pid_file() -> Path:
    return home_dir() / "kafka.pid"


def state_file() -> Path:
    """How the running broker was started (ports, data dir): for restart()."""
    return home_dir() / "kafka.json"


def properties_path() -> Path:
    return home_dir() / "server.properties"


def _env_int(name: str, default: int) -> int:
    raw = os.environ.get(name, "").strip()
    if not raw:
        return default
    try:
        value = int(raw)
    except ValueError:
        raise KafkaLocalError(f"{name}={raw!r} is not an integer") from None
    if not 0 < value < 65536:
        raise KafkaLocalError(f"{name}={value} is out of range")
    return value


def default_port() -> int:
    return _env_int("MW_KAFKA_PORT", DEFAULT_PORT)


def default_controller_port() -> int:
    return _env_int("MW_KAFKA_CONTROLLER_PORT", DEFAULT_CONTROLLER_PORT)


def bootstrap_servers(port: int | None = None) -> str:
    return f"{HOST}:{port or default_port()}"


# ---------------------------------------------------------------------------- jars


def _pom_digest() -> str:
    if not POM.is_file():
        raise KafkaLocalError(f"{POM} is missing (streams.kafka_local needs the repository checkout)")
    return hashlib.sha256(POM.read_bytes()).hexdigest()


def jars_present() -> bool:
    stamp = libs_dir() / ".stamp"
    try:
        return stamp.read_text().strip() == _pom_digest() and any(libs_dir().glob("kafka_2.13-*.jar"))
    except OSError:
        return False


def ensure_jars(quiet: bool = False) -> Path:
    """Fetch the broker's jars with Maven unless already there; return their folder.

    The folder is stamped with the SHA-256 of kafka/pom.xml, so editing the pom
    (a Kafka upgrade) fetches again.
    """
    target = libs_dir()
    if jars_present():
        return target
    mvn = shutil.which("mvn")
    if mvn is None:
        raise KafkaLocalError("Maven (mvn) is not installed: run `make deps` or `apt-get install maven`")
    digest = _pom_digest()
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix="kafka-libs.", dir=target.parent))
    cmd = [
        mvn, "-q", "-B", "-f", str(POM), "dependency:copy-dependencies",
        "-DincludeScope=runtime", f"-DoutputDirectory={tmp}",
    ]
    if not quiet:
        print(f"kafka_local: fetching Kafka jars into {target} ...", file=sys.stderr, flush=True)
    t0 = time.monotonic()
    try:
        proc = subprocess.run(cmd, stdin=subprocess.DEVNULL, capture_output=True, text=True)
        if proc.returncode != 0:
            tail = "\n".join((proc.stdout + proc.stderr).strip().splitlines()[-15:])
            raise KafkaLocalError(f"mvn dependency:copy-dependencies failed (exit {proc.returncode}):\n{tail}")
        if not any(tmp.glob("kafka_2.13-*.jar")):
            raise KafkaLocalError(f"mvn finished but no kafka_2.13 jar landed in {tmp}")
        (tmp / ".stamp").write_text(digest + "\n")
        if target.exists():
            shutil.rmtree(target)
        tmp.rename(target)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)
    if not quiet:
        n = len(list(target.glob("*.jar")))
        print(f"kafka_local: {n} jars fetched in {time.monotonic() - t0:.1f}s", file=sys.stderr, flush=True)
    return target


def kafka_version() -> str | None:
    """The version of the fetched kafka_2.13 jar, e.g. '4.4.0'."""
    for jar in libs_dir().glob("kafka_2.13-*.jar"):
        return jar.name[len("kafka_2.13-"):-len(".jar")]
    return None


def _java() -> str:
    home = os.environ.get("JAVA_HOME")
    if home and (Path(home) / "bin" / "java").is_file():
        return str(Path(home) / "bin" / "java")
    java = shutil.which("java")
    if java is None:
        raise KafkaLocalError("java is not installed (Kafka 4.x needs Java 17+): run `make deps`")
    return java


def _classpath() -> str:
    return str(libs_dir() / "*")


def _tool_cmd(*args: str) -> list[str]:
    return [
        _java(), TOOL_HEAP, f"-Dkafka.logs.dir={logs_dir()}",
        f"-Dlog4j2.configurationFile={LOG4J_CONFIG}",
        "-cp", _classpath(), *args,
    ]


# ------------------------------------------------------------------------- process


def _read_pid() -> int | None:
    try:
        return int(pid_file().read_text().strip())
    except (OSError, ValueError):
        return None


def _is_kafka_process(pid: int) -> bool:
    """pid is alive (not a zombie) and runs kafka.Kafka."""
    with _LOCK:
        child = _CHILDREN.get(pid)
        if child is not None and child.poll() is not None:
            _CHILDREN.pop(pid, None)
            return False
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
        if stat.rsplit(")", 1)[1].split()[0] in ("Z", "X"):
            return False
        cmdline = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
    except (OSError, IndexError):
        if Path("/proc/self").is_dir():
            return False  # Linux: no such process
        try:  # no /proc (macOS): "the pid exists" is all we can tell
            os.kill(pid, 0)
        except ProcessLookupError:
            return False
        except PermissionError:
            pass
        return True
    return b"kafka.Kafka" in cmdline


def running_pid() -> int | None:
    """Pid of the broker managed from this cache dir, or None (stale pid files are removed)."""
    pid = _read_pid()
    if pid is None:
        return None
    if _is_kafka_process(pid):
        return pid
    _remove(pid_file())
    return None


def _remove(path: Path) -> None:
    try:
        path.unlink()
    except FileNotFoundError:
        pass


def _port_open(port: int, host: str = HOST, timeout: float = 0.5) -> bool:
    try:
        with socket.create_connection((host, port), timeout=timeout):
            return True
    except OSError:
        return False


def _log_tail(n: int = 20) -> str:
    """The JVM's output since the last start, then the last errors (or lines) of server.log."""
    parts: list[str] = []
    try:
        out = stdout_path().read_text(errors="replace")
        since_start = out.rsplit("\n=== ", 1)[-1].splitlines()[1:]
        if since_start:
            parts.append(f"--- {stdout_path().name}:")
            parts.extend(since_start[-n:])
    except OSError:
        pass
    try:
        started = stdout_path().stat().st_mtime if parts else 0.0
        log = log_path()
        if log.stat().st_mtime >= started - 1:
            text = log.read_text(errors="replace").splitlines()
            errors = [ln for ln in text if " ERROR " in ln or " FATAL " in ln]
            parts.append(f"--- {log.name}:")
            parts.extend((errors or text)[-n:])
    except OSError:
        pass
    return "\n".join(parts)


# ---------------------------------------------------------------------- readiness


async def _cluster_brokers(bootstrap: str, timeout: float) -> int:
    from aiokafka.admin import AIOKafkaAdminClient  # aiokafka only for readiness

    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap, request_timeout_ms=int(max(timeout, 1) * 1000))
    try:
        await asyncio.wait_for(admin.start(), timeout)
        meta = await asyncio.wait_for(admin.describe_cluster(), timeout)
        return len(meta.get("brokers") or [])
    finally:
        try:
            await asyncio.wait_for(admin.close(), 5)
        except Exception:
            pass


def _run_coro(coro_fn, *args: Any) -> Any:
    """Run an async function to completion from sync code, even under a running loop."""
    try:
        asyncio.get_running_loop()
    except RuntimeError:
        return asyncio.run(coro_fn(*args))
    box: dict[str, Any] = {}

    def runner() -> None:
        try:
            box["value"] = asyncio.run(coro_fn(*args))
        except BaseException as exc:  # noqa: BLE001 - re-raised in the caller's thread
            box["error"] = exc

    t = threading.Thread(target=runner, name="kafka-local-ready", daemon=True)
    t.start()
    t.join()
    if "error" in box:
        raise box["error"]
    return box["value"]


def is_reachable(port: int | None = None, timeout: float = 5.0) -> bool:
    """A Kafka broker answers a metadata request on 127.0.0.1:port with ≥1 broker."""
    port = port or default_port()
    if not _port_open(port):
        return False
    try:
        return _run_coro(_cluster_brokers, bootstrap_servers(port), timeout) >= 1
    except Exception:
        return False


def wait_ready(timeout: float = READY_TIMEOUT_S, port: int | None = None, pid: int | None = None) -> float:
    """Poll until the broker serves cluster metadata with ≥1 broker; return seconds waited.

    Fails early if the broker process (pid, default: the managed one) dies.
    """
    port = port or default_port()
    pid = pid if pid is not None else _read_pid()
    t0 = time.monotonic()
    deadline = t0 + timeout
    last_error = "no answer yet"
    while True:
        if pid is not None and not _is_kafka_process(pid):
            raise KafkaLocalError(
                f"Kafka (pid {pid}) exited during start-up; see {log_path()} and {stdout_path()}\n{_log_tail()}"
            )
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            raise KafkaLocalError(
                f"Kafka on {bootstrap_servers(port)} not ready after {timeout:.0f}s ({last_error}); "
                f"see {log_path()}\n{_log_tail()}"
            )
        if _port_open(port):
            try:
                n = _run_coro(_cluster_brokers, bootstrap_servers(port), min(10.0, max(remaining, 1.0)))
                if n >= 1:
                    return time.monotonic() - t0
                last_error = "metadata lists no broker"
            except Exception as exc:  # noqa: BLE001 - retried until the deadline
                last_error = f"{type(exc).__name__}: {exc}".strip()
        else:
            last_error = f"port {port} not open"
        time.sleep(min(0.5, max(deadline - time.monotonic(), 0)))


# ----------------------------------------------------------------------- lifecycle


def _render_properties(port: int, controller_port: int, data_dir: Path) -> Path:
    template = string.Template(TEMPLATE.read_text())
    text = template.substitute(
        port=port,
        controller_port=controller_port,
        data_dir=str(data_dir),
        partitions=_env_int("MW_PARTITIONS", 8),
    )
    path = properties_path()
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
    return path


def _format_storage(data_dir: Path, props: Path, controller_port: int) -> None:
    """Format the KRaft storage once (a formatted dir has meta.properties)."""
    marker = data_dir / "marginwatch-format.json"  # informational: cluster id, ports at format time
    if (data_dir / "meta.properties").is_file():
        # Formatted already.  A single-node quorum also comes back on other ports
        # (checked with 4.4.0: formatted with 9093, restarted on 19092/19093).
        return
    data_dir.mkdir(parents=True, exist_ok=True)
    if any(data_dir.iterdir()):
        raise KafkaLocalError(
            f"{data_dir} is not empty but has no meta.properties: run `python -m streams.kafka_local clean`"
        )
    logs_dir().mkdir(parents=True, exist_ok=True)
    uuid = subprocess.run(
        _tool_cmd("kafka.tools.StorageTool", "random-uuid"),
        stdin=subprocess.DEVNULL, capture_output=True, text=True, timeout=120,
    )
    cluster_id = uuid.stdout.strip().splitlines()[-1] if uuid.stdout.strip() else ""
    if uuid.returncode != 0 or not cluster_id:
        raise KafkaLocalError(f"StorageTool random-uuid failed: {(uuid.stderr or uuid.stdout).strip()[-2000:]}")
    fmt = subprocess.run(
        _tool_cmd("kafka.tools.StorageTool", "format", "--standalone", "-t", cluster_id, "-c", str(props)),
        stdin=subprocess.DEVNULL, capture_output=True, text=True, timeout=120,
    )
    if fmt.returncode != 0:
        raise KafkaLocalError(f"StorageTool format failed: {(fmt.stderr or fmt.stdout).strip()[-2000:]}")
    marker.write_text(json.dumps({"cluster_id": cluster_id, "controller_port": controller_port}) + "\n")


def start(
    port: int | None = None,
    controller_port: int | None = None,
    data_dir: str | os.PathLike | None = None,
    wait: bool = True,
    timeout: float = READY_TIMEOUT_S,
    overrides: Mapping[str, str] | None = None,
) -> dict[str, Any]:
    """Start the broker (fetching jars and formatting storage if needed); idempotent.

    Returns ``status()``.  If the managed broker already runs, returns at once.
    If another Kafka (not started from this cache dir) already answers on the
    port, it is left alone and reported with ``"external": True``.  With
    ``wait``, blocks until ready; if it does not become ready, the JVM started
    here is stopped and KafkaLocalError names the log.
    """
    port = port or default_port()
    controller_port = controller_port or default_controller_port()
    data = Path(data_dir).expanduser().resolve() if data_dir else default_data_dir()
    with _LOCK:
        pid = running_pid()
        if pid is not None:
            if wait:
                wait_ready(timeout, port=_state().get("port", port), pid=pid)
            return status()
        if port == controller_port:
            raise KafkaLocalError("the broker and controller ports must differ")
        if _port_open(port):
            if is_reachable(port):
                return {**status(port), "external": True}
            raise KafkaLocalError(f"port {port} on {HOST} is in use by something that is not a Kafka broker")
        if _port_open(controller_port):
            raise KafkaLocalError(
                f"controller port {controller_port} on {HOST} is in use (set MW_KAFKA_CONTROLLER_PORT)"
            )
        ensure_jars()
        props = _render_properties(port, controller_port, data)
        _format_storage(data, props, controller_port)
        logs_dir().mkdir(parents=True, exist_ok=True)
        heap = os.environ.get("MW_KAFKA_HEAP", "1G").strip() or "1G"
        cmd = [
            _java(), f"-Xmx{heap}", f"-Xms{heap}", *JVM_PERFORMANCE_OPTS,
            f"-Dkafka.logs.dir={logs_dir()}",
            f"-Dlog4j2.configurationFile={LOG4J_CONFIG}",
            "-cp", _classpath(), "kafka.Kafka", str(props),
        ]
        for key, value in (overrides or {}).items():
            cmd += ["--override", f"{key}={value}"]
        with open(stdout_path(), "ab") as out:
            out.write(f"\n=== {time.strftime('%Y-%m-%d %H:%M:%S')} starting: {' '.join(cmd)}\n".encode())
            out.flush()
            proc = subprocess.Popen(
                cmd,
                stdin=subprocess.DEVNULL,
                stdout=out,
                stderr=subprocess.STDOUT,
                cwd=str(home_dir()),
                start_new_session=True,  # own session: a parent's Ctrl-C doesn't half-kill it
                close_fds=True,
            )
        _CHILDREN[proc.pid] = proc
        pid_file().write_text(f"{proc.pid}\n")
        state_file().write_text(
            json.dumps({"port": port, "controller_port": controller_port, "data_dir": str(data),
                        "overrides": dict(overrides or {})}) + "\n"
        )
    if wait:
        try:
            wait_ready(timeout, port=port, pid=proc.pid)
        except BaseException:
            try:
                stop()
            except KafkaLocalError:
                pass
            raise
    return status()


def _state() -> dict[str, Any]:
    try:
        return json.loads(state_file().read_text())
    except (OSError, ValueError):
        return {}


def stop(timeout: float = STOP_TIMEOUT_S) -> bool:
    """SIGTERM the managed broker, SIGKILL after ``timeout`` s; True if one was running."""
    with _LOCK:
        pid = running_pid()
        if pid is None:
            _remove(pid_file())
            return False
        try:
            os.kill(pid, signal.SIGTERM)
        except ProcessLookupError:
            pass
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline and _is_kafka_process(pid):
            time.sleep(0.1)
        if _is_kafka_process(pid):
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
            for _ in range(100):
                if not _is_kafka_process(pid):
                    break
                time.sleep(0.1)
            if _is_kafka_process(pid):
                raise KafkaLocalError(f"Kafka (pid {pid}) survived SIGKILL")
        child = _CHILDREN.pop(pid, None)
        if child is not None:
            try:
                child.wait(timeout=5)
            except subprocess.TimeoutExpired:
                pass
        _remove(pid_file())
        return True


def restart(wait: bool = True, timeout: float = READY_TIMEOUT_S) -> dict[str, Any]:
    """Stop and start the managed broker, keeping its data, ports and overrides."""
    st = _state()
    stop()
    return start(
        port=st.get("port"), controller_port=st.get("controller_port"), data_dir=st.get("data_dir"),
        wait=wait, timeout=timeout, overrides=st.get("overrides") or None,
    )


def clean() -> bool:
    """Delete the data dir (and its state); refuses while the broker runs. True if deleted."""
    if running_pid() is not None:
        raise KafkaLocalError("Kafka is running: stop it first (`python -m streams.kafka_local down`)")
    data = Path(_state().get("data_dir") or default_data_dir())
    _remove(state_file())
    existed = False
    for path in {data, default_data_dir()}:
        if path.exists():
            shutil.rmtree(path)
            existed = True
    return existed


def status(port: int | None = None) -> dict[str, Any]:
    pid = running_pid()
    st = _state() if pid is not None else {}
    port = port or st.get("port") or default_port()
    return {
        "running": pid is not None,
        "pid": pid,
        "bootstrap": bootstrap_servers(port),
        "port": port,
        "controller_port": st.get("controller_port") or default_controller_port(),
        "data_dir": st.get("data_dir") or str(default_data_dir()),
        "log": str(log_path()),
        "version": kafka_version(),
        "jars": jars_present(),
    }


# ----------------------------------------------------------------------------- CLI


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


if __name__ == "__main__":
    sys.exit(main())
