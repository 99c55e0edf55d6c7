"""The faust.App built from settings: topics, tables, the margin agent, web pages.

:func:`create_app` returns a :class:`MarginApp` holding the faust app and what
the agent and the pages share (per-partition processors, metrics, the sequencer).
"""
from __future__ import annotations

import logging
from dataclasses import dataclass, field

import faust
from faust.assignor import PartitionAssignor
from prometheus_client import CollectorRegistry

from .changelog_store import register as register_changelog_store
from .metrics import Metrics, create_metrics
from .pipeline import PartitionProcessor
from .sequencer import Sequencer
from .settings import Settings
from .topics import OUTPUT_TOPICS, end_offsets, kafka_security, sequenced_topic

log = logging.getLogger(__name__)


@dataclass
class MarginApp:
    settings: Settings
    app: faust.App
    metrics: Metrics
    sequencer: Sequencer
    sequenced: faust.TopicT
    outputs: dict[str, faust.TopicT]
    accounts: faust.Table  # "<partition>\x1f<account_id>" -> account record; "<p>\x1f" -> partition globals
    seen: faust.Table  # "<partition>\x1f<account>\x1f<topic>\x1f<id>" -> content fingerprint
    processors: dict[int, PartitionProcessor] = field(default_factory=dict)
    seed: list | None = None
    last_offsets: dict[int, int] = field(default_factory=dict)


def _credentials(settings: Settings):
    proto = settings.kafka_security_protocol.upper()
    if proto == "PLAINTEXT":
        return None
    kw = kafka_security(settings)
    if proto.startswith("SASL"):
        return faust.SASLCredentials(
            username=settings.kafka_sasl_username, password=settings.kafka_sasl_password,
            mechanism=settings.kafka_sasl_mechanism, ssl_context=kw.get("ssl_context"),
        )
    return faust.SSLCredentials(kw["ssl_context"])


def create_app(settings: Settings) -> MarginApp:
    """Build the app; agents and pages are attached by :mod:`streams.agents` and :mod:`streams.web`."""
    canonical = settings.web_canonical_host or settings.web_host
    app = faust.App(
        settings.app_id,
        broker=settings.broker,
        broker_credentials=_credentials(settings),
        store="memory://",  # the tables name theirs (below)
        processing_guarantee=settings.guarantee,
        topic_partitions=settings.partitions,
        topic_replication_factor=settings.replication_factor,
        broker_session_timeout=settings.session_timeout_s,
        broker_heartbeat_interval=max(1.0, settings.session_timeout_s / 4),
        broker_commit_interval=settings.commit_interval_s,
        consumer_auto_offset_reset="earliest",
        producer_acks=-1,
        # batch the many small changelog/output records instead of one request each
        producer_linger=0.02,
        producer_max_batch_size=512 * 1024,
        web_bind=settings.web_host,
        web_port=settings.web_port,
        web_host=canonical,
        canonical_url=f"http://{canonical}:{settings.web_port}",
        datadir=settings.data_dir,
        # No standbys: faust's transaction manager skips revoked partitions that
        # become standbys when it stops producers, and their transactional
        # producers are fenced when the partition comes back (seen on the broker).
        table_standby_replicas=0,
        # faust compares the changelog offsets its recovery read during an earlier
        # assignment with the partition's highwater, which under exactly-once is the
        # last stable offset and right after a rebalance may be unknown (-1): it then
        # raises ConsistencyError and the worker exits 1 (seen on the broker when a
        # second worker joined). Only rocksdb:// persists anything the check could
        # protect; changelog:// reports an offset past every highwater by design.
        # Engines are rebuilt from the committed changelog, not from faust's store.
        recovery_consistency_check=settings.store.startswith("rocksdb://"),
        # faust's commit-livelock check only sees offsets committed outside a transaction:
        # under exactly-once it warned "Has not committed ... at all since worker start" for
        # every partition every second after 5 minutes. The stall watchdog
        # (MW_STALL_TIMEOUT_S, streams/worker.py) watches commits instead.
        broker_commit_livelock_soft_timeout=(10 * 365 * 86400.0 if settings.guarantee == "exactly_once" else 300.0),
        logging_config=None,
    )
    _route_outputs_with_their_input(app, settings)
    metrics = create_metrics(CollectorRegistry())
    sequenced = app.topic(
        sequenced_topic(settings), key_type=bytes, value_type=bytes,
        key_serializer="raw", value_serializer="raw", partitions=settings.partitions,
    )
    outputs = {
        name: app.topic(settings.topic(name), key_serializer="raw", value_serializer="raw", partitions=settings.partitions)
        for name in OUTPUT_TOPICS
    }
    # bytes keys and values: faust uses the raw codec; records are orjson
    # the committed changelog is the state: faust's recovery reads nothing (streams/changelog_store.py)
    store = register_changelog_store(lambda tps: end_offsets(settings, tps)) if settings.store.startswith("changelog://") else settings.store
    accounts = app.Table("accounts", key_type=bytes, value_type=bytes, partitions=settings.partitions, store=store)
    seen = app.Table("seen-ids", key_type=bytes, value_type=bytes, partitions=settings.partitions, store=store)
    mapp = MarginApp(settings, app, metrics, Sequencer(settings, metrics), sequenced, outputs, accounts, seen)
    from .agents.accounts import attach_margin_agent
    from .web import attach_pages

    attach_margin_agent(mapp)
    attach_pages(mapp)
    from .web_stress import attach_stress_pages; attach_stress_pages(mapp)  # noqa: E702  POST /stress
    return mapp


def _route_outputs_with_their_input(app: faust.App, settings: Settings) -> None:
    """Put the output topics in the sequenced log's topic group.

    Under exactly-once, faust picks the transactional producer of a send by
    ``{app_id}-{group}-{partition}``; topics the app does not consume have no
    group, so their sends would fail. Outputs are co-partitioned with the
    sequenced log (sent to the partition being processed), so they belong in its
    group and join the transaction of that partition.
    """
    seq = sequenced_topic(settings)
    outputs = {settings.topic(t) for t in OUTPUT_TOPICS}
    assignor: PartitionAssignor = app.assignor
    original = assignor.group_for_topic

    def group_for_topic(topic: str) -> int:
        if topic in outputs:
            return original(seq)
        return original(topic)

    assignor.group_for_topic = group_for_topic  # type: ignore[method-assign]
