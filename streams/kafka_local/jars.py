"""The broker's jars (fetched with Maven) and the ``java`` command lines that use them."""

from __future__ import annotations

import hashlib
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from .settings import LOG4J_CONFIG, POM, KafkaLocalError, libs_dir, logs_dir

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


def _pom_digest() -> str:
    if not POM.is_file():
        raise KafkaLocalError(f"{POM} is missing (streams.kafka_local needs the repository checkout)")
    return hashlib.sha256(POM.read_bytes()).hexdigest()


def jars_present() -> bool:
    """The jars in :func:`libs_dir` were fetched for the current kafka/pom.xml."""
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
