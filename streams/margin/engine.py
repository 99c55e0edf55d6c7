"""The fold of one partition's ordered log: apply an event, evaluate what it
touched, decide state transitions, and return the outputs of the contract.

:class:`PartitionEngine` is pure: it takes each event with its time already in
it, does no I/O, and returns :class:`Output` s whose values lack only
``decided_at`` (wall clock, stamped by the adapter). The stream worker and
``marginwatch replay`` both drive it, so one ordered input gives one output.

State persistence is the adapter's: after each ``apply`` it reads
``take_dirty()`` and writes the records of the accounts, ids and partition
globals that changed; ``load_*`` rebuilds an engine from those records.
"""
from __future__ import annotations

import hashlib
import math
from dataclasses import dataclass
from decimal import Decimal

import numpy as np

from .book import AccountBook
from .dedup import RememberedIds, encode_value, id_key
from .errors import (
    CONFLICTING_DUPLICATE,
    UNKNOWN_ASSET,
    UNKNOWN_INSTRUMENT,
    InputRejected,
)
from .events import (
    ACCOUNT_SNAPSHOTS,
    COLLATERAL,
    FILLS,
    ISOLATED,
    AccountSnapshot,
    AssetParams,
    CollateralChange,
    Fill,
    InstrumentParams,
    MarkTick,
)
from .instruments import CollateralAsset, Instrument
from .kernels import ColumnarIndex
from .reference import STATE_CODE, STATES, Market, MarginConfig, next_state, position_values
from .status import StatusBuilder

APPLIED = "applied"
DUPLICATE = "duplicate"
STALE = "stale"

MARGIN_STATUS = "margin-status"
MARGIN_CALLS = "margin-calls"
LIQUIDATIONS = "liquidations"
CROSS_SCOPE = "cross"


@dataclass(frozen=True, slots=True)
class Output:
    """One output message: contract topic name, key and value (no ``decided_at``)."""

    topic: str
    key: str
    value: dict


@dataclass(frozen=True, slots=True)
class ApplyResult:
    outcome: str  # applied | duplicate | stale
    outputs: list[Output]


def fingerprint(event) -> str:
    """A stable digest of an event's content, to tell a redelivery from a conflict."""
    return hashlib.sha1(repr(_canonical(event)).encode()).hexdigest()[:16]


def _canonical(value):
    if isinstance(value, Decimal):
        return str(value.normalize())
    if isinstance(value, tuple):
        return tuple(_canonical(v) for v in value)
    if hasattr(value, "__dataclass_fields__"):
        return tuple((name, _canonical(getattr(value, name))) for name in value.__dataclass_fields__)
    return value


class AccountState:
    """What the engine keeps per account besides the arrays: the exact book and
    the liquidation episode/step counters of each scope."""

    __slots__ = ("book", "episodes")

    def __init__(self, book: AccountBook) -> None:
        self.book = book
        self.episodes: dict[str, list[int]] = {}


class PartitionEngine:
    """Margin state of one partition and the fold over its log."""

    def __init__(self, cfg: MarginConfig) -> None:
        self.cfg = cfg
        self.market = Market(valuation_currency=cfg.valuation_currency)
        self.mark_meta: dict[str, tuple[int, int | None]] = {}  # symbol -> (ts, seq)
        self.accounts: dict[str, AccountState] = {}
        self.seen = RememberedIds(cfg.id_window_ms)
        self.last_ts = 0
        self.index = ColumnarIndex(cfg.valuation_currency, float(cfg.call_level), float(cfg.recovery_band))
        self.status = StatusBuilder(self)
        self._dirty_accounts: set[str] = set()
        self._dirty_seen: dict[str, str | None] = {}  # key -> changelog value, None = forgotten
        self._dirty_globals = False
        self.params_version = 0
        # With defer_status, margin-status bodies (the costly part of a crash tick) are built by
        # finish_status() after the caller has shipped the event's decisions; apply() builds any
        # left over first, so a status always describes the state right after its own event.
        self.defer_status = False
        self._pending_status: list[tuple] = []
        self._built_status: list[Output] = []

    # -- the fold ------------------------------------------------------------------
    def apply(self, event) -> ApplyResult:
        """Apply one event; raises :class:`InputRejected` (state unchanged) when it cannot be applied.

        With :attr:`defer_status` the result holds the margin-calls and liquidations only;
        :meth:`finish_status` returns the event's margin-status outputs.
        """
        if self._pending_status:
            self._built_status.extend(self._build_pending_status())
        if isinstance(event, MarkTick):
            return self._apply_mark(event)
        if isinstance(event, (InstrumentParams, AssetParams)):
            return self._apply_params(event)
        return self._apply_account_event(event)

    def _touch_ts(self, ts: int | None) -> int:
        if ts is not None and ts > self.last_ts:
            self.last_ts = ts
            self._dirty_globals = True
        return self.last_ts if ts is None else ts

    # marks ------------------------------------------------------------------------
    def _apply_mark(self, tick: MarkTick) -> ApplyResult:
        meta = self.mark_meta.get(tick.symbol)
        if meta is not None:
            last_ts, last_seq = meta
            if tick.seq is not None and last_seq is not None:
                if tick.seq <= last_seq:
                    return ApplyResult(STALE, [])
            elif tick.ts <= last_ts:
                return ApplyResult(STALE, [])
        ts = self._touch_ts(tick.ts)
        self.mark_meta[tick.symbol] = (tick.ts, tick.seq)
        self.market.marks[tick.symbol] = tick.mark_price
        self._dirty_globals = True
        mark_f = float(tick.mark_price)
        idx = self.index
        n = len(idx.ids)
        iso = []
        col = idx.symbols.get(tick.symbol)
        if col is not None:
            sl = idx.set_mark(tick.symbol, mark_f)
            iso.append((col, np.flatnonzero(col.iso[sl])))
        priced = [(a, rec) for a, rec in self.market.assets.items() if rec.price_symbol == tick.symbol]
        for asset, rec in priced:
            idx.add_asset(asset, mark_f, float(rec.haircut))
        if col is not None and col.n == n:
            rows = np.arange(n)  # every row holds the symbol (a column's rows are distinct)
        else:
            mask = np.zeros(n, bool)
            if col is not None:
                mask[col.rows[: col.n]] = True
            for asset, _ in priced:
                mask[idx.rows_exposed_to(asset)] = True
            rows = np.flatnonzero(mask)
        cause = {"topic": tick.topic, "id": tick.cause_id, "ts": tick.ts}
        return ApplyResult(APPLIED, self._evaluate(rows, iso, cause, ts, {}))

    # risk parameters ----------------------------------------------------------------
    def _apply_params(self, p) -> ApplyResult:
        mask = np.zeros(len(self.index.ids), bool)
        iso = []
        if isinstance(p, InstrumentParams):
            inst = Instrument.from_params(p)
            old = self.market.instruments.get(p.symbol)
            if old is not None:
                old.check_update(inst)
            self.market.instruments[p.symbol] = inst
            col = self.index.add_symbol(inst)
            if math.isnan(col.mark) and p.symbol in self.market.marks:
                col.mark = float(self.market.marks[p.symbol])  # a mark that came before its params
            if col.n:
                self.index.recompute_symbol(p.symbol)
                mask[col.rows[: col.n]] = True
                iso.append((col, np.flatnonzero(col.iso[: col.n])))
        else:
            rec = CollateralAsset.from_params(p)
            self.market.assets[p.asset] = rec
            price = self.market.asset_price(p.asset)
            self.index.add_asset(p.asset, math.nan if price is None else float(price), float(rec.haircut))
            mask[self.index.rows_exposed_to(p.asset)] = True
        self._dirty_globals = True
        self.params_version += 1
        ts = self._touch_ts(p.ts)
        cause = {"topic": p.topic, "id": p.cause_id, "ts": p.ts}
        return ApplyResult(APPLIED, self._evaluate(np.flatnonzero(mask), iso, cause, ts, {}))

    def seed_params(self, events) -> None:
        """Load start-up risk-params (no outputs: nothing is held yet)."""
        for p in events:
            self._apply_params(p)

    # account events ---------------------------------------------------------------------
    def _apply_account_event(self, ev) -> ApplyResult:
        kind, ident = ev.topic, ev.cause_id
        seen_key = id_key(ev.account_id, kind, ident)
        fp = fingerprint(ev)
        prior = self.seen.get(seen_key)
        if prior == fp:
            return ApplyResult(DUPLICATE, [])
        self._validate(ev)
        state = self.accounts.get(ev.account_id)
        if prior is not None:
            # precedence: a mode or isolated-margin error of the new content wins
            probe = state.book.copy() if state else AccountBook(ev.account_id)
            self._apply_to_book(probe, ev)
            raise InputRejected(
                CONFLICTING_DUPLICATE,
                f"field '{_ID_FIELD[kind]}' {ident!r} was already applied with different content",
                _ID_FIELD[kind], account_id=ev.account_id, cause_id=ident, ts=ev.ts,
            )
        if state is None:
            state = AccountState(AccountBook(ev.account_id))
        before = {s: (p.qty, p.margin_mode) for s, p in state.book.positions.items()}
        self._apply_to_book(state.book, ev)
        self.accounts[ev.account_id] = state
        self._remember(ev.account_id, seen_key, fp, ev.ts)
        ts = self._touch_ts(ev.ts)
        row = self.index.row(ev.account_id)
        self._sync_row(row, state)
        self.index.book_dirty[row] = True
        self._dirty_accounts.add(ev.account_id)
        changed_scopes = self._scopes_with_changed_positions(before, state.book)
        iso = []
        for symbol, p in state.book.positions.items():
            if p.isolated:
                col = self.index.symbols[symbol]
                iso.append((col, np.array([col.slot_of[row]])))
        cause = {"topic": ev.topic, "id": ident, "ts": ev.ts}
        outputs = self._evaluate(np.array([row]), iso, cause, ts, {row: changed_scopes})
        return ApplyResult(APPLIED, outputs)

    def _validate(self, ev) -> None:
        ctx = {"account_id": ev.account_id, "cause_id": ev.cause_id, "ts": ev.ts}
        instruments = self.market.instruments
        if isinstance(ev, Fill):
            if ev.symbol not in instruments:
                raise InputRejected(UNKNOWN_INSTRUMENT, f"field 'symbol' names {ev.symbol!r}, which has no risk-params record", "symbol", **ctx)
            if ev.fee_asset is not None and not self._known_asset(ev.fee_asset):
                raise InputRejected(UNKNOWN_ASSET, f"field 'fee_asset' names {ev.fee_asset!r}, which has no risk-params record", "fee_asset", **ctx)
        elif isinstance(ev, CollateralChange):
            if ev.reason == "isolated_margin" and ev.symbol not in instruments:
                raise InputRejected(UNKNOWN_INSTRUMENT, f"field 'symbol' names {ev.symbol!r}, which has no risk-params record", "symbol", **ctx)
            if not self._known_asset(ev.asset):
                raise InputRejected(UNKNOWN_ASSET, f"field 'asset' names {ev.asset!r}, which has no risk-params record", "asset", **ctx)
        elif isinstance(ev, AccountSnapshot):
            for i, p in enumerate(ev.positions):
                if p.symbol not in instruments:
                    raise InputRejected(UNKNOWN_INSTRUMENT, f"field 'positions.{i}.symbol' names {p.symbol!r}, which has no risk-params record", f"positions.{i}.symbol", **ctx)
            for asset, _ in ev.balances:
                if not self._known_asset(asset):
                    raise InputRejected(UNKNOWN_ASSET, f"field 'balances.{asset}' names an asset with no risk-params record", f"balances.{asset}", **ctx)

    def _known_asset(self, asset: str) -> bool:
        return asset == self.cfg.valuation_currency or asset in self.market.assets

    def _apply_to_book(self, book: AccountBook, ev) -> None:
        try:
            if isinstance(ev, Fill):
                book.apply_fill(ev, self.market.instruments[ev.symbol])
            elif isinstance(ev, CollateralChange):
                inst = self.market.instruments.get(ev.symbol) if ev.symbol else None
                book.apply_collateral(ev, inst)
            else:
                book.apply_snapshot(ev)
        except InputRejected as err:
            err.account_id, err.cause_id, err.ts = ev.account_id, ev.cause_id, ev.ts
            raise

    @staticmethod
    def _scopes_with_changed_positions(before: dict, book: AccountBook) -> set[str]:
        after = {s: (p.qty, p.margin_mode) for s, p in book.positions.items()}
        scopes = set()
        for symbol in before.keys() | after.keys():
            b, a = before.get(symbol), after.get(symbol)
            if b != a:
                modes = {x[1] for x in (a, b) if x is not None}
                if "cross" in modes:
                    scopes.add(CROSS_SCOPE)
                if "isolated" in modes:
                    scopes.add(symbol)
        return scopes

    def _add_balance_asset(self, asset: str) -> None:
        price = self.market.asset_price(asset)
        rec = self.market.assets.get(asset)
        self.index.add_asset(asset, math.nan if price is None else float(price), float(rec.haircut) if rec else 0.0)

    def _sync_row(self, row: int, state: AccountState) -> None:
        """Mirror the account's exact book into the arrays."""
        book = state.book
        idx = self.index
        for asset in book.balances:
            if asset not in idx.asset_col:
                self._add_balance_asset(asset)
        idx.set_balances(row, {a: float(v) for a, v in book.balances.items()})
        for symbol in list(idx.held[row]):
            if symbol not in book.positions:
                idx.remove_position(row, symbol, pack=False)
        for symbol, p in book.positions.items():
            col = idx.symbols[symbol]
            slot = col.slot_of.get(row)
            iso_state = int(col.iso_state[slot]) if (slot is not None and p.isolated) else 0
            idx.set_position(row, symbol, float(p.qty), float(p.entry) if p.entry else 0.0,
                             float(p.last_price), p.isolated, float(p.isolated_margin), iso_state, pack=False)
        idx.pack_row(row)

    def sync_rows(self, items: list[tuple], records: list[dict] | None = None) -> None:
        """``_sync_row`` of many accounts at once (bulk loading, ``records.restore``).

        ``items``: (row, AccountState). Rows that hold nothing in the index yet are
        loaded per symbol in one pass (``ColumnarIndex.load_symbol``, then
        ``pack_rows``): their slots come in the order of ``items``, and every value has
        the same bits as one ``_sync_row`` per account would give. Other rows take
        ``_sync_row``. ``records`` (optional, parallel to ``items``): each book's state
        record (``AccountBook.to_record``), whose decimal strings convert to floats
        faster than the Decimals do, to the same floats (both round correctly).
        """
        idx = self.index
        for _, state in items:
            for asset in state.book.balances:
                if asset not in idx.asset_col:
                    self._add_balance_asset(asset)
        fresh: list[int] = []
        seen_rows: set[int] = set()
        held = idx.held
        for i, (row, state) in enumerate(items):
            if held[row] or row in seen_rows:
                self._sync_row(row, state)
            else:
                seen_rows.add(row)
                fresh.append(i)
        if not fresh:
            return
        rows_all = np.fromiter((items[i][0] for i in fresh), np.int64, len(fresh))
        idx.bal[:, rows_all] = 0.0
        balances: dict[str, tuple[list, list]] = {}
        positions: dict[str, tuple[list, list]] = {}  # symbol -> (rows, positions or record entries)
        books = [records[i] for i in fresh] if records is not None else [items[i][1].book for i in fresh]
        for row, book in zip(rows_all.tolist(), books):
            bals, poss = (book["b"], book["p"]) if records is not None else (book.balances, book.positions.values())
            for a, v in bals.items():
                t = balances.get(a)
                if t is None:
                    t = balances[a] = ([], [])
                t[0].append(row)
                t[1].append(v)
            for p in poss:
                sym = p[0] if records is not None else p.symbol
                t = positions.get(sym)
                if t is None:
                    t = positions[sym] = ([], [])
                t[0].append(row)
                t[1].append(p)
        for a, (rs, vs) in balances.items():
            idx.bal[idx.asset_col[a], rs] = [float(v) for v in vs]
        for sym, (rs, ps) in positions.items():
            if records is not None:
                # record entries [symbol, qty, entry, mode, isolated margin, last price] (strings):
                # float(s) == float(Decimal(s)); ``or 0.0`` is ``float(entry) if entry else 0.0``
                q = [float(p[1]) for p in ps]
                e = [float(p[2]) or 0.0 for p in ps]
                lp = [float(p[5]) for p in ps]
                iso = [p[3] == ISOLATED for p in ps]
                im = [float(p[4]) for p in ps]
            else:
                q = [float(p.qty) for p in ps]
                e = [float(p.entry) if p.entry else 0.0 for p in ps]
                lp = [float(p.last_price) for p in ps]
                iso = [p.margin_mode == ISOLATED for p in ps]
                im = [float(p.isolated_margin) for p in ps]
            idx.load_symbol(sym, np.array(rs, np.int64), np.array(q), np.array(e), np.array(lp),
                            np.array(iso, bool), np.array(im), np.zeros(len(rs), np.int8), pack=False, fresh=True)
        idx.pack_rows(rows_all)

    # -- evaluation and decisions --------------------------------------------------------
    def _evaluate(self, rows: np.ndarray, iso: list, cause: dict, ts: int, changed: dict[int, set[str]]) -> list[Output]:
        idx = self.index
        cfg = self.cfg
        transitions: dict[int, list[tuple[str, int, int]]] = {}
        # isolated scopes
        for col, slots in iso:
            if not len(slots):
                continue
            prev = col.iso_state[slots]
            equity, mm, near, new = idx.evaluate_isolated(col, slots, prev)
            for i in np.flatnonzero(near).tolist():
                new[i] = self._exact_isolated_state(col, int(slots[i]), int(prev[i]))
            for i in np.flatnonzero(new != prev).tolist():
                r = int(col.rows[slots[i]])
                transitions.setdefault(r, []).append((col.inst.symbol, int(prev[i]), int(new[i])))
            col.iso_state[slots] = new
        # cross scopes, including every row with an isolated transition (for its status)
        if transitions:
            rows = _merge_sorted(rows, transitions.keys())
        if not len(rows):
            return []
        # rows ascend strictly; a full run lo..hi is read through views
        lo = int(rows[0])
        sel = slice(lo, lo + len(rows)) if int(rows[-1]) - lo + 1 == len(rows) else rows
        prev = idx.cross_state[sel].copy()
        ce = idx.evaluate_cross(rows, prev, sorted_unique=True, want_gross=False)
        new = ce.state
        for i in np.flatnonzero(ce.near).tolist():
            new[i] = self._exact_cross_state(int(rows[i]), int(prev[i]))
        for i in np.flatnonzero(new != prev).tolist():
            transitions.setdefault(int(rows[i]), []).insert(0, (CROSS_SCOPE, int(prev[i]), int(new[i])))
        idx.cross_state[sel] = new
        # margin-status triggers: state changed, book changed or ratio moved
        emit = idx.status_due(rows, ce.ratio, ts, float(cfg.status_ratio_step), cfg.status_interval_ms, sorted_unique=True)
        emitting = {int(rows[i]): i for i in np.flatnonzero(emit).tolist()}
        extra = [r for r in transitions if r not in emitting]
        extra += [r for r, scopes in changed.items() if scopes and r not in emitting and r not in transitions]
        if extra:
            for r, i in zip(extra, np.searchsorted(rows, extra).tolist()):
                emitting[r] = i
        if not emitting:
            return []
        outputs: list[Output] = []
        for r in sorted(emitting, key=lambda r: idx.ids[r]):
            i = emitting[r]
            account_id = idx.ids[r]
            outputs.extend(self._account_outputs(r, account_id, transitions.get(r, []), changed.get(r, set()),
                                                 ce, i, cause, ts, bool(emit[i]) or r in transitions))
            self._dirty_accounts.add(account_id)
        return outputs

    def _exact_cross_state(self, row: int, prev: int) -> int:
        state = self.accounts[self.index.ids[row]]
        from .reference import evaluate_exact

        vals = evaluate_exact(state.book, self.market)
        return STATE_CODE[next_state(STATES[prev], vals.cross.equity, vals.cross.mm, self.cfg)]

    def _exact_isolated_state(self, col, slot: int, prev: int) -> int:
        row = int(col.rows[slot])
        pos = self.accounts[self.index.ids[row]].book.positions[col.inst.symbol]
        pv = position_values(pos, col.inst, self.market.mark_for(pos))
        return STATE_CODE[next_state(STATES[prev], pos.isolated_margin + pv.upnl, pv.mm, self.cfg)]

    def _account_outputs(self, r, account_id, transitions, changed_scopes, ce, i, cause, ts, emit_status) -> list[Output]:
        state = self.accounts[account_id]
        outs: list[Output] = []
        liq_scopes: list[str] = []
        for scope, old, new in transitions:
            outs.append(self._out(MARGIN_CALLS, account_id, scope, cause, ts,
                                  self.status.margin_call(r, scope, STATES[old], STATES[new], ce, i)))
            if new == 2:
                ep = state.episodes.setdefault(scope, [0, 0])
                ep[0] += 1
                ep[1] = 1
                liq_scopes.append(scope)
        for scope in sorted(changed_scopes, key=_scope_order):
            if scope in liq_scopes or not self._scope_in_liquidation(r, scope):
                continue
            state.episodes.setdefault(scope, [1, 0])[1] += 1
            liq_scopes.append(scope)
        for scope in sorted(liq_scopes, key=_scope_order):
            episode, step = state.episodes[scope]
            outs.append(self._out(LIQUIDATIONS, account_id, scope, cause, ts,
                                  self.status.liquidation(r, scope, episode, step)))
        if emit_status:
            if self.defer_status:
                self._pending_status.append((r, account_id, ce, i, cause, ts))
            else:
                outs.append(self._status_output(r, account_id, ce, i, cause, ts))
        return outs

    def _status_output(self, r, account_id, ce, i, cause, ts) -> Output:
        payload, ratio = self.status.margin_status(r, ce, i)
        self.index.emit_ts[r] = ts
        self.index.emit_ratio[r] = math.nan if ratio is None else ratio
        self.index.book_dirty[r] = False
        return self._out(MARGIN_STATUS, account_id, "account", cause, ts, payload)

    def _build_pending_status(self) -> list[Output]:
        pending, self._pending_status = self._pending_status, []
        return [self._status_output(*args) for args in pending]

    @property
    def status_pending(self) -> int:
        """Margin-status outputs deferred by the last :meth:`apply` and not built yet."""
        return len(self._pending_status)

    def finish_status(self) -> list[Output]:
        """The deferred margin-status outputs (:attr:`defer_status`), in emission order."""
        built, self._built_status = self._built_status, []
        return built + self._build_pending_status()

    def _scope_in_liquidation(self, r: int, scope: str) -> bool:
        if scope == CROSS_SCOPE:
            return int(self.index.cross_state[r]) == 2
        col = self.index.symbols[scope]
        slot = col.slot_of.get(r)
        return slot is not None and int(col.iso_state[slot]) == 2

    def _out(self, topic: str, account_id: str, scope: str, cause: dict, ts: int, body: dict) -> Output:
        value = {
            "event_id": f"{topic}:{account_id}:{scope}:{cause['topic']}:{cause['id']}",
            "account_id": account_id,
            "ts": ts,
            "cause": cause,
            "schema_version": 1,
        }
        value.update(body)
        return Output(topic, account_id, value)

    # -- persistence ---------------------------------------------------------------------
    def _remember(self, account_id: str, seen_key: str, fp: str, ts: int) -> None:
        for key in self.seen.remember(account_id, seen_key, fp, ts):
            # a tombstone even for seen_key itself when it is outside the window on arrival:
            # an earlier copy forgotten in the same uncommitted batch was written before
            self._dirty_seen[key] = None
        if seen_key in self.seen:
            self._dirty_seen[seen_key] = encode_value(fp, ts, account_id)

    def take_dirty(self) -> tuple[set[str], dict[str, str | None], bool]:
        """Accounts, remembered ids (key -> changelog value, None when forgotten) and
        whether the globals changed since the last call."""
        out = (self._dirty_accounts, self._dirty_seen, self._dirty_globals)
        self._dirty_accounts, self._dirty_seen, self._dirty_globals = set(), {}, False
        return out


_ID_FIELD = {FILLS: "fill_id", COLLATERAL: "event_id", ACCOUNT_SNAPSHOTS: "snapshot_id"}


def _merge_sorted(rows: np.ndarray, extra) -> np.ndarray:
    """Sorted unique ``rows`` plus ``extra`` (a few row ids), still sorted and unique."""
    extra = np.unique(np.fromiter(extra, np.int64))
    if not len(rows):
        return extra
    pos = np.searchsorted(rows, extra)
    hit = pos < len(rows)
    hit[hit] = rows[pos[hit]] == extra[hit]
    if hit.all():
        return rows
    return np.insert(rows, pos[~hit], extra[~hit])


def _scope_order(scope: str) -> tuple[int, str]:
    return (0, "") if scope == CROSS_SCOPE else (1, scope)


def current_status(engine: PartitionEngine, account_id: str, cause: dict) -> Output | None:
    """A margin-status of the account as it is now (for queries and ``--final``)."""
    r = engine.index.row_of.get(account_id)
    if r is None or account_id not in engine.accounts:
        return None
    ce = engine.index.evaluate_cross(np.array([r]))
    body, _ = engine.status.margin_status(r, ce, 0)
    return engine._out(MARGIN_STATUS, account_id, "account", cause, engine.last_ts, body)
