"""What the bench scripts read of this machine and of a running worker.

Shared by ``bench/engine.py``, ``bench/soak.py`` and ``bench/pipeline/``: import it as
``bench.probes`` (the scripts put the repository on ``sys.path``). Standard library only,
so a script can import it before it pins numpy's threads.
"""
from __future__ import annotations

import socket
import urllib.request
from pathlib import Path


def free_port() -> int:
    """A TCP port free on 127.0.0.1 right now (for a worker's web server)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def cpu_model() -> str:
    """The CPU's model name from /proc/cpuinfo ("" where there is none)."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return ""


def scrape_metrics(port: int) -> dict[str, float]:
    """``name{labels}`` -> value of the worker's ``/metrics`` on ``port`` ({} if unreachable)."""
    try:
        body = urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5).read().decode()
    except OSError:
        return {}
    out: dict[str, float] = {}
    for line in body.splitlines():
        if line and not line.startswith("#"):
            name, _, value = line.rpartition(" ")
            try:
                out[name] = float(value)
            except ValueError:
                pass
    return out
