"""Where the local broker lives and which ports it uses.

The repository's ``kafka/`` files (pom, properties template, log4j2 config), the
layout under the cache directory (``$MW_CACHE_DIR``, else ``<repo>/.cache``) and
the ports from ``MW_KAFKA_PORT`` / ``MW_KAFKA_CONTROLLER_PORT``.
"""

from __future__ import annotations

import os
from pathlib import Path

# streams/kafka_local/settings.py: three levels below the repository root
REPO_ROOT = Path(__file__).resolve().parents[2]
KAFKA_DIR = REPO_ROOT / "kafka"
POM = KAFKA_DIR / "pom.xml"
TEMPLATE = KAFKA_DIR / "server.properties.template"
LOG4J_CONFIG = KAFKA_DIR / "log4j2.properties"

HOST = "127.0.0.1"
DEFAULT_PORT = 9092
DEFAULT_CONTROLLER_PORT = 9093
STOP_TIMEOUT_S = 30.0
READY_TIMEOUT_S = 120.0


class KafkaLocalError(RuntimeError):
    """The local broker could not be fetched, started, reached or stopped."""


def cache_dir() -> Path:
    """The cache directory: ``$MW_CACHE_DIR``, else ``<repo>/.cache``."""
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
    """The broker's own folder under the cache dir (properties, data, logs, pid file)."""
    return cache_dir() / "kafka"


def default_data_dir() -> Path:
    """The broker's ``log.dirs`` unless start() is given another."""
    return home_dir() / "data"


def logs_dir() -> Path:
    """The folder of server.log and kafkaServer.out."""
    return home_dir() / "logs"


def log_path() -> Path:
    """The broker's log file (log4j2 ``server.log``)."""
    return logs_dir() / "server.log"


def stdout_path() -> Path:
    """The JVM's stdout and stderr (``kafkaServer.out``), appended to on every start."""
    return logs_dir() / "kafkaServer.out"


def pid_file() -> Path:
    """The pid of the broker JVM started from this cache dir."""
    return home_dir() / "kafka.pid"


def state_file() -> Path:
    """How the running broker was started (ports, data dir): for restart()."""
    return home_dir() / "kafka.json"


def properties_path() -> Path:
    """``server.properties`` rendered from the repository's template."""
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
    """The broker port: ``$MW_KAFKA_PORT``, else 9092."""
    return _env_int("MW_KAFKA_PORT", DEFAULT_PORT)


def default_controller_port() -> int:
    """The KRaft controller port: ``$MW_KAFKA_CONTROLLER_PORT``, else 9093."""
    return _env_int("MW_KAFKA_CONTROLLER_PORT", DEFAULT_CONTROLLER_PORT)


def bootstrap_servers(port: int | None = None) -> str:
    """``"127.0.0.1:<port>"`` (default: :func:`default_port`)."""
    return f"{HOST}:{port or default_port()}"
