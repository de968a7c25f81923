"""Bad input, a held lock, a full disk and kill -9: one clear message, the right exit code, and the previous
deployment intact and default, with no new ref, deployment or leftover container."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.integration.conftest import OS, System, installed, os_reaching, tree_containers, write_systemfile

pytestmark = pytest.mark.integration

GOOD = """
    FROM localhost/arkes:base
    RUN post_build
"""


@pytest.fixture(scope="module")
def system(tmp_path_factory: pytest.TempPathFactory, base_image: str) -> Iterator[System]:
    yield installed(tmp_path_factory, "failures", GOOD)


def attempt(system: System, tmp_path: Path, body: str, **files: str) -> subprocess.CompletedProcess[str]:
    """Upgrade from a bad Systemfile; assert that nothing changed, and return the result."""
    before = system.snapshot()
    source = write_systemfile(tmp_path / "bad", body, **files)
    result = system.os("upgrade", "--systemfile", str(source), check=False)
    assert result.returncode != 0
    assert "Traceback" not in result.stderr
    assert system.snapshot() == before, "a failed upgrade changes no deployment and no ref"
    assert tree_containers() == [], "no container is left behind"
    return result


def test_malformed_systemfile(system: System, tmp_path: Path) -> None:
    result = attempt(system, tmp_path, "FROM localhost/arkes:base\nRUNN echo hi\nCOPY\n")
    assert result.returncode == 2
    path = tmp_path / "bad/Systemfile"
    assert f"{path}:2: unknown instruction RUNN" in result.stderr
    assert f"{path}:3:" in result.stderr


def test_missing_base_image(system: System, tmp_path: Path) -> None:
    result = attempt(system, tmp_path, "# a comment\nFROM localhost/no-such-image:1\nRUN true\n")
    assert result.returncode == 2
    assert f"{tmp_path / 'bad/Systemfile'}:2: the base image localhost/no-such-image:1 does not exist" in result.stderr


def test_failing_run_shows_its_output(system: System, tmp_path: Path) -> None:
    body = "FROM localhost/arkes:base\nRUN echo the-build-broke-here >&2 && exit 3\n"
    result = attempt(system, tmp_path, body)
    assert result.returncode == 1
    assert "the build (the Buildah of localhost/arkes:base) failed" in result.stderr
    assert "the-build-broke-here" in result.stderr


def test_unbootable_image_lists_every_failed_check(system: System, tmp_path: Path) -> None:
    body = "FROM localhost/arkes:base\nRUN rm -f /usr/lib/modules/*/initramfs.img /usr/lib/os-release /etc/os-release\n"
    result = attempt(system, tmp_path, body)
    assert result.returncode == 1
    assert "not bootable" in result.stderr
    assert "initramfs: no initramfs for kernel" in result.stderr
    assert "os-release: no os-release" in result.stderr


def test_held_lock_refuses_a_second_upgrade(system: System) -> None:
    holder = subprocess.Popen(
        [
            sys.executable,
            "-c",
            "import sys, time; from pathlib import Path; from arkes.ostree import Sysroot\n"
            "s = Sysroot.open(Path(sys.argv[1]))\n"
            "with s.lock():\n    print('locked', flush=True)\n    time.sleep(120)\n",
            str(system.path),
        ],
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert holder.stdout is not None and holder.stdout.readline().strip() == "locked"
        before = system.snapshot()
        result = system.os("upgrade", check=False)
        assert result.returncode == 1
        assert "the sysroot lock is held" in result.stderr
        assert system.snapshot() == before
    finally:
        holder.kill()
        holder.wait()
    assert "up to date" in system.os("upgrade").stderr, "the lock is free again once its holder is gone"


def test_the_boot_check_waits_for_the_lock_that_a_running_command_holds(system: System) -> None:
    """What `os boot-check` does when an `os` command holds the sysroot lock: wait for it, not fail the boot."""
    hold = (
        "import sys, time; from pathlib import Path; from arkes.ostree import Sysroot\n"
        "s = Sysroot.open(Path(sys.argv[1]))\n"
        "with s.lock():\n    print('locked', flush=True)\n    time.sleep(3)\n"
    )
    holder = subprocess.Popen([sys.executable, "-c", hold, str(system.path)], stdout=subprocess.PIPE, text=True)
    wait = (
        "import sys, time; from pathlib import Path; from arkes.ostree import Sysroot\n"
        "from arkes import log; from arkes.errors import LockedError\n"
        "log.setup(debug=False)\n"
        "s = Sysroot.open(Path(sys.argv[1]))\n"
        "try:\n    with s.lock(wait=1):\n        print('taken at once')\n"
        "except LockedError as e:\n    print('refused:', e.message)\n"
        "start = time.monotonic()\n"
        "with s.lock(wait=60):\n    print(f'taken after {time.monotonic() - start:.1f}s')\n"
    )
    try:
        assert holder.stdout is not None and holder.stdout.readline().strip() == "locked"
        waiter = subprocess.run(
            [sys.executable, "-c", wait, str(system.path)], capture_output=True, text=True, timeout=120
        )
    finally:
        holder.kill()
        holder.wait()
    assert waiter.returncode == 0, waiter.stderr
    refused, taken = waiter.stdout.splitlines()
    assert refused.startswith("refused: another process is changing the system"), "a second of waiting was too short"
    assert taken.startswith("taken after ") and float(taken.split()[2].rstrip("s")) > 0.5, taken
    assert "waiting for it" in waiter.stderr


def upgrade_reaching(system: System, step: str) -> subprocess.Popen[str]:
    """Start `os upgrade` in its own process group and return once it is inside `step`: for the commit, once
    its progress says that files are written."""
    if step == "commit":
        return os_reaching(system, ["upgrade"], lambda line: line.startswith("commit: ") and "files" in line)
    return os_reaching(system, ["upgrade"], lambda line: line.startswith((f"{step}...", f"{step}: ")))


def without_layers(refs: list[str]) -> list[str]:
    return [r for r in refs if not r.startswith("arkes/layers/")]


@pytest.mark.parametrize("moment", ["build", "layers", "commit", "deploy"])
def test_kill_during_upgrade_leaves_the_previous_deployment(system: System, moment: str) -> None:
    before = system.snapshot()
    original = system.systemfile.read_text()
    system.add_line(f"RUN echo killed-at-{moment}")
    proc = upgrade_reaching(system, moment)
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()
    system.systemfile.write_text(original)

    after = system.snapshot()
    assert after[0] == before[0], "the previous deployment is intact and default"
    if moment == "deploy":
        # The build was committed before the kill: the build ref may hold it (a complete commit, which the next
        # upgrade of the same inputs deploys without building again), with the refs of the layers it was made
        # of; every other ref is where it was.
        assert [r for r in without_layers(after[1]) if not r.startswith("arkes/build ")] == [
            r for r in without_layers(before[1]) if not r.startswith("arkes/build ")
        ]
        assert set(after[1]) >= {r for r in before[1] if r.startswith("arkes/layers/")}
    else:
        # A layer's ref is set with the system commit made of it: a killed import or commit leaves none.
        assert after == before, "an interrupted build, layer import or commit moves no ref"
    system.fsck()


def test_upgrade_works_after_kills(system: System) -> None:
    system.add_line("RUN echo after-kill")
    system.os("upgrade")
    assert len(system.status()) == 2
    assert tree_containers() == []
    system.fsck()


def test_full_disk_leaves_nothing(tmp_path: Path, base_image: str) -> None:
    image, mnt = tmp_path / "small.img", tmp_path / "mnt"
    subprocess.run(["truncate", "-s", "300M", str(image)], check=True)
    subprocess.run(["mkfs.ext4", "-q", str(image)], check=True)
    mnt.mkdir()
    subprocess.run(["mount", "-o", "loop", str(image), str(mnt)], check=True)
    try:
        system = System(mnt / "sysroot")
        result = system.os("install", check=False)
        assert result.returncode == 1
        assert "not enough disk space" in result.stderr
        assert "hint: free some space" in result.stderr
        assert "Traceback" not in result.stderr
        assert not system.path.exists(), "an install that failed leaves nothing behind"
        assert tree_containers() == []
    finally:
        subprocess.run(["umount", str(mnt)], check=False)


def test_no_target_is_refused_with_a_hint() -> None:
    env = {k: v for k, v in os.environ.items() if k != "ARKES_SYSROOT"}
    result = subprocess.run([str(OS), "status"], capture_output=True, text=True, env=env, check=False)
    assert result.returncode == 2
    assert "not a booted Arkēs system" in result.stderr
    assert "hint: " in result.stderr and "--sysroot" in result.stderr


def test_ctrl_c_during_commit_leaves_nothing(system: System) -> None:
    before = system.snapshot()
    original = system.systemfile.read_text()
    system.add_line("RUN echo interrupted")
    proc = upgrade_reaching(system, "commit")
    os.killpg(proc.pid, signal.SIGINT)
    assert proc.stderr is not None
    rest = proc.stderr.read()
    assert proc.wait(timeout=120) == 130, rest
    assert "interrupted" in rest and "Traceback" not in rest
    system.systemfile.write_text(original)
    assert system.snapshot() == before
    system.fsck()
    assert "up to date" in system.os("upgrade").stderr, "no lock is left behind"


def test_failed_disk_install_releases_everything(tmp_path: Path, base_image: str) -> None:
    disk = tmp_path / "disk.img"
    # The RUN fails once the disk is partitioned, formatted and mounted: all of it must be undone.
    bad = write_systemfile(tmp_path / "bad", "FROM localhost/arkes:base\nRUN echo disk-install-breaks && false\n")
    loops_before = subprocess.run(["losetup", "-a"], capture_output=True, text=True, check=True).stdout
    result = subprocess.run(
        [str(OS), "install", "--disk", str(disk), "--systemfile", str(bad), "--no-root-password"],
        capture_output=True,
        text=True,
        check=False,
    )
    assert result.returncode == 1 and "disk-install-breaks" in result.stderr
    assert not disk.exists(), "the image made for a failed install is removed"
    assert subprocess.run(["losetup", "-a"], capture_output=True, text=True, check=True).stdout == loops_before
    mounts = Path("/proc/mounts").read_text()
    assert "arkes-disk-" not in mounts
