"""Bytes in, outputs out: the adapter shared by the stream worker and replay.

:class:`PartitionProcessor` decodes one input message (codec), applies it to the
partition's :class:`~streams.margin.engine.PartitionEngine`, and turns the result
into output messages: the engine's outputs, or one dead-letter for an input that
cannot be applied. It counts every input exactly once by outcome.
"""
from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Callable

from . import codec
from .deadletter import build_dead_letter
from .margin.engine import Output, PartitionEngine
from .margin.errors import InputRejected
from .margin.reference import MarginConfig
from .settings import Settings

DEAD_LETTERS = "dead-letters"
DEAD_LETTER = "dead_letter"


def margin_config(settings: Settings) -> MarginConfig:
    return MarginConfig(
        call_level=settings.call_level,
        recovery_band=settings.recovery_band,
        valuation_currency=settings.valuation_currency,
        status_interval_ms=settings.status_interval_ms,
        status_ratio_step=settings.status_ratio_step,
    )


def load_seed(path: str) -> list:
    """Decode the start-up risk-params file (``ConfigError`` names a bad line)."""
    return [codec.decode("risk-params", key, value) for key, value in codec.load_risk_params_file(path)]


def new_engine(settings: Settings, seed: list | None = None) -> PartitionEngine:
    engine = PartitionEngine(margin_config(settings))
    engine.seed_params(load_seed(settings.risk_params_file) if seed is None else seed)
    return engine


@dataclass
class Processed:
    outcome: str  # applied | duplicate | stale | dead_letter
    outputs: list[Output]
    event_ts: int | None  # event time of the input, when it could be read
    error: str | None = None
    event: object = None


def wall_ms() -> int:
    return int(time.time() * 1000)


class PartitionProcessor:
    """One partition: engine + decoding + dead-letters."""

    def __init__(self, engine: PartitionEngine, partition: int, clock: Callable[[], int] = wall_ms) -> None:
        self.engine = engine
        self.partition = partition
        self.clock = clock

    def process(self, topic: str, key: bytes | None, value: bytes, offset: int) -> Processed:
        """Decode and apply one input of contract topic ``topic``."""
        try:
            event = codec.decode(topic, key, value)
        except InputRejected as err:
            return self._dead_letter(topic, key, value, offset, err)
        return self.apply(event, topic, key, value, offset)

    def apply(self, event, topic: str, key: bytes | None, value: bytes, offset: int) -> Processed:
        try:
            result = self.engine.apply(event)
        except InputRejected as err:
            return self._dead_letter(topic, key, value, offset, err)
        return Processed(result.outcome, result.outputs, event.ts, None, event)

    def _dead_letter(self, topic, key, value, offset, err: InputRejected) -> Processed:
        payload = build_dead_letter(
            source_topic=topic, partition=self.partition, offset=offset, key=key, value=value, error=err,
            fallback_ts=self.engine.last_ts, decided_at=self.clock(),
        )
        key_text = payload.get("key") or payload.get("account_id") or ""
        return Processed(DEAD_LETTER, [Output(DEAD_LETTERS, key_text, payload)], err.ts, err.code)
