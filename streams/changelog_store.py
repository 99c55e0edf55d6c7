"""The faust store of the margin tables: the committed changelog itself is the state.

The tables (``accounts``, ``seen-ids``) exist for their compacted changelog
topics, for faust's co-partitioned assignment of those topics with the
sequenced log, and for ``table_route`` (the owner of an account's partition
answers ``GET /accounts/{id}``). Their state is written by the margin agent
into the changelog, in the same transaction as its outputs and input offsets
(``streams.agents.sender``), and an engine is rebuilt from the **committed**
changelog when its partition is assigned
(``streams.agents.accounts.read_committed_records``). Nothing reads faust's copy.

faust's recovery of a memory store nonetheless re-reads every changelog record
of every assigned partition through its per-message path before the worker
resumes: more than 600 s for 1.1M records (``bench/worker_state.py``), and
under exactly-once after a ``kill -9`` it was seen in CI to wait without end
on the last offsets of the changelog partitions (``need offset 541, have
540`` on every partition; faust's aborted-transaction check did not move it),
until the stall watchdog's busy limit.

So this store keeps nothing and reports that it already holds every
changelog partition it is given (``persisted_offset`` = :data:`HELD_TO_END`):
faust's recovery finds nothing remaining, seeks the paused changelog
partitions past their end and resumes the streams at once. Requires
``recovery_consistency_check`` off (``streams.app``) and no standby
replicas (``streams.app``): a standby would be fetched from that position.
Selected per table with ``store="changelog://committed"`` (:func:`register`).
"""
from __future__ import annotations

from typing import Any, Callable, Iterable, Optional

from faust.stores import STORES, memory
from faust.types import TP, EventT

#: what the store reports as the offset it holds: beyond any offset a
#: changelog partition can have, so faust's recovery has nothing to read
HELD_TO_END = 2**62

SCHEME = "changelog"


class CommittedChangelogStore(memory.Store):
    """A table store that holds no data; the committed changelog is the state.

    ``persisted_offset(tp)`` is :data:`HELD_TO_END` for every partition, so
    faust's recovery reads nothing; changelog batches and writes are dropped.
    """

    def __post_init__(self) -> None:
        super().__post_init__()
        self.dropped_writes = 0

    def persisted_offset(self, tp: TP) -> Optional[int]:
        """Offset of the last changelog record held: all of them, by definition."""
        return HELD_TO_END

    def set_persisted_offset(self, tp: TP, offset: int) -> None:
        """Nothing to remember: the position is the changelog's end, always."""

    def apply_changelog_batch(
        self,
        batch: Iterable[EventT],
        to_key: Callable[[Any], Any],
        to_value: Callable[[Any], Any],
    ) -> None:
        """Ignore changelog records: engines read the committed changelog themselves."""

    def __setitem__(self, key: Any, value: Any) -> None:
        # a write through the table would also be sent to the changelog by faust
        # (outside the agent's batch); the agent never writes through the table
        self.dropped_writes += 1


def register() -> str:
    """Make ``changelog://`` a faust store scheme; returns the URL to pass as ``store=``."""
    STORES.aliases[SCHEME] = f"{__name__}:CommittedChangelogStore"
    return f"{SCHEME}://committed"  # a bare "changelog://" is a falsy URL, which faust ignores
