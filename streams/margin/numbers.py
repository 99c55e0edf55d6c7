"""Number formatting of the contract: plain decimals and 12-significant-digit values."""
from __future__ import annotations

import math
from decimal import Decimal

_SIG = 12


def fmt_decimal(d: Decimal) -> str:
    """Plain notation, no exponent, no trailing zeros, ``"0"`` for any zero."""
    if not d:
        return "0"
    text = format(d, "f")
    if "." in text:
        text = text.rstrip("0").rstrip(".")
    return text


def round_sig(x: float) -> float:
    """``x`` rounded to 12 significant digits (as the float nearest that decimal)."""
    if x == 0 or not math.isfinite(x):
        return x
    return float(f"{x:.{_SIG - 1}e}")


def fmt_sig(x: float | Decimal | None) -> str | None:
    """12 significant digits in plain notation without trailing zeros; None stays None."""
    if x is None:
        return None
    if isinstance(x, float) and (math.isnan(x) or math.isinf(x)):
        return None
    if x == 0:
        return "0"
    return fmt_decimal(Decimal(f"{x:.{_SIG - 1}e}"))
