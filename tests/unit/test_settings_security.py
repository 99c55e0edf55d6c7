"""Kafka security settings: validated up front, secrets never shown."""
from __future__ import annotations

import asyncio
import json
import socket

import pytest

from streams.margin.errors import ConfigError, MarginwatchError
from streams.settings import Settings
from streams.topics import check_kafka, kafka_security

SECRET = "Sup3rSecretPw-4711"
SASL = {"MW_KAFKA_SECURITY_PROTOCOL": "SASL_SSL", "MW_KAFKA_SASL_USERNAME": "alice", "MW_KAFKA_SASL_PASSWORD": SECRET}


@pytest.mark.parametrize("env, field", [
    ({"MW_KAFKA_SECURITY_PROTOCOL": "TLS"}, "kafka_security_protocol"),
    ({**SASL, "MW_KAFKA_SASL_MECHANISM": "MD5"}, "kafka_sasl_mechanism"),
    ({**SASL, "MW_KAFKA_SASL_MECHANISM": "scram-sha-512"}, "kafka_sasl_mechanism"),
    ({**SASL, "MW_KAFKA_SASL_PASSWORD": ""}, "kafka_sasl_username"),
    ({**SASL, "MW_KAFKA_SASL_USERNAME": ""}, "kafka_sasl_username"),
    ({**SASL, "MW_KAFKA_SSL_CAFILE": "/no/such/ca.pem"}, "kafka_ssl_cafile"),
])
def test_bad_security_settings_are_config_errors(env: dict, field: str) -> None:
    with pytest.raises(ConfigError) as info:
        Settings.from_env(env)
    assert info.value.field == field
    assert SECRET not in info.value.detail


def test_secrets_not_in_repr_or_describe() -> None:
    s = Settings.from_env({**SASL, "MW_API_TOKEN": "tok-" + SECRET})
    assert SECRET not in repr(s) and SECRET not in str(s)
    assert SECRET not in json.dumps(s.describe())
    assert s.describe()["kafka_sasl_password"] == "***" and s.describe()["api_token"] == "***"
    kw = kafka_security(s)
    assert kw["security_protocol"] == "SASL_SSL" and kw["sasl_mechanism"] == "SCRAM-SHA-512"
    assert kw["sasl_plain_password"] == SECRET and kw["ssl_context"] is not None


def test_check_kafka_unreachable_is_one_clear_error() -> None:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    s = Settings.from_env({**SASL, "MW_BROKER": f"kafka://127.0.0.1:{port}"})
    with pytest.raises(MarginwatchError) as info:
        asyncio.run(check_kafka(s, timeout_s=5))
    assert info.value.code == "kafka_unreachable"
    assert f"127.0.0.1:{port}" in info.value.detail and SECRET not in info.value.detail
