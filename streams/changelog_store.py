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

So this store keeps nothing and reports that it already holds each changelog
partition it is assigned up to that partition's last offset (its end offset,
read_uncommitted, minus one; queried when the partitions are assigned,
one query per rebalance for all the tables): faust's
recovery finds nothing remaining, positions the changelog partitions at their
end and resumes the streams at once. (An offset past the end was tried: the
consumer then fetched the changelog partitions, reset them, and faust's
livelock check crashed on the position aiokafka had not set yet.) Requires
``recovery_consistency_check`` off (``streams.app``). Should the end offsets
not be available, the store reports nothing held and faust recovers the
partitions the slow way, which is still correct.
Selected per table with ``store="changelog://committed"`` (:func:`register`).
"""
from __future__ import annotations

import asyncio
import logging
from typing import Any, Awaitable, Callable, Iterable, Mapping, Optional, Set

from faust.stores import STORES, memory
from faust.types import TP, EventT

log = logging.getLogger(__name__)

SCHEME = "changelog"
#: how long a rebalance waits for the end offsets before recovering the slow way
END_OFFSETS_TIMEOUT_S = 15.0

#: ``await end_offsets(tps)`` -> {tp: end offset}: set by :func:`register`
EndOffsets = Callable[[list], Awaitable[Mapping[Any, int]]]
_end_offsets: Optional[EndOffsets] = None


class CommittedChangelogStore(memory.Store):
    """A table store that holds no data; the committed changelog is the state.

    ``persisted_offset(tp)`` is the last offset of the assigned changelog
    partition when it was assigned, so faust's recovery reads nothing;
    changelog batches and writes are dropped.
    """

    def __post_init__(self) -> None:
        super().__post_init__()
        self.dropped_writes = 0
        self.held: dict[TP, int] = {}

    async def on_rebalance(self, assigned: Set[TP], revoked: Set[TP], newly_assigned: Set[TP],
                           generation_id: int = 0) -> None:
        """Remember the last offset of each changelog partition of this table now assigned."""
        topic = self.table.changelog_topic.get_topic_name()
        self.held = {}
        if _end_offsets is None or not any(tp.topic == topic for tp in assigned):
            return
        ends = await _changelog_end_offsets(self.table.app, assigned, generation_id)
        if ends is None:
            return
        self.held = {tp: int(end) - 1 for tp, end in ends.items() if tp.topic == topic and end is not None}

    def persisted_offset(self, tp: TP) -> Optional[int]:
        """Last changelog offset held: the partition's end when it was assigned (None: unknown)."""
        return self.held.get(tp)

    def set_persisted_offset(self, tp: TP, offset: int) -> None:
        """Nothing to remember: the changelog is read by the engines, not kept here."""

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


#: (app id, generation, changelog partitions) -> their end offsets (None: not available)
_last_answer: Optional[tuple[tuple, Optional[dict]]] = None


async def _changelog_end_offsets(app: Any, assigned: Set[TP], generation_id: int) -> Optional[dict]:
    """End offsets of every assigned changelog partition of the app's tables, once per rebalance.

    faust hands each table the same assignment, one table after the other; the
    first asks the broker for all of them, the others take its answer.
    """
    global _last_answer
    topics = {table.changelog_topic.get_topic_name() for table in app.tables.values()}
    tps = sorted(tp for tp in assigned if tp.topic in topics)
    key = (id(app), generation_id, frozenset(tps))
    if _last_answer is not None and _last_answer[0] == key:
        return _last_answer[1]
    try:
        ends: Optional[dict] = dict(await asyncio.wait_for(_end_offsets(tps), END_OFFSETS_TIMEOUT_S))
    except Exception as exc:  # recovery the slow way is still correct
        log.warning("end offsets of the changelog partitions not available (%r): faust recovers them "
                    "from the changelog", exc)
        ends = None
    _last_answer = (key, ends)
    return ends


def register(end_offsets: Optional[EndOffsets] = None) -> str:
    """Make ``changelog://`` a faust store scheme; returns the URL to pass as ``store=``.

    ``end_offsets(tps)`` returns the end offset of each changelog partition
    (the next offset to be written); without it every partition is recovered.
    """
    global _end_offsets, _last_answer
    _end_offsets, _last_answer = end_offsets, None
    STORES.aliases[SCHEME] = f"{__name__}:CommittedChangelogStore"
    return f"{SCHEME}://committed"  # a bare "changelog://" is a falsy URL, which faust ignores
