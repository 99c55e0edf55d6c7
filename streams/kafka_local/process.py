"""The managed broker's process: its pid file, whether it still runs, its saved state, its log.

Shared by start/stop (:mod:`.lifecycle`) and the readiness checks (:mod:`.readiness`).
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import threading
from pathlib import Path
from typing import Any

from .settings import HOST, default_data_dir, log_path, pid_file, state_file, stdout_path

# Popen objects of brokers started by this process: lets stop() reap its own
# child (a dead child stays a zombie, and "alive" for os.kill(pid, 0), until
# waited for).
_CHILDREN: dict[int, subprocess.Popen] = {}
_LOCK = threading.RLock()


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


def _state() -> dict[str, Any]:
    try:
        return json.loads(state_file().read_text())
    except (OSError, ValueError):
        return {}


def data_dir_in_use() -> Path:
    """The data dir of the last start (from its state file), else the default one."""
    return Path(_state().get("data_dir") or default_data_dir())
