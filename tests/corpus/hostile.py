"""Hostile input for every input topic: a fixed corpus and a hypothesis-driven generator.

``corpus()`` lists hand-written cases, one :class:`Case` each: the topic, the key and
value *bytes* (``None`` for no key / a tombstone), a name, and the outcome the contract
asks for (``applied``, ``duplicate``, ``stale``, or a dead-letter error code). Every
case uses its own account (or, for marks, its own symbol sequence, for risk-params
its own symbol/asset) so that its outcome does not depend on how the sequencer
interleaves the topics; cases that depend on each other (a duplicate after its
original, a stale tick after a newer one, a params conflict after the instrument)
are on one topic and one key, hence in one input partition, in order.

Categories, on every topic: invalid JSON and UTF-8 (truncated, not JSON, empty,
tombstone, not an object, bad bytes, overlong encodings, lone surrogates, BOM),
wrong types for each field, NaN / Infinity / huge exponents (bare and as strings),
missing required fields, duplicate keys (top level and nested), deep nesting (40 and
10,000 levels), ~900 KB messages (valid with a padding field: applied; and broken),
messages at the producer's size limit (too large to forward with the sequencer's header)
and a ~1 MB key, mismatched / missing / non-UTF-8 keys, unknown instruments and assets, negative and
zero quantities and prices, unknown extra fields (accepted), duplicates and stale
ticks.

``generated(n)`` draws ``n`` more with hypothesis (derandomized: the same list on
every run): valid messages of each topic mutated by field replacement / removal /
addition with hostile JSON values, byte flips, truncation, invalid UTF-8, duplicate
keys, deep nesting, exponent tokens and odd keys.

``python tests/corpus/hostile.py [N]`` prints the corpus (and N generated messages)
as ``marginwatch replay`` lines.
"""
from __future__ import annotations

import base64
import json
import sys
from dataclasses import dataclass

TS = 1_717_000_000_000
LARGE = 900 * 1024  # a message far larger than normal (the broker takes up to ~1 MiB)
SYMBOL = "BTCUSDT"  # in the start-up risk-params (streams/data/risk_params.jsonl)
DECIMAL_FIELDS = {
    "fills": ("qty", "price", "fee"),
    "mark-prices": ("mark_price",),
    "collateral": ("amount",),
    "account-snapshots": (),
    "risk-params": ("contract_size", "qty_step"),
}
COMPACTED = ("risk-params",)
APPLIED, DUPLICATE, STALE = "applied", "duplicate", "stale"
#: generated messages with unknown extra fields only: applied, or a duplicate / stale tick of
#: an earlier draw with the same ids (unknown fields are not part of the content)
ACCEPTED = "accepted"


@dataclass(frozen=True)
class Case:
    topic: str
    name: str
    key: bytes | None
    value: bytes | None
    expect: str | None  # outcome or dead-letter code; None: not fixed by the corpus

    def replay_line(self) -> bytes:
        env: dict = {"topic": self.topic, "case": self.name}
        if self.key is not None:
            try:
                env["key"] = self.key.decode("utf-8")
            except UnicodeDecodeError:
                env["key_b64"] = base64.b64encode(self.key).decode()
        value = self.value or b""
        try:
            env["value"] = value.decode("utf-8")
        except UnicodeDecodeError:
            env["value_b64"] = base64.b64encode(value).decode()
        if self.expect:
            env["expect"] = self.expect
        return json.dumps(env, ensure_ascii=False).encode("utf-8", "surrogatepass")


def _dump(obj) -> bytes:
    return json.dumps(obj, ensure_ascii=False, allow_nan=True).encode("utf-8", "surrogatepass")


def key_of(topic: str, value: dict) -> str:
    if topic == "mark-prices":
        return value["symbol"]
    if topic == "risk-params":
        return f"asset:{value['asset']}" if value.get("type") == "asset" else value["symbol"]
    return value["account_id"]


class _Bases:
    """Valid payloads of each topic with fresh ids (a new account / tick each time)."""

    def __init__(self, tag: str) -> None:
        self.tag = tag
        self.n = 0
        self.seq = 1000

    def __call__(self, topic: str, n: int | None = None) -> dict:
        """The next valid payload of ``topic`` (or the ``n``-th one: no state changes)."""
        if n is None:
            self.n += 1
            if topic == "mark-prices":
                self.seq += 1
            return self.make(topic, self.n, self.seq)
        return self.make(topic, n, 1000 + n)

    def make(self, topic: str, n: int, seq: int) -> dict:
        acct = f"{self.tag}-{topic[:4]}-{n}"
        if topic == "fills":
            return {"fill_id": f"f-{n}", "account_id": acct, "symbol": SYMBOL, "side": "buy", "qty": "0.01",
                    "price": "60000", "fee": "0.5", "fee_asset": "USDT", "margin_mode": "cross", "ts": TS + n}
        if topic == "mark-prices":
            return {"symbol": SYMBOL, "mark_price": "60000.5", "ts": TS + seq, "seq": seq}
        if topic == "collateral":
            return {"event_id": f"c-{n}", "account_id": acct, "asset": "USDT", "amount": "1000",
                    "reason": "deposit", "ts": TS + n}
        if topic == "account-snapshots":
            return {"snapshot_id": f"s-{n}", "account_id": acct, "ts": TS + n,
                    "balances": {"USDT": "5000"},
                    "positions": [{"symbol": SYMBOL, "qty": "-0.02", "entry_price": "61000", "margin_mode": "cross",
                                   "isolated_margin": "0"}]}
        if topic == "risk-params":
            return {"type": "instrument", "symbol": f"{self.tag}{n}USDT", "kind": "linear",
                    "settle_asset": "USDT", "contract_size": "1", "qty_step": "0.001", "ts": TS + n,
                    "tiers": [{"max_notional": "10000", "mmr": "0.01"}, {"max_notional": None, "mmr": "0.02"}]}
        raise KeyError(topic)


def _with(base: dict, **changes) -> dict:
    out = dict(base)
    out.update(changes)
    return out


def _without(base: dict, field: str) -> dict:
    return {k: v for k, v in base.items() if k != field}


REQUIRED = {
    "fills": ("fill_id", "account_id", "symbol", "side", "qty", "price", "ts"),
    "mark-prices": ("symbol", "mark_price", "ts"),
    "collateral": ("event_id", "account_id", "asset", "amount", "reason", "ts"),
    "account-snapshots": ("snapshot_id", "account_id", "ts", "balances", "positions"),
    "risk-params": ("type", "symbol", "kind", "settle_asset", "contract_size", "tiers"),
}
# A value of the wrong type for each field (by what the field is).
WRONG_TYPE = {
    "fill_id": 1001, "account_id": ["A1"], "symbol": {"s": 1}, "side": True, "qty": {"v": "1"}, "price": [60000],
    "fee": False, "fee_asset": 7, "margin_mode": 0, "ts": "1717000000000", "mark_price": None, "seq": "12",
    "event_id": 5.5, "asset": None, "amount": [], "reason": 1, "snapshot_id": {}, "balances": ["USDT", "1"],
    "positions": {"symbol": SYMBOL}, "type": 1, "kind": None, "settle_asset": 3, "contract_size": True,
    "qty_step": [], "tiers": "flat",
}
# Raw tokens that json.dumps cannot write, spliced in for a placeholder string.
NONFINITE_TOKENS = ("NaN", "Infinity", "-Infinity", "1e400", "-1e400", "1e999999999", "-1E+999999999")
NONFINITE_STRINGS = ("NaN", "Infinity", "-Infinity", "inf", "nan", "sNaN")
_PH = "\u2063RAW\u2063"


def _splice(obj: dict, field: str, token: str) -> bytes:
    text = json.dumps(_with(obj, **{field: _PH}), ensure_ascii=False)
    return text.replace(json.dumps(_PH, ensure_ascii=False), token).encode("utf-8")


def corpus() -> list[Case]:
    """The hand-written cases, in production order."""
    base = _Bases("H")
    cases: list[Case] = []

    def add(topic: str, name: str, value: dict | bytes | None, expect: str | None, key: bytes | None | str = "auto",
            source: dict | None = None) -> None:
        if key == "auto":
            src = source if source is not None else value
            key = key_of(topic, src).encode() if isinstance(src, dict) else None
        raw = _dump(value) if isinstance(value, dict) else value
        cases.append(Case(topic, name, key if not isinstance(key, str) else key.encode(), raw, expect))

    for topic in ("fills", "mark-prices", "collateral", "account-snapshots", "risk-params"):
        b = base(topic)
        add(topic, "valid", b, APPLIED)
        b = base(topic)
        add(topic, "unknown_extra_fields", _with(b, x_extra=1, x_nested={"a": [1, {"b": None}]}, x_nan="NaN"), APPLIED)
        b = base(topic)
        add(topic, "large_valid_padding_900kb", _with(b, pad="x" * LARGE), APPLIED)
        b = base(topic)
        broken = _dump(_with(b, pad="y" * LARGE))[:-3]
        add(topic, "large_unterminated_900kb", broken, "invalid_json", source=b)
        b = base(topic)
        raw = _dump(b)
        k = key_of(topic, b).encode()
        add(topic, "truncated", raw[: len(raw) // 2], "invalid_json", key=k)
        add(topic, "not_json", b"margin call me maybe", "invalid_json", key=k)
        add(topic, "empty_value", b"", "invalid_json", key=k)
        add(topic, "tombstone", None, "invalid_json", key=k)
        add(topic, "json_array", b"[" + raw + b"]", "invalid_json", key=k)
        add(topic, "json_string", json.dumps(raw.decode()).encode(), "invalid_json", key=k)
        add(topic, "json_null", b"null", "invalid_json", key=k)
        add(topic, "invalid_utf8_byte", raw.replace(b'"', b'"\xff', 1), "invalid_json", key=k)
        add(topic, "overlong_utf8", raw.replace(b'"', b'"\xc0\xaf', 1), "invalid_json", key=k)
        add(topic, "encoded_surrogate_utf8", raw.replace(b'"', b'"\xed\xa0\x80', 1), "invalid_json", key=k)
        add(topic, "lone_surrogate_escape", raw.replace(b'"', b'"\\ud800', 1), "invalid_json", key=k)
        add(topic, "utf8_bom", b"\xef\xbb\xbf" + raw, None, key=k)
        add(topic, "trailing_garbage", raw + b" }", "invalid_json", key=k)
        add(topic, "two_objects", raw + raw, "invalid_json", key=k)
        first = next(iter(b))
        add(topic, "duplicate_key_same_value", raw[:-1] + b", " + _dump({first: b[first]})[1:], "invalid_json", key=k)
        add(topic, "duplicate_key_other_value", raw[:-1] + b', ' + _dump({first: "other"})[1:], "invalid_json", key=k)
        add(topic, "duplicate_key_nested", raw[:-1] + b', "x": {"a": 1, "a": 2}}', "invalid_json", key=k)
        add(topic, "deep_nesting_40", raw[:-1] + b', "x": ' + b"[" * 40 + b"]" * 40 + b"}", "invalid_json", key=k)
        add(topic, "deep_nesting_10000", raw[:-1] + b', "x": ' + b'{"a":' * 10000 + b"1" + b"}" * 10000 + b"}",
            "invalid_json", key=k)
        add(topic, "deep_top_level", b"[" * 10000 + b"]" * 10000, "invalid_json", key=k)
        b = base(topic)
        add(topic, "nested_extra_20_levels", raw_nested(b, 20), APPLIED, key=key_of(topic, b).encode())
        for field in REQUIRED[topic]:
            b = base(topic)
            add(topic, f"missing_{field}", _without(b, field), "schema_violation", source=b)
        for field in b:
            if field in WRONG_TYPE and field != "type":
                b = base(topic)
                add(topic, f"wrong_type_{field}", _with(b, **{field: WRONG_TYPE[field]}), None, source=b)
        for field in DECIMAL_FIELDS[topic]:
            for token in NONFINITE_TOKENS:
                b = base(topic)
                add(topic, f"bare_{token}_{field}", _splice(b, field, token), "non_finite_number",
                    key=key_of(topic, b).encode())
            for text in NONFINITE_STRINGS:
                b = base(topic)
                add(topic, f"string_{text}_{field}", _with(b, **{field: text}), "non_finite_number", source=b)
            for name, value in (("exponent_string", "1e5"), ("empty_string", ""), ("negative", "-1"), ("zero", "0"),
                                ("too_many_digits", "1.0000000000000000001"), ("exponent_number_1e18", 1e18)):
                b = base(topic)
                add(topic, f"{name}_{field}", _with(b, **{field: value}), None, source=b)
        b = base(topic)
        add(topic, "ts_negative", _with(b, ts=-1), "schema_violation", source=b)
        b = base(topic)
        add(topic, "ts_float", _splice(b, "ts", "1717000000000.5"), "schema_violation", key=key_of(topic, b).encode())
        b = base(topic)
        add(topic, "ts_2_pow_64", _splice(b, "ts", str(2**64)), "schema_violation", key=key_of(topic, b).encode())
        # keys
        b = base(topic)
        add(topic, "key_mismatch", b, "key_mismatch", key=b"someone-else")
        if topic not in COMPACTED:  # the broker refuses keyless records on a compacted topic
            b = base(topic)
            add(topic, "key_missing", b, "key_mismatch", key=None)
        b = base(topic)
        add(topic, "key_not_utf8", b, "key_mismatch", key=b"\xff\xfe\x00k")
        b = base(topic)
        add(topic, "key_empty", b, "key_mismatch", key=b"")

    # at the size limit: fine for a producer, too large once the sequencer adds its header
    for topic in ("fills", "mark-prices", "risk-params"):
        b = base(topic)
        k = key_of(topic, b).encode()
        add(topic, "at_producer_size_limit", at_limit(k, b), "invalid_json", key=k)
    b = base("fills")
    add("fills", "huge_key", b, "invalid_json", key=huge_key(_dump(b)))

    # topic-specific
    b = base("fills")
    add("fills", "unknown_instrument", _with(b, symbol="NOPEUSDT"), "unknown_instrument")
    b = base("fills")
    add("fills", "unknown_fee_asset", _with(b, fee_asset="NOPECOIN"), "unknown_asset")
    b = base("fills")
    add("fills", "side_hold", _with(b, side="hold"), "schema_violation")
    b = base("fills")
    add("fills", "margin_mode_both", _with(b, margin_mode="both"), "schema_violation")
    b = base("fills")
    add("fills", "price_negative", _with(b, price="-60000"), "schema_violation")
    b = base("fills")
    add("fills", "qty_negative_number", _with(b, qty=-0.5), "schema_violation")
    b = base("fills")
    add("fills", "qty_16_significant_digits", _splice(b, "qty", "0.1234567890123456"), "schema_violation",
        key=key_of("fills", b).encode())
    b = base("fills")
    add("fills", "original", b, APPLIED)
    add("fills", "exact_repeat", b, DUPLICATE)
    add("fills", "repeat_other_content", _with(b, qty="0.02"), "conflicting_duplicate")
    add("fills", "repeat_with_extra_field", _with(b, x_extra="ignored"), None)

    b = base("mark-prices")
    add("mark-prices", "newer_tick", _with(b, seq=10**9, ts=TS + 10**9), APPLIED)
    add("mark-prices", "older_seq_stale", _with(b, seq=10**9 - 1, ts=TS + 10**9 + 5), STALE)
    add("mark-prices", "same_seq_stale", _with(b, seq=10**9, mark_price="1"), STALE)
    add("mark-prices", "unknown_symbol", {"symbol": "NOPEUSDT", "mark_price": "1", "ts": TS, "seq": 1}, None)
    add("mark-prices", "mark_zero", {"symbol": "ZEROUSDT", "mark_price": "0", "ts": TS}, "schema_violation")

    b = base("collateral")
    add("collateral", "unknown_asset", _with(b, asset="NOPECOIN"), "unknown_asset")
    b = base("collateral")
    add("collateral", "reason_theft", _with(b, reason="theft"), "schema_violation")
    b = base("collateral")
    add("collateral", "isolated_margin_without_symbol", _with(b, reason="isolated_margin"), "schema_violation")
    b = base("collateral")
    add("collateral", "withdrawal_negative_amount", _with(b, amount="-250.5", reason="withdrawal"), APPLIED)
    b = base("collateral")
    add("collateral", "original", b, APPLIED)
    add("collateral", "exact_repeat", b, DUPLICATE)
    add("collateral", "repeat_other_content", _with(b, amount="1"), "conflicting_duplicate")

    b = base("account-snapshots")
    pos = b["positions"][0]
    add("account-snapshots", "two_positions_one_symbol", _with(b, positions=[pos, pos]), "schema_violation")
    b = base("account-snapshots")
    add("account-snapshots", "position_qty_nan", _with(b, positions=[_with(pos, qty="NaN")]), "non_finite_number")
    b = base("account-snapshots")
    add("account-snapshots", "position_unknown_symbol", _with(b, positions=[_with(pos, symbol="NOPEUSDT")]),
        "unknown_instrument")
    b = base("account-snapshots")
    add("account-snapshots", "balance_unknown_asset", _with(b, balances={"NOPECOIN": "1"}), "unknown_asset")
    b = base("account-snapshots")
    add("account-snapshots", "balance_infinity", _with(b, balances={"USDT": "Infinity"}), "non_finite_number")
    b = base("account-snapshots")
    add("account-snapshots", "isolated_margin_negative",
        _with(b, positions=[_with(pos, margin_mode="isolated", isolated_margin="-5")]), "schema_violation")
    b = base("account-snapshots")
    add("account-snapshots", "positions_5000", _with(b, positions=[_with(pos, symbol=f"S{i}") for i in range(5000)]),
        None)

    b = base("risk-params")
    add("risk-params", "type_bogus", _with(b, type="bogus"), "schema_violation")
    b = base("risk-params")
    add("risk-params", "tiers_descending", _with(b, tiers=[{"max_notional": "10000", "mmr": "0.01"},
                                                            {"max_notional": "5000", "mmr": "0.02"},
                                                            {"max_notional": None, "mmr": "0.03"}]), "schema_violation")
    b = base("risk-params")
    add("risk-params", "tiers_empty", _with(b, tiers=[]), "schema_violation")
    b = base("risk-params")
    add("risk-params", "original_instrument", b, APPLIED)
    add("risk-params", "kind_changed", _with(b, kind="inverse"), "params_conflict")
    add("risk-params", "asset_haircut_above_one",
        {"type": "asset", "asset": "HCOIN", "price_symbol": "HCOINUSDT", "haircut": "1.5"}, "schema_violation",
        key=b"asset:HCOIN")
    add("risk-params", "asset_key_mismatch",
        {"type": "asset", "asset": "HCOIN", "price_symbol": "HCOINUSDT", "haircut": "0.1"}, "key_mismatch",
        key=b"asset:OTHER")
    add("risk-params", "asset_valid", {"type": "asset", "asset": "HCOIN2", "price_symbol": "HCOIN2USDT",
                                       "haircut": "0.1"}, APPLIED, key=b"asset:HCOIN2")
    return cases


PRODUCER_LIMIT = 1024 * 1024  # the producer's max_request_size (aiokafka's default)


def at_limit(key: bytes, obj: dict, target: int = PRODUCER_LIMIT - 6) -> bytes:
    """``obj`` with a ``pad`` field making the record ``target`` bytes as a producer counts it
    (a record alone in its batch, no headers)."""
    from aiokafka.record.default_records import DefaultRecordBatchBuilder

    def size(n: int) -> int:
        return DefaultRecordBatchBuilder.estimate_size_in_bytes(key, _dump(_with(obj, pad="p" * n)), [])

    n = target - size(0)
    while size(n) > target:
        n -= 1
    return _dump(_with(obj, pad="p" * n))


def huge_key(value: bytes, target: int = PRODUCER_LIMIT - 6) -> bytes:
    """A key making the record ``value`` ``target`` bytes as a producer counts it."""
    from aiokafka.record.default_records import DefaultRecordBatchBuilder

    n = target - DefaultRecordBatchBuilder.estimate_size_in_bytes(b"", value, [])
    while DefaultRecordBatchBuilder.estimate_size_in_bytes(b"K" * n, value, []) > target:
        n -= 1
    return b"K" * n


def raw_nested(b: dict, depth: int) -> bytes:
    raw = _dump(b)
    return raw[:-1] + b', "x_nested": ' + b'{"a":' * depth + b"1" + b"}" * depth + b"}"


# --------------------------------------------------------------------------- generator


def generated(n: int = 200) -> list[Case]:
    """``n`` hostile messages drawn by hypothesis (derandomized: the same list on every run)."""
    from hypothesis import HealthCheck, Phase, given, settings
    from hypothesis import strategies as st

    topics = ("fills", "mark-prices", "collateral", "account-snapshots", "risk-params")
    tokens = list(NONFINITE_TOKENS) + ["1.5e3", "-0", "0.10000000000000001", "1" + "0" * 400, "18446744073709551616"]
    placeholder = "\u2063T{}\u2063"
    scalars = st.one_of(
        st.none(), st.booleans(), st.integers(min_value=-(2**70), max_value=2**70),
        st.floats(allow_nan=True, allow_infinity=True),
        st.sampled_from(list(NONFINITE_STRINGS) + ["", " ", "1e5", "-1", "0", "buy", "cross", "isolated", "USDT",
                                                   SYMBOL, "x" * 300, '":', "\u0000", "１"]),
        st.text(max_size=10),
        st.sampled_from(range(len(tokens))).map(placeholder.format),
    )
    values = st.recursive(scalars, lambda c: st.one_of(st.lists(c, max_size=3),
                                                       st.dictionaries(st.text(max_size=5), c, max_size=3)),
                          max_leaves=8)

    def serialise(obj) -> bytes:
        text = json.dumps(obj, ensure_ascii=False, allow_nan=True)
        for i, t in enumerate(tokens):
            text = text.replace(json.dumps(placeholder.format(i), ensure_ascii=False), t)
        return text.encode("utf-8", "surrogatepass")

    bases = _Bases("G")
    out: list[Case] = []

    @st.composite
    def message(draw):
        topic = draw(st.sampled_from(topics))
        valid = bases(topic, draw(st.integers(0, 10**6)))
        right_key = key_of(topic, valid).encode()
        raw = _dump(valid)
        kind = draw(st.sampled_from(["mutate", "mutate", "mutate", "bytes", "utf8", "truncate", "flip", "duplicate",
                                     "deep", "token", "extra"]))
        expect = None
        if kind == "mutate":
            obj = json.loads(raw)
            for _ in range(draw(st.integers(1, 3))):
                action = draw(st.sampled_from(["replace", "replace", "delete", "add"]))
                if action == "add" or not obj:
                    obj[draw(st.text(max_size=6))] = draw(values)
                else:
                    field = draw(st.sampled_from(sorted(obj)))
                    if action == "delete":
                        del obj[field]
                    else:
                        obj[field] = draw(values)
            value = serialise(obj)
        elif kind == "bytes":
            value = draw(st.binary(max_size=200))
        elif kind == "utf8":
            i = draw(st.integers(0, len(raw)))
            value = raw[:i] + draw(st.sampled_from([b"\xff", b"\xc3", b"\xed\xa0\x80", b"\xf4\x90\x80\x80",
                                                     b"\xc0\xaf", b"\x80"])) + raw[i:]
        elif kind == "truncate":
            value = raw[: draw(st.integers(0, len(raw) - 1))]
        elif kind == "flip":
            data = bytearray(raw)
            for _ in range(draw(st.integers(1, 4))):
                data[draw(st.integers(0, len(data) - 1))] = draw(st.integers(0, 255))
            value = bytes(data)
        elif kind == "duplicate":
            field = draw(st.sampled_from(sorted(valid)))
            value = raw[:-1] + b", " + _dump({field: draw(st.one_of(st.just(valid[field]), st.text(max_size=5)))})[1:]
            expect = "invalid_json"
        elif kind == "deep":
            depth = draw(st.integers(33, 5000))
            opener, closer = draw(st.sampled_from([(b"[", b"]"), (b'{"a":', b"}")]))
            value = raw[:-1] + b', "deep": ' + opener * depth + b"1" + closer * depth + b"}"
            expect = "invalid_json"
        elif kind == "token":
            field = draw(st.sampled_from(sorted(valid)))
            value = _splice(valid, field, draw(st.sampled_from(tokens)))
        else:  # extra: unknown fields only
            obj = dict(valid)
            for _ in range(draw(st.integers(1, 3))):
                name = "x_" + draw(st.text(min_size=1, max_size=6))
                obj[name] = draw(st.one_of(st.none(), st.integers(-(2**50), 2**50), st.text(max_size=20),
                                           st.lists(st.integers(), max_size=3)))
            value = _dump(obj)
            expect = ACCEPTED
        key = draw(st.one_of(st.just(right_key), st.just(right_key), st.just(right_key), st.none(),
                             st.binary(max_size=10)))
        if key is None and topic in COMPACTED:
            key = b""  # the broker refuses keyless records on a compacted topic
        if key != right_key and expect == ACCEPTED:
            expect = "key_mismatch"
        return Case(topic, f"generated-{kind}", key, value, expect)

    @settings(max_examples=n, derandomize=True, database=None, phases=[Phase.generate], deadline=None,
              suppress_health_check=list(HealthCheck))
    @given(message())
    def collect(case: Case) -> None:
        out.append(case)

    collect()
    return out[:n]


if __name__ == "__main__":  # pragma: no cover
    n = int(sys.argv[1]) if len(sys.argv) > 1 else 0
    for case in corpus() + (generated(n) if n else []):
        sys.stdout.buffer.write(case.replay_line() + b"\n")
