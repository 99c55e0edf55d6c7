"""The JSON Schemas of ``schemas/``: loaded once, ``$ref`` s inlined, compiled with fastjsonschema.

Three variants of each schema: ``plain`` (as published), ``strict`` (every record object
closed: for testing what marginwatch itself emits) and ``lenient`` (every decimal type
also accepts a non-finite spelling: only to tell ``non_finite_number`` from
``schema_violation``). :func:`_explain` turns a validator's error into the field at fault
and a sentence, from the ``description`` phrases of ``schemas/common.schema.json``.
"""
from __future__ import annotations

import copy
from functools import lru_cache
from pathlib import Path
from typing import Any, Callable

import fastjsonschema
import orjson

from ..margin import events as ev
from .parsing import _show

SCHEMAS_DIR = Path(__file__).resolve().parents[2] / "schemas"

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

_DRAFT7 = "http://json-schema.org/draft-07/schema#"
_MAX_DOUBLE = 1.7976931348623157e308

# Non-finite spellings accepted as "a non-finite number" (not as a schema violation) in
# decimal fields: NaN, Infinity, -Infinity and the case/sign variants other languages
# print (inf, +Inf, nan, sNaN). ECMA-262 syntax, no flags: used inside JSON Schema.
_NONFINITE_PATTERN = "^[+-]?([Ii][Nn][Ff]([Ii][Nn][Ii][Tt][Yy])?|[Ss]?[Nn][Aa][Nn][0-9]*)$"

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


# --------------------------------------------------------------------------- error sentences

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


# Compile the input validators at import: a broken schema fails fast, not on traffic.
for _name in ("fills", "mark-prices", "collateral", "account-snapshots"):
    _compiled(_name, "plain")
for _kind_name in ("instrument", "asset"):
    _compiled(f"risk-params#/definitions/{_kind_name}", "plain")
del _name, _kind_name
