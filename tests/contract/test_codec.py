"""The codec against the wire contract: a table of good and bad messages per topic.

Each bad row names the expected dead-letter code and field; precedence rows carry
several faults at once and expect the highest-ranked code
(invalid_json > schema_violation > non_finite_number > key_mismatch).
"""
from __future__ import annotations

import base64
import hashlib
import json
from decimal import Decimal

import orjson
import pytest

from streams import codec
from streams.codec import decode, decode_key, decode_replay_line, load_risk_params_file, raw_cause_id
from streams.deadletter import MAX_RAW_BYTES, build_dead_letter, build_replay_dead_letter
from streams.margin import events as ev
from streams.margin.errors import (
    ERROR_CODES,
    INVALID_JSON,
    KEY_MISMATCH,
    NON_FINITE_NUMBER,
    SCHEMA_VIOLATION,
    ConfigError,
    InputRejected,
    MarginwatchError,
)

FILL = {
    "fill_id": "f-1", "account_id": "A1", "symbol": "BTCUSDT", "side": "buy",
    "qty": "0.5", "price": "60000", "fee": "1.2", "fee_asset": "USDT", "margin_mode": "cross", "ts": 1717000000000,
}
MARK = {"symbol": "BTCUSDT", "mark_price": "58000.1", "ts": 1717000001000, "seq": 7}
COLL = {"event_id": "c-1", "account_id": "A1", "asset": "USDT", "amount": "-12.5", "reason": "funding", "ts": 1717000002000}
SNAP = {
    "snapshot_id": "s-1", "account_id": "A1", "ts": 1717000003000,
    "balances": {"USDT": "1000", "BTC": "0.5"},
    "positions": [
        {"symbol": "BTCUSDT", "qty": "0.1", "entry_price": "60000"},
        {"symbol": "ETHUSDT", "qty": "-2", "entry_price": "3000", "margin_mode": "isolated", "isolated_margin": "300"},
        {"symbol": "SOLUSDT", "qty": "0", "entry_price": "0"},
    ],
}
INST = {
    "type": "instrument", "symbol": "BTCUSDT", "kind": "linear", "settle_asset": "USDT", "contract_size": "1",
    "qty_step": "0.001",
    "tiers": [
        {"max_notional": "50000", "mmr": "0.004", "maintenance_amount": "0", "imr": "0.008"},
        {"max_notional": "250000", "mmr": "0.005", "maintenance_amount": "50", "imr": "0.01"},
        {"max_notional": None, "mmr": "0.01", "maintenance_amount": "1300", "imr": "0.02"},
    ],
}
ASSET = {"type": "asset", "asset": "BTC", "price_symbol": "BTCUSDT", "haircut": "0.05"}

KEYS = {"fills": b"A1", "mark-prices": b"BTCUSDT", "collateral": b"A1", "account-snapshots": b"A1"}
BASE = {"fills": FILL, "mark-prices": MARK, "collateral": COLL, "account-snapshots": SNAP}


def j(obj) -> bytes:
    return json.dumps(obj, separators=(",", ":"), allow_nan=True).encode()


def with_(base: dict, **changes) -> dict:
    out = json.loads(json.dumps(base))
    for k, v in changes.items():
        if v is DROP:
            out.pop(k, None)
        else:
            out[k] = v
    return out


DROP = object()


def raw_with(base: dict, field: str, token: str) -> bytes:
    """``base`` as JSON with ``field``'s value written as the raw ``token``."""
    marker = "__TOKEN__"
    return j(with_(base, **{field: marker})).replace(f'"{marker}"'.encode(), token.encode())


def rejected(topic: str, key: bytes | None, value: bytes) -> InputRejected:
    with pytest.raises(InputRejected) as info:
        decode(topic, key, value)
    err = info.value
    assert err.code in ERROR_CODES
    assert err.detail
    return err


# --------------------------------------------------------------------------- good


def test_fill_decodes_exactly() -> None:
    e = decode("fills", b"A1", j(FILL))
    assert e == ev.Fill(
        fill_id="f-1", account_id="A1", symbol="BTCUSDT", side="buy", qty=Decimal("0.5"), price=Decimal("60000"),
        ts=1717000000000, fee=Decimal("1.2"), fee_asset="USDT", margin_mode="cross",
    )
    assert e.cause_id == "f-1"


def test_fill_defaults() -> None:
    e = decode("fills", b"A1", j(with_(FILL, fee=DROP, fee_asset=DROP, margin_mode=DROP)))
    assert (e.fee, e.fee_asset, e.margin_mode) == (Decimal(0), None, "cross")
    e = decode("fills", b"A1", j(with_(FILL, fee=None, fee_asset=None, margin_mode=None)))
    assert (e.fee, e.fee_asset, e.margin_mode) == (Decimal(0), None, "cross")


def test_unknown_extra_fields_are_accepted_at_every_level() -> None:
    extra = {"venue": "x", "meta": {"a": [1, {"b": None}], "c": "d"}, "n": 1e300}
    decode("fills", b"A1", j({**FILL, **extra}))
    snap = with_(SNAP)
    snap["positions"][0]["leverage"] = 20
    snap["extra"] = extra
    decode("account-snapshots", b"A1", j(snap))
    inst = with_(INST, note="from exchange")
    inst["tiers"][0]["bracket"] = 1
    decode("risk-params", b"BTCUSDT", j(inst))


@pytest.mark.parametrize(
    ("token", "expected"),
    [
        ("1", Decimal(1)), ("0.5", Decimal("0.5")), ("58000.1", Decimal("58000.1")), ("1.5e3", Decimal(1500)),
        ("1E-5", Decimal("0.00001")), ("123456789012345", Decimal(123456789012345)),
        ("1.23456789012345", Decimal("1.23456789012345")), ("100000000000000000000", Decimal(10) ** 20),
        ("3000.50", Decimal("3000.5")), ("0.000000000000000001", Decimal("1e-18")),
    ],
)
def test_json_numbers_are_taken_exactly(token: str, expected: Decimal) -> None:
    e = decode("fills", b"A1", raw_with(FILL, "qty", token))
    assert e.qty == expected


@pytest.mark.parametrize("text", ["1", "0.5", "60000", "1.500", "0.000000000000000001", "123456789012345678901234567890.123456789012345678"])
def test_decimal_strings_are_taken_exactly_as_written(text: str) -> None:
    e = decode("fills", b"A1", j(with_(FILL, qty=text)))
    assert e.qty == Decimal(text) and str(e.qty) == str(Decimal(text))


@pytest.mark.parametrize("zero", ['"-0"', '"-0.00"', "-0", "-0.0", '"0"'])
def test_negative_zero_is_zero(zero: str) -> None:
    e = decode("fills", b"A1", raw_with(FILL, "fee", zero))
    assert e.fee == 0 and not e.fee.is_signed()
    e = decode("collateral", b"A1", raw_with(COLL, "amount", zero))
    assert e.amount == 0 and not e.amount.is_signed()


def test_whitespace_and_strings_that_look_like_keys_take_the_exact_path() -> None:
    pretty = json.dumps(FILL, indent=2).encode()
    assert decode("fills", b"A1", pretty).qty == Decimal("0.5")
    spaced = j(FILL).replace(b'":', b'" :')
    assert decode("fills", b"A1", spaced).qty == Decimal("0.5")
    tricky = j(with_(FILL, fill_id='f-"qty": 1'))
    assert decode("fills", b"A1", tricky).fill_id == 'f-"qty": 1'


def test_mark_cause_ids() -> None:
    assert decode("mark-prices", b"BTCUSDT", j(MARK)).cause_id == "BTCUSDT:7"
    assert decode("mark-prices", b"BTCUSDT", j(with_(MARK, seq=None))).cause_id == "BTCUSDT@1717000001000"
    assert decode("mark-prices", b"BTCUSDT", j(with_(MARK, seq=DROP))).seq is None
    assert decode("mark-prices", b"BTCUSDT", raw_with(MARK, "mark_price", "58000.1")).mark_price == Decimal("58000.1")


def test_collateral_isolated_margin() -> None:
    e = decode("collateral", b"A1", j(with_(COLL, reason="isolated_margin", symbol="ETHUSDT", amount="300")))
    assert (e.reason, e.symbol, e.amount) == ("isolated_margin", "ETHUSDT", Decimal(300))
    assert decode("collateral", b"A1", j(COLL)).symbol is None


def test_snapshot_is_normalised() -> None:
    e = decode("account-snapshots", b"A1", j(SNAP))
    assert e.balances == (("BTC", Decimal("0.5")), ("USDT", Decimal(1000)))
    assert [p.symbol for p in e.positions] == ["BTCUSDT", "ETHUSDT", "SOLUSDT"]
    btc, eth, sol = e.positions
    assert (btc.margin_mode, btc.isolated_margin) == ("cross", Decimal(0))
    assert (eth.qty, eth.margin_mode, eth.isolated_margin) == (Decimal(-2), "isolated", Decimal(300))
    assert (sol.qty, sol.entry_price) == (Decimal(0), Decimal(0))
    reordered = with_(SNAP, positions=list(reversed(SNAP["positions"])), balances={"USDT": "1000", "BTC": "0.5"})
    assert decode("account-snapshots", b"A1", j(reordered)) == e


def test_risk_params_instrument_and_asset() -> None:
    raw = j(INST)
    e = decode("risk-params", b"BTCUSDT", raw)
    assert isinstance(e, ev.InstrumentParams)
    assert e.cause_id == "BTCUSDT@" + hashlib.sha256(raw).hexdigest()[:12]
    assert e.tiers[-1] == ev.TierSpec(None, Decimal("0.01"), Decimal(1300), Decimal("0.02"))
    assert (e.contract_size, e.qty_step, e.ts) == (Decimal(1), Decimal("0.001"), None)
    no_amounts = with_(INST, ts=5, qty_step=None)
    no_amounts["tiers"] = [{"max_notional": t["max_notional"], "mmr": t["mmr"]} for t in INST["tiers"]]
    e = decode("risk-params", b"BTCUSDT", j(no_amounts))
    assert all(t.maintenance_amount is None and t.imr is None for t in e.tiers) and e.ts == 5 and e.qty_step is None
    raw = j(ASSET)
    a = decode("risk-params", b"asset:BTC", raw)
    assert a == ev.AssetParams("BTC", "BTCUSDT", Decimal("0.05"), None, "asset:BTC@" + hashlib.sha256(raw).hexdigest()[:12])
    assert decode("risk-params", b"asset:BTC", j(with_(ASSET, haircut="-0"))).haircut == 0


def test_decode_key_and_raw_cause_id() -> None:
    assert decode_key(None) is None
    assert decode_key(b"A1") == "A1"
    assert decode_key(b"\xff") is None
    assert raw_cause_id(b"{") == "raw@" + hashlib.sha256(b"{").hexdigest()[:12]


def test_unknown_topic_is_a_programming_error() -> None:
    with pytest.raises(MarginwatchError) as info:
        decode("margin-status", b"A1", b"{}")
    assert not isinstance(info.value, InputRejected)


# --------------------------------------------------------------------------- bad: the table

CASES = [
    # -- invalid_json
    ("not utf-8", "fills", b"A1", b'{"fill_id":"\xff"}', INVALID_JSON, None),
    ("truncated", "fills", b"A1", j(FILL)[:-5], INVALID_JSON, None),
    ("empty", "fills", b"A1", b"", INVALID_JSON, None),
    ("array", "fills", b"A1", b"[]", INVALID_JSON, None),
    ("string", "fills", b"A1", b'"x"', INVALID_JSON, None),
    ("null", "mark-prices", b"BTCUSDT", b"null", INVALID_JSON, None),
    ("number", "collateral", b"A1", b"1", INVALID_JSON, None),
    ("bom", "fills", b"A1", b"\xef\xbb\xbf" + j(FILL), INVALID_JSON, None),
    ("trailing garbage", "fills", b"A1", j(FILL) + b"x", INVALID_JSON, None),
    ("two objects", "fills", b"A1", j(FILL) + j(FILL), INVALID_JSON, None),
    ("single quotes", "fills", b"A1", b"{'a': 1}", INVALID_JSON, None),
    ("lone surrogate", "fills", b"A1", j(FILL).replace(b'"f-1"', b'"f-\\ud800"'), INVALID_JSON, "fill_id"),
    ("duplicate key", "fills", b"A1", j(FILL)[:-1] + b',"qty":"1"}', INVALID_JSON, "qty"),
    ("duplicate key spaced", "fills", b"A1", j(FILL)[:-1].replace(b'":', b'" :') + b',"qty" : "1"}', INVALID_JSON, "qty"),
    ("duplicate key at depth 2", "fills", b"A1", j(FILL)[:-1] + b',"meta":{"a":1,"a":2}}', INVALID_JSON, "meta.a"),
    ("duplicate key in a position", "account-snapshots", b"A1",
     j(SNAP).replace(b'{"symbol":"ETHUSDT",', b'{"symbol":"ETHUSDT","qty":"1",'), INVALID_JSON, "positions.1.qty"),
    ("nested too deep", "fills", b"A1", j(FILL)[:-1] + b',"x":' + b"[" * 40 + b"]" * 40 + b"}", INVALID_JSON, None),
    ("invalid json beats everything", "fills", b"A2", b'{"qty": NaN, "side": "BUY",}', INVALID_JSON, None),
    # -- schema_violation
    ("missing field", "fills", b"A1", j(with_(FILL, qty=DROP)), SCHEMA_VIOLATION, "qty"),
    ("missing id", "fills", b"A1", j(with_(FILL, fill_id=DROP)), SCHEMA_VIOLATION, "fill_id"),
    ("empty id", "fills", b"A1", j(with_(FILL, fill_id="")), SCHEMA_VIOLATION, "fill_id"),
    ("id not a string", "fills", b"A1", j(with_(FILL, fill_id=17)), SCHEMA_VIOLATION, "fill_id"),
    ("qty wrong type", "fills", b"A1", j(with_(FILL, qty=True)), SCHEMA_VIOLATION, "qty"),
    ("qty object", "fills", b"A1", j(with_(FILL, qty={"v": 1})), SCHEMA_VIOLATION, "qty"),
    ("qty negative", "fills", b"A1", j(with_(FILL, qty="-1")), SCHEMA_VIOLATION, "qty"),
    ("qty negative number", "fills", b"A1", j(with_(FILL, qty=-1)), SCHEMA_VIOLATION, "qty"),
    ("qty zero", "fills", b"A1", j(with_(FILL, qty="0.000")), SCHEMA_VIOLATION, "qty"),
    ("qty minus zero", "fills", b"A1", j(with_(FILL, qty="-0")), SCHEMA_VIOLATION, "qty"),
    ("qty number zero", "fills", b"A1", j(with_(FILL, qty=0)), SCHEMA_VIOLATION, "qty"),
    ("exponent string", "fills", b"A1", j(with_(FILL, qty="1e5")), SCHEMA_VIOLATION, "qty"),
    ("exponent string upper", "fills", b"A1", j(with_(FILL, price="6E4")), SCHEMA_VIOLATION, "price"),
    ("19 decimals", "fills", b"A1", j(with_(FILL, qty="0.0000000000000000001")), SCHEMA_VIOLATION, "qty"),
    ("leading plus", "fills", b"A1", j(with_(FILL, qty="+1")), SCHEMA_VIOLATION, "qty"),
    ("leading zero", "fills", b"A1", j(with_(FILL, qty="01")), SCHEMA_VIOLATION, "qty"),
    ("bare point", "fills", b"A1", j(with_(FILL, qty=".5")), SCHEMA_VIOLATION, "qty"),
    ("trailing point", "fills", b"A1", j(with_(FILL, qty="1.")), SCHEMA_VIOLATION, "qty"),
    ("empty decimal", "fills", b"A1", j(with_(FILL, qty="")), SCHEMA_VIOLATION, "qty"),
    ("spaces", "fills", b"A1", j(with_(FILL, qty=" 1")), SCHEMA_VIOLATION, "qty"),
    ("underscore", "fills", b"A1", j(with_(FILL, qty="1_000")), SCHEMA_VIOLATION, "qty"),
    ("comma decimal", "fills", b"A1", j(with_(FILL, qty="1,5")), SCHEMA_VIOLATION, "qty"),
    ("16 significant digits", "fills", b"A1", raw_with(FILL, "qty", "1.234567890123456"), SCHEMA_VIOLATION, "qty"),
    ("17 digits rounding to a short double", "fills", b"A1", raw_with(FILL, "qty", "0.10000000000000001"), SCHEMA_VIOLATION, "qty"),
    ("16 digit integer", "fills", b"A1", raw_with(FILL, "qty", "1234567890123456"), SCHEMA_VIOLATION, "qty"),
    ("huge integer", "fills", b"A1", raw_with(FILL, "qty", "123456789012345678901234567890"), SCHEMA_VIOLATION, "qty"),
    ("number with 19 decimals", "fills", b"A1", raw_with(FILL, "qty", "1e-19"), SCHEMA_VIOLATION, "qty"),
    ("underflowing number", "collateral", b"A1", raw_with(COLL, "amount", "1e-400"), SCHEMA_VIOLATION, "amount"),
    ("bad enum", "fills", b"A1", j(with_(FILL, side="BUY")), SCHEMA_VIOLATION, "side"),
    ("bad margin mode", "fills", b"A1", j(with_(FILL, margin_mode="portfolio")), SCHEMA_VIOLATION, "margin_mode"),
    ("empty fee asset", "fills", b"A1", j(with_(FILL, fee_asset="")), SCHEMA_VIOLATION, "fee_asset"),
    ("ts float", "fills", b"A1", raw_with(FILL, "ts", "1717000000000.0"), SCHEMA_VIOLATION, "ts"),
    ("ts exponent", "fills", b"A1", raw_with(FILL, "ts", "1.717e12"), SCHEMA_VIOLATION, "ts"),
    ("ts negative", "fills", b"A1", j(with_(FILL, ts=-1)), SCHEMA_VIOLATION, "ts"),
    ("ts 2^63", "fills", b"A1", j(with_(FILL, ts=2**63)), SCHEMA_VIOLATION, "ts"),
    ("ts string", "fills", b"A1", j(with_(FILL, ts="1717000000000")), SCHEMA_VIOLATION, "ts"),
    ("ts bool", "fills", b"A1", j(with_(FILL, ts=True)), SCHEMA_VIOLATION, "ts"),
    ("ts NaN string is not a decimal field", "fills", b"A1", j(with_(FILL, ts="NaN")), SCHEMA_VIOLATION, "ts"),
    ("ts NaN token is not a decimal field", "fills", b"A1", raw_with(FILL, "ts", "NaN"), SCHEMA_VIOLATION, "ts"),
    ("overflow in a string field", "fills", b"A1", raw_with(FILL, "fee_asset", "1e400"), SCHEMA_VIOLATION, "fee_asset"),
    ("NaN token in a string field", "fills", b"A1", raw_with(FILL, "fee_asset", "NaN"), SCHEMA_VIOLATION, "fee_asset"),
    ("Infinity token in an enum", "fills", b"A1", raw_with(FILL, "side", "Infinity"), SCHEMA_VIOLATION, "side"),
    ("seq negative", "mark-prices", b"BTCUSDT", j(with_(MARK, seq=-1)), SCHEMA_VIOLATION, "seq"),
    ("seq float", "mark-prices", b"BTCUSDT", raw_with(MARK, "seq", "7.0"), SCHEMA_VIOLATION, "seq"),
    ("mark zero", "mark-prices", b"BTCUSDT", j(with_(MARK, mark_price="0")), SCHEMA_VIOLATION, "mark_price"),
    ("bad reason", "collateral", b"A1", j(with_(COLL, reason="gift")), SCHEMA_VIOLATION, "reason"),
    ("isolated margin without symbol", "collateral", b"A1", j(with_(COLL, reason="isolated_margin")), SCHEMA_VIOLATION, "symbol"),
    ("isolated margin null symbol", "collateral", b"A1", j(with_(COLL, reason="isolated_margin", symbol=None)), SCHEMA_VIOLATION, "symbol"),
    ("balances not an object", "account-snapshots", b"A1", j(with_(SNAP, balances=[])), SCHEMA_VIOLATION, "balances"),
    ("empty asset name", "account-snapshots", b"A1", j(with_(SNAP, balances={"": "1"})), SCHEMA_VIOLATION, "balances"),
    ("bad balance", "account-snapshots", b"A1", j(with_(SNAP, balances={"USDT": "1e3"})), SCHEMA_VIOLATION, "balances.USDT"),
    ("position not an object", "account-snapshots", b"A1", j(with_(SNAP, positions=[3])), SCHEMA_VIOLATION, "positions.0"),
    ("bad position qty", "account-snapshots", b"A1",
     j(with_(SNAP, positions=SNAP["positions"][:2] + [{"symbol": "SOLUSDT", "qty": "1e5", "entry_price": "1"}])),
     SCHEMA_VIOLATION, "positions.2.qty"),
    ("position missing entry", "account-snapshots", b"A1", j(with_(SNAP, positions=[{"symbol": "X", "qty": "1"}])), SCHEMA_VIOLATION, "positions.0.entry_price"),
    ("open position at price 0", "account-snapshots", b"A1", j(with_(SNAP, positions=[{"symbol": "X", "qty": "-1", "entry_price": "0"}])), SCHEMA_VIOLATION, "positions.0.entry_price"),
    ("cross position with isolated margin", "account-snapshots", b"A1",
     j(with_(SNAP, positions=[{"symbol": "X", "qty": "1", "entry_price": "1", "isolated_margin": "5"}])), SCHEMA_VIOLATION, "positions.0.isolated_margin"),
    ("negative isolated margin", "account-snapshots", b"A1",
     j(with_(SNAP, positions=[{"symbol": "X", "qty": "1", "entry_price": "1", "margin_mode": "isolated", "isolated_margin": "-5"}])), SCHEMA_VIOLATION, "positions.0.isolated_margin"),
    ("two positions one symbol", "account-snapshots", b"A1",
     j(with_(SNAP, positions=[SNAP["positions"][0], SNAP["positions"][0]])), SCHEMA_VIOLATION, "positions.1.symbol"),
    ("risk-params without type", "risk-params", b"BTCUSDT", j(with_(INST, type=DROP)), SCHEMA_VIOLATION, "type"),
    ("risk-params bad type", "risk-params", b"BTCUSDT", j(with_(INST, type="future")), SCHEMA_VIOLATION, "type"),
    ("bad kind", "risk-params", b"BTCUSDT", j(with_(INST, kind="quanto")), SCHEMA_VIOLATION, "kind"),
    ("contract size zero", "risk-params", b"BTCUSDT", j(with_(INST, contract_size="0")), SCHEMA_VIOLATION, "contract_size"),
    ("no tiers", "risk-params", b"BTCUSDT", j(with_(INST, tiers=[])), SCHEMA_VIOLATION, "tiers"),
    ("negative mmr", "risk-params", b"BTCUSDT",
     j(with_(INST, tiers=[{"max_notional": None, "mmr": "-0.01"}])), SCHEMA_VIOLATION, "tiers.0.mmr"),
    ("tiers not ascending", "risk-params", b"BTCUSDT",
     j(with_(INST, tiers=[{"max_notional": "5", "mmr": "0.01"}, {"max_notional": "5", "mmr": "0.02"}, {"max_notional": None, "mmr": "0.03"}])),
     SCHEMA_VIOLATION, "tiers.1.max_notional"),
    ("last tier bounded", "risk-params", b"BTCUSDT",
     j(with_(INST, tiers=[{"max_notional": "5", "mmr": "0.01"}, {"max_notional": "50", "mmr": "0.02"}])), SCHEMA_VIOLATION, "tiers.1.max_notional"),
    ("middle tier unbounded", "risk-params", b"BTCUSDT",
     j(with_(INST, tiers=[{"max_notional": None, "mmr": "0.01"}, {"max_notional": None, "mmr": "0.02"}])), SCHEMA_VIOLATION, "tiers.0.max_notional"),
    ("amounts on some tiers", "risk-params", b"BTCUSDT",
     j(with_(INST, tiers=[{"max_notional": "5", "mmr": "0.01", "maintenance_amount": "0"}, {"max_notional": None, "mmr": "0.02"}])),
     SCHEMA_VIOLATION, "tiers.1.maintenance_amount"),
    ("amounts on later tiers only", "risk-params", b"BTCUSDT",
     j(with_(INST, tiers=[{"max_notional": "5", "mmr": "0.01"}, {"max_notional": None, "mmr": "0.02", "maintenance_amount": "0.05"}])),
     SCHEMA_VIOLATION, "tiers.1.maintenance_amount"),
    ("imr on some tiers", "risk-params", b"BTCUSDT",
     j(with_(INST, tiers=[{"max_notional": "5", "mmr": "0.01"}, {"max_notional": None, "mmr": "0.02", "imr": "0.04"}])),
     SCHEMA_VIOLATION, "tiers.1.imr"),
    ("haircut one", "risk-params", b"asset:BTC", j(with_(ASSET, haircut="1")), SCHEMA_VIOLATION, "haircut"),
    ("haircut negative", "risk-params", b"asset:BTC", j(with_(ASSET, haircut=-0.1)), SCHEMA_VIOLATION, "haircut"),
    ("asset missing price symbol", "risk-params", b"asset:BTC", j(with_(ASSET, price_symbol=DROP)), SCHEMA_VIOLATION, "price_symbol"),
    # -- non_finite_number
    ("NaN token", "fills", b"A1", raw_with(FILL, "qty", "NaN"), NON_FINITE_NUMBER, "qty"),
    ("Infinity token", "fills", b"A1", raw_with(FILL, "price", "Infinity"), NON_FINITE_NUMBER, "price"),
    ("-Infinity token", "fills", b"A1", raw_with(FILL, "price", "-Infinity"), NON_FINITE_NUMBER, "price"),
    ("NaN string", "fills", b"A1", j(with_(FILL, qty="NaN")), NON_FINITE_NUMBER, "qty"),
    ("Infinity string", "fills", b"A1", j(with_(FILL, qty="Infinity")), NON_FINITE_NUMBER, "qty"),
    ("-Infinity string", "fills", b"A1", j(with_(FILL, qty="-Infinity")), NON_FINITE_NUMBER, "qty"),
    ("inf string", "mark-prices", b"BTCUSDT", j(with_(MARK, mark_price="inf")), NON_FINITE_NUMBER, "mark_price"),
    ("+Inf string", "mark-prices", b"BTCUSDT", j(with_(MARK, mark_price="+Inf")), NON_FINITE_NUMBER, "mark_price"),
    ("nan string", "collateral", b"A1", j(with_(COLL, amount="nan")), NON_FINITE_NUMBER, "amount"),
    ("overflow 1e400", "fills", b"A1", raw_with(FILL, "qty", "1e400"), NON_FINITE_NUMBER, "qty"),
    ("overflow -1e400", "collateral", b"A1", raw_with(COLL, "amount", "-1e400"), NON_FINITE_NUMBER, "amount"),
    ("overflow huge integer", "fills", b"A1", raw_with(FILL, "price", "1" + "0" * 400), NON_FINITE_NUMBER, "price"),
    ("NaN fee", "fills", b"A1", j(with_(FILL, fee="NaN")), NON_FINITE_NUMBER, "fee"),
    ("NaN balance", "account-snapshots", b"A1", j(with_(SNAP, balances={"USDT": "NaN"})), NON_FINITE_NUMBER, "balances.USDT"),
    ("NaN position qty", "account-snapshots", b"A1",
     raw_with(with_(SNAP, positions=[]), "positions", '[{"symbol":"X","qty":NaN,"entry_price":"1"}]'), NON_FINITE_NUMBER, "positions.0.qty"),
    ("Infinity max_notional", "risk-params", b"BTCUSDT",
     j(with_(INST, tiers=[{"max_notional": "5", "mmr": "0.01"}, {"max_notional": "Infinity", "mmr": "0.02"}])), NON_FINITE_NUMBER, "tiers.1.max_notional"),
    ("NaN haircut", "risk-params", b"asset:BTC", j(with_(ASSET, haircut="NaN")), NON_FINITE_NUMBER, "haircut"),
    ("NaN token in an unknown field", "fills", b"A1", j(FILL)[:-1] + b',"extra":{"x":[1,NaN]}}', NON_FINITE_NUMBER, "extra.x.1"),
    # -- key_mismatch
    ("key differs", "fills", b"A2", j(FILL), KEY_MISMATCH, "account_id"),
    ("missing key", "fills", None, j(FILL), KEY_MISMATCH, "account_id"),
    ("empty key", "collateral", b"", j(COLL), KEY_MISMATCH, "account_id"),
    ("key not utf-8", "account-snapshots", b"\xff", j(SNAP), KEY_MISMATCH, "account_id"),
    ("mark key", "mark-prices", b"ETHUSDT", j(MARK), KEY_MISMATCH, "symbol"),
    ("mark missing key", "mark-prices", None, j(MARK), KEY_MISMATCH, "symbol"),
    ("instrument key", "risk-params", b"ETHUSDT", j(INST), KEY_MISMATCH, "symbol"),
    ("asset key without prefix", "risk-params", b"BTC", j(ASSET), KEY_MISMATCH, "asset"),
    ("asset key with symbol", "risk-params", b"BTCUSDT", j(ASSET), KEY_MISMATCH, "asset"),
    ("instrument keyed as asset", "risk-params", b"asset:BTCUSDT", j(INST), KEY_MISMATCH, "symbol"),
    # -- precedence
    ("schema beats non-finite", "fills", b"A1", j(with_(FILL, qty="NaN", side="BUY")), SCHEMA_VIOLATION, "side"),
    ("missing field beats non-finite", "fills", b"A1", j(with_(FILL, qty="NaN", ts=DROP)), SCHEMA_VIOLATION, "ts"),
    ("later schema fault beats earlier non-finite", "fills", b"A1", j(with_(FILL, qty="NaN", price="abc")), SCHEMA_VIOLATION, "price"),
    ("digits fault beats non-finite", "fills", b"A1", raw_with(with_(FILL, qty="NaN"), "price", "1.234567890123456"), SCHEMA_VIOLATION, "price"),
    ("tier order beats non-finite", "risk-params", b"BTCUSDT",
     j(with_(INST, tiers=[{"max_notional": "5", "mmr": "NaN"}, {"max_notional": "4", "mmr": "0.02"}, {"max_notional": None, "mmr": "0.03"}])),
     SCHEMA_VIOLATION, "tiers.1.max_notional"),
    ("non-finite beats key", "fills", b"A2", j(with_(FILL, qty="NaN")), NON_FINITE_NUMBER, "qty"),
    ("bare token beats key", "fills", None, raw_with(FILL, "qty", "NaN"), NON_FINITE_NUMBER, "qty"),
    ("schema beats key", "fills", b"A2", j(with_(FILL, qty="-1")), SCHEMA_VIOLATION, "qty"),
    ("first non-finite is named", "fills", b"A1", j(with_(FILL, qty="NaN", price="Infinity")), NON_FINITE_NUMBER, "qty"),
]


@pytest.mark.parametrize(("topic", "key", "value", "code", "field"), [c[1:] for c in CASES], ids=[c[0] for c in CASES])
def test_bad_messages(topic: str, key: bytes | None, value: bytes, code: str, field: str | None) -> None:
    err = rejected(topic, key, value)
    assert (err.code, err.field) == (code, field), err.detail
    if field is not None:
        assert f"'{field}'" in err.detail or field.rsplit(".", 1)[-1] in err.detail, err.detail


def test_details_are_sentences_naming_the_field_and_the_value() -> None:
    err = rejected("fills", b"A1", j(with_(FILL, qty="-1")))
    assert err.detail.startswith("field 'qty' must be a decimal > 0") and err.detail.endswith("got '-1'")
    err = rejected("fills", b"A1", j(with_(FILL, side="BUY")))
    assert err.detail == "field 'side' must be one of 'buy', 'sell', got 'BUY'"
    err = rejected("fills", b"A1", j(with_(FILL, qty=DROP)))
    assert err.detail == "field 'qty' is required"
    err = rejected("collateral", b"A1", j(with_(COLL, reason="isolated_margin")))
    assert err.detail == "field 'symbol' is required when reason is 'isolated_margin'"
    err = rejected("fills", b"A1", j(with_(FILL, qty="NaN")))
    assert err.detail == "field 'qty' must be a finite number, got 'NaN'"
    err = rejected("fills", b"A2", j(FILL))
    assert err.detail == "field 'account_id' is 'A1' but the message key is 'A2'"
    err = rejected("account-snapshots", b"A1", j(with_(SNAP, positions=[{"symbol": "X", "qty": "-1", "entry_price": "0"}])))
    assert err.detail == "field 'positions.0.entry_price' must be a decimal > 0 when qty is not 0, got '0'"
    err = rejected("fills", b"A1", j(with_(FILL, fill_id="x" * 10_000, qty="-1")))
    assert len(err.detail) < 200


def test_rejections_carry_what_could_be_read() -> None:
    err = rejected("fills", b"A2", j(FILL))
    assert (err.account_id, err.cause_id, err.ts) == ("A1", "f-1", 1717000000000)
    err = rejected("fills", b"A1", j(with_(FILL, ts="x")))
    assert (err.account_id, err.cause_id, err.ts) == ("A1", "f-1", None)
    err = rejected("fills", b"A1", j(with_(FILL, fill_id="", account_id=5)))
    assert (err.account_id, err.cause_id) == (None, None)
    err = rejected("mark-prices", b"BTCUSDT", j(with_(MARK, mark_price="NaN")))
    assert (err.account_id, err.cause_id, err.ts) == (None, "BTCUSDT:7", 1717000001000)
    err = rejected("mark-prices", b"BTCUSDT", j(with_(MARK, mark_price="NaN", seq=None)))
    assert err.cause_id == "BTCUSDT@1717000001000"
    err = rejected("collateral", b"A1", j(with_(COLL, amount="x")))
    assert err.cause_id == "c-1"
    err = rejected("account-snapshots", b"A1", j(with_(SNAP, balances=1)))
    assert err.cause_id == "s-1"
    err = rejected("fills", b"A1", b"{")
    assert (err.account_id, err.cause_id, err.ts) == (None, None, None)
    raw = j(with_(INST, kind="x"))
    err = rejected("risk-params", b"BTCUSDT", raw)
    assert err.cause_id == "BTCUSDT@" + hashlib.sha256(raw).hexdigest()[:12]
    err = rejected("risk-params", b"BTCUSDT", b"{")
    assert err.cause_id == "BTCUSDT@" + hashlib.sha256(b"{").hexdigest()[:12]
    err = rejected("risk-params", None, j(INST))
    assert err.cause_id is None


def test_big_messages_and_deep_nesting_are_rejected_cleanly() -> None:
    deep = b'{"a":' + b"[" * 100_000 + b"]" * 100_000 + b"}"
    assert rejected("fills", b"A1", deep).code == INVALID_JSON
    assert rejected("fills", b"A1", b"[" * 100_000).code == INVALID_JSON
    big = j(with_(FILL, note="x" * 5_000_000))
    assert decode("fills", b"A1", big).qty == Decimal("0.5")
    big_dup = j(with_(FILL, note=["y"] * 500_000))[:-1] + b',"qty":"2"}'
    assert rejected("fills", b"A1", big_dup).code == INVALID_JSON


# --------------------------------------------------------------------------- replay lines


def test_replay_line_with_object_value_keeps_the_exact_bytes() -> None:
    value_text = b'{ "type":"asset", "asset":"BTC","price_symbol":"BTCUSDT","haircut":0.050 }'
    line = b'{"topic":"risk-params","key":"asset:BTC","value":' + value_text + b"}\n"
    topic, key, value = decode_replay_line(line)
    assert (topic, key, value) == ("risk-params", b"asset:BTC", value_text)
    e = decode(topic, key, value)
    assert e.cause_id == "asset:BTC@" + hashlib.sha256(value_text).hexdigest()[:12]


def test_replay_line_value_forms() -> None:
    raw = j(FILL)
    assert decode_replay_line(j({"topic": "fills", "key": "A1", "value": raw.decode()})) == ("fills", b"A1", raw)
    b64 = base64.b64encode(b"\xff\x00").decode()
    assert decode_replay_line(j({"topic": "fills", "key": None, "value_b64": b64})) == ("fills", None, b"\xff\x00")
    assert decode_replay_line(j({"topic": "fills", "value": {}}))[1] is None
    kb64 = base64.b64encode(b"\xfe").decode()
    assert decode_replay_line(j({"topic": "fills", "key_b64": kb64, "value": {}}))[1] == b"\xfe"
    # a value with a bare NaN is still an envelope: the topic's decoder dead-letters it
    line = b'{"topic":"fills","key":"A1","value":' + raw_with(FILL, "qty", "NaN") + b"}"
    topic, key, value = decode_replay_line(line)
    assert rejected(topic, key, value).code == NON_FINITE_NUMBER


@pytest.mark.parametrize(
    ("line", "code", "field"),
    [
        (b"not json", INVALID_JSON, None),
        (b"[1]", INVALID_JSON, None),
        (b'{"topic":"fills","topic":"fills","value":{}}', INVALID_JSON, "topic"),
        (b'{"topic":"fill","key":"A1","value":{}}', SCHEMA_VIOLATION, "topic"),
        (b'{"topic":"margin-status","key":"A1","value":{}}', SCHEMA_VIOLATION, "topic"),
        (b'{"key":"A1","value":{}}', SCHEMA_VIOLATION, "topic"),
        (b'{"topic":"fills","key":"A1"}', SCHEMA_VIOLATION, "value"),
        (b'{"topic":"fills","key":"A1","value":{},"value_b64":""}', SCHEMA_VIOLATION, "value_b64"),
        (b'{"topic":"fills","key":"A1","value":[1]}', SCHEMA_VIOLATION, "value"),
        (b'{"topic":"fills","key":1,"value":{}}', SCHEMA_VIOLATION, "key"),
        (b'{"topic":"fills","key":"A1","value_b64":"!!"}', SCHEMA_VIOLATION, "value_b64"),
    ],
)
def test_bad_replay_lines(line: bytes, code: str, field: str | None) -> None:
    with pytest.raises(InputRejected) as info:
        decode_replay_line(line)
    assert (info.value.code, info.value.field) == (code, field), info.value.detail


def test_replay_line_may_carry_output_topics_when_asked() -> None:
    assert decode_replay_line(b'{"topic":"margin-calls","key":"A1","value":{}}', inputs_only=False)[0] == "margin-calls"


# --------------------------------------------------------------------------- seed file


def test_seed_file_loads(tmp_path) -> None:
    path = tmp_path / "rp.jsonl"
    path.write_bytes(b'{"key":"BTCUSDT","value":' + j(INST) + b"}\n\n" + b'{"key":"asset:BTC","value":' + j(ASSET) + b"}\n")
    loaded = load_risk_params_file(path)
    assert [k for k, _ in loaded] == [b"BTCUSDT", b"asset:BTC"]
    assert decode("risk-params", *loaded[0]).symbol == "BTCUSDT"


@pytest.mark.parametrize(
    ("line", "field", "words"),
    [
        (b'{"key":"BTCUSDT","value":' + j(with_(INST, tiers=[{"max_notional": None, "mmr": "x"}])) + b"}", "value.tiers.0.mmr", "tiers.0.mmr"),
        (b'{"key":"ETHUSDT","value":' + j(INST) + b"}", "value.symbol", "message key"),
        (b'{"value":' + j(INST) + b"}", "key", "'key'"),
        (b'{"key":"BTCUSDT","value":{', None, "not valid JSON"),
    ],
)
def test_bad_seed_line_names_file_line_and_field(tmp_path, line: bytes, field: str | None, words: str) -> None:
    path = tmp_path / "rp.jsonl"
    path.write_bytes(b'{"key":"asset:BTC","value":' + j(ASSET) + b"}\n" + line + b"\n")
    with pytest.raises(ConfigError) as info:
        load_risk_params_file(path)
    assert info.value.field == field
    assert str(path) in info.value.detail and "line 2" in info.value.detail and words in info.value.detail


def test_missing_seed_file(tmp_path) -> None:
    with pytest.raises(ConfigError):
        load_risk_params_file(tmp_path / "nope.jsonl")


# --------------------------------------------------------------------------- dead-letters

DL_STRICT = codec.schema_validator("dead-letters", strict=True)


def _dead_letter(topic: str, key: bytes | None, value: bytes, **kw) -> dict:
    err = rejected(topic, key, value)
    dl = build_dead_letter(source_topic=topic, partition=kw.get("partition", 2), offset=kw.get("offset", 40),
                           key=key, value=value, error=err, fallback_ts=99, decided_at=1234)
    DL_STRICT(dl)
    return dl


def test_dead_letter_of_a_readable_input() -> None:
    value = j(with_(FILL, qty="-1"))
    dl = _dead_letter("fills", b"A1", value)
    assert dl["event_id"] == "dead-letters:A1:input:fills:f-1"
    assert dl["cause"] == {"topic": "fills", "id": "f-1", "ts": 1717000000000}
    assert (dl["ts"], dl["decided_at"], dl["schema_version"]) == (1717000000000, 1234, 1)
    assert (dl["source_topic"], dl["partition"], dl["offset"], dl["key"]) == ("fills", 2, 40, "A1")
    assert (dl["error"], dl["field"]) == (SCHEMA_VIOLATION, "qty")
    assert dl["raw"] == value.decode() and "raw_b64" not in dl and "raw_truncated" not in dl


def test_dead_letter_of_an_unreadable_input() -> None:
    value = b'{"fill_id":"\xff"}'
    dl = _dead_letter("fills", b"A7", value)
    cause = raw_cause_id(value)
    assert dl["event_id"] == f"dead-letters:A7:input:fills:{cause}"
    assert (dl["account_id"], dl["ts"], dl["cause"]["ts"]) == ("A7", 99, 99)
    assert base64.b64decode(dl["raw_b64"]) == value and "raw" not in dl
    dl = _dead_letter("fills", b"\xfe\xff", b"{")
    assert (dl["key"], base64.b64decode(dl["key_b64"]), dl["account_id"]) == (None, b"\xfe\xff", "")
    dl = _dead_letter("fills", None, b"{")
    assert (dl["key"], dl["account_id"]) == (None, "")
    dl = _dead_letter("mark-prices", b"BTCUSDT", j(with_(MARK, mark_price="NaN")))
    assert dl["event_id"] == "dead-letters:BTCUSDT:input:mark-prices:BTCUSDT:7"


def test_dead_letter_raw_is_cut_to_64_kib_as_serialised() -> None:
    for value in (
        j(with_(FILL, qty="-1", note="x" * 200_000)),                 # plain text
        j(with_(FILL, qty="-1", note="\u0001" * 100_000)),            # every char escapes to 6 bytes
        j(with_(FILL, qty="-1", note="é€😀" * 30_000)),             # multi-byte UTF-8
        b'{"a":"\xff' + b"\x00" * 100_000 + b'"}',                    # not UTF-8: base64
    ):
        topic = "fills"
        dl = _dead_letter(topic, b"A1", value)
        assert dl["raw_truncated"] is True
        kept = dl.get("raw")
        if kept is not None:
            assert len(orjson.dumps(kept)) - 2 <= MAX_RAW_BYTES
            assert value.decode("utf-8").startswith(kept)
            assert len(orjson.dumps(kept)) - 2 > MAX_RAW_BYTES - 64
        else:
            assert len(dl["raw_b64"]) <= MAX_RAW_BYTES
            assert value.startswith(base64.b64decode(dl["raw_b64"]))
        assert len(orjson.dumps(dl)) <= 70 * 1024


def test_dead_letter_bounds_long_ids_and_details() -> None:
    value = j(with_(FILL, fill_id="f" * 100_000, account_id="a" * 100_000, qty="-1"))
    dl = _dead_letter("fills", b"A1", value)
    assert dl["cause"]["id"] == raw_cause_id(value) and dl["account_id"] == "A1"
    assert len(orjson.dumps(dl)) <= 70 * 1024
    err = InputRejected(SCHEMA_VIOLATION, "d" * 10_000, "f" * 10_000)
    dl = build_dead_letter(source_topic="fills", partition=0, offset=0, key=b"A1", value=b"{}", error=err, fallback_ts=1, decided_at=2)
    DL_STRICT(dl)
    assert len(dl["detail"]) <= 512 and len(dl["field"]) <= 512


def test_dead_letter_of_an_engine_rejection() -> None:
    err = InputRejected("unknown_instrument", "field 'symbol' names no known instrument: 'XYZ'", "symbol",
                        account_id="A1", cause_id="f-9", ts=5)
    dl = build_dead_letter(source_topic="fills", partition=1, offset=3, key=b"A1", value=j(FILL), error=err,
                           fallback_ts=1, decided_at=2)
    DL_STRICT(dl)
    assert dl["event_id"] == "dead-letters:A1:input:fills:f-9" and dl["error"] == "unknown_instrument"


def test_replay_dead_letter() -> None:
    line = b'{"topic":"fill","key":"A1","value":{}}\n'
    with pytest.raises(InputRejected) as info:
        decode_replay_line(line)
    dl = build_replay_dead_letter(line_no=41, line=line, error=info.value, fallback_ts=0, decided_at=7)
    DL_STRICT(dl)
    assert dl["source_topic"] == dl["cause"]["topic"] == "replay"
    assert (dl["partition"], dl["offset"], dl["key"], dl["account_id"]) == (0, 41, None, "")
    assert dl["raw"] == line.rstrip(b"\n").decode()
    assert dl["event_id"] == "dead-letters::input:replay:" + raw_cause_id(line.rstrip(b"\n"))
