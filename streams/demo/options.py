"""What a demo run is given: its options, and where the repository and the liquidation bot are."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

# streams/demo/options.py: three levels below the repository root
REPO = Path(__file__).resolve().parents[2]
BOT = REPO / "examples" / "liquidation_bot.py"


@dataclass
class DemoOptions:
    """How ``marginwatch demo`` runs (the command line's options)."""

    duration: float | None = None  # seconds of simulation; None = until stopped
    accounts: int = 150
    rate: float = 40.0
    seed: int = 7
    crash_at: float = 1 / 3
    crash_depth: float = 0.18
    crash_every: float = 60.0
    partitions: int = 1
    keep_kafka: bool = False
    keep_topics: bool = False
    live: bool | None = None  # rich live view; None = when stdout is a terminal
