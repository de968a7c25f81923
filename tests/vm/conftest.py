"""Helpers for vm tests: disks made by `os install --disk`, commands run in them by `os vm --exec`."""

from __future__ import annotations

import json
import re
import subprocess
from pathlib import Path
from typing import Any

import pytest

from tests.integration.conftest import OS


def install_disk(path: Path, systemfile: Path | None = None) -> subprocess.CompletedProcess[str]:
    command = [str(OS), "install", "--disk", str(path), "--no-root-password"]
    if systemfile is not None:
        command += ["--systemfile", str(systemfile)]
    result = subprocess.run(command, capture_output=True, text=True, check=False)
    assert result.returncode == 0, result.stderr
    return result


# Boots of one command: a fault of the emulator in a kernel's first second costs about ten seconds, and under load
# it has struck twice in a row (a kernel patching its own code while the other emulated processor runs it).
ATTEMPTS = 3


def discard_disk(path: Path) -> None:
    """Remove a disk image in the background: this machine's file system discards freed blocks as it frees them,
    which takes a minute for a disk of a few GiB, and nothing waits for it."""
    subprocess.Popen(["rm", "-f", str(path)], start_new_session=True, stdin=subprocess.DEVNULL)


def guest(disk: Path, script: str, *args: str) -> subprocess.CompletedProcess[str]:
    """Boot the disk, run `script` as root in the guest, power off; the command must succeed. The whole console of
    each boot is kept beside the disk (console-N.log) for reading after a failure."""
    for attempt in range(1, ATTEMPTS + 1):
        console = disk.parent / f"console-{len(list(disk.parent.glob('console-*.log')))}.log"
        result = subprocess.run(
            [str(OS), "vm", str(disk), "--timeout", "600", "--console-log", str(console), *args, "--exec", script],
            capture_output=True,
            text=True,
            timeout=1800,
            check=False,
        )
        if attempt < ATTEMPTS and result.returncode != 0 and emulator_fault(result.stderr):
            print(f"the emulated machine faulted before userspace (console in {console}); booting again")
            continue
        break
    failed = f"os vm failed ({result.returncode}, console in {console})"
    assert result.returncode == 0, f"{failed}:\n{result.stdout}\n{result.stderr}"
    return result


def emulator_fault(stderr: str) -> bool:
    """A panic of the kernel in its first seconds, before any program of the system ran ("Fatal exception in
    interrupt" while it unpacks its initramfs, say): what QEMU's software emulation (TCG) rarely does to a boot that
    works. The disk is untouched then, so the same boot is tried again; a real fault panics every time."""
    if "reached multi-user" in stderr or "Kernel panic" not in stderr:
        return False
    times = [float(t) for t in re.findall(r"^\[\s*(\d+\.\d+)\] Kernel panic", stderr, re.MULTILINE)]
    return bool(times) and times[0] < 10.0 and "Run /init" not in stderr and "systemd[1]" not in stderr


def last_json(result: subprocess.CompletedProcess[str]) -> dict[str, Any]:
    """The JSON document a guest script printed on its last line."""
    data: dict[str, Any] = json.loads(result.stdout.strip().splitlines()[-1])
    return data


def report(request: pytest.FixtureRequest, line: str) -> None:
    """A line for the person running the tests (timings of the guest), shown even when output is captured."""
    reporter = request.config.pluginmanager.get_plugin("terminalreporter")
    capture = request.config.pluginmanager.get_plugin("capturemanager")
    if reporter is None or capture is None:
        print(line)
        return
    with capture.global_and_fixture_disabled():
        reporter.write_line(line)
