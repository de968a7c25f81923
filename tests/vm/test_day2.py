"""Day-2 operations that need a booted system: the update timer, `os diff --etc` on the running /etc, unlock and
hotfix, and a staged upgrade whose /etc edit made after staging survives the reboot."""

from __future__ import annotations

import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.integration.conftest import OS
from tests.vm.conftest import guest, install_disk, last_json

pytestmark = pytest.mark.vm


@pytest.fixture(scope="module")
def disk(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    path = tmp_path_factory.mktemp("vm-day2") / "arkes.img"
    install_disk(path)
    yield path
    path.unlink()


def test_timer_diff_etc_and_development_unlock(disk: Path) -> None:
    result = guest(
        disk,
        "set -e; systemctl is-enabled arkes-checkupdates.timer; systemctl is-enabled arkes-boot-menu.service;"
        "echo 'edited in the guest' >> /etc/motd; os diff --etc;"
        "if touch /usr/.before 2>/dev/null; then echo usr-writable; else echo usr-readonly; fi;"
        "os unlock; touch /usr/share/arkes-dev && echo dev-written;"
        "os status --json | tr -d '\\n'",
    )
    lines = result.stdout.splitlines()
    assert lines[:2] == ["enabled", "enabled"]
    assert "M /etc/motd" in lines
    assert "usr-readonly" in lines and "dev-written" in lines
    (booted,) = [d for d in last_json(result)["deployments"] if d["booted"]]
    assert booted["unlocked"] == "development"


def test_development_unlock_vanishes_and_hotfix_persists(disk: Path) -> None:
    result = guest(
        disk,
        "set -e; test ! -e /usr/share/arkes-dev && echo dev-gone;"
        "os unlock --hotfix; echo fix > /usr/share/arkes-hotfix; echo hotfix-written",
    )
    assert "dev-gone" in result.stdout and "hotfix-written" in result.stdout
    again = guest(disk, "cat /usr/share/arkes-hotfix; os status --json | tr -d '\\n'")
    assert again.stdout.splitlines()[0] == "fix"
    (booted,) = [d for d in last_json(again)["deployments"] if d["booted"]]
    assert booted["unlocked"] == "hotfix"


def test_staged_upgrade_keeps_an_etc_edit_made_after_staging(disk: Path) -> None:
    result = guest(
        disk,
        "set -e; echo 'RUN echo staged > /usr/share/arkes-staged' >> /etc/system/Systemfile;"
        "os upgrade; echo 'written after staging' > /etc/arkes-after-staging;"
        "os status --json | tr -d '\\n'",
    )
    deployments = last_json(result)["deployments"]
    assert deployments[0]["staged"] and not deployments[0]["booted"]
    after = guest(
        disk,
        "cat /usr/share/arkes-staged /etc/arkes-after-staging; grep -c menuentry /boot/grub/grub.cfg;"
        "os status --json | tr -d '\\n'",
    )
    lines = after.stdout.splitlines()
    assert lines[:2] == ["staged", "written after staging"]
    assert lines[2] == "2", "the boot menu lists both deployments after finalization"
    deployments = last_json(after)["deployments"]
    assert deployments[0]["booted"] and not deployments[0]["staged"]


def test_a_disk_that_does_not_boot_gives_a_clear_error(tmp_path: Path) -> None:
    blank = tmp_path / "blank.img"
    blank.write_bytes(b"\0" * (16 * 1024 * 1024))
    result = subprocess.run(
        [str(OS), "vm", str(blank), "--timeout", "20", "--exec", "true"],
        capture_output=True,
        text=True,
        timeout=180,
        check=False,
    )
    assert result.returncode == 1
    assert "did not reach multi-user within 20s" in result.stderr
    assert "the last console lines" in result.stderr and "Boot" in result.stderr
    leftover = subprocess.run(["pgrep", "-f", f"file={blank}"], capture_output=True, text=True, check=False)
    assert leftover.stdout == "", "no QEMU process is left behind"
