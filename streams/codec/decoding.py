"""One input message being decoded: the value rules the JSON Schemas cannot express.

A decimal sent as a JSON number must be exact as a double (at most 15 significant digits,
18 after the point); a float is judged by its text, which the fast path only has when
``repr(float)`` stands in the raw bytes (otherwise :class:`_NeedExact` asks for the slow
parse). Non-finite decimals are recorded and reported after the schema check
(``non_finite_number``); the message key is checked last (``key_mismatch``).
"""
from __future__ import annotations

import re
from decimal import Decimal, InvalidOperation
from typing import TYPE_CHECKING, Any

import fastjsonschema

from ..margin.errors import KEY_MISMATCH, NON_FINITE_NUMBER, SCHEMA_VIOLATION, InputRejected
from .parsing import _INF, _NINF, _NumText, _show
from .raw import decode_key
from .schemas import _NONFINITE_PATTERN, _compiled, _explain

if TYPE_CHECKING:
    from .inputs import _Spec

MAX_SIGNIFICANT_DIGITS = 15
MAX_DECIMAL_PLACES = 18
_TS_LIMIT = 1 << 63
_NONFINITE_RE = re.compile(_NONFINITE_PATTERN.replace("$", r"\Z"))
# Bytes that may precede / follow a JSON number token.
_NUM_BEFORE = frozenset(b":,[ \t\n\r")
_NUM_AFTER = frozenset(b",]} \t\n\r")


def _is_nonfinite(v: Any) -> bool:
    if isinstance(v, float):
        return v != v or v in (_INF, _NINF)
    return isinstance(v, str) and _NONFINITE_RE.match(v) is not None


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


