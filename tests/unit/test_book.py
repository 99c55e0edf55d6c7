"""The exact account book (streams/margin/book.py): fills, fees, collateral,
isolated margin, snapshots. Every expected value is computed by hand in a comment."""
from __future__ import annotations

from decimal import Decimal

import pytest

from streams.margin.book import AccountBook
from streams.margin.errors import (
    INSUFFICIENT_ISOLATED_MARGIN,
    MARGIN_MODE_CONFLICT,
    SCHEMA_VIOLATION,
    InputRejected,
)
from streams.margin.instruments import Instrument
from tests.unit.conftest import collateral, fill, instrument, iso_move, snapshot

D = Decimal

LIN = Instrument.from_params(instrument("LIN", "linear", "USDT", "1"))
LIN_SMALL = Instrument.from_params(instrument("BTCUSDT", "linear", "USDT", "0.001"))
INV = Instrument.from_params(instrument("BTCUSD", "inverse", "BTC", "100"))
INSTS = {"LIN": LIN, "BTCUSDT": LIN_SMALL, "BTCUSD": INV}


def run(book: AccountBook, *events) -> AccountBook:
    for ev in events:
        if ev.topic == "fills":
            book.apply_fill(ev, INSTS[ev.symbol])
        elif ev.topic == "collateral":
            book.apply_collateral(ev, INSTS.get(ev.symbol) if ev.symbol else None)
        else:
            book.apply_snapshot(ev)
    return book


def pos(book, symbol):
    p = book.positions[symbol]
    return p.qty, p.entry


def F(n, side, qty, price, symbol="LIN", **kw):
    return fill(f"f{n}", "a", symbol, side, qty, price, n, **kw)


# --------------------------------------------------------------------------------------
# Linear: (fills, expected qty, expected entry, expected USDT balance)
# --------------------------------------------------------------------------------------
LINEAR_TABLE = [
    # open long 1 @ 100: q = 1, e = 100, nothing realized
    ([("buy", 1, 100)], 1, "100", None),
    # add: 1 @ 100 + 3 @ 200 -> e = (1*100 + 3*200)/4 = 700/4 = 175
    ([("buy", 1, 100), ("buy", 3, 200)], 4, "175", None),
    # reduce: then sell 1 @ 300 -> realized 1*1*(300-175) = 125; q = 3, e stays 175
    ([("buy", 1, 100), ("buy", 3, 200), ("sell", 1, 300)], 3, "175", "125"),
    # close: long 4 @ 175, sell 4 @ 150 -> realized 4*(150-175) = -100; position gone
    ([("buy", 1, 100), ("buy", 3, 200), ("sell", 4, 150)], None, None, "-100"),
    # flip: long 2 @ 100, sell 5 @ 120 -> closes 2: 2*(120-100) = +40; the rest -3 opens @ 120
    ([("buy", 2, 100), ("sell", 5, 120)], -3, "120", "40"),
    # short add: -2 @ 100, -2 @ 50 -> e = (2*100 + 2*50)/4 = 75
    ([("sell", 2, 100), ("sell", 2, 50)], -4, "75", None),
    # short reduce: -4 @ 75, buy 1 @ 60 -> realized -1*1*(60-75) = +15 (a short gains when price falls)
    ([("sell", 2, 100), ("sell", 2, 50), ("buy", 1, 60)], -3, "75", "15"),
    # short flip: -1 @ 10, buy 3 @ 12 -> closes 1: -1*(12-10) = -2; rest +2 opens @ 12
    ([("sell", 1, 10), ("buy", 3, 12)], 2, "12", "-2"),
    # weighted mean with unequal fractional sizes: 0.5 @ 101 + 1.5 @ 99 -> (50.5 + 148.5)/2 = 99.5
    ([("buy", "0.5", 101), ("buy", "1.5", 99)], D("2.0"), "99.5", None),
]


@pytest.mark.parametrize("fills,qty,entry,usdt", LINEAR_TABLE)
def test_linear_fill_table(fills, qty, entry, usdt):
    book = run(AccountBook("a"), *[F(i, s, q, p) for i, (s, q, p) in enumerate(fills, 1)])
    if qty is None:
        assert "LIN" not in book.positions
    else:
        assert pos(book, "LIN") == (D(str(qty)), D(entry))
    assert book.balances.get("USDT") == (None if usdt is None else D(usdt))


def test_linear_with_contract_size():
    # c = 0.001: long 2000 @ 50000, sell 500 @ 52000 -> realized 500*0.001*(52000-50000) = 1000 USDT
    book = run(AccountBook("a"), F(1, "buy", 2000, 50000, "BTCUSDT"), F(2, "sell", 500, 52000, "BTCUSDT"))
    assert pos(book, "BTCUSDT") == (D(1500), D(50000))
    assert book.balances == {"USDT": D(1000)}


# --------------------------------------------------------------------------------------
# Inverse: harmonic mean entry, realized PnL in the coin
# --------------------------------------------------------------------------------------
def test_inverse_add_uses_harmonic_mean():
    # 100 @ 50000 + 100 @ 60000 -> e = 200/(100/50000 + 100/60000) = 200/(11/3000) = 600000/11
    #   = 54545.4545...  (the arithmetic mean 55000 would be wrong)
    book = run(AccountBook("a"), F(1, "buy", 100, 50000, "BTCUSD"), F(2, "buy", 100, 60000, "BTCUSD"))
    q, e = pos(book, "BTCUSD")
    assert q == 200
    assert abs(e - D(600000) / D(11)) < D("1e-20")
    assert str(e).startswith("54545.4545454545")


def test_inverse_short_add_uses_harmonic_mean():
    # -300 @ 40000, -100 @ 80000 -> e = 400/(300/40000 + 100/80000) = 400/(0.0075+0.00125) = 400/0.00875
    #   = 45714.2857142857...
    book = run(AccountBook("a"), F(1, "sell", 300, 40000, "BTCUSD"), F(2, "sell", 100, 80000, "BTCUSD"))
    q, e = pos(book, "BTCUSD")
    assert q == -400
    assert abs(e - D(400) / D("0.00875")) < D("1e-20")


def test_inverse_close_realizes_in_coin():
    # close 100 contracts of c=100 entered at 50000 at 60000:
    #   100*100*(1/50000 - 1/60000) = 10000 * (1/300000) = 1/30 BTC = 0.0333... BTC
    book = run(AccountBook("a"), F(1, "buy", 100, 50000, "BTCUSD"), F(2, "sell", 100, 60000, "BTCUSD"))
    assert "BTCUSD" not in book.positions
    assert abs(book.balances["BTC"] - D(1) / D(30)) < D("1e-25")
    assert "USDT" not in book.balances


def test_inverse_short_loss_when_price_rises():
    # short 50 @ 40000, buy 20 @ 50000: realized -20*100*(1/40000 - 1/50000) = -2000*(1/200000) = -0.01 BTC
    book = run(AccountBook("a"), F(1, "sell", 50, 40000, "BTCUSD"), F(2, "buy", 20, 50000, "BTCUSD"))
    assert pos(book, "BTCUSD") == (D(-30), D(40000))
    assert book.balances["BTC"] == D("-0.01")


def test_inverse_flip_opens_rest_at_fill_price():
    # long 10 @ 40000; sell 30 @ 50000 -> closes 10: 10*100*(1/40000-1/50000) = 1000/200000 = 0.005 BTC;
    # rest -20 opens at 50000
    book = run(AccountBook("a"), F(1, "buy", 10, 40000, "BTCUSD"), F(2, "sell", 30, 50000, "BTCUSD"))
    assert pos(book, "BTCUSD") == (D(-20), D(50000))
    assert book.balances["BTC"] == D("0.005")


# --------------------------------------------------------------------------------------
# Fees
# --------------------------------------------------------------------------------------
def test_fee_debited_from_settle_asset_by_default():
    # buy 2 @ 100 fee 0.2 -> USDT -0.2; sell 2 @ 110 fee 0.22 -> +20 realized, -0.22 -> 19.58
    book = run(AccountBook("a"), F(1, "buy", 2, 100, fee="0.2"), F(2, "sell", 2, 110, fee="0.22"))
    assert book.balances == {"USDT": D("19.58")}


def test_fee_debited_from_fee_asset():
    # fee 0.0001 BTC on a USDT-settled fill; a negative fee (rebate) credits
    book = run(AccountBook("a"), F(1, "buy", 1, 100, fee="0.0001", fee_asset="BTC"),
               F(2, "buy", 1, 100, fee="-0.05"))
    assert book.balances == {"BTC": D("-0.0001"), "USDT": D("0.05")}


def test_fee_of_inverse_in_coin():
    book = run(AccountBook("a"), F(1, "buy", 100, 50000, "BTCUSD", fee="0.00002"))
    assert book.balances == {"BTC": D("-0.00002")}


def test_fee_on_isolated_fill_comes_from_cross_balance():
    book = run(AccountBook("a"), collateral("c", "a", "USDT", 100, 0),
               iso_move("m", "a", "USDT", 40, "LIN", 1),
               F(2, "buy", 1, 100, fee="1", mode="isolated"))
    assert book.balances == {"USDT": D(59)}  # 100 - 40 - 1
    assert book.positions["LIN"].isolated_margin == D(40)


# --------------------------------------------------------------------------------------
# Collateral and isolated margin
# --------------------------------------------------------------------------------------
def test_collateral_signed_changes():
    book = run(AccountBook("a"), collateral("1", "a", "USDT", "100.5", 1),
               collateral("2", "a", "USDT", "-30", 2, reason="withdrawal"),
               collateral("3", "a", "BTC", "0.1", 3))
    assert book.balances == {"USDT": D("70.5"), "BTC": D("0.1")}
    # a balance that returns to exactly zero disappears
    run(book, collateral("4", "a", "BTC", "-0.1", 4))
    assert book.balances == {"USDT": D("70.5")}


def test_isolated_transfers_in_and_out():
    book = run(AccountBook("a"), collateral("1", "a", "USDT", 1000, 1),
               iso_move("2", "a", "USDT", 300, "LIN", 2))
    # +300 moves cross -> isolated: USDT 700, isolated 300 (a flat isolated slot)
    assert book.balances == {"USDT": D(700)}
    p = book.positions["LIN"]
    assert (p.qty, p.margin_mode, p.isolated_margin) == (0, "isolated", D(300))
    # -120 moves it back: 820 / 180
    run(book, iso_move("3", "a", "USDT", -120, "LIN", 3))
    assert book.balances == {"USDT": D(820)} and book.positions["LIN"].isolated_margin == D(180)
    # -181 would go below zero: rejected, nothing changed
    before = book.to_record()
    with pytest.raises(InputRejected) as ei:
        run(book, iso_move("4", "a", "USDT", -181, "LIN", 4))
    assert ei.value.code == INSUFFICIENT_ISOLATED_MARGIN and ei.value.field == "amount"
    assert book.to_record() == before
    # exactly to zero is allowed; the empty flat slot disappears
    run(book, iso_move("5", "a", "USDT", -180, "LIN", 5))
    assert book.balances == {"USDT": D(1000)} and "LIN" not in book.positions


def test_isolated_move_out_of_nothing_rejected():
    with pytest.raises(InputRejected) as ei:
        run(AccountBook("a"), iso_move("1", "a", "USDT", -1, "LIN", 1))
    assert ei.value.code == INSUFFICIENT_ISOLATED_MARGIN


def test_isolated_move_must_be_in_settle_asset():
    with pytest.raises(InputRejected) as ei:
        run(AccountBook("a"), iso_move("1", "a", "BTC", 1, "LIN", 1))
    assert ei.value.code == SCHEMA_VIOLATION and ei.value.field == "asset"


def test_isolated_move_onto_open_cross_position_rejected():
    book = run(AccountBook("a"), F(1, "buy", 1, 100))
    with pytest.raises(InputRejected) as ei:
        run(book, iso_move("2", "a", "USDT", 10, "LIN", 2))
    assert ei.value.code == MARGIN_MODE_CONFLICT


def test_isolated_position_realizes_into_margin_and_close_returns_it():
    # deposit 1000, move 200 to isolated LIN, buy 4 @ 100 isolated
    book = run(AccountBook("a"), collateral("c", "a", "USDT", 1000, 0),
               iso_move("m", "a", "USDT", 200, "LIN", 1), F(2, "buy", 4, 100, mode="isolated"))
    assert book.balances == {"USDT": D(800)}
    # sell 1 @ 90: realized 1*(90-100) = -10 into the isolated margin: 190; cross untouched
    run(book, F(3, "sell", 1, 90, mode="isolated"))
    assert book.positions["LIN"].isolated_margin == D(190) and book.balances == {"USDT": D(800)}
    # sell 3 @ 120: realized 3*(120-100) = +60 -> margin 250; q = 0 -> margin back to cross: 1050
    run(book, F(4, "sell", 3, 120, mode="isolated"))
    assert "LIN" not in book.positions
    assert book.balances == {"USDT": D(1050)}


def test_isolated_flip_keeps_margin_in_position():
    book = run(AccountBook("a"), iso_move("m", "a", "USDT", 50, "LIN", 1), F(2, "buy", 1, 100, mode="isolated"),
               F(3, "sell", 3, 110, mode="isolated"))
    # closes 1: +10 into margin (60); rest -2 opens at 110, still isolated
    p = book.positions["LIN"]
    assert (p.qty, p.entry, p.isolated_margin, p.margin_mode) == (D(-2), D(110), D(60), "isolated")
    assert book.balances == {"USDT": D(-50)}


def test_margin_mode_conflict():
    book = run(AccountBook("a"), F(1, "buy", 1, 100))
    before = book.to_record()
    with pytest.raises(InputRejected) as ei:
        run(book, F(2, "buy", 1, 100, mode="isolated"))
    assert ei.value.code == MARGIN_MODE_CONFLICT and ei.value.field == "margin_mode"
    assert book.to_record() == before
    # once flat, the other mode is allowed
    run(book, F(3, "sell", 1, 100), F(4, "buy", 1, 100, mode="isolated"))
    assert book.positions["LIN"].margin_mode == "isolated"


def test_flat_isolated_slot_switches_to_cross_and_returns_margin():
    book = run(AccountBook("a"), iso_move("m", "a", "USDT", 25, "LIN", 1), F(2, "buy", 1, 100))
    p = book.positions["LIN"]
    assert (p.margin_mode, p.isolated_margin) == ("cross", 0)
    assert book.balances == {}  # -25 + 25 returned


# --------------------------------------------------------------------------------------
# Snapshots
# --------------------------------------------------------------------------------------
def test_snapshot_replaces_the_book():
    book = run(AccountBook("a"), collateral("c", "a", "USDT", 1000, 0), F(1, "buy", 5, 100),
               F(2, "sell", 10, 50000, "BTCUSD"))
    run(book, snapshot("s", "a", 9, {"USDT": "12.5", "BTC": "0"},
                       [("BTCUSDT", "-3", "51000"), ("LIN", "2", "99", "isolated", "40"),
                        ("BTCUSD", "0", "1"),  # a flat cross position: dropped
                        ]))
    assert book.balances == {"USDT": D("12.5")}  # zero balances dropped
    assert set(book.positions) == {"BTCUSDT", "LIN"}
    b = book.positions["BTCUSDT"]
    assert (b.qty, b.entry, b.margin_mode, b.isolated_margin, b.last_price) == (D(-3), D(51000), "cross", 0, D(51000))
    i = book.positions["LIN"]
    assert (i.qty, i.entry, i.margin_mode, i.isolated_margin) == (D(2), D(99), "isolated", D(40))


def test_snapshot_ignores_isolated_margin_of_cross_position_and_keeps_funded_flat_isolated():
    book = run(AccountBook("a"), snapshot("s", "a", 1, {}, [("LIN", "1", "100", "cross", "7"),
                                                          ("BTCUSD", "0", "50000", "isolated", "0.1")]))
    assert book.positions["LIN"].isolated_margin == 0
    assert book.positions["BTCUSD"].isolated_margin == D("0.1")


def test_record_round_trip():
    book = run(AccountBook("a"), collateral("c", "a", "USDT", "1000.125", 0), F(1, "buy", 100, 50000, "BTCUSD"),
               F(2, "buy", 100, 60000, "BTCUSD"), iso_move("m", "a", "USDT", 10, "LIN", 3))
    again = AccountBook.from_record("a", book.to_record())
    assert again.to_record() == book.to_record()
    assert again.positions["BTCUSD"].entry == book.positions["BTCUSD"].entry  # exact, all digits
