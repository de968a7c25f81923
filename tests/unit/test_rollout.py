"""Waves: each machine's wave comes from its machine-id, stays the same, and the waves spread over the fleet."""

from __future__ import annotations

import uuid
from pathlib import Path

import pytest

from arkes import rollout
from arkes.errors import UsageError


def machine(tmp_path: Path, machine_id: str) -> Path:
    etc = tmp_path / machine_id.replace("/", "_")[:32] / "etc"
    etc.mkdir(parents=True)
    (etc / "machine-id").write_text(machine_id + "\n")
    return etc


def test_a_machines_wave_comes_from_its_machine_id_and_stays(tmp_path: Path) -> None:
    etc = machine(tmp_path, "4a8e1c0f3b2d4e6f8a9b0c1d2e3f4a5b")
    first = rollout.wave(etc)
    assert 0 <= first < 100 and rollout.wave(etc) == first


def test_waves_spread_over_the_fleet(tmp_path: Path) -> None:
    waves = [rollout.wave(machine(tmp_path, uuid.uuid4().hex)) for _ in range(1000)]
    tenth = sum(1 for w in waves if w < 10)
    assert 60 < tenth < 140, f"{tenth} of 1000 machines in a 10 % rollout"
    assert len(set(waves)) > 90


def test_a_system_that_never_booted_is_in_the_last_wave(tmp_path: Path) -> None:
    etc = machine(tmp_path, "")
    assert rollout.wave(etc) == 99
    assert not rollout.Rollout("c" * 64, 99, "").admits(rollout.wave(etc))
    assert rollout.Rollout("c" * 64, 100, "").admits(rollout.wave(etc))


def test_zero_halts_and_a_hundred_admits_everyone() -> None:
    assert not any(rollout.Rollout("c" * 64, 0, "").admits(w) for w in range(100))
    assert all(rollout.Rollout("c" * 64, 100, "").admits(w) for w in range(100))
    assert [w for w in range(100) if rollout.Rollout("c" * 64, 10, "").admits(w)] == list(range(10))


def test_the_record_is_a_tag_beside_the_channel() -> None:
    assert rollout.record("127.0.0.1:5000/fleet/system:stable") == "127.0.0.1:5000/fleet/system:stable.rollout"
    with pytest.raises(UsageError, match="too long"):
        rollout.record("registry.example.com/fleet/system:" + "t" * 125)
    with pytest.raises(UsageError, match="0 to 100"):
        rollout.write("127.0.0.1:5000/fleet/system:stable", "c" * 64, 101)
