"""Vectorized float evaluation of many accounts at once (numpy).

The :class:`ColumnarIndex` mirrors the exact books of one partition in arrays:

* per symbol, its positions (:class:`SymbolColumn`): account row, qty, entry and
  the values last computed at its mark (uPnL, MM, term magnitude; the notional is
  recomputed on demand, ``notional_one``);
* per settle asset, packed matrices ``U`` (uPnL), ``M`` (MM) and ``G`` (term
  magnitude) of the cross positions: row r's positions settled in the asset sit in
  ``[0, cnt[r])`` in the asset's symbol column order, zeros after (:class:`_Packed`) —
  so a tick reads as many rows of them as accounts hold positions, not one per symbol;
* per asset, the cross balances ``bal``;
* per row, ``ntc``: how many of its cross positions lie near a tier bound (an
  integer count, exact, so it does not depend on the order it was kept in).

Every float value of an account is a pure function of its book, the marks and the
parameters, summed in a fixed order (asset column order, then symbol column
order; skipping a symbol the account does not hold skips an exact ``+ 0.0``),
never accumulated across events: so the worker, a replay and a worker
rebuilt from its changelog compute the same bits. Decisions are screened in
floats; an account within ``NEAR`` (relative to the magnitude of its terms) of a
threshold is flagged for the exact decimal reference.

Three implementations compute the same values with the same IEEE operations in the
same order, so they give the same bits and any of them may serve any call:

* blocks of ``BLOCK`` rows/slots (numpy), so each block's working set stays in
  cache — a contiguous run of rows is read through views, never copied;
* arbitrary row sets gathered block by block with ``np.take`` (C-contiguous);
* at most ``SMALL`` rows or slots: plain Python floats (``+ − × ÷`` on doubles are
  correctly rounded in numpy and in Python alike), for single-account events.

The package: :mod:`.columns` holds :class:`SymbolColumn` (one symbol's positions and
their values at the mark), :mod:`.index` the :class:`ColumnarIndex` (rows, assets,
the packed cross terms, keeping them in step with the books) and :mod:`.evaluation`
what the index computes from them (:class:`CrossEval`, the threshold screen and
decisions, margin-status due-ness). Every name is importable from
``streams.margin.kernels``.
"""
from __future__ import annotations

NEAR = 1e-9  # relative screening band around every threshold
BLOCK = 32768  # rows (or slots) per block of the vectorized loops
SMALL = 4  # at most this many rows (or slots): the scalar path


def blocks(start: int, stop: int):
    """``(b, e)`` bounds of the blocks of at most ``BLOCK`` rows (or slots) of ``start:stop``."""
    for b in range(start, stop, BLOCK):
        yield b, min(stop, b + BLOCK)


# The parts read NEAR, BLOCK, SMALL and blocks() from this module when called, not when
# imported, so that setting ``kernels.SMALL`` / ``kernels.BLOCK`` reaches every path (the
# tests force the vectorized and many-block paths that way); hence imported last.
from .columns import SymbolColumn  # noqa: E402
from .evaluation import CrossEval, ratio_of  # noqa: E402
from .index import ColumnarIndex  # noqa: E402

__all__ = ["BLOCK", "NEAR", "SMALL", "ColumnarIndex", "CrossEval", "SymbolColumn", "ratio_of"]
