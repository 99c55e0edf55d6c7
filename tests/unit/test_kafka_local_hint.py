"""streams/kafka_local: a start that times out says when a crowded data dir is the likely cause."""
from __future__ import annotations

from streams.kafka_local import process, readiness


def test_slow_start_hint_names_a_crowded_data_dir(tmp_path, monkeypatch):
    monkeypatch.setattr(process, "_state", lambda: {"data_dir": str(tmp_path)})
    for i in range(readiness.MANY_PARTITION_DIRS - 1):
        (tmp_path / f"t-{i}").mkdir()
    assert readiness._slow_start_hint() == ""  # a normal data dir: no hint
    (tmp_path / "one-more").mkdir()
    hint = readiness._slow_start_hint()
    assert f"{tmp_path} holds 1,000 partition directories" in hint
    assert "make kafka-clean" in hint and "--timeout" in hint


def test_slow_start_hint_without_a_data_dir(tmp_path, monkeypatch):
    monkeypatch.setattr(process, "_state", lambda: {"data_dir": str(tmp_path / "missing")})
    assert readiness._slow_start_hint() == ""
