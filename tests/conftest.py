"""Project-wide fixtures: the local Kafka broker (see streams/kafka_local/)."""

from __future__ import annotations

import uuid
from typing import Iterator

import pytest

from streams import kafka_local


@pytest.fixture(scope="session")
def kafka_bootstrap() -> Iterator[str]:
    """``"127.0.0.1:<port>"`` of a live Kafka broker (port: MW_KAFKA_PORT, 9092).

    A broker already answering there (``make kafka-up``, a developer's own) is
    used as is.  Otherwise one is started with streams.kafka_local and stopped
    at the end of the session.  Never skips: if Kafka cannot start, the tests
    that need it fail with the broker log's path.
    """
    port = kafka_local.default_port()
    if kafka_local.is_reachable(port):
        yield kafka_local.bootstrap_servers(port)
        return
    try:
        info = kafka_local.start(port=port)
    except kafka_local.KafkaLocalError as exc:
        pytest.fail(f"the local Kafka broker could not start: {exc}", pytrace=False)
    started_here = not info.get("external")
    try:
        yield info["bootstrap"]
    finally:
        if started_here:
            kafka_local.stop()


@pytest.fixture
def unique_prefix() -> str:
    """A fresh topic/group prefix per test, e.g. ``t1a2b3c4d.``, so tests sharing the broker don't collide."""
    return f"t{uuid.uuid4().hex[:8]}."
