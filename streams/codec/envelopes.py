"""Envelopes ``{"topic", "key", "value"}``: replay lines and the risk-params start-up file."""
from __future__ import annotations

import base64
import binascii
from json.decoder import scanstring
from pathlib import Path
from typing import Any

import fastjsonschema

from ..margin import events as ev
from ..margin.errors import INVALID_JSON, SCHEMA_VIOLATION, ConfigError, InputRejected
from .inputs import _as_bytes, decode
from .parsing import _SLOW_DECODER, MAX_DEPTH, _BadJSON, _parse, _show
from .schemas import INPUT_TOPICS, OUTPUT_TOPICS, _compiled, _explain


def _member_spans(text: str) -> dict[str, tuple[int, int]]:
    """Character spans of the top-level members' values of a JSON object text known valid."""
    ws = " \t\n\r"
    n = len(text)
    i = 0
    while text[i] in ws:
        i += 1
    i += 1  # '{'
    spans: dict[str, tuple[int, int]] = {}
    while True:
        while i < n and text[i] in ws:
            i += 1
        if text[i] == "}":
            return spans
        name, i = scanstring(text, i + 1)
        while text[i] in ws:
            i += 1
        i += 1  # ':'
        while text[i] in ws:
            i += 1
        _, end = _SLOW_DECODER.raw_decode(text, i)
        spans[name] = (i, end)
        i = end
        while text[i] in ws:
            i += 1
        if text[i] == "}":
            return spans
        i += 1  # ','


def _b64(value: Any, field: str) -> bytes:
    try:
        return base64.b64decode(value, validate=True)
    except (binascii.Error, ValueError):
        raise InputRejected(SCHEMA_VIOLATION, f"field '{field}' must be base64, got {_show(value)}", field) from None


def _envelope(
    line: bytes, *, topics: tuple[str, ...], require_key: bool = False, default_topic: str | None = None
) -> tuple[str, bytes | None, bytes]:
    raw = _as_bytes(line).rstrip(b"\r\n")
    try:
        tree, _, _ = _parse(raw, MAX_DEPTH + 1)
    except _BadJSON as e:
        raise InputRejected(INVALID_JSON, e.detail.replace("the value", "the line"), e.field) from None

    def violation(field: str | None, detail: str) -> InputRejected:
        return InputRejected(SCHEMA_VIOLATION, detail, field)

    if default_topic is not None and "topic" not in tree:
        tree["topic"] = default_topic

    has_value, has_b64 = "value" in tree, "value_b64" in tree
    if has_value and has_b64:
        raise violation("value_b64", "fields 'value' and 'value_b64' are both given; give one of them")
    if not has_value and not has_b64:
        raise violation("value", "field 'value' (or 'value_b64') is required")
    if "key" in tree and tree["key"] is not None and "key_b64" in tree:
        raise violation("key_b64", "fields 'key' and 'key_b64' are both given; give one of them")
    topic = tree.get("topic")
    if isinstance(topic, str) and topic not in topics:
        raise violation("topic", f"field 'topic' must be one of {', '.join(map(repr, topics))}, got {_show(topic)}")
    try:
        _compiled("replay", "plain")(tree)
    except fastjsonschema.JsonSchemaValueException as e:
        field, detail = _explain(e)
        raise violation(field, detail) from None
    topic = tree["topic"]
    if "key_b64" in tree:
        key: bytes | None = _b64(tree["key_b64"], "key_b64")
    elif tree.get("key") is not None:
        key = tree["key"].encode("utf-8")
    else:
        key = None
    if require_key and key is None:
        raise violation("key", "field 'key' is required")
    if has_b64:
        value = _b64(tree["value_b64"], "value_b64")
    elif isinstance(tree["value"], str):
        value = tree["value"].encode("utf-8")
    else:
        text = raw.decode("utf-8")
        start, end = _member_spans(text)["value"]
        value = text[start:end].encode("utf-8")
    return topic, key, value


def decode_replay_line(line: bytes, *, inputs_only: bool = True) -> tuple[str, bytes | None, bytes]:
    """(topic, key bytes or None, value bytes) of one replay line ``{"topic", "key", "value"}``.

    ``value`` may be an object (its exact text in the line is the value), a string of raw
    text (its UTF-8 bytes), or ``value_b64``. Raises :class:`InputRejected`
    (``invalid_json`` or ``schema_violation``) for a line that is not such an envelope,
    or (``inputs_only``) whose topic is not an input topic; dead-letter it with
    :func:`streams.deadletter.build_replay_dead_letter`.
    """
    topics = INPUT_TOPICS if inputs_only else INPUT_TOPICS + OUTPUT_TOPICS
    return _envelope(line, topics=topics)


def load_risk_params_file(path: str | Path) -> list[tuple[bytes, bytes]]:
    """The risk-params of a start-up file, as (key, value) bytes in file order.

    One ``{"key": KEY, "value": {...}}`` per line (blank lines are skipped; ``value`` may
    also be a string of raw JSON or ``value_b64``, and a ``topic`` of ``risk-params`` is
    allowed). Every value is checked with ``decode("risk-params", key, value)``; a bad
    line raises :class:`ConfigError` naming the file, the line number and the field.
    """
    path = Path(path)
    try:
        data = path.read_bytes()
    except OSError as e:
        raise ConfigError(f"cannot read the risk-params file {path}: {e.strerror or e}", "risk_params_file") from None
    out: list[tuple[bytes, bytes]] = []
    for lineno, line in enumerate(data.split(b"\n"), 1):
        if not line.strip():
            continue
        where = f"{path}, line {lineno}"
        try:
            _, key, value = _envelope(line, topics=(ev.RISK_PARAMS,), require_key=True, default_topic=ev.RISK_PARAMS)
        except InputRejected as e:
            raise ConfigError(f"{where}: {e.detail}", e.field) from None
        try:
            decode(ev.RISK_PARAMS, key, value)
        except InputRejected as e:
            field = f"value.{e.field}" if e.field else "value"
            raise ConfigError(f"{where}: {e.detail} ({e.code})", field) from None
        out.append((key, value))
    return out
