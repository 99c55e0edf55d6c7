"""``decode(topic, key, value)``: one input message -> its domain event (one builder per topic)."""
from __future__ import annotations

from decimal import Decimal
from typing import Any, Callable

from ..margin import events as ev
from ..margin.errors import INVALID_JSON, InputRejected, MarginwatchError
from .decoding import _NF, _TS_LIMIT, _Decoding, _NeedExact, _valid_id, _valid_ts
from .parsing import _BadJSON, _parse, _parse_slow, _show
from .raw import _reject_oversize, risk_params_cause_id
from .schemas import INPUT_TOPICS

_ZERO = Decimal(0)


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
