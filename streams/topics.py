"""Topic names, partitions and cleanup policies; created at worker start."""
from __future__ import annotations

import asyncio
import logging

from aiokafka.admin import AIOKafkaAdminClient, NewTopic
from aiokafka.errors import TopicAlreadyExistsError
from aiokafka.partitioner import murmur2

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


async def ensure_topics(settings: Settings, timeout_s: float = 30.0) -> None:
    """Create every contract topic and the sequenced log (existing ones are kept)."""
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
