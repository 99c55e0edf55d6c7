"""What is known of a message without parsing its JSON: its key as text, the cause ids
taken from its bytes, and the stand-in the sequencer forwards for an oversize record."""
from __future__ import annotations

import hashlib
import re

from ..margin.errors import INVALID_JSON, InputRejected


def _sha12(raw: bytes) -> str:
    return hashlib.sha256(raw).hexdigest()[:12]


def raw_cause_id(value: bytes) -> str:
    """Cause id of an input that cannot be read: ``raw@`` + 12 hex digits of its SHA-256."""
    return "raw@" + _sha12(bytes(value or b""))


def risk_params_cause_id(key: str, value: bytes) -> str:
    """Cause id of a risk-params message: ``KEY@`` + 12 hex digits of the value's SHA-256."""
    return f"{key}@{_sha12(value)}"


def decode_key(key: bytes | None) -> str | None:
    """The message key as text; None when there is no key or it is not valid UTF-8."""
    if key is None:
        return None
    try:
        return bytes(key).decode("utf-8")
    except UnicodeDecodeError:
        return None


# --------------------------------------------------------------------------- oversize

#: First bytes of the stand-in the sequencer forwards for a record too large for the
#: sequenced log (no JSON text starts with a NUL byte, so no valid input looks like it).
OVERSIZE_MARK = b"\x00marginwatch-oversize\x00"
#: Bytes of the original value a stand-in keeps (a dead letter keeps at most 64 KiB of raw).
OVERSIZE_KEEP = 64 * 1024
_OVERSIZE_HEAD = re.compile(rb"(\d+) (\d+) ([0-9a-f]{64})\x00")


def oversize_stand_in(value: bytes, size: int, limit: int) -> bytes:
    """What the sequencer forwards instead of an input record of ``size`` bytes (as Kafka
    counts them) over ``limit``: the mark, ``"<size> <limit> <sha256 of value>"``, NUL, the
    first :data:`OVERSIZE_KEEP` bytes of the value. :func:`decode` rejects it
    (``invalid_json``, naming the size), and the dead letter keeps those first bytes."""
    value = bytes(value or b"")
    head = f"{size} {limit} {hashlib.sha256(value).hexdigest()}".encode()
    return OVERSIZE_MARK + head + b"\x00" + value[:OVERSIZE_KEEP]


def split_oversize(raw: bytes) -> tuple[int, int, str, bytes] | None:
    """(size, limit, sha256 hex, kept bytes) of a stand-in, or None for any other value."""
    if not raw.startswith(OVERSIZE_MARK):
        return None
    m = _OVERSIZE_HEAD.match(raw, len(OVERSIZE_MARK))
    if m is None:
        return None
    return int(m.group(1)), int(m.group(2)), m.group(3).decode(), raw[m.end():]


def _reject_oversize(raw: bytes) -> None:
    parts = split_oversize(raw)
    if parts is None:
        return
    size, limit, sha, _ = parts
    raise InputRejected(
        INVALID_JSON,
        f"the value was not read: the message is too large to forward ({size} bytes as a record of the "
        f"sequenced log, more than {limit}); its first {OVERSIZE_KEEP} bytes are kept in raw",
        None,
        cause_id="raw@" + sha[:12],
    )
