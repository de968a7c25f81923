"""Unit tests for arkes.run, the one place that starts programs."""

from __future__ import annotations

import ast
import os
import sys
import time
from pathlib import Path

import pytest

import arkes
from arkes import run
from arkes.errors import ToolMissingError

PACKAGE = Path(arkes.__file__).parent
STARTERS = {"run", "stream", "output_bytes", "spawn", "spawned", "interactive", "which"}


def programs_started() -> dict[str, str]:
    """Each program named as the first word of an argument list handed to arkes.run, with where."""
    found: dict[str, str] = {}
    for path in sorted(PACKAGE.glob("*.py")):
        tree = ast.parse(path.read_text())
        for node in ast.walk(tree):
            if not (isinstance(node, ast.Call) and node.args):
                continue
            func = node.func
            name = func.attr if isinstance(func, ast.Attribute) else func.id if isinstance(func, ast.Name) else ""
            if name not in STARTERS:
                continue
            first = node.args[0]
            if isinstance(first, ast.List) and first.elts:
                first = first.elts[0]
            if isinstance(first, ast.Constant) and isinstance(first.value, str) and "/" not in first.value:
                found.setdefault(first.value, f"{path.name}:{node.lineno}")
    return found


def test_every_program_has_a_package_hint() -> None:
    started = programs_started()
    assert {"ostree", "podman", "losetup", "mount", "mkfs.ext4", "openssl", "systemctl"} <= set(started)
    missing = {program: where for program, where in started.items() if program not in run.PACKAGES}
    assert not missing


def test_a_missing_program_names_its_package(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PATH", "/nonexistent")
    with pytest.raises(ToolMissingError) as caught:
        run.run(["losetup", "--list"])
    assert caught.value.hint == "apt-get install mount"


def test_spawned_program_is_stopped_and_reaped_when_the_caller_raises(tmp_path: Path) -> None:
    script = "import time\nprint('up', flush=True)\ntime.sleep(600)\n"
    with pytest.raises(RuntimeError), run.spawned([sys.executable, "-c", script], log_path=tmp_path / "log") as proc:
        deadline = time.monotonic() + 30
        while "up" not in (tmp_path / "log").read_text() and time.monotonic() < deadline:
            time.sleep(0.05)
        pid = proc.pid
        raise RuntimeError("the caller fails")
    assert proc.returncode is not None  # reaped: no zombie is left
    with pytest.raises(ProcessLookupError):
        os.kill(pid, 0)


def test_spawned_program_that_ignores_sigterm_is_killed(tmp_path: Path) -> None:
    script = (
        "import signal, time\nsignal.signal(signal.SIGTERM, signal.SIG_IGN)\nprint('up', flush=True)\ntime.sleep(600)\n"
    )
    with run.spawned([sys.executable, "-c", script], log_path=tmp_path / "log", grace=0.5) as proc:
        deadline = time.monotonic() + 30
        while "up" not in (tmp_path / "log").read_text() and time.monotonic() < deadline:
            time.sleep(0.05)
    assert proc.returncode == -9
