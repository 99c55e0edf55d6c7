"""The wire codec: Kafka message bytes -> validated domain events, or :class:`InputRejected`.

``decode(topic, key, value)`` turns one input message of a contract topic into one of the
events of :mod:`streams.margin.events`, or raises :class:`InputRejected` with the
contract's dead-letter code, the field at fault (a dotted path such as
``positions.2.qty``), a sentence naming it, and whatever could be read of the input
(account_id, cause id, ts). Codes, in the contract's order of precedence:

``invalid_json``
    not UTF-8, not JSON, not an object, a duplicate object key at any depth, nested
    deeper than :data:`MAX_DEPTH` levels, a string with a lone surrogate escape.
``schema_violation``
    anything the JSON Schema of the topic (``schemas/``) rejects, plus the rules it
    cannot express: a JSON number with more than 15 significant digits or more than 18
    digits after the point, a non-integer ``ts``/``seq`` written as ``1.0``, tiers that
    do not ascend, amounts given on some tiers only, two positions with one symbol.
``non_finite_number``
    NaN / Infinity as bare tokens (anywhere) or as strings (in a decimal field), and
    JSON numbers that overflow a double (``1e400``) in a decimal field.
``key_mismatch``
    the message key is missing, not UTF-8, or differs from account_id (fills,
    collateral, account-snapshots), symbol (mark-prices), symbol / ``asset:<ASSET>``
    (risk-params).

The JSON Schemas in ``schemas/`` are the single source of truth for structure: they are
loaded once at import, their ``$ref`` s inlined, and compiled with fastjsonschema. Each
leaf type of ``schemas/common.schema.json`` carries a ``description`` phrase that
completes "field X must be ...", which is how schema errors become sentences.

The hot path is ``orjson.loads`` + the compiled validator + a few ``Decimal`` calls.
orjson keeps the last of duplicate keys silently, so duplicates are ruled out by
counting: every key occurrence is followed by ``"`` (whitespace) ``:`` in the raw
bytes, so if the number of such sequences equals the number of keys in the parsed tree
no key can be repeated; otherwise (or when orjson fails, e.g. on a bare ``NaN``, or a
JSON number has to be read exactly) the message is parsed again with the standard
library, which reports duplicates, non-finite constants and exact number texts.

JSON numbers in decimal fields: an integer is taken exactly; a float is judged by its
text, which must have at most 15 significant digits (so it is exact as a double) and at
most 18 digits after the point, and the event gets ``Decimal(repr(float))``, numerically
equal to that text. On the fast path the text is not at hand: when ``repr(float)`` itself
stands in the raw bytes as a number token (the usual case: ``58000.1``) it is the text;
otherwise (``1.5e3``, ``3000.50``, ``0.10000000000000001``, integers beyond 64 bits) the
message is read again by the standard parser, which keeps every number's text. Decimal
strings are taken exactly as written; ``"-0"`` (and ``-0.0``) is accepted as zero and
normalised to ``0``; zero as a JSON number is ``0``.

Measured on the 2-core dev box (CPU time per message, best of 15 x 20 000): a fill with
every field as strings ~15 us (orjson ~1 us, the compiled validator ~5-8 us, the frozen
``Fill`` dataclass ~2.5-3.5 us), a mark tick ~9 us.

The package, by what each part does: :mod:`.schemas` loads and compiles the JSON Schemas
and turns their errors into sentences; :mod:`.parsing` reads raw bytes into a tree (and
rules out duplicate keys, bare NaN, deep nesting); :mod:`.raw` says what is known of a
message without parsing it (key text, cause ids, the oversize stand-in);
:mod:`.decoding` checks the values of one message; :mod:`.inputs` builds the event of
each input topic (:func:`decode`); :mod:`.envelopes` reads replay lines and the
risk-params start-up file. Every name is importable from ``streams.codec``.
"""
from __future__ import annotations

from .decoding import MAX_DECIMAL_PLACES, MAX_SIGNIFICANT_DIGITS
from .envelopes import decode_replay_line, load_risk_params_file
from .inputs import decode
from .parsing import MAX_DEPTH
from .raw import (
    OVERSIZE_KEEP,
    OVERSIZE_MARK,
    decode_key,
    oversize_stand_in,
    raw_cause_id,
    risk_params_cause_id,
    split_oversize,
)
from .schemas import (
    INPUT_TOPICS,
    OUTPUT_TOPICS,
    SCHEMA_FILES,
    SCHEMAS_DIR,
    _compiled,  # noqa: F401  (tests compile fragments of schemas/common.schema.json)
    load_schema,
    schema_validator,
)

__all__ = [
    "INPUT_TOPICS",
    "MAX_DEPTH",
    "OVERSIZE_MARK",
    "SCHEMAS_DIR",
    "SCHEMA_FILES",
    "decode",
    "decode_key",
    "decode_replay_line",
    "load_risk_params_file",
    "load_schema",
    "oversize_stand_in",
    "raw_cause_id",
    "risk_params_cause_id",
    "schema_validator",
]
