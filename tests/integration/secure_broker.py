"""A second, throwaway Kafka broker with a SASL_SSL listener requiring SCRAM-SHA-512.

Used by ``test_security.py``: a CA and a server certificate (SAN 127.0.0.1 and
localhost) are generated with ``openssl`` into a temporary directory, the broker's
keystore is PEM (``ssl.keystore.type=PEM``), the SCRAM credentials are created when
the storage is formatted (``StorageTool format --add-scram``). The controller and
inter-broker listeners stay PLAINTEXT on loopback; clients use the SASL_SSL one.

It reuses the jars that :mod:`streams.kafka_local` fetched (its cache directory) and
never touches that module's broker, pid file or data.

    with SecureBroker(tmp_path, users={"alice": "s3cret"}) as broker:
        broker.bootstrap          # "127.0.0.1:<port>" of the SASL_SSL listener
        broker.ca_file            # PEM of the CA that signed the broker's certificate
"""
from __future__ import annotations

import os
import signal
import socket
import subprocess
import time
from pathlib import Path

from streams import kafka_local


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _run(cmd: list[str], cwd: Path, timeout: float = 120) -> str:
    proc = subprocess.run(cmd, cwd=cwd, stdin=subprocess.DEVNULL, capture_output=True, text=True, timeout=timeout)
    if proc.returncode != 0:
        raise RuntimeError(f"{cmd[0]} failed ({proc.returncode}): {(proc.stderr or proc.stdout)[-2000:]}")
    return proc.stdout


def make_certificates(directory: Path) -> tuple[Path, Path]:
    """(ca.pem, server keystore PEM: unencrypted PKCS#8 key + certificate chain)."""
    d = directory
    d.mkdir(parents=True, exist_ok=True)
    _run(["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "2",
          "-keyout", "ca.key", "-out", "ca.pem", "-subj", "/CN=marginwatch-test-ca",
          "-addext", "basicConstraints=critical,CA:TRUE", "-addext", "keyUsage=critical,keyCertSign,cRLSign"], d)
    _run(["openssl", "req", "-newkey", "rsa:2048", "-nodes", "-keyout", "server.key", "-out", "server.csr",
          "-subj", "/CN=127.0.0.1"], d)
    (d / "server.ext").write_text(
        "subjectAltName=IP:127.0.0.1,DNS:localhost\nextendedKeyUsage=serverAuth\n"
        "basicConstraints=CA:FALSE\nkeyUsage=digitalSignature,keyEncipherment\n"
    )
    _run(["openssl", "x509", "-req", "-in", "server.csr", "-CA", "ca.pem", "-CAkey", "ca.key", "-CAcreateserial",
          "-days", "2", "-out", "server.pem", "-extfile", "server.ext"], d)
    key = _run(["openssl", "pkcs8", "-topk8", "-nocrypt", "-in", "server.key"], d)
    keystore = d / "server-keystore.pem"
    keystore.write_text(key + (d / "server.pem").read_text() + (d / "ca.pem").read_text())
    return d / "ca.pem", keystore


class SecureBroker:
    """A KRaft broker+controller: PLAINTEXT (inter-broker), SASL_SSL (clients), CONTROLLER."""

    def __init__(self, workdir: Path, users: dict[str, str], partitions: int = 2) -> None:
        self.dir = Path(workdir)
        self.users = dict(users)
        self.partitions = partitions
        self.port = free_port()
        self.plain_port = free_port()
        self.controller_port = free_port()
        self.proc: subprocess.Popen | None = None
        self.log = self.dir / "broker.out"
        self.ca_file: Path | None = None

    @property
    def bootstrap(self) -> str:
        return f"127.0.0.1:{self.port}"

    def _properties(self, keystore: Path, data: Path) -> Path:
        p, pp, cp = self.port, self.plain_port, self.controller_port
        text = f"""
process.roles=broker,controller
node.id=1
controller.quorum.bootstrap.servers=127.0.0.1:{cp}
controller.listener.names=CONTROLLER
listeners=INTERNAL://127.0.0.1:{pp},SASL_SSL://127.0.0.1:{p},CONTROLLER://127.0.0.1:{cp}
advertised.listeners=INTERNAL://127.0.0.1:{pp},SASL_SSL://127.0.0.1:{p},CONTROLLER://127.0.0.1:{cp}
inter.broker.listener.name=INTERNAL
listener.security.protocol.map=CONTROLLER:PLAINTEXT,INTERNAL:PLAINTEXT,SASL_SSL:SASL_SSL
sasl.enabled.mechanisms=SCRAM-SHA-512
listener.name.sasl_ssl.sasl.enabled.mechanisms=SCRAM-SHA-512
listener.name.sasl_ssl.scram-sha-512.sasl.jaas.config=org.apache.kafka.common.security.scram.ScramLoginModule required;
ssl.keystore.type=PEM
ssl.keystore.location={keystore}
ssl.client.auth=none
log.dirs={data}
offsets.topic.replication.factor=1
transaction.state.log.replication.factor=1
transaction.state.log.min.isr=1
share.coordinator.state.topic.replication.factor=1
share.coordinator.state.topic.min.isr=1
default.replication.factor=1
min.insync.replicas=1
num.partitions={self.partitions}
group.initial.rebalance.delay.ms=0
"""
        path = self.dir / "server.properties"
        path.write_text(text.lstrip())
        return path

    def _tool(self, *args: str) -> list[str]:
        return [kafka_local._java(), "-Xmx256M", f"-Dlog4j2.configurationFile={kafka_local.LOG4J_CONFIG}",
                f"-Dkafka.logs.dir={self.dir / 'logs'}", "-cp", str(kafka_local.libs_dir() / "*"), *args]

    def start(self, timeout: float = 90.0) -> "SecureBroker":
        kafka_local.ensure_jars(quiet=True)
        self.dir.mkdir(parents=True, exist_ok=True)
        self.ca_file, keystore = make_certificates(self.dir / "tls")
        data = self.dir / "data"
        props = self._properties(keystore, data)
        scram = []
        for name, password in self.users.items():
            scram += ["--add-scram", f"SCRAM-SHA-512=[name={name},password={password}]"]
        _run(self._tool("kafka.tools.StorageTool", "format", "--standalone", "-t", "mwSecureTestCluster0A",
                        "-c", str(props), *scram), self.dir)
        cmd = [kafka_local._java(), "-Xmx512M", "-Xms256M", *kafka_local.JVM_PERFORMANCE_OPTS,
               f"-Dkafka.logs.dir={self.dir / 'logs'}", f"-Dlog4j2.configurationFile={kafka_local.LOG4J_CONFIG}",
               "-cp", str(kafka_local.libs_dir() / "*"), "kafka.Kafka", str(props)]
        with open(self.log, "ab") as out:
            self.proc = subprocess.Popen(cmd, stdin=subprocess.DEVNULL, stdout=out, stderr=subprocess.STDOUT,
                                         cwd=self.dir, start_new_session=True)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"secure broker exited with {self.proc.returncode}:\n{self.tail()}")
            if kafka_local.is_reachable(self.plain_port, timeout=3.0):
                self._warm_up(deadline)
                return self
            time.sleep(0.5)
        self.stop()
        raise RuntimeError(f"secure broker not ready after {timeout}s:\n{self.tail()}")

    def _warm_up(self, deadline: float) -> None:
        """Wait until a group coordinator answers: on a fresh cluster the first lookup
        creates ``__consumer_offsets`` and fails with GroupCoordinatorNotAvailable
        meanwhile (the worker's start-up does not retry it)."""
        import asyncio

        from aiokafka.admin import AIOKafkaAdminClient

        async def find() -> None:
            admin = AIOKafkaAdminClient(bootstrap_servers=f"127.0.0.1:{self.plain_port}")
            await admin.start()
            try:
                while True:
                    try:
                        await admin.find_coordinator("warm-up")
                        return
                    except Exception:
                        if time.monotonic() > deadline:
                            raise
                        await asyncio.sleep(0.5)
            finally:
                await admin.close()

        asyncio.run(find())

    def stop(self) -> None:
        if self.proc is None or self.proc.poll() is not None:
            return
        try:
            os.killpg(self.proc.pid, signal.SIGTERM)
            self.proc.wait(20)
        except (ProcessLookupError, subprocess.TimeoutExpired):
            try:
                os.killpg(self.proc.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
            self.proc.wait(10)

    def tail(self, n: int = 40) -> str:
        parts = []
        for path in (self.log, self.dir / "logs" / "server.log"):
            try:
                parts.extend(path.read_text(errors="replace").splitlines()[-n:])
            except OSError:
                pass
        return "\n".join(parts)

    def env(self, username: str, password: str) -> dict[str, str]:
        """marginwatch settings (MW_*) of a client of the SASL_SSL listener."""
        return {
            "MW_BROKER": f"kafka://{self.bootstrap}",
            "MW_KAFKA_SECURITY_PROTOCOL": "SASL_SSL",
            "MW_KAFKA_SASL_MECHANISM": "SCRAM-SHA-512",
            "MW_KAFKA_SASL_USERNAME": username,
            "MW_KAFKA_SASL_PASSWORD": password,
            "MW_KAFKA_SSL_CAFILE": str(self.ca_file),
        }

    def __enter__(self) -> "SecureBroker":
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()
