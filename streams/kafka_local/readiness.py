"""Is the broker ready: a metadata request that lists at least one broker (aiokafka)."""

from __future__ import annotations

import asyncio
import threading
import time
from typing import Any

from .process import _is_kafka_process, _log_tail, _port_open, _read_pid, data_dir_in_use
from .settings import READY_TIMEOUT_S, KafkaLocalError, bootstrap_servers, default_port, log_path, stdout_path

#: partition directories above which a slow start is probably the broker loading them
MANY_PARTITION_DIRS = 1000


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
                f"Kafka on {bootstrap_servers(port)} not ready after {timeout:.0f}s ({last_error}){_slow_start_hint()}; "
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


def _slow_start_hint() -> str:
    """Why a start may take long: a data dir with many partitions (left by test runs) is loaded first.

    Seen here: 3.7 GB of test topics kept the broker from listening within 120 s.
    """
    try:
        data = data_dir_in_use()
        n = sum(1 for _ in data.iterdir()) if data.is_dir() else 0
    except OSError:
        return ""
    if n < MANY_PARTITION_DIRS:
        return ""
    return (f"; {data} holds {n:,} partition directories, which the broker loads before it listens: "
            f"if the data is throwaway, `make kafka-clean` (after `make kafka-down`) wipes it, "
            f"or start with a longer `--timeout`")

