"""The demo's child processes (worker, bot, simulator) and what their logs say at the end."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
from pathlib import Path

from .options import REPO

STOP_GRACE_S = 20.0


def free_port() -> int:
    """A TCP port on 127.0.0.1 that was free a moment ago (for the worker's web server)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Child:
    """A subprocess in its own process group, logging to a file."""

    def __init__(self, name: str, cmd: list[str], env: dict, log_path: Path) -> None:
        self.name, self.cmd, self.env, self.log_path = name, cmd, env, log_path
        self.proc: subprocess.Popen | None = None

    def start(self) -> "Child":
        with open(self.log_path, "ab") as log:
            self.proc = subprocess.Popen(self.cmd, cwd=REPO, env=self.env, stdin=subprocess.DEVNULL,
                                         stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
        return self

    @property
    def pid(self) -> int | None:
        return self.proc.pid if self.proc else None

    def running(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def _killpg(self, sig: int) -> None:
        if self.proc is None:
            return
        try:
            os.killpg(self.proc.pid, sig)
        except (ProcessLookupError, PermissionError):
            pass

    def stop(self, grace: float = STOP_GRACE_S) -> int | None:
        """SIGTERM the group, SIGKILL it after ``grace`` seconds; the exit code."""
        if self.proc is None:
            return None
        if self.proc.poll() is None:
            self._killpg(signal.SIGTERM)
            try:
                self.proc.wait(grace)
            except subprocess.TimeoutExpired:
                self._killpg(signal.SIGKILL)
                self.proc.wait(10)
        self._killpg(signal.SIGKILL)  # whatever the leader left in its group
        return self.proc.returncode

    def kill(self) -> None:
        self._killpg(signal.SIGKILL)
        if self.proc is not None:
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                pass

    def tail(self, n: int = 25) -> str:
        try:
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-n:])
        except OSError:
            return ""


def _produced(sim: Child) -> int | None:
    """How many events the simulator says it produced (its last summary line)."""
    for line in reversed(sim.tail(20).splitlines()):
        if line.startswith("simulate: produced "):
            try:
                return int(line.split()[2].replace(",", ""))
            except (IndexError, ValueError):
                return None
    return None


def _bot_fills(bot: Child | None) -> int | None:
    """How many fills the bot says it sent (its last line, written when it stops)."""
    if bot is None:
        return None
    for line in reversed(bot.tail(20).splitlines()):
        if line.startswith("liquidation-bot: stopped;"):
            for part in line.split(","):
                words = part.split()
                if len(words) >= 2 and words[1] == "fills":
                    try:
                        return int(words[0])
                    except ValueError:
                        return None
    return None
