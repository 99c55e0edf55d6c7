"""Every setting of marginwatch, read from the environment in one place, once.

Each setting is an environment variable ``MW_<NAME>``; the README's settings table
is generated from :data:`SETTINGS_DOC` (see ``marginwatch settings``). Secrets
(``MW_KAFKA_SASL_PASSWORD``, ``MW_API_TOKEN``) are never printed: ``describe()``
masks them.
"""
from __future__ import annotations

import dataclasses
import os
from dataclasses import dataclass, field
from decimal import Decimal, InvalidOperation
from functools import lru_cache
from pathlib import Path
from typing import Mapping

from .margin.errors import ConfigError

PACKAGE_DIR = Path(__file__).resolve().parent
DEFAULT_RISK_PARAMS = PACKAGE_DIR / "data" / "risk_params.jsonl"

# name -> (default, description); the default is the text form of the value.
SETTINGS_DOC: dict[str, tuple[str, str]] = {
    "broker": ("kafka://127.0.0.1:9092", "Kafka bootstrap server(s), comma separated, `kafka://host:port`."),
    "app_id": ("marginwatch", "Faust app id: consumer group, changelog and internal topic prefix."),
    "topic_prefix": ("", "Prefix put before every contract topic name (e.g. `prod.`)."),
    "partitions": ("8", "Partitions of the topics created at start (inputs, sequenced log, outputs)."),
    "replication_factor": ("1", "Replication factor of the topics created at start."),
    "store": ("changelog://", "Table store: `changelog://` (faust keeps no copy; engines read the committed changelog), "
                              "or faust's `memory://` / `rocksdb://` (faust also recovers a copy nothing reads)."),
    "guarantee": ("exactly_once", "Processing guarantee of the margin agent: `exactly_once` or `at_least_once`."),
    "call_level": ("0.8", "Margin ratio at or above which a scope is in `margin_call`."),
    "recovery_band": ("0.05", "Hysteresis: a scope leaves `margin_call` below call_level - recovery_band."),
    "status_interval_ms": ("1000", "At most one margin-status per account per this much event time (0 = every change)."),
    "status_ratio_step": ("0.01", "Emit a margin-status when the ratio moved at least this much."),
    "valuation_currency": ("USDT", "Currency of account equity; has price 1."),
    "risk_params_file": (str(DEFAULT_RISK_PARAMS), "JSON-lines file of risk-params seeded at start-up."),
    "conflate_ticks": ("false", "Skip a mark tick when the next record of its partition in the same batch is a newer tick of the same symbol (counted as outcome `conflated`; its own outputs are not emitted, so outputs differ from replay). Off: every tick is evaluated."),
    "batch_size": ("1000", "Max events taken from the stream at once (applied one at a time, in order)."),
    "batch_timeout_s": ("0.005", "Max wait to fill a batch, seconds."),
    "commit_interval_s": ("0.1", "Offset/transaction commit interval, seconds."),
    "session_timeout_s": ("10", "Kafka consumer session timeout, seconds (a dead worker is noticed this fast)."),
    "stall_timeout_s": ("60", "Exit non-zero when inputs are pending but nothing was applied for this long."),
    "web_host": ("127.0.0.1", "Bind address of the HTTP API (/accounts, /healthz, /readyz, /metrics)."),
    "web_port": ("6066", "Port of the HTTP API."),
    "web_canonical_host": ("", "Host other workers use to reach this one (default: web_host)."),
    "api_token": ("", "If set, GET /accounts and POST /stress need `Authorization: Bearer <token>`."),
    "kafka_security_protocol": ("PLAINTEXT", "PLAINTEXT, SSL, SASL_PLAINTEXT or SASL_SSL."),
    "kafka_sasl_mechanism": ("SCRAM-SHA-512", "SASL mechanism when SASL is used."),
    "kafka_sasl_username": ("", "SASL user name."),
    "kafka_sasl_password": ("", "SASL password (secret; never logged)."),
    "kafka_ssl_cafile": ("", "CA bundle for TLS to the broker."),
    "malloc_trim_interval_s": ("60", "Every this many seconds, return the free space inside the C heap to the OS (glibc `malloc_trim`, run off the event loop; glibc keeps freed Kafka buffers resident and RSS crept up ~0.45 MiB/min in a soak); 0 = never."),
    "log_level": ("info", "Log level."),
    "data_dir": (".cache/worker", "Directory for the worker's local data (RocksDB, faust data)."),
}

SECRETS = frozenset({"kafka_sasl_password", "api_token"})
KAFKA_PROTOCOLS = ("PLAINTEXT", "SSL", "SASL_PLAINTEXT", "SASL_SSL")
#: SASL mechanisms aiokafka can use with a user name and password (GSSAPI and
#: OAUTHBEARER need a Kerberos setup or a token provider, not settings).
SASL_MECHANISMS = ("PLAIN", "SCRAM-SHA-256", "SCRAM-SHA-512")
_TRUE = {"1", "true", "yes", "on"}
_FALSE = {"0", "false", "no", "off", ""}


@dataclass(frozen=True)
class Settings:
    broker: str
    app_id: str
    topic_prefix: str
    partitions: int
    replication_factor: int
    store: str
    guarantee: str
    call_level: Decimal
    recovery_band: Decimal
    status_interval_ms: int
    status_ratio_step: Decimal
    valuation_currency: str
    risk_params_file: str
    conflate_ticks: bool
    batch_size: int
    batch_timeout_s: float
    commit_interval_s: float
    session_timeout_s: float
    stall_timeout_s: float
    web_host: str
    web_port: int
    web_canonical_host: str
    api_token: str = field(repr=False)  # secret: not in repr()
    kafka_security_protocol: str
    kafka_sasl_mechanism: str
    kafka_sasl_username: str
    kafka_sasl_password: str = field(repr=False)  # secret: not in repr()
    kafka_ssl_cafile: str
    malloc_trim_interval_s: float
    log_level: str
    data_dir: str

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None, **overrides: object) -> "Settings":
        """Build settings from ``env`` (default ``os.environ``); ``overrides`` win."""
        env = os.environ if env is None else env
        raw = {name: env.get(f"MW_{name.upper()}", default) for name, (default, _) in SETTINGS_DOC.items()}
        values: dict[str, object] = {}
        for f in dataclasses.fields(cls):
            if f.name in overrides:
                values[f.name] = overrides[f.name]
                continue
            values[f.name] = _convert(f.name, f.type, raw[f.name])
        settings = cls(**values)  # type: ignore[arg-type]
        settings.validate()
        return settings

    def validate(self) -> None:
        """Raise :class:`ConfigError` naming the first setting out of range."""
        if self.guarantee not in ("exactly_once", "at_least_once"):
            raise ConfigError(f"MW_GUARANTEE must be exactly_once or at_least_once, got {self.guarantee!r}", "guarantee")
        if not (0 < self.call_level):
            raise ConfigError("MW_CALL_LEVEL must be > 0", "call_level")
        if not (0 <= self.recovery_band < self.call_level):
            raise ConfigError("MW_RECOVERY_BAND must be >= 0 and < MW_CALL_LEVEL", "recovery_band")
        if self.status_interval_ms < 0:
            raise ConfigError("MW_STATUS_INTERVAL_MS must be >= 0", "status_interval_ms")
        if self.status_ratio_step < 0:
            raise ConfigError("MW_STATUS_RATIO_STEP must be >= 0", "status_ratio_step")
        if self.partitions < 1:
            raise ConfigError("MW_PARTITIONS must be >= 1", "partitions")
        if self.malloc_trim_interval_s < 0:
            raise ConfigError("MW_MALLOC_TRIM_INTERVAL_S must be >= 0", "malloc_trim_interval_s")
        if not self.store.startswith(("changelog://", "memory://", "rocksdb://")):
            raise ConfigError(f"MW_STORE must be changelog://, memory:// or rocksdb://, got {self.store!r}", "store")
        self._validate_kafka_security()

    def _validate_kafka_security(self) -> None:
        """Kafka security settings; messages never show the password."""
        proto = self.kafka_security_protocol.upper()
        if proto not in KAFKA_PROTOCOLS:
            raise ConfigError(f"MW_KAFKA_SECURITY_PROTOCOL must be one of {', '.join(KAFKA_PROTOCOLS)}, "
                              f"got {self.kafka_security_protocol!r}", "kafka_security_protocol")
        if proto.startswith("SASL"):
            if self.kafka_sasl_mechanism not in SASL_MECHANISMS:
                raise ConfigError(f"MW_KAFKA_SASL_MECHANISM must be one of {', '.join(SASL_MECHANISMS)}, "
                                  f"got {self.kafka_sasl_mechanism!r}", "kafka_sasl_mechanism")
            if not self.kafka_sasl_username or not self.kafka_sasl_password:
                raise ConfigError(f"MW_KAFKA_SASL_USERNAME and MW_KAFKA_SASL_PASSWORD must both be set with "
                                  f"MW_KAFKA_SECURITY_PROTOCOL={proto}", "kafka_sasl_username")
        if proto.endswith("SSL") and self.kafka_ssl_cafile and not os.path.isfile(self.kafka_ssl_cafile):
            raise ConfigError(f"MW_KAFKA_SSL_CAFILE: no such file: {self.kafka_ssl_cafile}", "kafka_ssl_cafile")

    def topic(self, name: str) -> str:
        """The full name of contract topic ``name`` (with the configured prefix)."""
        return f"{self.topic_prefix}{name}"

    def replace(self, **changes: object) -> "Settings":
        new = dataclasses.replace(self, **changes)
        new.validate()
        return new

    def describe(self) -> dict[str, str]:
        """Settings as text, secrets masked: safe to log."""
        out = {}
        for f in dataclasses.fields(self):
            value = getattr(self, f.name)
            out[f.name] = "***" if (f.name in SECRETS and value) else str(value)
        return out


def _convert(name: str, typ: object, text: str) -> object:
    typ = str(typ)
    env_name = f"MW_{name.upper()}"
    try:
        if typ == "int":
            return int(text)
        if typ == "float":
            return float(text)
        if typ == "Decimal":
            value = Decimal(text)
            if not value.is_finite():
                raise InvalidOperation
            return value
        if typ == "bool":
            low = text.strip().lower()
            if low in _TRUE:
                return True
            if low in _FALSE:
                return False
            raise ValueError(text)
    except (ValueError, InvalidOperation):
        raise ConfigError(f"{env_name} must be a {typ}, got {text!r}", name) from None
    return text


@lru_cache(maxsize=1)
def get_settings() -> Settings:
    """The process's settings, read from the environment once."""
    return Settings.from_env()
