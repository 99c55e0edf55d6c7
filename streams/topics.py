"""Topic names, partitions and cleanup policies; created at worker start."""
from __future__ import annotations

import asyncio
import logging

from aiokafka.admin import AIOKafkaAdminClient, NewTopic
from aiokafka.errors import TopicAlreadyExistsError
from aiokafka.partitioner import murmur2

from .margin.errors import MarginwatchError
from .settings import Settings

log = logging.getLogger(__name__)

FILLS = "fills"
MARK_PRICES = "mark-prices"
COLLATERAL = "collateral"
ACCOUNT_SNAPSHOTS = "account-snapshots"
RISK_PARAMS = "risk-params"
MARGIN_STATUS = "margin-status"
MARGIN_CALLS = "margin-calls"
LIQUIDATIONS = "liquidations"
DEAD_LETTERS = "dead-letters"

INPUT_TOPICS = (FILLS, MARK_PRICES, COLLATERAL, ACCOUNT_SNAPSHOTS, RISK_PARAMS)
OUTPUT_TOPICS = (MARGIN_STATUS, MARGIN_CALLS, LIQUIDATIONS, DEAD_LETTERS)
ACCOUNT_TOPICS = (FILLS, COLLATERAL, ACCOUNT_SNAPSHOTS)
BROADCAST_TOPICS = (MARK_PRICES, RISK_PARAMS)
COMPACTED = frozenset({MARGIN_STATUS, RISK_PARAMS})

#: header of a sequenced record naming its source topic (contract name)
SOURCE_HEADER = "mw-topic"


def sequenced_topic(settings: Settings) -> str:
    """The internal ordered log: one partition per account partition."""
    return f"{settings.topic_prefix}{settings.app_id}-sequenced"


def account_partition(key: bytes | None, partitions: int) -> int:
    """Kafka's default partitioner (murmur2), as faust's router and producers use it."""
    return (murmur2(key or b"") & 0x7FFFFFFF) % partitions


def bootstrap(settings: Settings) -> str:
    return ",".join(s.split("://", 1)[-1] for s in settings.broker.split(","))


def kafka_security(settings: Settings) -> dict:
    """aiokafka keyword arguments for TLS / SASL, from settings (secrets never logged)."""
    proto = settings.kafka_security_protocol.upper()
    kw: dict = {"security_protocol": proto}
    if proto in ("SSL", "SASL_SSL"):
        from aiokafka.helpers import create_ssl_context

        kw["ssl_context"] = create_ssl_context(cafile=settings.kafka_ssl_cafile or None)
    if proto.startswith("SASL"):
        kw.update(
            sasl_mechanism=settings.kafka_sasl_mechanism,
            sasl_plain_username=settings.kafka_sasl_username,
            sasl_plain_password=settings.kafka_sasl_password,
        )
    return kw


def _where(settings: Settings) -> str:
    return f"Kafka at {bootstrap(settings)} ({settings.kafka_security_protocol.upper()})"


async def check_kafka(settings: Settings, timeout_s: float = 15.0) -> None:
    """Connect to the bootstrap servers with the configured security; raise one clear
    :class:`MarginwatchError` when none can be used.

    aiokafka only logs why a bootstrap connection failed and then raises "Unable to
    bootstrap"; this tells apart refused credentials (``kafka_auth_failed``), an
    untrusted or failed TLS handshake (``kafka_tls_error``) and an unreachable broker
    (``kafka_unreachable``). The messages name the settings to check, never a secret.
    """
    import ssl

    from aiokafka import errors as kerr
    from aiokafka.conn import create_conn

    sec = kafka_security(settings)
    first: MarginwatchError | None = None
    for server in bootstrap(settings).split(","):
        host, _, port = server.strip().rpartition(":")
        try:
            conn = await asyncio.wait_for(
                create_conn(host or "127.0.0.1", int(port), request_timeout_ms=int(timeout_s * 1000), **sec), timeout_s,
            )
        except (kerr.SaslAuthenticationFailed, kerr.IllegalSaslStateError):
            err = MarginwatchError(
                "kafka_auth_failed",
                f"{_where(settings)}: authentication failed: the broker refused the SASL "
                f"{settings.kafka_sasl_mechanism} credentials of user {settings.kafka_sasl_username!r} "
                "(check MW_KAFKA_SASL_USERNAME and MW_KAFKA_SASL_PASSWORD)",
            )
        except kerr.UnsupportedSaslMechanismError:
            err = MarginwatchError(
                "kafka_auth_failed",
                f"{_where(settings)}: authentication failed: the broker does not enable SASL mechanism "
                f"{settings.kafka_sasl_mechanism!r} (MW_KAFKA_SASL_MECHANISM)",
            )
        except ssl.SSLCertVerificationError as exc:
            err = MarginwatchError(
                "kafka_tls_error",
                f"{_where(settings)}: the broker's TLS certificate is not trusted ({exc.verify_message}; "
                "check MW_KAFKA_SSL_CAFILE)",
            )
        except ssl.SSLError as exc:
            err = MarginwatchError("kafka_tls_error", f"{_where(settings)}: TLS handshake failed ({exc.reason or exc})")
        except (OSError, asyncio.TimeoutError, kerr.KafkaError, ValueError) as exc:
            reason = getattr(exc, "strerror", None) or str(exc).strip() or type(exc).__name__
            if isinstance(exc, kerr.KafkaConnectionError) and not sec["security_protocol"].endswith("SSL"):
                reason += " (a TLS listener closes plaintext connections: set MW_KAFKA_SECURITY_PROTOCOL to SSL or SASL_SSL)"
            err = MarginwatchError("kafka_unreachable", f"cannot reach {_where(settings)}: {reason}")
        else:
            conn.close()
            return
        if first is None or (first.code == "kafka_unreachable" and err.code != "kafka_unreachable"):
            first = err
    if first is not None:
        raise first


async def ensure_topics(settings: Settings, timeout_s: float = 30.0) -> None:
    """Create every contract topic and the sequenced log (existing ones are kept).

    Checks the connection first (:func:`check_kafka`): wrong credentials or an
    untrusted certificate fail with one clear :class:`MarginwatchError`."""
    await check_kafka(settings)
    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap(settings), **kafka_security(settings))
    await admin.start()
    try:
        names = [settings.topic(t) for t in INPUT_TOPICS + OUTPUT_TOPICS]
        compacted = {settings.topic(t) for t in COMPACTED}
        new = [
            NewTopic(
                name, settings.partitions, settings.replication_factor,
                topic_configs={"cleanup.policy": "compact"} if name in compacted else {},
            )
            for name in names + [sequenced_topic(settings)]
        ]
        existing = set(await admin.list_topics())
        todo = [t for t in new if t.name not in existing]
        if todo:
            try:
                await asyncio.wait_for(admin.create_topics(todo), timeout_s)
            except TopicAlreadyExistsError:
                pass
            log.info("created topics: %s", ", ".join(t.name for t in todo))
    finally:
        await admin.close()


async def end_offsets(settings: Settings, tps: list) -> dict:
    """End offsets (the next offset to be written, read_uncommitted) of ``tps``: {tp: offset}."""
    from aiokafka import AIOKafkaConsumer, TopicPartition

    consumer = AIOKafkaConsumer(bootstrap_servers=bootstrap(settings), enable_auto_commit=False,
                                **kafka_security(settings))
    await consumer.start()
    try:
        ends = await consumer.end_offsets([TopicPartition(tp.topic, tp.partition) for tp in tps])
        return {tp: ends[TopicPartition(tp.topic, tp.partition)] for tp in tps}
    finally:
        await consumer.stop()
