"""Raw message bytes -> a JSON tree, with the checks orjson does not make.

orjson is the hot path; it keeps the last of duplicate keys silently, so duplicates are
ruled out by counting key occurrences in the raw bytes (see the package docstring). The
standard library parser is the slow path: it reports duplicate keys, bare NaN/Infinity,
lone surrogates, and keeps the exact text of every number (:class:`_NumText`).
:func:`_show` renders a parsed value for the sentences of dead letters.
"""
from __future__ import annotations

import json
import re
from typing import Any

import orjson

#: Deepest nesting of objects/arrays accepted in a value (the top-level object is 1).
MAX_DEPTH = 32

# A key occurrence: closing quote, optional JSON whitespace, colon.
_KEY_COLON = re.compile(rb'"[ \t\n\r]*:')
_QUOTE_SPACE = re.compile(rb'"[ \t\n\r]')
_SURROGATE_ESCAPE = re.compile(r"\\u[dD][89a-fA-F]")
_SURROGATE = re.compile("[\ud800-\udfff]")

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

