"""The one root exception of marginwatch, and the dead-letter error codes.

Every error raised on purpose anywhere in the package derives from
:class:`MarginwatchError`. An error that rejects an input carries the contract's
dead-letter ``code``, the ``field`` it is about and a ``detail`` sentence naming
that field, so that a dead-letter can be built from the exception alone.
"""
from __future__ import annotations

# Dead-letter error codes of the contract, in order of precedence.
INVALID_JSON = "invalid_json"
SCHEMA_VIOLATION = "schema_violation"
NON_FINITE_NUMBER = "non_finite_number"
KEY_MISMATCH = "key_mismatch"
UNKNOWN_INSTRUMENT = "unknown_instrument"
UNKNOWN_ASSET = "unknown_asset"
PARAMS_CONFLICT = "params_conflict"
MARGIN_MODE_CONFLICT = "margin_mode_conflict"
INSUFFICIENT_ISOLATED_MARGIN = "insufficient_isolated_margin"
CONFLICTING_DUPLICATE = "conflicting_duplicate"

ERROR_CODES: tuple[str, ...] = (
    INVALID_JSON,
    SCHEMA_VIOLATION,
    NON_FINITE_NUMBER,
    KEY_MISMATCH,
    UNKNOWN_INSTRUMENT,
    UNKNOWN_ASSET,
    PARAMS_CONFLICT,
    MARGIN_MODE_CONFLICT,
    INSUFFICIENT_ISOLATED_MARGIN,
    CONFLICTING_DUPLICATE,
)


class MarginwatchError(Exception):
    """Root of every marginwatch error.

    ``code`` is a machine-readable code (a dead-letter code for rejected input),
    ``field`` the input field at fault (a dotted path, or ``None``) and ``detail``
    a sentence for humans that names the field.
    """

    def __init__(self, code: str, detail: str, field: str | None = None) -> None:
        super().__init__(detail)
        self.code = code
        self.detail = detail
        self.field = field

    def __repr__(self) -> str:
        return f"{type(self).__name__}(code={self.code!r}, field={self.field!r}, detail={self.detail!r})"


class InputRejected(MarginwatchError):
    """An input that cannot be applied; it becomes a dead-letter with ``code``.

    ``account_id``, ``cause_id`` and ``ts`` are what could be read of the input
    (``None`` when it could not be parsed that far); the dead-letter uses them.
    """

    def __init__(
        self,
        code: str,
        detail: str,
        field: str | None = None,
        *,
        account_id: str | None = None,
        cause_id: str | None = None,
        ts: int | None = None,
    ) -> None:
        super().__init__(code, detail, field)
        self.account_id = account_id
        self.cause_id = cause_id
        self.ts = ts


class ConfigError(MarginwatchError):
    """A setting, a command-line argument or a start-up file is wrong."""

    def __init__(self, detail: str, field: str | None = None) -> None:
        super().__init__("config_error", detail, field)
