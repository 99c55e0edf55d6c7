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

Modules: :mod:`.settings` (paths and ports), :mod:`.jars` (Maven, ``java``),
:mod:`.process` (pid file, liveness, state), :mod:`.readiness`, :mod:`.lifecycle`
(start, stop, restart, clean, status) and :mod:`.cli`.
"""

from __future__ import annotations

from .cli import main
from .jars import JVM_PERFORMANCE_OPTS, TOOL_HEAP, _java, ensure_jars, jars_present, kafka_version
from .lifecycle import clean, restart, start, status, stop
from .process import running_pid
from .readiness import is_reachable, wait_ready
from .settings import (
    DEFAULT_CONTROLLER_PORT,
    DEFAULT_PORT,
    HOST,
    KAFKA_DIR,
    LOG4J_CONFIG,
    POM,
    READY_TIMEOUT_S,
    REPO_ROOT,
    STOP_TIMEOUT_S,
    TEMPLATE,
    KafkaLocalError,
    bootstrap_servers,
    cache_dir,
    default_controller_port,
    default_data_dir,
    default_port,
    home_dir,
    libs_dir,
    log_path,
    logs_dir,
    pid_file,
    properties_path,
    state_file,
    stdout_path,
)

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
