"""Hostile input on every topic: the codec returns an event or raises InputRejected.

Never any other exception, never a hang; a rejection always makes a dead-letter that
validates (strictly) against the dead-letter schema and serialises to <= 70 KiB; an
accepted message is one the published JSON Schema accepts too; decoding is
deterministic.
"""
from __future__ import annotations

import json
import os
import random
from decimal import Decimal
from pathlib import Path

import jsonschema
import orjson
import pytest
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st
from referencing import Registry, Resource
from referencing.jsonschema import DRAFT7

import streams
from streams import codec
from streams.codec import INPUT_TOPICS, decode
from streams.deadletter import build_dead_letter
from streams.margin import events as ev
from streams.margin.errors import INVALID_JSON, KEY_MISMATCH, NON_FINITE_NUMBER, SCHEMA_VIOLATION, InputRejected

DECODE_CODES = {INVALID_JSON, SCHEMA_VIOLATION, NON_FINITE_NUMBER, KEY_MISMATCH}
MAX_DEAD_LETTER = 70 * 1024
DL_STRICT = codec.schema_validator("dead-letters", strict=True)
# Deterministic under CI (a submission must not flake); MW_HOSTILE_EXAMPLES=5000 for a soak.
SETTINGS = settings(
    max_examples=int(os.environ.get("MW_HOSTILE_EXAMPLES", "300")),
    deadline=None,
    derandomize=bool(os.environ.get("CI")),
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)

_FILES = sorted(p.name for p in codec.SCHEMAS_DIR.glob("*.schema.json"))
_REGISTRY = Registry().with_resources(
    (n, Resource.from_contents(json.loads((codec.SCHEMAS_DIR / n).read_text()), default_specification=DRAFT7))
    for n in _FILES
)
PUBLISHED = {
    t: jsonschema.Draft7Validator(json.loads((codec.SCHEMAS_DIR / codec.SCHEMA_FILES[t]).read_text()), registry=_REGISTRY)
    for t in INPUT_TOPICS
}


def _key_of(topic: str, value: dict) -> str:
    if topic == "mark-prices":
        return value["symbol"]
    if topic == "risk-params":
        return value["symbol"] if value["type"] == "instrument" else f"asset:{value['asset']}"
    return value["account_id"]


def _bases() -> dict[str, list[dict]]:
    out: dict[str, list[dict]] = {}
    for topic in INPUT_TOPICS:
        out[topic] = list(codec.load_schema(topic)["examples"])
    seed = Path(streams.__file__).parent / "data" / "risk_params.jsonl"
    out["risk-params"] += [json.loads(line)["value"] for line in seed.read_text().splitlines() if line.strip()][:3]
    return out


BASES = _bases()
TOPICS = st.sampled_from(INPUT_TOPICS)

# Raw number / constant tokens that json.dumps cannot write: spliced in by placeholder.
RAW_TOKENS = [
    "NaN", "Infinity", "-Infinity", "1e400", "-1e400", "1e-400", "1e999999999", "-1E+999999999",
    "123456789012345678901234567890", "1" + "0" * 400, "9" * 5000, "0.10000000000000001", "1.234567890123456",
    "1.5e3", "-0", "-0.0", "0e-400", "1e-19", "18446744073709551616", "9223372036854775808", "1.0", "2E2",
]
STRINGS = [
    "NaN", "Infinity", "-Infinity", "inf", "+Inf", "-nan", "sNaN", "nan123", "1e5", "-0", "-0.00", "", " ", "0",
    "0.0000000000000000001", "0.000000000000000001", "+1", "01", ".5", "1.", "1_0", "１", "٣", "\u0000", "\ud800",
    "buy", "sell", "cross", "isolated", "linear", "inverse", "instrument", "asset", "isolated_margin", "A1",
    "BTCUSDT", "asset:BTC", "x" * 300, '":', '\\"qty\\":',
]
PLACEHOLDER = "\u2063RAW{}\u2063"

scalars = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(min_value=-(2**70), max_value=2**70),
    st.floats(allow_nan=True, allow_infinity=True),
    st.sampled_from(STRINGS),
    st.text(max_size=12),
    st.sampled_from(range(len(RAW_TOKENS))).map(lambda i: PLACEHOLDER.format(i)),
)
json_values = st.recursive(
    scalars,
    lambda children: st.one_of(st.lists(children, max_size=4), st.dictionaries(st.text(max_size=6), children, max_size=4)),
    max_leaves=12,
)


def _serialise(obj) -> bytes:
    text = json.dumps(obj, allow_nan=True, ensure_ascii=False)
    for i, token in enumerate(RAW_TOKENS):
        text = text.replace(json.dumps(PLACEHOLDER.format(i), ensure_ascii=False), token)
    return text.encode("utf-8", "surrogatepass")


def _paths(obj, prefix=()):
    if isinstance(obj, dict):
        for k, v in obj.items():
            yield prefix + (k,)
            yield from _paths(v, prefix + (k,))
    elif isinstance(obj, list):
        for i, v in enumerate(obj):
            yield prefix + (i,)
            yield from _paths(v, prefix + (i,))


def _containers(obj, prefix=()):
    if isinstance(obj, dict):
        yield prefix
        for k, v in obj.items():
            yield from _containers(v, prefix + (k,))
    elif isinstance(obj, list):
        for i, v in enumerate(obj):
            yield from _containers(v, prefix + (i,))


def _get(obj, path):
    for p in path:
        obj = obj[p]
    return obj


@st.composite
def mutated_payload(draw, topic: str) -> tuple[bytes, str]:
    """A valid payload of ``topic`` with a few fields replaced, removed or added."""
    base = json.loads(json.dumps(draw(st.sampled_from(BASES[topic]))))
    key = _key_of(topic, base)
    for _ in range(draw(st.integers(min_value=1, max_value=3))):
        paths = list(_paths(base))
        action = draw(st.sampled_from(["replace", "replace", "delete", "add"]))
        if action == "add" or not paths:
            where = _get(base, draw(st.sampled_from(list(_containers(base)))))
            where[draw(st.text(max_size=8))] = draw(json_values)
            continue
        path = draw(st.sampled_from(paths))
        parent = _get(base, path[:-1])
        if action == "delete":
            del parent[path[-1]]
        else:
            parent[path[-1]] = draw(json_values)
    return _serialise(base), key


@st.composite
def hostile_message(draw) -> tuple[str, bytes | None, bytes]:
    topic = draw(TOPICS)
    valid = json.loads(json.dumps(draw(st.sampled_from(BASES[topic]))))
    raw_valid = json.dumps(valid).encode()
    right_key = _key_of(topic, valid)
    kind = draw(st.sampled_from(["random", "invalid_utf8", "truncated", "byteflip", "duplicate", "mutated", "deep", "exponent"]))
    if kind == "random":
        value = draw(st.binary(max_size=300))
    elif kind == "invalid_utf8":
        i = draw(st.integers(min_value=0, max_value=len(raw_valid)))
        bad = draw(st.sampled_from([b"\xff", b"\xc3", b"\xed\xa0\x80", b"\xf4\x90\x80\x80", b"\xc0\xaf", b"\x80"]))
        value = raw_valid[:i] + bad + raw_valid[i:]
    elif kind == "truncated":
        value = raw_valid[: draw(st.integers(min_value=0, max_value=len(raw_valid) - 1))]
    elif kind == "byteflip":
        data = bytearray(raw_valid)
        for _ in range(draw(st.integers(min_value=1, max_value=4))):
            i = draw(st.integers(min_value=0, max_value=len(data) - 1))
            data[i] = draw(st.integers(min_value=0, max_value=255))
        value = bytes(data)
    elif kind == "duplicate":
        field = draw(st.sampled_from(sorted(valid)))
        dup = json.dumps(draw(st.one_of(st.just(valid[field]), json_values.filter(lambda v: PLACEHOLDER[:1] not in str(v)))), allow_nan=True)
        value = raw_valid[:-1] + f', {json.dumps(field)}: {dup}}}'.encode()
    elif kind == "mutated":
        value, right_key = draw(mutated_payload(topic))
    elif kind == "deep":
        depth = draw(st.integers(min_value=20, max_value=3000))
        opener, closer = draw(st.sampled_from([("[", "]"), ('{"a":', "}")]))
        nested = (opener * depth + "1" + closer * depth).encode()
        value = raw_valid[:-1] + b', "deep": ' + nested + b"}"
    else:  # exponent
        field = draw(st.sampled_from(sorted(k for k, v in valid.items() if not isinstance(v, (dict, list)))))
        token = draw(st.sampled_from(["1e400", "-1e400", "1e-400", "9e999999999", "1E+308", "1.7976931348623157e308", "1.8e308", "5e-324", "1e18", "1e-18"]))
        value = raw_valid.replace(f"{json.dumps(field)}: {json.dumps(valid[field])}".encode(), f"{json.dumps(field)}: {token}".encode())
    key = draw(
        st.one_of(
            st.just(right_key.encode("utf-8", "surrogatepass")),
            st.just(right_key.encode("utf-8", "surrogatepass")),
            st.none(),
            st.binary(max_size=12),
        )
    )
    return topic, key, value


def _loads(value: bytes):
    """The standard parser, as the codec's exact path configures it (no int digit limit)."""
    return json.loads(value, parse_int=lambda s: int(s) if len(s) <= 300 else float(s))


def check(topic: str, key: bytes | None, value: bytes):
    """Decode and check; returns the event, or None when the message was rejected."""
    light = len(value) <= 256 * 1024  # the slow cross-checks only on ordinary sizes
    try:
        event = decode(topic, key, value)
    except InputRejected as err:
        assert err.code in DECODE_CODES, err
        assert isinstance(err.detail, str) and err.detail
        assert err.field is None or isinstance(err.field, str)
        assert err.account_id is None or (isinstance(err.account_id, str) and err.account_id)
        assert err.cause_id is None or (isinstance(err.cause_id, str) and err.cause_id)
        assert err.ts is None or (type(err.ts) is int and 0 <= err.ts < 2**63)
        dl = build_dead_letter(source_topic=topic, partition=0, offset=1, key=key, value=value, error=err,
                               fallback_ts=1, decided_at=2)
        DL_STRICT(dl)
        assert len(orjson.dumps(dl)) <= MAX_DEAD_LETTER
        if light:
            with pytest.raises(InputRejected) as again:  # deterministic
                decode(topic, key, value)
            assert (again.value.code, again.value.field, again.value.detail) == (err.code, err.field, err.detail)
        return None
    assert event.topic == topic
    _check_event(event)
    if light:
        assert decode(topic, key, value) == event  # deterministic
        # Whatever the codec accepts, the published schema accepts too.
        errors = list(PUBLISHED[topic].iter_errors(_loads(value)))
        assert not errors, errors[0].message
    return event


def _finite(*values) -> bool:
    return all(v is None or (isinstance(v, Decimal) and v.is_finite()) for v in values)


def _check_event(e) -> None:
    if isinstance(e, ev.Fill):
        assert e.qty > 0 and e.price > 0 and _finite(e.fee) and type(e.ts) is int
        assert e.side in ("buy", "sell") and e.margin_mode in ("cross", "isolated")
    elif isinstance(e, ev.MarkTick):
        assert e.mark_price > 0 and (e.seq is None or type(e.seq) is int)
    elif isinstance(e, ev.CollateralChange):
        assert _finite(e.amount) and (e.reason != "isolated_margin" or e.symbol)
    elif isinstance(e, ev.AccountSnapshot):
        assert all(_finite(v) for _, v in e.balances)
        assert len({p.symbol for p in e.positions}) == len(e.positions)
        for p in e.positions:
            assert _finite(p.qty) and p.isolated_margin >= 0 and (p.qty == 0 or p.entry_price > 0)
    elif isinstance(e, ev.InstrumentParams):
        assert e.contract_size > 0 and e.tiers and e.tiers[-1].max_notional is None
        bounds = [t.max_notional for t in e.tiers[:-1]]
        assert all(b is not None for b in bounds) and bounds == sorted(set(bounds))
        assert e.cause_id.startswith(f"{e.symbol}@")
    elif isinstance(e, ev.AssetParams):
        assert 0 <= e.haircut < 1 and e.cause_id.startswith(f"asset:{e.asset}@")
    else:  # pragma: no cover
        raise AssertionError(f"unexpected event {e!r}")


@SETTINGS
@given(hostile_message())
def test_hostile_messages(message) -> None:
    check(*message)


@SETTINGS
@given(TOPICS, st.binary(max_size=512), st.one_of(st.none(), st.binary(max_size=16)))
@example("fills", b"", None)
@example("risk-params", b"\xef\xbb\xbf{}", b"x")
@example("account-snapshots", b"{" * 5000, b"A1")
def test_random_bytes(topic, value, key) -> None:
    check(topic, key, value)


@SETTINGS
@given(TOPICS.flatmap(lambda t: st.tuples(st.just(t), mutated_payload(t))))
def test_wrong_types_per_field(args) -> None:
    topic, (value, key) = args
    check(topic, key.encode("utf-8", "surrogatepass"), value)


@SETTINGS
@given(TOPICS, json_values, st.binary(max_size=8))
def test_any_json_value(topic, obj, key) -> None:
    check(topic, key, _serialise(obj))


@pytest.mark.parametrize("topic", INPUT_TOPICS)
def test_deep_nesting_100000_levels(topic: str) -> None:
    base = json.dumps(BASES[topic][0]).encode()
    for value in (
        b"[" * 100_000 + b"]" * 100_000,
        b"[" * 100_000,
        b'{"a":' * 100_000 + b"1" + b"}" * 100_000,
        base[:-1] + b', "x": ' + b"[" * 100_000 + b"]" * 100_000 + b"}",
    ):
        with pytest.raises(InputRejected) as info:
            decode(topic, _key_of(topic, BASES[topic][0]).encode(), value)
        assert info.value.code == INVALID_JSON
        assert check(topic, b"k", value) is None


SIZE = 5 * 1024 * 1024


@pytest.fixture(scope="module")
def blobs() -> dict[str, bytes]:
    """5 MB JSON values, built once and spliced into each topic's message."""
    return {
        "string": b'"' + b"x" * SIZE + b'"',
        "escapes": json.dumps(["\u0001é"] * (SIZE // 12)).encode(),
        "keys": json.dumps({f"k{i}": i for i in range(SIZE // 16)}).encode(),
        "number": b"9" * SIZE,
        "exponent": b"1e" + b"9" * SIZE,
        "random": random.Random(5).randbytes(SIZE),
    }


@pytest.mark.parametrize("topic", INPUT_TOPICS)
def test_five_megabyte_messages(topic: str, blobs: dict[str, bytes]) -> None:
    valid = BASES[topic][0]
    key = _key_of(topic, valid).encode()
    head = json.dumps(valid).encode()[:-1]
    accepted = [head + b', "blob": ' + blobs[name] + b"}" for name in ("string", "escapes", "keys", "exponent")]
    rejected = [
        head + b', "blob": ' + blobs["string"] + b', "blob": 1}',   # duplicate key at the end
        blobs["random"],                                            # random bytes
        b'{"qty": ' + blobs["string"].replace(b"x", b"9") + b"}",   # a 5 MB decimal string
        b'{"qty": ' + blobs["number"] + b"}",                       # a 5 MB number
        head + b', "blob": ' + blobs["string"][:-1] + b"}",         # unterminated 5 MB string
    ]
    for value in accepted:
        assert len(value) > SIZE
        assert isinstance(check(topic, key, value), ev.Event.__args__)
    for value in rejected:
        assert check(topic, key, value) is None
