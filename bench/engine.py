"""Benchmark: one mark tick of a symbol held by every account of a partition.

    .venv/bin/python bench/engine.py [--accounts 250000 --positions 1000000 --ticks 20]
                                     [--sample 2000 --status-sample 1000 --profile]
                                     [--no-restore --restore-sample 5000]

The book: ``--accounts`` accounts holding ``--positions`` positions in all over 10
symbols (8 linear USDT-settled, 2 inverse coin-settled); every account holds the
ticked symbol BTCUSDT plus others; ~20 % of positions isolated; USDT balances for
everyone, BTC collateral (priced by BTCUSDT, haircut 5 %) for ~20 %. The exact
``AccountBook`` objects are built directly, then mirrored into the columnar index by
the core's bulk path (``PartitionEngine.sync_rows``, what ``records.restore`` uses),
and checked against the exact reference on a sample before timing.

Measured per tick (median / p90 over ``--ticks`` ticks, ``--warmup`` excluded):

(a) the vectorized evaluator, as ``PartitionEngine._apply_mark`` drives it:
    ``index.set_mark`` + the rows touched (holders + accounts exposed to BTC, priced
    by the tick) + ``evaluate_cross`` (equity, MM, ratio, screen and float decision)
    (+ the exact fallback for the rows the screen flags near a threshold) for the
    cross scopes, and ``evaluate_isolated`` for the isolated positions of the symbol;
(b) the exact reference (``reference.evaluate_exact`` + ``next_state`` for every scope)
    on the same tick, timed on a random sample of ``--sample`` accounts and
    extrapolated linearly to all touched accounts;
(c) margin-status bodies (with every position's liquidation price) for
    ``--status-sample`` accounts, and the share of that spent in ``liquidation_price``;
(d) the full ``engine.apply(MarkTick)`` path (decisions, transitions, throttled
    margin-status emission), on a fresh sequence of ticks, with the time spent
    building payload bodies (the status emission) reported apart;
(e) ``records.restore`` of the whole partition from its JSON state records (bulk
    path), checked bit for bit against the original index; the per-account path is
    timed on ``--restore-sample`` accounts and extrapolated.

Prints a table and one JSON line. Single core: BLAS/OpenMP threads are pinned to 1.
"""
from __future__ import annotations

import os

for _v in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS", "NUMEXPR_NUM_THREADS"):
    os.environ.setdefault(_v, "1")

import argparse  # noqa: E402
import cProfile  # noqa: E402
import gc  # noqa: E402
import json  # noqa: E402
import math  # noqa: E402
import platform  # noqa: E402
import pstats  # noqa: E402
import resource  # noqa: E402
import sys  # noqa: E402
import time  # noqa: E402
from decimal import Decimal  # noqa: E402
from pathlib import Path  # noqa: E402

import numpy as np  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.probes import cpu_model  # noqa: E402
from streams.margin import status as status_mod  # noqa: E402
from streams.margin.book import AccountBook, Position  # noqa: E402
from streams.margin.engine import AccountState, PartitionEngine  # noqa: E402
from streams.margin.events import AssetParams, InstrumentParams, MarkTick, TierSpec  # noqa: E402
from streams.margin.reference import STATE_CODE, STATES, MarginConfig, evaluate_exact, next_state  # noqa: E402

D = Decimal
TICKED = "BTCUSDT"

# symbol: kind, settle, contract size, price, tiers (max_notional, mmr) — amounts derived
SYMBOLS = {
    "BTCUSDT": ("linear", "USDT", "0.001", 60000, [(50000, "0.004"), (250000, "0.005"), (1000000, "0.01"), (None, "0.025")]),
    "ETHUSDT": ("linear", "USDT", "0.01", 3000, [(50000, "0.005"), (500000, "0.01"), (None, "0.025")]),
    "SOLUSDT": ("linear", "USDT", "1", 150, [(25000, "0.01"), (100000, "0.02"), (None, "0.05")]),
    "XRPUSDT": ("linear", "USDT", "1", "0.6", [(25000, "0.01"), (None, "0.025")]),
    "DOGEUSDT": ("linear", "USDT", "1", "0.15", [(25000, "0.01"), (None, "0.025")]),
    "ADAUSDT": ("linear", "USDT", "1", "0.45", [(25000, "0.01"), (None, "0.025")]),
    "AVAXUSDT": ("linear", "USDT", "0.1", 35, [(25000, "0.01"), (None, "0.025")]),
    "LINKUSDT": ("linear", "USDT", "0.1", 15, [(25000, "0.01"), (None, "0.025")]),
    "BTCUSD": ("inverse", "BTC", "100", 60000, [(5, "0.005"), (25, "0.01"), (None, "0.02")]),
    "ETHUSD": ("inverse", "ETH", "10", 3000, [(100, "0.01"), (None, "0.02")]),
}
ASSETS = {"BTC": ("BTCUSDT", "0.05"), "ETH": ("ETHUSDT", "0.1")}
OTHERS = [s for s in SYMBOLS if s != TICKED]
# "a few inverse": the inverse symbols are drawn 4x less often
OTHER_WEIGHTS = np.array([1.0 if SYMBOLS[s][0] == "linear" else 0.25 for s in OTHERS])
OTHER_WEIGHTS /= OTHER_WEIGHTS.sum()


def machine() -> dict:
    try:
        nproc = len(os.sched_getaffinity(0))
    except AttributeError:  # pragma: no cover
        nproc = os.cpu_count()
    return {"nproc": nproc, "loadavg": [round(x, 2) for x in os.getloadavg()], "cpu": cpu_model(),
            "python": platform.python_version(), "numpy": np.__version__}


def peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0  # KiB on Linux


# --------------------------------------------------------------------------------------
# Building the partition
# --------------------------------------------------------------------------------------
class DecCache(dict):
    """Share Decimal objects between positions (memory: 1M positions)."""

    def __missing__(self, key):
        v = self[key] = D(key)
        return v


def make_engine(cfg: MarginConfig) -> PartitionEngine:
    eng = PartitionEngine(cfg)
    params = []
    for a, (sym, h) in ASSETS.items():
        params.append(AssetParams(a, sym, D(h), 0, cause_id=f"asset:{a}@bench"))
    for sym, (kind, settle, c, _, tiers) in SYMBOLS.items():
        specs = tuple(TierSpec(None if b is None else D(str(b)), D(r)) for b, r in tiers)
        params.append(InstrumentParams(sym, kind, settle, D(c), specs, D(1), 0, cause_id=f"{sym}@bench"))
    eng.seed_params(params)
    for seq, sym in enumerate(SYMBOLS, 1):
        eng.apply(MarkTick(sym, D(str(SYMBOLS[sym][3])), 1, 1))
    eng.take_dirty()
    return eng


def plan_book(n_accounts: int, n_positions: int, rng: np.random.Generator):
    """Arrays describing every position: (account, symbol, qty, entry, isolated, margin)."""
    extra = max(0, n_positions - n_accounts)
    # every account holds TICKED; the other positions are spread over accounts, ≤ 1 per symbol
    per_acct = np.full(n_accounts, extra // n_accounts)
    per_acct[rng.choice(n_accounts, extra % n_accounts, replace=False)] += 1
    per_acct = np.minimum(per_acct, len(OTHERS))
    acct_idx = [np.arange(n_accounts)]
    sym_idx = [np.zeros(n_accounts, np.int64)]  # index into SYMBOLS order: TICKED first
    order = list(SYMBOLS)
    other_ids = np.array([order.index(s) for s in OTHERS])
    for k in range(1, len(OTHERS) + 1):
        who = np.flatnonzero(per_acct >= k)
        if not len(who):
            break
        acct_idx.append(who)
    # choose distinct other symbols per account: a weighted permutation, take the first k
    keys = rng.random((n_accounts, len(OTHERS))) ** (1.0 / OTHER_WEIGHTS)
    ranked = np.argsort(-keys, axis=1)
    for k in range(1, len(acct_idx)):
        who = acct_idx[k]
        sym_idx.append(other_ids[ranked[who, k - 1]])
    acct = np.concatenate(acct_idx)
    sym = np.concatenate(sym_idx)
    n = len(acct)
    iso = rng.random(n) < 0.2
    # notional per position: log-uniform 200 .. 200k USDT
    notional = np.exp(rng.uniform(math.log(200), math.log(200_000), n))
    return acct, sym, notional, iso


def bulk_load(eng: PartitionEngine, n_accounts: int, n_positions: int, seed: int) -> dict:
    """Build the exact books directly, then load them with the core's bulk path
    (``PartitionEngine.sync_rows`` → ``ColumnarIndex.load_symbol`` + ``pack_rows``, what
    ``records.restore`` uses): the same arrays, bit for bit, as one ``_sync_row`` per account."""
    rng = np.random.default_rng(seed)
    t0 = time.perf_counter()
    acct, sym_i, notional, iso = plan_book(n_accounts, n_positions, rng)
    order = list(SYMBOLS)
    dec = DecCache()
    idx = eng.index
    ids = [f"acct-{i:07d}" for i in range(n_accounts)]
    rows = idx.rows_for(ids)  # rows 0..n-1 in account order
    books = [AccountBook(a) for a in ids]
    # balances: USDT for all — equity a multiple of total notional (leverage 1.5x .. 40x);
    # BTC collateral for ~20 %
    total_notional = np.bincount(acct, weights=np.where(iso, 0.0, notional), minlength=n_accounts)
    lev = np.exp(rng.uniform(math.log(1.5), math.log(40), n_accounts))
    usdt = np.round(total_notional / lev + 10, 2)
    has_btc = rng.random(n_accounts) < 0.2
    btc = np.where(has_btc, np.round(rng.uniform(0.001, 0.5, n_accounts), 4), 0.0)
    for i, b in enumerate(books):
        b.balances["USDT"] = dec[f"{usdt[i]:.2f}"]
        if btc[i]:
            b.balances["BTC"] = dec[f"{btc[i]:.4f}"]
    # positions (isolated margins funded separately)
    for s_i, sym in enumerate(order):
        kind, settle, c_txt, price, _ = SYMBOLS[sym]
        c = float(c_txt)
        p0 = float(price)
        sel = np.flatnonzero(sym_i == s_i)
        prow = acct[sel]
        k = len(sel)
        side = np.where(rng.random(k) < 0.55, 1.0, -1.0)
        entry = p0 * np.exp(rng.normal(0, 0.01, k))
        entry = np.round(entry, 2 if p0 >= 10 else 4)
        usd_notional = notional[sel]
        if kind == "linear":
            qty = np.maximum(1.0, np.round(usd_notional / (c * p0)))
        else:
            qty = np.maximum(1.0, np.round(usd_notional / c))  # contracts of c USD
        qty = side * qty
        is_iso = iso[sel]
        # isolated margin: notional/leverage (in settle units)
        lev_i = np.exp(rng.uniform(math.log(2), math.log(25), k))
        settle_notional = np.abs(qty) * c * (p0 if kind == "linear" else 1.0 / p0)
        iso_margin = np.where(is_iso, np.round(settle_notional / lev_i, 6 if kind == "inverse" else 2), 0.0)
        zero = dec["0"]
        for r, q_, e_, iso_, m_ in zip(prow.tolist(), qty.tolist(), entry.tolist(), is_iso.tolist(), iso_margin.tolist()):
            e = dec[f"{e_:.4f}".rstrip("0").rstrip(".")]
            books[r].positions[sym] = Position(sym, dec[f"{q_:.0f}"], e, "isolated" if iso_ else "cross",
                                               dec[f"{m_:.6f}"] if iso_ else zero, e)
    states = []
    for b in books:
        for a_name in [a for a, v in b.balances.items() if v == 0]:
            del b.balances[a_name]
        st = AccountState(b)
        eng.accounts[b.account_id] = st
        states.append(st)
    t_books = time.perf_counter() - t0
    t1 = time.perf_counter()
    eng.sync_rows(list(zip(rows, states)))
    t_sync = time.perf_counter() - t1
    # initial states, decided like the engine does (float screen + exact fallback), and the
    # status bookkeeping as if every account had just been sent a status at ts 0
    t1 = time.perf_counter()
    all_rows = np.arange(n_accounts)
    ce = idx.evaluate_cross(all_rows, np.zeros(n_accounts, np.int8))
    new = ce.state
    for i in np.flatnonzero(ce.near):
        new[i] = eng._exact_cross_state(int(all_rows[i]), 0)
    idx.cross_state[:n_accounts] = new
    idx.emit_ts[:n_accounts] = 0
    idx.emit_ratio[:n_accounts] = ce.ratio
    idx.book_dirty[:n_accounts] = False
    for col in idx.symbols.values():
        s = np.flatnonzero(col.iso[: col.n])
        if len(s):
            eq, mm, near = idx.evaluate_isolated(col, s)
            st = idx.decide(eq, mm, np.zeros(len(s), np.int8))
            for i in np.flatnonzero(near):
                st[i] = eng._exact_isolated_state(col, int(s[i]), 0)
            col.iso_state[s] = st
    eng.take_dirty()
    from streams.margin.records import state_counts
    return {"states": state_counts(eng), "books_s": t_books, "sync_s": t_sync,
            "init_states_s": time.perf_counter() - t1, "positions": len(acct),
            "isolated": int(iso.sum()), "btc_holders": int(has_btc.sum())}


def sanity_check(eng: PartitionEngine, rng: np.random.Generator, n: int = 500) -> dict:
    """Bulk-built index agrees with the exact reference on a sample (values and states)."""
    idx = eng.index
    ids = rng.choice(len(idx.ids), size=min(n, len(idx.ids)), replace=False)
    ce = idx.evaluate_cross(np.sort(ids))
    worst = 0.0
    for i, r in enumerate(np.sort(ids)):
        acct = idx.ids[r]
        v = evaluate_exact(eng.accounts[acct].book, eng.market)
        scale = float(sum(abs(x) for x in eng.accounts[acct].book.balances.values())) + float(ce.gross[i]) + 1.0
        worst = max(worst, abs(float(v.cross.equity) - ce.equity[i]) / scale, abs(float(v.cross.mm) - ce.mm[i]) / scale)
        want = next_state("healthy", v.cross.equity, v.cross.mm, eng.cfg)
        got = STATES[int(idx.cross_state[r])]
        assert got == want, (acct, got, want)
    assert worst < 1e-9, worst
    return {"sample": len(ids), "max_rel_err": worst}


# --------------------------------------------------------------------------------------
# (a) vectorized evaluator, (b) reference, (c) status, (d) full apply
# --------------------------------------------------------------------------------------
def vectorized_tick(eng: PartitionEngine, symbol: str, mark_f: float):
    """What _apply_mark + _evaluate compute for a tick, minus the outputs."""
    idx = eng.index
    n = len(idx.ids)
    col = idx.symbols[symbol]
    sl = idx.set_mark(symbol, mark_f)
    priced = [(a, rec) for a, rec in eng.market.assets.items() if rec.price_symbol == symbol]
    for a, rec in priced:
        idx.add_asset(a, mark_f, float(rec.haircut))
    if col.n == n:
        rows = np.arange(n)  # every account holds the symbol
    else:
        mask = np.zeros(n, bool)
        mask[col.rows[sl]] = True
        for a, _ in priced:
            mask[idx.rows_exposed_to(a)] = True
        rows = np.flatnonzero(mask)
    # isolated scopes of the symbol: values, screen and float decision
    iso_slots = np.flatnonzero(col.iso[sl])
    iprev = col.iso_state[iso_slots]
    ieq, imm, inear, inew = idx.evaluate_isolated(col, iso_slots, iprev)
    n_exact = 0
    for i in np.flatnonzero(inear):
        inew[i] = eng._exact_isolated_state(col, int(iso_slots[i]), int(iprev[i]))
        n_exact += 1
    # cross scopes: values, ratio, screen and float decision in one blocked pass
    lo = int(rows[0]) if len(rows) else 0
    sel = slice(lo, lo + len(rows)) if len(rows) and int(rows[-1]) - lo + 1 == len(rows) else rows
    prev = idx.cross_state[sel].copy()
    ce = idx.evaluate_cross(rows, prev, sorted_unique=True, want_gross=False)
    new = ce.state
    for i in np.flatnonzero(ce.near):
        new[i] = eng._exact_cross_state(int(rows[i]), int(prev[i]))
        n_exact += 1
    return rows, ce, ce.ratio, new, inew, n_exact


def reference_sample(eng: PartitionEngine, rows_sample: np.ndarray) -> tuple[float, list[int]]:
    idx = eng.index
    cfg = eng.cfg
    t0 = time.perf_counter()
    states = []
    for r in rows_sample:
        acct = idx.ids[r]
        book = eng.accounts[acct].book
        v = evaluate_exact(book, eng.market)
        s = next_state(STATES[int(idx.cross_state[r])], v.cross.equity, v.cross.mm, cfg)
        for sym, sv in v.isolated.items():
            next_state("healthy", sv.equity, sv.mm, cfg)
        states.append(STATE_CODE[s])
    return time.perf_counter() - t0, states


def restore_check(eng: PartitionEngine, cfg: MarginConfig, per_row_sample: int) -> dict:
    """(e) The whole partition through its state records (``records.*_record`` and a JSON
    round trip, as the adapter persists them), then ``records.restore`` into a fresh
    engine (bulk path); the rebuilt index must equal the original bit for bit. The
    per-account path (``bulk=False``) is timed on a sample and extrapolated."""
    import orjson

    from streams.margin import records

    t0 = time.perf_counter()
    ids = sorted(eng.accounts)
    accts = [(a, orjson.loads(orjson.dumps(records.account_record(eng, a)))) for a in ids]
    params = orjson.loads(orjson.dumps(records.params_record(eng)))
    marks = orjson.loads(orjson.dumps(records.marks_record(eng)))
    t_rec = time.perf_counter() - t0
    fresh = PartitionEngine(cfg)
    t0 = time.perf_counter()
    records.restore(fresh, params, marks, accts, [])
    t_restore = time.perf_counter() - t0
    a_rows = np.array([eng.index.row_of[a] for a in ids])
    b_rows = np.array([fresh.index.row_of[a] for a in ids])
    ea = eng.index.evaluate_cross(a_rows)
    eb = fresh.index.evaluate_cross(b_rows)
    assert ea.equity.tobytes() == eb.equity.tobytes() and ea.mm.tobytes() == eb.mm.tobytes()
    assert np.array_equal(eng.index.cross_state[a_rows], fresh.index.cross_state[b_rows])
    positions = sum(len(r["book"]["p"]) for _, r in accts)
    k = min(per_row_sample, len(accts))
    slow = PartitionEngine(cfg)
    t0 = time.perf_counter()
    records.restore(slow, params, marks, accts[:k], [], bulk=False)
    t_slow = time.perf_counter() - t0
    slow_pos = sum(len(r["book"]["p"]) for _, r in accts[:k])
    del fresh, slow
    return {"accounts": len(accts), "positions": positions, "records_s": t_rec, "restore_s": t_restore,
            "per_row_sample": k, "per_row_extrapolated_s": t_slow * positions / max(slow_pos, 1)}


def pct(xs, q):
    return float(np.percentile(np.array(xs), q))


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--accounts", type=int, default=250_000)
    ap.add_argument("--positions", type=int, default=1_000_000)
    ap.add_argument("--ticks", type=int, default=20)
    ap.add_argument("--warmup", type=int, default=3)
    ap.add_argument("--sample", type=int, default=2000, help="accounts timed with the exact reference per tick")
    ap.add_argument("--status-sample", type=int, default=1000)
    ap.add_argument("--tick-ms", type=int, default=250, help="event time between ticks")
    ap.add_argument("--move-bp", type=float, default=5.0, help="std of a tick's relative move, basis points")
    ap.add_argument("--seed", type=int, default=7)
    ap.add_argument("--profile", action="store_true", help="cProfile the vectorized path and print the top lines")
    ap.add_argument("--no-restore", action="store_true", help="skip (e): records.restore of the whole partition")
    ap.add_argument("--restore-sample", type=int, default=5000,
                    help="accounts restored with the per-account path (bulk=False), extrapolated")
    args = ap.parse_args(argv)

    gc.disable()  # the book is ~millions of long-lived objects: keep the collector out of the timings
    cfg = MarginConfig()
    eng = make_engine(cfg)
    info = bulk_load(eng, args.accounts, args.positions, args.seed)
    rng = np.random.default_rng(args.seed + 1)
    sane = sanity_check(eng, rng)
    print(f"built {args.accounts:,} accounts / {info['positions']:,} positions "
          f"({info['isolated']:,} isolated, {info['btc_holders']:,} with BTC): books {info['books_s']:.1f}s, "
          f"index bulk load (sync_rows) {info['sync_s']:.1f}s, initial states {info['init_states_s']:.1f}s; sanity vs reference on {sane['sample']} accounts: "
          f"max rel err {sane['max_rel_err']:.1e}; accounts by worst state: {info['states']}")

    price = D(str(SYMBOLS[TICKED][3]))
    seq = 1
    ts = 1

    def next_tick():
        nonlocal price, seq, ts
        move = rng.normal(0, args.move_bp / 1e4)
        price = (price * D(str(round(1 + move, 8)))).quantize(D("0.1"))
        seq += 1
        ts += args.tick_ms
        return MarkTick(TICKED, price, ts, seq)

    # ---- (a) + (b) -------------------------------------------------------------------
    vec_ms, vec_cpu, ref_ms, touched, exact_n, mismatch = [], [], [], [], [], 0
    for t in range(args.warmup + args.ticks):
        tick = next_tick()
        eng.market.marks[TICKED] = tick.mark_price  # what _apply_mark does before evaluating
        eng.mark_meta[TICKED] = (tick.ts, tick.seq)
        c0, t0 = time.process_time(), time.perf_counter()
        rows, ce, ratio, new, inew, n_exact = vectorized_tick(eng, TICKED, float(tick.mark_price))
        dt, dc = time.perf_counter() - t0, time.process_time() - c0
        sample = np.sort(rng.choice(rows, size=min(args.sample, len(rows)), replace=False))
        r_s, ref_states = reference_sample(eng, sample)
        pos_of = np.searchsorted(rows, sample)
        mismatch += int(np.sum(new[pos_of] != np.array(ref_states, np.int8)))
        # keep the states as the engine would, so hysteresis stays realistic
        eng.index.cross_state[rows] = new
        col = eng.index.symbols[TICKED]
        iso_slots = np.flatnonzero(col.iso[: col.n])
        col.iso_state[iso_slots] = inew
        if t >= args.warmup:
            vec_ms.append(dt * 1e3)
            vec_cpu.append(dc * 1e3)
            ref_ms.append(r_s * 1e3 * len(rows) / len(sample))
            touched.append(len(rows))
            exact_n.append(n_exact)
    positions_per_tick = eng.index.symbols[TICKED].n + sum(
        eng.index.symbols[s].n for s in SYMBOLS if SYMBOLS[s][1] == "BTC")  # recomputed + re-summed holders
    med, p90 = float(np.median(vec_ms)), pct(vec_ms, 90)
    ref_med = float(np.median(ref_ms))

    prof_text = None
    if args.profile:
        pr = cProfile.Profile()
        pr.enable()
        for _ in range(5):
            tick = next_tick()
            eng.market.marks[TICKED] = tick.mark_price
            vectorized_tick(eng, TICKED, float(tick.mark_price))
        pr.disable()
        import io
        buf = io.StringIO()
        pstats.Stats(pr, stream=buf).sort_stats("tottime").print_stats(14)
        prof_text = buf.getvalue()

    # ---- (c) margin-status bodies (liquidation prices) --------------------------------
    idx = eng.index
    srows = np.sort(rng.choice(len(idx.ids), size=min(args.status_sample, len(idx.ids)), replace=False))
    ce = idx.evaluate_cross(srows)
    liq_time = [0.0, 0]
    orig = status_mod.liquidation_price

    def timed(scope):
        t = time.perf_counter()
        try:
            return orig(scope)
        finally:
            liq_time[0] += time.perf_counter() - t
            liq_time[1] += 1

    status_mod.liquidation_price = timed
    t0 = time.perf_counter()
    for i, r in enumerate(srows):
        eng.status.margin_status(int(r), ce, i)
    status_s = time.perf_counter() - t0
    status_mod.liquidation_price = orig

    # ---- (d) the full apply path ---------------------------------------------------------
    apply_ms, apply_cpu, outs, statuses, calls, body_ms = [], [], [], [], [], []
    apply_prof = cProfile.Profile() if args.profile else None
    # time spent building payload bodies (margin-status with liquidation prices, calls,
    # liquidation orders) inside apply: the status emission, reported apart
    body_t = [0.0]
    builder = eng.status
    for name in ("margin_status", "margin_call", "liquidation"):
        def timed_body(*a, _f=getattr(builder, name), **kw):
            t = time.perf_counter()
            try:
                return _f(*a, **kw)
            finally:
                body_t[0] += time.perf_counter() - t
        setattr(builder, name, timed_body)
    for t in range(args.warmup + args.ticks):
        tick = next_tick()
        if apply_prof is not None and t >= args.warmup:
            apply_prof.enable()
        body_t[0] = 0.0
        c0, t0 = time.process_time(), time.perf_counter()
        res = eng.apply(tick)
        dt, dc = time.perf_counter() - t0, time.process_time() - c0
        if apply_prof is not None:
            apply_prof.disable()
        if t >= args.warmup:
            apply_ms.append(dt * 1e3)
            apply_cpu.append(dc * 1e3)
            body_ms.append(body_t[0] * 1e3)
            outs.append(len(res.outputs))
            statuses.append(sum(o.topic == "margin-status" for o in res.outputs))
            calls.append(sum(o.topic != "margin-status" for o in res.outputs))
    eng.take_dirty()
    rss_ticks = peak_rss_mb()

    # ---- (e) restore of the whole partition from its records ----------------------------
    rst = None if args.no_restore else restore_check(eng, cfg, args.restore_sample)

    m = machine()
    rows_tbl = [
        ("(a) vectorized tick: set_mark+evaluate_cross+decide", f"{med:9.2f} ms", f"{p90:9.2f} ms",
         f"{int(np.median(touched)):,} accounts, {positions_per_tick:,} positions, exact fallbacks/tick median {int(np.median(exact_n))}"),
        ("(b) exact reference (extrapolated)", f"{ref_med:9.1f} ms", f"{pct(ref_ms, 90):9.1f} ms",
         f"sample {args.sample} accts/tick x {len(touched) and int(np.median(touched)) // max(args.sample, 1)}; state mismatches vs (a): {mismatch}"),
        ("    same, CPU time of the process", f"{float(np.median(vec_cpu)):9.2f} ms", f"{pct(vec_cpu, 90):9.2f} ms",
         "process_time: less sensitive to other load on the host"),
        ("    speedup (b)/(a)", f"{ref_med / med:9.1f} x", "", "wall/wall, same tick, same load"),
        ("(c) margin_status incl. liquidation prices", f"{status_s / len(srows) * 1e6:9.1f} us", "",
         f"per account ({len(srows)} accts; liquidation_price {liq_time[0] / max(liq_time[1], 1) * 1e6:.1f} us x {liq_time[1]} calls = "
         f"{100 * liq_time[0] / status_s:.0f}% of it)"),
        ("(d) engine.apply(MarkTick) full path", f"{float(np.median(apply_ms)):9.2f} ms", f"{pct(apply_ms, 90):9.2f} ms",
         f"outputs/tick median {int(np.median(outs))} (status {int(np.median(statuses))}, calls/liqs {int(np.median(calls))}), max {max(outs)}"),
        ("    same, CPU time of the process", f"{float(np.median(apply_cpu)):9.2f} ms", f"{pct(apply_cpu, 90):9.2f} ms", ""),
        ("    of which payload bodies (status emission)", f"{float(np.median(body_ms)):9.2f} ms", f"{pct(body_ms, 90):9.2f} ms",
         "margin_status (incl. liquidation prices), margin-calls, liquidation orders"),
        ("    apply minus payload bodies", f"{float(np.median(np.subtract(apply_ms, body_ms))):9.2f} ms",
         f"{pct(np.subtract(apply_ms, body_ms), 90):9.2f} ms", "decisions, transitions, emission triggers"),
    ]
    if rst is not None:
        rows_tbl += [
            ("(e) records.restore, bulk (whole partition)", f"{rst['restore_s']:9.2f} s", "",
             f"{rst['accounts']:,} accounts / {rst['positions']:,} positions from JSON records "
             f"(records built in {rst['records_s']:.1f} s); index bit-identical to the original"),
            ("    per-account path (bulk=False), extrapolated", f"{rst['per_row_extrapolated_s']:9.1f} s", "",
             f"timed on {rst['per_row_sample']:,} accounts"),
        ]
    print()
    print(f"{'measure':55s} {'median':>12s} {'p90':>12s}  notes")
    for name, a, b, note in rows_tbl:
        print(f"{name:55s} {a:>12s} {b:>12s}  {note}")
    print(f"\nmachine: nproc={m['nproc']} loadavg={m['loadavg']} cpu={m['cpu']!r} python {m['python']} numpy {m['numpy']}; "
          f"peak RSS {rss_ticks:.0f} MiB (ticks), {peak_rss_mb():.0f} MiB (with (e)); target: median <= 25 ms/tick, >= 50x reference -> "
          f"{'MET' if med <= 25 and ref_med / med >= 50 else 'MISSED'}")
    if prof_text:
        print("\ncProfile of 5 vectorized ticks (tottime):\n" + prof_text)
    if apply_prof is not None:
        import io
        buf = io.StringIO()
        pstats.Stats(apply_prof, stream=buf).sort_stats("cumtime").print_stats(18)
        print("cProfile of the timed engine.apply ticks (cumtime):\n" + buf.getvalue())
    out = {
        "bench": "engine.mark_tick", "accounts": args.accounts, "positions": info["positions"],
        "touched_accounts": int(np.median(touched)), "ticks": args.ticks,
        "median_ms": round(med, 3), "p90_ms": round(p90, 3),
        "cpu_median_ms": round(float(np.median(vec_cpu)), 3), "cpu_p90_ms": round(pct(vec_cpu, 90), 3),
        "positions_per_s": round(positions_per_tick / (med / 1e3)),
        "reference_ms_per_tick": round(ref_med, 1), "reference_sample": args.sample,
        "speedup": round(ref_med / med, 1), "state_mismatches": mismatch,
        "exact_fallbacks_per_tick": int(np.median(exact_n)),
        "status_us_per_account": round(status_s / len(srows) * 1e6, 1),
        "liquidation_price_us": round(liq_time[0] / max(liq_time[1], 1) * 1e6, 1),
        "apply_median_ms": round(float(np.median(apply_ms)), 3), "apply_p90_ms": round(pct(apply_ms, 90), 3),
        "apply_cpu_median_ms": round(float(np.median(apply_cpu)), 3),
        "apply_outputs_per_tick": int(np.median(outs)), "initial_states": info["states"],
        "apply_bodies_median_ms": round(float(np.median(body_ms)), 3),
        "restore_s": None if rst is None else round(rst["restore_s"], 2),
        "restore_per_row_extrapolated_s": None if rst is None else round(rst["per_row_extrapolated_s"], 1),
        "peak_rss_mb": round(rss_ticks), "peak_rss_with_restore_mb": round(peak_rss_mb()), **m,
    }
    print(json.dumps(out))
    return 0


if __name__ == "__main__":
    sys.exit(main())
