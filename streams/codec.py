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
"""
from __future__ import annotations

import base64
import binascii
import copy
import hashlib
import json
import re
from decimal import Decimal, InvalidOperation
from functools import lru_cache
from json.decoder import scanstring
from pathlib import Path
from typing import Any, Callable

import fastjsonschema
import orjson

from .margin import events as ev
from .margin.errors import (
    INVALID_JSON,
    KEY_MISMATCH,
    NON_FINITE_NUMBER,
    SCHEMA_VIOLATION,
    ConfigError,
    InputRejected,
    MarginwatchError,
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

SCHEMAS_DIR = Path(__file__).resolve().parent.parent / "schemas"

INPUT_TOPICS: tuple[str, ...] = (
    ev.FILLS,
    ev.MARK_PRICES,
    ev.COLLATERAL,
    ev.ACCOUNT_SNAPSHOTS,
    ev.RISK_PARAMS,
)
OUTPUT_TOPICS: tuple[str, ...] = ("margin-status", "margin-calls", "liquidations", "dead-letters")

#: topic (or ``replay``) -> schema file in ``schemas/``.
SCHEMA_FILES: dict[str, str] = {
    "fills": "fill.schema.json",
    "mark-prices": "mark-price.schema.json",
    "collateral": "collateral.schema.json",
    "account-snapshots": "account-snapshot.schema.json",
    "risk-params": "risk-params.schema.json",
    "margin-status": "margin-status.schema.json",
    "margin-calls": "margin-call.schema.json",
    "liquidations": "liquidation.schema.json",
    "dead-letters": "dead-letter.schema.json",
    "replay": "replay-line.schema.json",
}

#: Deepest nesting of objects/arrays accepted in a value (the top-level object is 1).
MAX_DEPTH = 32
MAX_SIGNIFICANT_DIGITS = 15
MAX_DECIMAL_PLACES = 18
_TS_LIMIT = 1 << 63
_ZERO = Decimal(0)
_DRAFT7 = "http://json-schema.org/draft-07/schema#"
_MAX_DOUBLE = 1.7976931348623157e308

# Non-finite spellings accepted as "a non-finite number" (not as a schema violation) in
# decimal fields: NaN, Infinity, -Infinity and the case/sign variants other languages
# print (inf, +Inf, nan, sNaN). ECMA-262 syntax, no flags: used inside JSON Schema.
_NONFINITE_PATTERN = "^[+-]?([Ii][Nn][Ff]([Ii][Nn][Ii][Tt][Yy])?|[Ss]?[Nn][Aa][Nn][0-9]*)$"
_NONFINITE_RE = re.compile(_NONFINITE_PATTERN.replace("$", r"\Z"))

# A key occurrence: closing quote, optional JSON whitespace, colon.
_KEY_COLON = re.compile(rb'"[ \t\n\r]*:')
_QUOTE_SPACE = re.compile(rb'"[ \t\n\r]')
_SURROGATE_ESCAPE = re.compile(r"\\u[dD][89a-fA-F]")
_SURROGATE = re.compile("[\ud800-\udfff]")
# Bytes that may precede / follow a JSON number token.
_NUM_BEFORE = frozenset(b":,[ \t\n\r")
_NUM_AFTER = frozenset(b",]} \t\n\r")


# --------------------------------------------------------------------------- schemas


@lru_cache(maxsize=None)
def _schema_file(fname: str) -> dict:
    with open(SCHEMAS_DIR / fname, "rb") as fh:
        return orjson.loads(fh.read())


def load_schema(name: str) -> dict:
    """A copy of a schema of ``schemas/``, by topic (``fills``, ``replay``…) or file name."""
    return copy.deepcopy(_schema_file(SCHEMA_FILES.get(name, name)))


# Keywords whose value is a subschema, a list of subschemas, or a map of subschemas.
_SUBSCHEMA_KEYWORDS = frozenset(
    {"not", "if", "then", "else", "additionalProperties", "additionalItems", "contains", "propertyNames", "items"}
)
_SUBSCHEMA_LIST_KEYWORDS = frozenset({"allOf", "anyOf", "oneOf", "items"})
_SUBSCHEMA_MAP_KEYWORDS = frozenset({"properties", "patternProperties", "dependencies"})


def _map_schema(node: Any, fn: Callable[[dict], Any]) -> Any:
    """Apply ``fn`` bottom-up to every (sub)schema of ``node``; other values are copied."""
    if not isinstance(node, dict):
        return copy.deepcopy(node)
    out: dict[str, Any] = {}
    for k, v in node.items():
        if k in _SUBSCHEMA_LIST_KEYWORDS and isinstance(v, list):
            out[k] = [_map_schema(s, fn) for s in v]
        elif k in _SUBSCHEMA_KEYWORDS:
            out[k] = _map_schema(v, fn)
        elif k in _SUBSCHEMA_MAP_KEYWORDS and isinstance(v, dict):
            out[k] = {name: _map_schema(s, fn) for name, s in v.items()}
        else:
            out[k] = copy.deepcopy(v)
    return fn(out)


def _resolve(ref: str, doc: str) -> tuple[Any, str]:
    fname, _, fragment = ref.partition("#")
    fname = fname or doc
    node: Any = _schema_file(fname)
    for part in fragment.split("/"):
        if part:
            node = node[part.replace("~1", "/").replace("~0", "~")]
    return node, fname


def _inline(node: Any, doc: str, depth: int = 0) -> Any:
    """``node`` with every ``$ref`` replaced by (a copy of) its target, across files.

    ``definitions`` and ``examples`` are left out: the compiled code embeds the failing
    subschema in each error, and neither is needed once the refs are inlined.
    """
    if depth > 64:
        raise ValueError(f"$ref chain too deep in {doc} (recursive schema?)")
    if isinstance(node, dict) and "$ref" in node:
        target, target_doc = _resolve(node["$ref"], doc)
        return _inline(target, target_doc, depth + 1)
    if not isinstance(node, dict):
        return copy.deepcopy(node)
    out: dict[str, Any] = {}
    for k, v in node.items():
        if k in ("definitions", "examples"):
            continue
        if k in _SUBSCHEMA_LIST_KEYWORDS and isinstance(v, list):
            out[k] = [_inline(s, doc, depth + 1) for s in v]
        elif k in _SUBSCHEMA_KEYWORDS:
            out[k] = _inline(v, doc, depth + 1)
        elif k in _SUBSCHEMA_MAP_KEYWORDS and isinstance(v, dict):
            out[k] = {name: _inline(s, doc, depth + 1) for name, s in v.items()}
        else:
            out[k] = copy.deepcopy(v)
    return out


def _close(node: dict) -> dict:
    """Strict variant: every record object (``type: object`` with ``properties``) closed."""
    if node.get("type") == "object" and "properties" in node and node.get("additionalProperties", True) is True:
        node["additionalProperties"] = False
    return node


def _accept_nonfinite(node: dict) -> dict:
    """Lenient variant: every described decimal type also accepts a non-finite spelling.

    Used only to tell ``non_finite_number`` from ``schema_violation``: a message whose
    only faults are non-finite decimals passes it. Decimal types are recognised as the
    described schemas whose ``type`` lists both string and number. A non-finite string
    matches the pattern branch, +-Infinity the out-of-range branch; NaN satisfies every
    numeric bound of the original type (comparisons with NaN are false), as it does in
    the plain variant, where the decoder catches it. Values of other types are not
    touched: ``"fee_asset": 1e400`` stays a schema violation.
    """
    types = node.get("type")
    if "description" in node and isinstance(types, list) and "string" in types and "number" in types:
        return {
            "description": node["description"],
            "anyOf": [
                {"type": "string", "pattern": _NONFINITE_PATTERN},
                {"type": "number", "not": {"minimum": -_MAX_DOUBLE, "maximum": _MAX_DOUBLE}},
                node,
            ],
        }
    return node


def _schema_doc(name: str) -> tuple[dict, str]:
    """(schema node, file) for a topic / file name, or ``file#/json/pointer``."""
    fname, _, fragment = name.partition("#")
    fname = SCHEMA_FILES.get(fname, fname)
    if fragment:
        node, fname = _resolve("#" + fragment, fname)
        return node, fname
    return _schema_file(fname), fname


@lru_cache(maxsize=None)
def _compiled(name: str, variant: str) -> Callable[[Any], Any]:
    node, fname = _schema_doc(name)
    schema = _inline(node, fname)
    schema["$schema"] = _DRAFT7
    if variant == "strict":
        schema = _map_schema(schema, _close)
    elif variant == "lenient":
        schema = _map_schema(schema, _accept_nonfinite)
    return fastjsonschema.compile(schema, use_default=False, use_formats=False)


def schema_validator(name: str, *, strict: bool = False) -> Callable[[Any], Any]:
    """The compiled validator of a schema (topic, ``replay``, or file name).

    It raises ``fastjsonschema.JsonSchemaValueException``. ``strict=True`` closes every
    record object (no fields beyond those listed): for testing what marginwatch itself
    emits. The published output schemas stay open, because the contract lets v1 gain
    fields and tells consumers to ignore unknown ones.
    """
    return _compiled(name, "strict" if strict else "plain")


# --------------------------------------------------------------------------- messages


def _show(v: Any) -> str:
    """A short rendering of a JSON value for a detail sentence."""
    if v is None:
        return "null"
    if v is True:
        return "true"
    if v is False:
        return "false"
    if isinstance(v, str):
        return repr(v if len(v) <= 48 else v[:45] + "...")
    if isinstance(v, _NumText):
        t = v.text
        return t if len(t) <= 48 else f"{t[:24]}... ({len(t)} characters)"
    if isinstance(v, float):
        if v != v:
            return "NaN"
        if v in (_INF, _NINF):
            return "Infinity" if v > 0 else "-Infinity"
        return repr(v)
    if isinstance(v, int):
        s = str(v)
        return s if len(s) <= 48 else f"{s[:24]}... ({len(s)} digits)"
    if isinstance(v, dict):
        return "an object"
    if isinstance(v, list):
        return "an empty array" if not v else "an array"
    return repr(v)[:48]


_TYPE_PHRASES = {
    "object": "an object",
    "array": "an array",
    "string": "a string",
    "number": "a number",
    "integer": "an integer",
    "boolean": "a boolean",
    "null": "null",
}


def _explain(e: fastjsonschema.JsonSchemaValueException) -> tuple[str | None, str]:
    """(field, detail sentence) of a fastjsonschema error."""
    parts = [str(p) for p in (e.path or [])[1:]]
    rule = e.rule
    d = e.definition if isinstance(e.definition, dict) else {}
    v = e.value
    if rule == "required":
        names = e.rule_definition if isinstance(e.rule_definition, list) else d.get("required", [])
        missing = next((n for n in names if not (isinstance(v, dict) and n in v)), names[0] if names else "?")
        field = ".".join(parts + [missing])
        desc = d.get("description") if "type" not in d else None
        return field, f"field '{field}' is {desc or 'required'}"
    field = ".".join(parts) or None
    name = f"field '{field}'" if field else "the value"
    if rule == "enum":
        options = d.get("enum", [])
        shown = ", ".join(_show(o) for o in options if o is not None)
        if None in options:
            shown += " or null"
        return field, f"{name} must be one of {shown}, got {_show(v)}"
    if rule == "const":
        return field, f"{name} must be {_show(d.get('const'))}, got {_show(v)}"
    if rule == "propertyNames":
        return field, f"{name} must not have an empty key"
    desc = d.get("description")
    if desc:
        return field, f"{name} must be {desc}, got {_show(v)}"
    if rule == "type":
        types = d.get("type")
        types = types if isinstance(types, list) else [types]
        return field, f"{name} must be {' or '.join(_TYPE_PHRASES.get(t, str(t)) for t in types)}, got {_show(v)}"
    message = e.message or ""
    prefix = e.name or ""
    if prefix and message.startswith(prefix):
        message = message[len(prefix):].strip()
    return field, f"{name} {message}, got {_show(v)}"


# --------------------------------------------------------------------------- parsing

_INF = float("inf")
_NINF = float("-inf")


class _NumText(float):
    """A JSON number read by the standard library, with its exact text."""

    __slots__ = ("text",)

    def __new__(cls, text: str) -> "_NumText":
        self = float.__new__(cls, text)
        self.text = text
        return self


class _Bare(float):
    """A bare NaN / Infinity / -Infinity token (not JSON)."""

    __slots__ = ()


class _DupDict(dict):
    """An object in which ``dup`` occurred more than once."""

    __slots__ = ("dup",)


def _pairs_hook(pairs: list[tuple[str, Any]]) -> dict:
    d = dict(pairs)
    if len(d) != len(pairs):
        seen: set[str] = set()
        for k, _ in pairs:
            if k in seen:
                out = _DupDict(d)
                out.dup = k
                return out
            seen.add(k)
    return d


def _parse_int(text: str) -> Any:
    # Beyond ~300 digits an integer overflows a double anyway; keep the text (and stay
    # clear of int()'s 4300-digit limit).
    if len(text) <= 300:
        return int(text)
    return _NumText(text)


_SLOW_DECODER = json.JSONDecoder(
    object_pairs_hook=_pairs_hook,
    parse_float=_NumText,
    parse_int=_parse_int,
    parse_constant=_Bare,
)


class _BadJSON(Exception):
    def __init__(self, detail: str, field: str | None = None) -> None:
        super().__init__(detail)
        self.detail = detail
        self.field = field


def _kind(v: Any) -> str:
    if isinstance(v, list):
        return "an array"
    if isinstance(v, str):
        return "a string"
    if v is None:
        return "null"
    if isinstance(v, bool):
        return "a boolean"
    return "a number"


def _too_deep(max_depth: int) -> _BadJSON:
    return _BadJSON(f"the value is nested too deeply (more than {max_depth} levels of objects and arrays)")


def _count_keys(o: Any, depth: int, max_depth: int) -> int:
    if depth > max_depth:
        raise _too_deep(max_depth)
    n = 0
    if type(o) is dict:
        n = len(o)
        values = o.values()
    else:
        values = o
    for v in values:
        t = type(v)
        if t is dict or t is list:
            n += _count_keys(v, depth + 1, max_depth)
    return n


def _parse(raw: bytes, max_depth: int = MAX_DEPTH) -> tuple[dict, bool, str | None]:
    """(tree, fast, bare_path): the top-level object of ``raw``; raises _BadJSON.

    ``fast`` tells that orjson made the tree (plain floats, no exact texts);
    ``bare_path`` is the dotted path of the first bare NaN/Infinity token, if any.
    """
    try:
        tree = orjson.loads(raw)
    except orjson.JSONDecodeError as e:
        if "depth limit" in str(e):
            raise _too_deep(max_depth) from None
        return _parse_slow(raw, max_depth)
    if type(tree) is not dict:
        raise _BadJSON(f"the value must be a JSON object, got {_kind(tree)}")
    n = len(tree)  # _count_keys inlined for the (usual) flat top level
    for v in tree.values():
        t = type(v)
        if t is dict or t is list:
            n += _count_keys(v, 2, max_depth)
    if _QUOTE_SPACE.search(raw) is not None:
        unique = len(_KEY_COLON.findall(raw)) == n
    else:
        unique = raw.count(b'":') == n
    if not unique:
        return _parse_slow(raw, max_depth)
    return tree, True, None


def _parse_slow(raw: bytes, max_depth: int = MAX_DEPTH) -> tuple[dict, bool, str | None]:
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as e:
        raise _BadJSON(f"the value is not valid UTF-8 ({e.reason} at byte {e.start})") from None
    if not text.strip():
        raise _BadJSON("the value is empty")
    try:
        tree = _SLOW_DECODER.decode(text)
    except json.JSONDecodeError as e:
        raise _BadJSON(f"the value is not valid JSON: {e.msg} (line {e.lineno}, column {e.colno})") from None
    except RecursionError:
        raise _too_deep(max_depth) from None
    except (ValueError, OverflowError) as e:  # pragma: no cover - defensive
        raise _BadJSON(f"the value is not valid JSON: {str(e)[:200]}") from None
    if not isinstance(tree, dict):
        raise _BadJSON(f"the value must be a JSON object, got {_kind(tree)}")
    check_surrogates = _SURROGATE_ESCAPE.search(text) is not None
    bare: list[str] = []
    _inspect(tree, [], 1, max_depth, check_surrogates, bare)
    return tree, False, (bare[0] if bare else None)


def _inspect(o: Any, path: list[str], depth: int, max_depth: int, surrogates: bool, bare: list[str]) -> None:
    if depth > max_depth:
        raise _too_deep(max_depth)
    if isinstance(o, dict):
        if type(o) is _DupDict:
            where = f" in object '{'.'.join(path)}'" if path else ""
            raise _BadJSON(f"duplicate key {_show(o.dup)}{where}", ".".join(path + [o.dup]))
        items = o.items()
    else:
        items = ((str(i), v) for i, v in enumerate(o))
    for k, v in items:
        if surrogates and _SURROGATE.search(k):
            raise _BadJSON(f"a key in object '{'.'.join(path)}' has a lone surrogate escape (not UTF-8)")
        if isinstance(v, (dict, list)):
            _inspect(v, path + [k], depth + 1, max_depth, surrogates, bare)
        elif type(v) is _Bare:
            if not bare:
                bare.append(".".join(path + [k]))
        elif surrogates and isinstance(v, str) and _SURROGATE.search(v):
            field = ".".join(path + [k])
            raise _BadJSON(f"field '{field}' has a lone surrogate escape (not UTF-8)", field)


def _is_nonfinite(v: Any) -> bool:
    if isinstance(v, float):
        return v != v or v in (_INF, _NINF)
    return isinstance(v, str) and _NONFINITE_RE.match(v) is not None


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


# --------------------------------------------------------------------------- decoding


class _NeedExact(Exception):
    """A float's text must be read exactly: decode again from the standard parser."""


_NF = object()  # a non-finite decimal (already recorded)


def _valid_id(v: Any) -> str | None:
    return v if type(v) is str and v else None


def _valid_ts(v: Any) -> int | None:
    return v if type(v) is int and 0 <= v < _TS_LIMIT else None


def _number_problem(d: Decimal) -> str | None:
    _, digits, exp = d.as_tuple()
    n = len(digits)
    if n == 1 and digits[0] == 0:
        return None
    while n > 1 and digits[n - 1] == 0:
        n -= 1
        exp += 1
    if n > MAX_SIGNIFICANT_DIGITS:
        return f"at most {MAX_SIGNIFICANT_DIGITS} significant digits"
    if exp < -MAX_DECIMAL_PLACES:
        return f"at most {MAX_DECIMAL_PLACES} digits after the point"
    return None


class _Decoding:
    """One message being decoded: its parts, and the helpers that reject it."""

    __slots__ = ("spec", "raw", "key", "key_text", "tree", "bare", "nonfinite")

    def __init__(self, spec: "_Spec", raw: bytes, key: bytes | None) -> None:
        self.spec = spec
        self.raw = raw
        self.key = key
        self.key_text = decode_key(key)
        self.tree: dict = {}
        self.bare: str | None = None
        self.nonfinite: tuple[str, Any] | None = None

    def reject(self, code: str, detail: str, field: str | None) -> InputRejected:
        account_id, cause_id, ts = self.spec.context(self)
        return InputRejected(code, detail, field, account_id=account_id, cause_id=cause_id, ts=ts)

    # -- structure

    def validate(self, name: str) -> None:
        tree = self.tree
        try:
            _compiled(name, "plain")(tree)
            return
        except fastjsonschema.JsonSchemaValueException as e:
            err = e
        if _is_nonfinite(err.value):
            try:
                _compiled(name, "lenient")(tree)
                return
            except fastjsonschema.JsonSchemaValueException as e:
                err = e
        field, detail = _explain(err)
        raise self.reject(SCHEMA_VIOLATION, detail, field)

    def violation(self, field: str, detail: str) -> InputRejected:
        return self.reject(SCHEMA_VIOLATION, detail, field)

    # -- values (called after validate: types and patterns are known good)

    def dec(self, v: Any, field: str) -> Any:
        t = type(v)
        if t is str:
            try:
                d = Decimal(v)
            except InvalidOperation:  # pragma: no cover - the schema pattern rules it out
                raise self.violation(field, f"field '{field}' must be a decimal, got {_show(v)}") from None
            if not d.is_finite():
                return self._nonfinite(field, v)
            if not d and d.is_signed():
                d = d.copy_abs()
            return d
        if t is int:
            if -1_000_000_000_000_000 < v < 1_000_000_000_000_000:
                return Decimal(v)
            return self._exact_number(Decimal(v), v, field)
        if t is bool or not isinstance(v, float):  # pragma: no cover - the schema rules it out
            raise self.violation(field, f"field '{field}' must be a decimal, got {_show(v)}")
        if v != v or v in (_INF, _NINF):
            return self._nonfinite(field, v)
        if t is _NumText:
            self._exact_number(Decimal(v.text), v, field)
            d = Decimal(repr(float(v)))
        else:
            r = repr(v)
            if not self._written_as(r):
                raise _NeedExact
            d = self._exact_number(Decimal(r), v, field)
        if not d and d.is_signed():
            d = d.copy_abs()
        return d

    def opt_dec(self, v: Any, field: str, default: Any = None) -> Any:
        return default if v is None else self.dec(v, field)

    def _exact_number(self, exact: Decimal, v: Any, field: str) -> Decimal:
        problem = _number_problem(exact)
        if problem is not None:
            raise self.violation(
                field,
                f"field '{field}' must be a decimal with {problem} when sent as a JSON number "
                f"(send a string for more), got {_show(v)}",
            )
        return exact

    def _written_as(self, r: str) -> bool:
        """Whether the float whose repr is ``r`` appears as that very number token in raw."""
        raw = self.raw
        needle = r.encode("ascii")
        i = raw.find(needle)
        while i >= 0:
            j = i + len(needle)
            if (i == 0 or raw[i - 1] in _NUM_BEFORE) and (j == len(raw) or raw[j] in _NUM_AFTER):
                return True
            i = raw.find(needle, i + 1)
        return False

    def _nonfinite(self, field: str, v: Any) -> Any:
        if self.nonfinite is None:
            self.nonfinite = (field, v)
        return _NF

    def integer(self, v: Any, field: str) -> int:
        if type(v) is not int:
            raise self.violation(
                field,
                f"field '{field}' must be an integer >= 0 written without a fraction or exponent, got {_show(v)}",
            )
        return v

    def opt_integer(self, v: Any, field: str) -> int | None:
        return None if v is None else self.integer(v, field)

    def finish(self) -> None:
        """Raise non_finite_number if a decimal (or a bare token anywhere) was non-finite."""
        if self.nonfinite is not None:
            field, v = self.nonfinite
            raise self.reject(NON_FINITE_NUMBER, f"field '{field}' must be a finite number, got {_show(v)}", field)
        if self.bare is not None:
            field = self.bare
            raise self.reject(
                NON_FINITE_NUMBER,
                f"field '{field}' holds a bare NaN or Infinity token, which is not JSON",
                field,
            )

    def check_key(self, expected: str, field: str) -> None:
        if self.key_text == expected:
            return
        if self.key is None:
            detail = f"the message key is missing; it must equal field '{field}' ({_show(expected)})"
        elif self.key_text is None:
            detail = f"the message key is not valid UTF-8; it must equal field '{field}' ({_show(expected)})"
        elif field == "asset":
            detail = f"the message key must be {_show(expected)} (from field 'asset'), got {_show(self.key_text)}"
        else:
            detail = f"field '{field}' is {_show(expected)} but the message key is {_show(self.key_text)}"
        raise self.reject(KEY_MISMATCH, detail, field)


class _Spec:
    __slots__ = ("topic", "build", "context", "invalid_cause")

    def __init__(self, topic: str, build: Callable, context: Callable, invalid_cause: Callable) -> None:
        self.topic = topic
        self.build = build
        self.context = context
        self.invalid_cause = invalid_cause


def _no_cause(d: _Decoding) -> None:
    return None


def _account_context(id_field: str) -> Callable[[_Decoding], tuple]:
    def context(d: _Decoding) -> tuple:
        t = d.tree
        return _valid_id(t.get("account_id")), _valid_id(t.get(id_field)), _valid_ts(t.get("ts"))

    return context


def _mark_context(d: _Decoding) -> tuple:
    t = d.tree
    symbol = _valid_id(t.get("symbol"))
    ts = _valid_ts(t.get("ts"))
    seq = t.get("seq")
    cause = None
    if symbol is not None:
        if type(seq) is int and 0 <= seq < _TS_LIMIT:
            cause = f"{symbol}:{seq}"
        elif seq is None and ts is not None:
            cause = f"{symbol}@{ts}"
    return None, cause, ts


def _risk_cause(d: _Decoding) -> str | None:
    return risk_params_cause_id(d.key_text, d.raw) if d.key_text else None


def _risk_context(d: _Decoding) -> tuple:
    return None, _risk_cause(d), _valid_ts(d.tree.get("ts"))


def _build_fill(d: _Decoding) -> ev.Fill:
    d.validate("fills")
    t = d.tree
    qty = d.dec(t["qty"], "qty")
    price = d.dec(t["price"], "price")
    fee = d.opt_dec(t.get("fee"), "fee", _ZERO)
    ts = d.integer(t["ts"], "ts")
    d.finish()
    d.check_key(t["account_id"], "account_id")
    return ev.Fill(
        fill_id=t["fill_id"],
        account_id=t["account_id"],
        symbol=t["symbol"],
        side=t["side"],
        qty=qty,
        price=price,
        ts=ts,
        fee=fee,
        fee_asset=t.get("fee_asset"),
        margin_mode=t.get("margin_mode") or ev.CROSS,
    )


def _build_mark(d: _Decoding) -> ev.MarkTick:
    d.validate("mark-prices")
    t = d.tree
    mark = d.dec(t["mark_price"], "mark_price")
    ts = d.integer(t["ts"], "ts")
    seq = d.opt_integer(t.get("seq"), "seq")
    d.finish()
    d.check_key(t["symbol"], "symbol")
    return ev.MarkTick(symbol=t["symbol"], mark_price=mark, ts=ts, seq=seq)


def _build_collateral(d: _Decoding) -> ev.CollateralChange:
    d.validate("collateral")
    t = d.tree
    amount = d.dec(t["amount"], "amount")
    ts = d.integer(t["ts"], "ts")
    d.finish()
    d.check_key(t["account_id"], "account_id")
    return ev.CollateralChange(
        event_id=t["event_id"],
        account_id=t["account_id"],
        asset=t["asset"],
        amount=amount,
        reason=t["reason"],
        ts=ts,
        symbol=t.get("symbol"),
    )


def _build_snapshot(d: _Decoding) -> ev.AccountSnapshot:
    d.validate("account-snapshots")
    t = d.tree
    ts = d.integer(t["ts"], "ts")
    balances = [(asset, d.dec(v, f"balances.{asset}")) for asset, v in t["balances"].items()]
    positions: list[ev.SnapshotPosition] = []
    seen: dict[str, int] = {}
    for i, p in enumerate(t["positions"]):
        symbol = p["symbol"]
        if symbol in seen:
            field = f"positions.{i}.symbol"
            raise d.violation(
                field,
                f"field '{field}' repeats symbol {_show(symbol)} of positions.{seen[symbol]}; "
                "an account has one position per symbol",
            )
        seen[symbol] = i
        qty = d.dec(p["qty"], f"positions.{i}.qty")
        entry = d.dec(p["entry_price"], f"positions.{i}.entry_price")
        isolated_margin = d.opt_dec(p.get("isolated_margin"), f"positions.{i}.isolated_margin", _ZERO)
        positions.append(
            ev.SnapshotPosition(
                symbol=symbol,
                qty=qty,
                entry_price=entry,
                margin_mode=p.get("margin_mode") or ev.CROSS,
                isolated_margin=isolated_margin,
            )
        )
    d.finish()
    d.check_key(t["account_id"], "account_id")
    balances.sort(key=lambda kv: kv[0])
    positions.sort(key=lambda p: p.symbol)
    return ev.AccountSnapshot(
        snapshot_id=t["snapshot_id"],
        account_id=t["account_id"],
        ts=ts,
        balances=tuple(balances),
        positions=tuple(positions),
    )


def _check_tiers(d: _Decoding, tiers: list[dict], parsed: list[tuple]) -> None:
    last = len(parsed) - 1
    previous = None  # (index, value) of the last finite max_notional
    for i, (max_notional, _, _, _) in enumerate(parsed):
        field = f"tiers.{i}.max_notional"
        if max_notional is None and i != last:
            raise d.violation(
                field, f"field '{field}' must be a decimal > 0 (only the last tier has max_notional null), got null"
            )
        if i == last and max_notional is not None and max_notional is not _NF:
            raise d.violation(
                field,
                f"field '{field}' must be null on the last tier (it has no upper bound), "
                f"got {_show(tiers[i]['max_notional'])}",
            )
        if max_notional is None or max_notional is _NF:
            continue
        if previous is not None and not max_notional > previous[1]:
            raise d.violation(
                field,
                f"field '{field}' must be greater than tiers.{previous[0]}.max_notional "
                f"({_show(tiers[previous[0]]['max_notional'])}): tiers ascend by max_notional, "
                f"got {_show(tiers[i]['max_notional'])}",
            )
        previous = (i, max_notional)
    for position, name in ((2, "maintenance_amount"), (3, "imr")):
        given0 = parsed[0][position] is not None
        for i, row in enumerate(parsed):
            if (row[position] is not None) != given0:
                field = f"tiers.{i}.{name}"
                if given0:
                    detail = f"field '{field}' is missing but tier 0 has one: give {name} on all tiers or on none"
                else:
                    detail = f"field '{field}' is given but tier 0 has none: give {name} on all tiers or on none"
                raise d.violation(field, detail)


def _build_risk_params(d: _Decoding) -> ev.InstrumentParams | ev.AssetParams:
    t = d.tree
    kind = t.get("type")
    if "type" not in t:
        raise d.violation("type", "field 'type' is required")
    if kind not in ("instrument", "asset"):
        raise d.violation("type", f"field 'type' must be one of 'instrument', 'asset', got {_show(kind)}")
    d.validate(f"risk-params#/definitions/{kind}")
    ts = d.opt_integer(t.get("ts"), "ts")
    if kind == "asset":
        haircut = d.dec(t["haircut"], "haircut")
        d.finish()
        d.check_key(f"asset:{t['asset']}", "asset")
        return ev.AssetParams(
            asset=t["asset"],
            price_symbol=t["price_symbol"],
            haircut=haircut,
            ts=ts,
            cause_id=risk_params_cause_id(d.key_text, d.raw),
        )
    contract_size = d.dec(t["contract_size"], "contract_size")
    qty_step = d.opt_dec(t.get("qty_step"), "qty_step")
    tiers = t["tiers"]
    parsed = []
    for i, tier in enumerate(tiers):
        parsed.append(
            (
                d.opt_dec(tier["max_notional"], f"tiers.{i}.max_notional"),
                d.dec(tier["mmr"], f"tiers.{i}.mmr"),
                d.opt_dec(tier.get("maintenance_amount"), f"tiers.{i}.maintenance_amount"),
                d.opt_dec(tier.get("imr"), f"tiers.{i}.imr"),
            )
        )
    _check_tiers(d, tiers, parsed)
    d.finish()
    d.check_key(t["symbol"], "symbol")
    return ev.InstrumentParams(
        symbol=t["symbol"],
        kind=t["kind"],
        settle_asset=t["settle_asset"],
        contract_size=contract_size,
        tiers=tuple(ev.TierSpec(max_notional=a, mmr=b, maintenance_amount=c, imr=e) for a, b, c, e in parsed),
        qty_step=qty_step,
        ts=ts,
        cause_id=risk_params_cause_id(d.key_text, d.raw),
    )


_SPECS: dict[str, _Spec] = {
    ev.FILLS: _Spec(ev.FILLS, _build_fill, _account_context("fill_id"), _no_cause),
    ev.MARK_PRICES: _Spec(ev.MARK_PRICES, _build_mark, _mark_context, _no_cause),
    ev.COLLATERAL: _Spec(ev.COLLATERAL, _build_collateral, _account_context("event_id"), _no_cause),
    ev.ACCOUNT_SNAPSHOTS: _Spec(ev.ACCOUNT_SNAPSHOTS, _build_snapshot, _account_context("snapshot_id"), _no_cause),
    ev.RISK_PARAMS: _Spec(ev.RISK_PARAMS, _build_risk_params, _risk_context, _risk_cause),
}


def _as_bytes(value: Any) -> bytes:
    if value is None:
        return b""
    if type(value) is bytes:
        return value
    if isinstance(value, str):
        return value.encode("utf-8", "surrogatepass")
    return bytes(value)


def decode(topic: str, key: bytes | None, value: bytes) -> ev.Event:
    """Decode one input message of a contract topic (names without any topic prefix).

    Returns the event, or raises :class:`InputRejected` (``invalid_json``,
    ``schema_violation``, ``non_finite_number`` or ``key_mismatch``). A ``None`` value
    (a tombstone) is rejected as ``invalid_json``. An unknown topic is a programming
    error: :class:`MarginwatchError` with code ``unknown_topic``.
    """
    spec = _SPECS.get(topic)
    if spec is None:
        raise MarginwatchError(
            "unknown_topic", f"unknown input topic {topic!r}; expected one of {', '.join(INPUT_TOPICS)}", "topic"
        )
    raw = _as_bytes(value)
    if raw[:1] == b"\x00":
        _reject_oversize(raw)  # the sequencer's stand-in for a record too large to forward
    d = _Decoding(spec, raw, key)
    try:
        d.tree, _, d.bare = _parse(raw)
    except _BadJSON as e:
        raise InputRejected(INVALID_JSON, e.detail, e.field, cause_id=spec.invalid_cause(d)) from None
    try:
        return spec.build(d)
    except _NeedExact:
        pass
    # A float must be read from its exact text: the standard parser keeps it.
    try:
        d.tree, _, d.bare = _parse_slow(raw)
    except _BadJSON as e:  # pragma: no cover - orjson accepted it and no key repeats
        raise InputRejected(INVALID_JSON, e.detail, e.field, cause_id=spec.invalid_cause(d)) from None
    d.nonfinite = None
    return spec.build(d)


# --------------------------------------------------------------------------- envelopes


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


# Compile the input validators at import: a broken schema fails fast, not on traffic.
for _name in ("fills", "mark-prices", "collateral", "account-snapshots"):
    _compiled(_name, "plain")
for _kind_name in ("instrument", "asset"):
    _compiled(f"risk-params#/definitions/{_kind_name}", "plain")
del _name, _kind_name
