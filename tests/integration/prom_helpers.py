"""Run a real ``prometheus`` binary against loopback targets, for end-to-end tests.

    with PrometheusServer(["127.0.0.1:6066"], tmp_path, job="marginwatch") as prom:
        prom.wait_for('up{job="marginwatch"}', lambda v: v == 1)
        prom.query('marginwatch_input_messages_total')

The server listens on a free 127.0.0.1 port, scrapes every target every
``scrape_interval`` (1 s) and keeps its TSDB in ``workdir``. Its log goes to
``workdir/prometheus.log``; the tail is included in every timeout error.
"""
from __future__ import annotations

import json
import shutil
import socket
import subprocess
import time
import urllib.error
import urllib.parse
import urllib.request
from pathlib import Path
from typing import Callable, Sequence

import yaml


def free_port(host: str = "127.0.0.1") -> int:
    """A TCP port that was free on ``host`` a moment ago."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind((host, 0))
        return s.getsockname()[1]


class PrometheusError(RuntimeError):
    pass


class PrometheusServer:
    """A ``prometheus`` process scraping ``targets`` (``host:port`` strings)."""

    def __init__(
        self,
        targets: Sequence[str],
        workdir: Path | str,
        *,
        job: str = "marginwatch",
        scrape_interval: str = "1s",
        metrics_path: str = "/metrics",
        rule_files: Sequence[Path | str] = (),
        binary: str | None = None,
        port: int | None = None,
    ) -> None:
        self.binary = binary or shutil.which("prometheus")
        if self.binary is None:
            raise PrometheusError("the prometheus binary is not installed (apt-get install -y prometheus)")
        self.workdir = Path(workdir)
        self.port = port or free_port()
        self.base_url = f"http://127.0.0.1:{self.port}"
        self.config_path = self.workdir / "prometheus.yml"
        self.log_path = self.workdir / "prometheus.log"
        self.data_path = self.workdir / "data"
        self.job = job
        self._proc: subprocess.Popen | None = None
        self._log = None
        config = {
            "global": {"scrape_interval": scrape_interval, "scrape_timeout": scrape_interval,
                       "evaluation_interval": scrape_interval},
            "scrape_configs": [{
                "job_name": job,
                "metrics_path": metrics_path,
                "static_configs": [{"targets": list(targets)}],
            }],
        }
        if rule_files:
            config["rule_files"] = [str(Path(p).resolve()) for p in rule_files]
        self.config = config

    # ----------------------------------------------------------- lifecycle
    def start(self, timeout: float = 30.0) -> "PrometheusServer":
        self.workdir.mkdir(parents=True, exist_ok=True)
        self.data_path.mkdir(parents=True, exist_ok=True)
        self.config_path.write_text(yaml.safe_dump(self.config, sort_keys=False))
        self._log = open(self.log_path, "wb")
        self._proc = subprocess.Popen(
            [
                self.binary,
                f"--config.file={self.config_path}",
                f"--storage.tsdb.path={self.data_path}",
                f"--web.listen-address=127.0.0.1:{self.port}",
                "--storage.tsdb.retention.time=1h",
                "--log.level=info",
            ],
            stdout=self._log,
            stderr=subprocess.STDOUT,
            cwd=self.workdir,
        )
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self._proc.poll() is not None:
                raise PrometheusError(f"prometheus exited with {self._proc.returncode}:\n{self.log_tail()}")
            try:
                with urllib.request.urlopen(self.base_url + "/-/ready", timeout=1) as resp:
                    if resp.status == 200:
                        return self
            except (urllib.error.URLError, ConnectionError, OSError):
                pass
            time.sleep(0.1)
        self.stop()
        raise PrometheusError(f"prometheus not ready after {timeout}s:\n{self.log_tail()}")

    def stop(self, timeout: float = 10.0) -> None:
        proc, self._proc = self._proc, None
        if proc is not None and proc.poll() is None:
            proc.terminate()
            try:
                proc.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(timeout=timeout)
        if self._log is not None:
            self._log.close()
            self._log = None

    def __enter__(self) -> "PrometheusServer":
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()

    def log_tail(self, lines: int = 30) -> str:
        try:
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return "(no log)"

    # ----------------------------------------------------------------- API
    def api(self, path: str, **params: str) -> dict:
        """GET ``/api/v1/<path>``; returns ``data`` or raises PrometheusError."""
        url = f"{self.base_url}/api/v1/{path}"
        if params:
            url += "?" + urllib.parse.urlencode(params)
        try:
            with urllib.request.urlopen(url, timeout=5) as resp:
                body = json.loads(resp.read())
        except urllib.error.HTTPError as e:
            body = json.loads(e.read() or b"{}")
        if body.get("status") != "success":
            raise PrometheusError(f"{path} {params}: {body.get('errorType')}: {body.get('error')}")
        return body["data"]

    def query(self, expr: str) -> list[dict]:
        """Instant query: the result vector, each ``{"metric": {...}, "value": float}``."""
        data = self.api("query", query=expr)
        if data["resultType"] == "scalar":
            return [{"metric": {}, "value": float(data["result"][1])}]
        if data["resultType"] != "vector":
            raise PrometheusError(f"{expr}: unexpected result type {data['resultType']}")
        return [{"metric": r["metric"], "value": float(r["value"][1])} for r in data["result"]]

    def query_value(self, expr: str) -> float | None:
        """The single value of ``expr``, ``None`` when empty; raises if several series."""
        result = self.query(expr)
        if not result:
            return None
        if len(result) > 1:
            raise PrometheusError(f"{expr}: {len(result)} series, expected one")
        return result[0]["value"]

    def wait_for(
        self, expr: str, predicate: Callable[[float], bool] = lambda v: True, timeout: float = 30.0
    ) -> float:
        """Poll ``expr`` until its single value satisfies ``predicate``; return that value."""
        deadline = time.monotonic() + timeout
        last: float | None = None
        while time.monotonic() < deadline:
            last = self.query_value(expr)
            if last is not None and predicate(last):
                return last
            time.sleep(0.25)
        raise PrometheusError(f"{expr} did not match within {timeout}s (last value {last}):\n{self.log_tail()}")

    def targets(self) -> list[dict]:
        return self.api("targets")["activeTargets"]

    def rules(self) -> list[dict]:
        return [rule for group in self.api("rules")["groups"] for rule in group["rules"]]
