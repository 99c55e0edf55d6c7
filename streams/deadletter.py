"""Dead-letter payloads (topic ``dead-letters``) for inputs that cannot be applied.

``build_dead_letter`` makes the contract's dead-letter value from the rejected message
and the :class:`InputRejected` that rejected it (from the codec or from the engine);
``build_replay_dead_letter`` does the same for a replay line that is not a valid
envelope (``source_topic: "replay"``). Both return a plain dict that validates against
``schemas/dead-letter.schema.json``; its Kafka key is the input key, unchanged.

Size: the value is kept in ``raw`` (UTF-8 text) or ``raw_b64`` (base64, when the bytes
are not valid UTF-8). The kept field is cut so that it takes at most 64 KiB *as it
appears in the JSON* (escapes and base64 counted), then ``raw_truncated: true`` is set;
``detail`` and ``field`` are cut to 512 characters, and an account id or cause id
longer than 512 characters is not used (the key text / the ``raw@`` hash stand in). With a key of ordinary
size a dead-letter therefore serialises to at most ~70 KiB.
"""
from __future__ import annotations

import base64
from typing import Any

import orjson

from .codec import raw_cause_id, split_oversize
from .margin.errors import InputRejected

__all__ = ["MAX_RAW_BYTES", "build_dead_letter", "build_replay_dead_letter", "REPLAY_SOURCE"]

#: Most bytes the ``raw`` / ``raw_b64`` field may take in the serialised dead-letter.
MAX_RAW_BYTES = 64 * 1024
#: Longest ``detail`` / ``field`` kept, and longest id used in ``event_id``.
MAX_TEXT = 512
REPLAY_SOURCE = "replay"
_TS_LIMIT = 1 << 63


def _usable_id(v: Any) -> str | None:
    return v if isinstance(v, str) and 0 < len(v) <= MAX_TEXT else None


def _cut(text: str | None) -> str | None:
    if text is None or len(text) <= MAX_TEXT:
        return text
    return text[: MAX_TEXT - 3] + "..."


def _json_len(text: str) -> int:
    return len(orjson.dumps(text)) - 2


def _raw_fields(value: bytes) -> dict[str, Any]:
    try:
        text = value.decode("utf-8")
    except UnicodeDecodeError:
        limit = MAX_RAW_BYTES // 4 * 3  # base64 of this many bytes is MAX_RAW_BYTES long
        if len(value) <= limit:
            return {"raw_b64": base64.b64encode(value).decode("ascii")}
        return {"raw_b64": base64.b64encode(value[:limit]).decode("ascii"), "raw_truncated": True}
    size = _json_len(text)
    if size <= MAX_RAW_BYTES:
        return {"raw": text}
    # Cut on a character boundary so that the escaped text fits: start from the first
    # 64 KiB of bytes, then shrink in proportion until it does (escapes can grow a
    # character to six bytes, so a few rounds at most).
    cut = value[:MAX_RAW_BYTES].decode("utf-8", "ignore")
    size = _json_len(cut)
    while size > MAX_RAW_BYTES:
        cut = cut[: max(0, len(cut) * MAX_RAW_BYTES // size - 1)]
        size = _json_len(cut)
    return {"raw": cut, "raw_truncated": True}


def build_dead_letter(
    *,
    source_topic: str,
    partition: int,
    offset: int,
    key: bytes | None,
    value: bytes | None,
    error: InputRejected,
    fallback_ts: int,
    decided_at: int,
) -> dict[str, Any]:
    """The dead-letter value of one rejected input message.

    ``source_topic`` is the contract topic name (no prefix); ``fallback_ts`` is the event
    time to use when the input's own ``ts`` could not be read (the latest event time of
    the partition); ``decided_at`` is wall-clock ms.
    """
    value = bytes(value or b"")
    oversize = split_oversize(value) if value[:1] == b"\x00" else None
    if oversize is not None:  # the sequencer's stand-in: keep the original's first bytes
        value = oversize[3]
    key_text: str | None = None
    if key is not None:
        try:
            key_text = bytes(key).decode("utf-8")
        except UnicodeDecodeError:
            key_text = None
    account_id = _usable_id(error.account_id) or _usable_id(key_text) or ""
    cause_id = _usable_id(error.cause_id) or raw_cause_id(value)
    ts = error.ts
    if not (type(ts) is int and 0 <= ts < _TS_LIMIT):
        ts = fallback_ts
    out: dict[str, Any] = {
        "event_id": f"dead-letters:{account_id}:input:{source_topic}:{cause_id}",
        "account_id": account_id,
        "ts": ts,
        "decided_at": decided_at,
        "cause": {"topic": source_topic, "id": cause_id, "ts": ts},
        "schema_version": 1,
        "source_topic": source_topic,
        "partition": partition,
        "offset": offset,
        "key": key_text,
        "error": error.code,
        "detail": _cut(error.detail) or error.code,
        "field": _cut(error.field),
    }
    if key is not None and key_text is None:
        out["key_b64"] = base64.b64encode(bytes(key)).decode("ascii")
    out.update(_raw_fields(value))
    if oversize is not None:
        out["raw_truncated"] = True
    return out


def build_replay_dead_letter(
    *, line_no: int, line: bytes, error: InputRejected, fallback_ts: int, decided_at: int
) -> dict[str, Any]:
    """The dead-letter of a replay line that is not a valid envelope.

    ``source_topic`` and ``cause.topic`` are ``"replay"``, partition 0, offset the line
    number (from 0), no key; the raw value is the line itself. A valid envelope whose
    value is rejected is dead-lettered with :func:`build_dead_letter` under its own topic
    (partition 0, offset = line number).
    """
    return build_dead_letter(
        source_topic=REPLAY_SOURCE,
        partition=0,
        offset=line_no,
        key=None,
        value=bytes(line).rstrip(b"\r\n"),
        error=error,
        fallback_ts=fallback_ts,
        decided_at=decided_at,
    )
