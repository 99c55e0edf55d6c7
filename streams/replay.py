"""``marginwatch replay FILE``: the engine over a JSON-lines log, without Kafka.

Each line is an envelope ``{"topic", "key", "value"}`` where value is an object,
a string of raw text, or given as ``value_b64``; lines are applied in file order
as one partition (offset = line number from 0). Every output is printed as a
``{"topic", "key", "value"}`` line. A line that is not such an envelope is
dead-lettered with ``source_topic: "replay"``.
"""
from __future__ import annotations

import sys
from typing import IO, Iterable, Iterator

import orjson

from . import codec
from .deadletter import build_replay_dead_letter
from .margin.engine import Output, current_status
from .margin.errors import InputRejected
from .pipeline import DEAD_LETTERS, PartitionProcessor, Processed, new_engine, wall_ms
from .settings import Settings


def parse_envelope(line: bytes) -> tuple[str, bytes | None, bytes]:
    """(topic, key bytes, value bytes) of one replay line, or ``InputRejected``.

    An object ``value`` counts as its exact text in the line, so risk-params cause
    ids (a hash of the value bytes) match what a producer of that text would get.
    """
    return codec.decode_replay_line(line)


def open_log(path: str) -> IO[bytes]:
    """A replay log opened for reading bytes (``-`` = stdin)."""
    return sys.stdin.buffer if path == "-" else open(path, "rb")


def apply_lines(proc: PartitionProcessor,
                lines: Iterable[bytes]) -> Iterator[tuple[int, bytes, Processed | InputRejected]]:
    """Apply replay ``lines`` to ``proc`` in order, as one partition (offset = line number
    from 0; blank lines are skipped): ``(offset, line, result)`` per line, the result being
    what ``proc`` made of it, or the :class:`InputRejected` of a line that is not an
    envelope (not applied). Lazy: a line is applied when its result is asked for."""
    for offset, line in enumerate(lines):
        line = line.rstrip(b"\r\n")
        if not line.strip():
            continue
        try:
            topic, key, value = parse_envelope(line)
        except InputRejected as err:
            yield offset, line, err
            continue
        yield offset, line, proc.process(topic, key, value, offset)


def replay_lines(lines: Iterable[bytes], settings: Settings, final: bool = False,
                 clock=wall_ms) -> Iterator[Output]:
    """Outputs of replaying ``lines`` (one partition, offset = line number)."""
    proc = PartitionProcessor(new_engine(settings), partition=0, clock=clock)
    for offset, line, result in apply_lines(proc, lines):
        if isinstance(result, InputRejected):
            payload = build_replay_dead_letter(
                line_no=offset, line=line, error=result, fallback_ts=proc.engine.last_ts, decided_at=clock(),
            )
            yield Output(DEAD_LETTERS, payload.get("account_id") or "", payload)
            continue
        yield from stamp(result.outputs, clock)
    if final:
        cause = {"topic": "replay", "id": "final", "ts": proc.engine.last_ts}
        for account_id in sorted(proc.engine.accounts):
            out = current_status(proc.engine, account_id, cause)
            if out is not None:
                yield from stamp([out], clock)


def stamp(outputs: list[Output], clock) -> list[Output]:
    """Add ``decided_at`` (wall clock) to each output value that lacks it."""
    now = clock()
    for out in outputs:
        out.value.setdefault("decided_at", now)
    return outputs


def write_outputs(outputs: Iterable[Output], stream: IO[bytes]) -> int:
    n = 0
    for out in outputs:
        stream.write(orjson.dumps({"topic": out.topic, "key": out.key, "value": out.value}))
        stream.write(b"\n")
        n += 1
    return n


def run(path: str, settings: Settings, final: bool) -> int:
    """The command: read ``path`` (``-`` = stdin), print outputs; returns the exit code."""
    with open_log(path) as stream:
        write_outputs(replay_lines(stream, settings, final), sys.stdout.buffer)
    sys.stdout.flush()
    return 0
