"""The ids an engine remembers to tell a redelivery from a new event, and when it forgets them.

The contract remembers ids "for at least the last 100,000 per account or 24 h of
event time". :class:`RememberedIds` keeps the time window, measured per account:

    an id (account a, ts t) is forgotten once t < T(a) − window,
    T(a) = the greatest ts of any id of a applied so far

(window = :attr:`MarginConfig.id_window_ms`, 24 h by default). Each account runs on
its own event time, so an account that has gone quiet keeps its ids until it trades
again, one account's clock (even a wrong one far in the future) never forgets
another's ids, and the set depends only on the account's own events, never on how
accounts share a partition or on the order ids of different times arrived in. The
greatest-ts id of an account is never forgotten, so T(a) is also the greatest ts
among the remembered ids: a rebuild from the remembered ids alone recovers it.

A redelivery later than the window is applied again; that is the contract's limit.

Changelog values are ``fingerprint``, ``ts`` and ``account_id`` joined by ``"\\x1f"``
(the account last: an account id may itself hold the separator, so the key alone
cannot name it). A value of the fingerprint alone (written before ids were
forgotten) is dated T(a) when it is restored (or the partition's latest event time
when its account has no dated value), so it is kept at least one more window.
"""
from __future__ import annotations

import heapq
import sys
from collections.abc import Callable, Iterable, Iterator

DAY_MS = 86_400_000
_SEP = "\x1f"


def id_key(account_id: str, topic: str, ident: str) -> str:
    """The key of an account's input id (``topic``: fills, collateral or account-snapshots)."""
    return f"{account_id}{_SEP}{topic}{_SEP}{ident}"


def encode_value(fp: str, ts: int, account_id: str) -> str:
    """The changelog value of a remembered id."""
    return f"{fp}{_SEP}{ts}{_SEP}{account_id}"


def decode_value(value: str) -> tuple[str, int | None, str | None]:
    """(fingerprint, ts, account_id) from a changelog value; ts and account_id are
    None in a value of the fingerprint alone."""
    fp, sep, rest = value.partition(_SEP)
    if not sep:
        return fp, None, None
    ts, _, account_id = rest.partition(_SEP)
    return fp, int(ts), account_id


class RememberedIds:
    """Remembered ids of one partition: key -> fingerprint, forgotten by the rule above.

    Keys are :func:`id_key` (``account_id + "\\x1f" + topic + "\\x1f" + id``); the
    account is passed alongside, never parsed from a key (see the module docstring).
    """

    __slots__ = ("window_ms", "_fp", "_by_account", "_latest")

    def __init__(self, window_ms: int = DAY_MS) -> None:
        if window_ms <= 0:
            raise ValueError(f"window_ms must be positive, not {window_ms}")
        self.window_ms = window_ms
        self._fp: dict[str, str] = {}
        # account -> heap of (ts, key): the oldest id of the account is at [0]
        self._by_account: dict[str, list[tuple[int, str]]] = {}
        self._latest: dict[str, int] = {}  # T(a)

    def get(self, key: str) -> str | None:
        """The fingerprint remembered under ``key``, or None."""
        return self._fp.get(key)

    def __len__(self) -> int:
        return len(self._fp)

    def __contains__(self, key: str) -> bool:
        return key in self._fp

    def items(self) -> Iterator[tuple[str, str]]:
        """(key, fingerprint) of every remembered id."""
        return iter(self._fp.items())

    def latest_ts(self, account_id: str) -> int | None:
        """T(a): the greatest ts of the account's ids, None when it has none."""
        return self._latest.get(account_id)

    def remember(self, account_id: str, key: str, fp: str, ts: int) -> list[str]:
        """Remember ``key`` (an id of ``account_id`` at event time ``ts``); return the
        keys this forgets (possibly ``key`` itself, when ts is already outside the window)."""
        self._fp[key] = fp
        heapq.heappush(self._by_account.setdefault(account_id, []), (ts, key))
        latest = self._latest.get(account_id)
        if latest is None or ts > latest:
            self._latest[account_id] = latest = ts
        return self._forget_before(account_id, latest - self.window_ms)

    def _forget_before(self, account_id: str, cutoff: int) -> list[str]:
        heap = self._by_account[account_id]
        if heap[0][0] >= cutoff:
            return []
        forgotten = []
        while heap and heap[0][0] < cutoff:
            _, key = heapq.heappop(heap)
            del self._fp[key]
            forgotten.append(key)
        return forgotten

    def restore(self, entries: Iterable[tuple[str, str]], undated_ts: int = 0) -> None:
        """Load ``(key, changelog value)`` pairs (any order) and apply the rule to them.

        A value without a ts is dated T(a), or ``undated_ts`` (the partition's latest
        event time) for an account with no dated value."""
        undated: list[tuple[str, str, str]] = []
        for key, value in entries:
            fp, ts, account_id = decode_value(value)
            if ts is None:
                # legacy value: the key's first field (exact unless the id holds the separator)
                undated.append((key.partition(_SEP)[0], key, fp))
                continue
            self._fp[key] = fp
            self._by_account.setdefault(account_id, []).append((ts, key))
            if ts > self._latest.get(account_id, ts - 1):
                self._latest[account_id] = ts
        for account_id, key, fp in undated:
            ts = self._latest.setdefault(account_id, undated_ts)
            self._fp[key] = fp
            self._by_account.setdefault(account_id, []).append((ts, key))
        for account_id, heap in self._by_account.items():
            heapq.heapify(heap)
            self._forget_before(account_id, self._latest[account_id] - self.window_ms)

    def memory_bytes(self, sizeof: Callable[[object], int] = sys.getsizeof) -> int:
        """Bytes held by the remembered ids as ``sizeof`` counts each object: the tables,
        keys, fingerprints, heap entries and their times (the keys are shared, counted once)."""
        total = sizeof(self._fp) + sizeof(self._by_account) + sizeof(self._latest)
        total += sum(sizeof(k) + sizeof(v) for k, v in self._fp.items())
        for account_id, heap in self._by_account.items():
            total += sizeof(account_id) + sizeof(heap) + sum(sizeof(e) + sizeof(e[0]) for e in heap)
        return total

    def dated_items(self) -> Iterator[tuple[str, str]]:
        """(key, changelog value) of every remembered id, as :meth:`restore` reads them."""
        for account_id, heap in self._by_account.items():
            for ts, key in heap:
                yield key, encode_value(self._fp[key], ts, account_id)
