"""The pure margin core: numpy and the standard library only.

Exact arithmetic uses :mod:`decimal` with 40 significant digits (set here for the
default context, so every thread of the process uses it): wire decimals have at
most 18 digits after the point, and 40 keeps products and averages exact enough
that float evaluation is the only approximation in the system.
"""
import decimal as _decimal

_decimal.DefaultContext.prec = 40
_decimal.getcontext().prec = 40
