"""`os status` from its cache on a real sysroot: the same output as from libostree, byte for byte, human and JSON;
every change of the deployments, by `os` or by hand with `ostree admin`, seen by the very next status; and no
PyGObject loaded while the cache answers.

Each test gets a sysroot of its own with two deployments, copied from one installed and upgraded once."""

from __future__ import annotations

import json
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from tests.integration.conftest import System, installed, own_copy

pytestmark = pytest.mark.integration

V1 = """
    FROM localhost/arkes:base
    RUN post_build
"""

# Modules the cached path must never load: libostree's binding and what only the other verbs need.
HEAVY = ("gi", "arkes.ostree", "arkes.records", "arkes.build", "arkes.deploy", "arkes.podman", "arkes.tree")


@pytest.fixture(scope="module")
def upgraded_once(tmp_path_factory: pytest.TempPathFactory, base_image: str) -> System:
    system = installed(tmp_path_factory, "statuscache", V1)
    system.add_line("RUN echo two > /usr/share/arkes-status-two")
    system.os("upgrade")
    return system


@pytest.fixture
def system(upgraded_once: System, tmp_path: Path) -> Iterator[System]:
    """Two deployments, the newer one the default."""
    yield from own_copy(upgraded_once, tmp_path)


@dataclass(frozen=True)
class Run:
    """What one `os status` printed, and every module Python imported for it."""

    stdout: str
    modules: frozenset[str]

    @property
    def libostree(self) -> bool:
        return "gi" in self.modules

    def deployments(self) -> list[dict[str, Any]]:
        found: list[dict[str, Any]] = json.loads(self.stdout)["deployments"]
        return found


def status(system: System, *args: str) -> Run:
    result = subprocess.run(
        [sys.executable, "-X", "importtime", "-m", "arkes", "--sysroot", str(system.path), "status", *args],
        capture_output=True,
        text=True,
        stdin=subprocess.DEVNULL,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    # Python's import log: "import time: SELF | CUMULATIVE | <indent>NAME".
    lines = [line for line in result.stderr.splitlines() if line.startswith("import time:")]
    return Run(result.stdout, frozenset(line.rsplit("|", 1)[-1].strip() for line in lines))


def cache(system: System) -> Path:
    return system.path / "ostree/deploy/arkes/var/lib/arkes/status-cache.json"


def from_libostree(system: System, *args: str) -> Run:
    """`os status` with no cache to read: all of it through libostree (and a new cache written)."""
    cache(system).unlink(missing_ok=True)
    run = status(system, *args)
    assert run.libostree
    return run


def ostree_admin(system: System, *args: str) -> None:
    subprocess.run(["ostree", "admin", *args, f"--sysroot={system.path}"], check=True, capture_output=True)


def test_the_cache_prints_what_libostree_prints(system: System) -> None:
    assert cache(system).exists(), "the upgrade left a cache in the sysroot that was copied"
    assert status(system).libostree, "a cache that came with a copy of another sysroot is not used"
    state = system.path / "ostree/deploy/arkes/var/lib/arkes"
    report = {"checkedAt": "2026-12-01T06:00:00+00:00", "updates": [{"kind": "packages"}], "errors": []}
    (state / "checkupdates.json").write_text(json.dumps(report))
    for args in ((), ("--json",)):
        truth = from_libostree(system, *args)
        cached = status(system, *args)
        assert cached.stdout == truth.stdout
        assert [m for m in HEAVY if m in cached.modules] == []
    assert "1 update(s) available" in status(system).stdout

    # Not about deployments, so never cached: the last update check is read again by a status from the cache.
    (state / "checkupdates.json").write_text(json.dumps({**report, "updates": []}))
    again = status(system)
    assert not again.libostree
    assert "no updates" in again.stdout and again.stdout == from_libostree(system).stdout


def seen_after(system: System, *, by_os: bool) -> list[dict[str, Any]]:
    """The deployments the next `os status` shows after a change, checked against libostree's own listing: a verb
    of `os` left a fresh cache, a change by hand made the cache stale, so the status read libostree."""
    seen = status(system, "--json")
    assert seen.libostree is not by_os
    assert seen.stdout == from_libostree(system, "--json").stdout
    return seen.deployments()


def test_changes_by_os_and_by_hand_are_seen(system: System) -> None:
    new, old = [d["checksum"] for d in status(system, "--json").deployments()]
    assert not status(system).libostree

    system.os("pin", "1")
    assert [d["pinned"] for d in seen_after(system, by_os=True)] == [False, True]

    ostree_admin(system, "pin", "--unpin", "1")
    assert [d["pinned"] for d in seen_after(system, by_os=False)] == [False, False]

    system.os("rollback")
    assert [d["checksum"] for d in seen_after(system, by_os=True)] == [old, new]

    system.os("revert")
    assert [d["checksum"] for d in seen_after(system, by_os=True)] == [new]


def test_a_deployment_changed_and_removed_by_hand_is_seen(system: System) -> None:
    new, old = [d["checksum"] for d in status(system, "--json").deployments()]

    # The boot loader entries rewritten in place, the deployments left as they were.
    ostree_admin(system, "kargs", "edit-in-place", "--append-if-missing=arkes.test=1")
    assert all("arkes.test=1" in d["kargs"] for d in seen_after(system, by_os=False))

    ostree_admin(system, "undeploy", "1")
    assert [d["checksum"] for d in seen_after(system, by_os=False)] == [new]
    assert old not in status(system).stdout
