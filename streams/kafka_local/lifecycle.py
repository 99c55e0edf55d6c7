"""Starting, stopping, restarting and cleaning the managed broker, and its status."""

from __future__ import annotations

import json
import os
import shutil
import signal
import string
import subprocess
import time
from pathlib import Path
from typing import Any, Mapping

from .jars import JVM_PERFORMANCE_OPTS, _classpath, _java, _tool_cmd, ensure_jars, jars_present, kafka_version
from .process import _CHILDREN, _LOCK, _is_kafka_process, _port_open, _remove, _state, data_dir_in_use, running_pid
from .readiness import is_reachable, wait_ready
from .settings import (
    HOST,
    LOG4J_CONFIG,
    READY_TIMEOUT_S,
    STOP_TIMEOUT_S,
    TEMPLATE,
    KafkaLocalError,
    _env_int,
    bootstrap_servers,
    default_controller_port,
    default_data_dir,
    default_port,
    home_dir,
    log_path,
    logs_dir,
    pid_file,
    properties_path,
    state_file,
    stdout_path,
)


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
    data = data_dir_in_use()
    _remove(state_file())
    existed = False
    for path in {data, default_data_dir()}:
        if path.exists():
            shutil.rmtree(path)
            existed = True
    return existed


def status(port: int | None = None) -> dict[str, Any]:
    """The managed broker's pid, ports, data dir, log, Kafka version and whether its jars are fetched."""
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
