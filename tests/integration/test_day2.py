"""Day-2 operations on a sysroot: checkupdates, download-only upgrades, diff, du, kernel arguments, pre-flight
refusals, edit, and unlock refusing where nothing is booted."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.integration.conftest import OS, System, installed

pytestmark = pytest.mark.integration

# Package updates from a repository of its own are tested in test_packages.py.
SYSTEMFILE = """
    FROM localhost/arkes:base
    RUN post_build
"""


@pytest.fixture(scope="module")
def system(tmp_path_factory: pytest.TempPathFactory, base_image: str) -> Iterator[System]:
    yield installed(tmp_path_factory, "day2", SYSTEMFILE)


def checkupdates(system: System, *args: str) -> tuple[int, list[str], dict[str, object]]:
    lines = system.os("checkupdates", *args, check=False)
    data = system.os("checkupdates", "--json", *args, check=False)
    assert lines.returncode == data.returncode, lines.stderr + data.stderr
    return lines.returncode, lines.stdout.splitlines(), json.loads(data.stdout)


def test_checkupdates_of_a_current_system_finds_nothing(system: System) -> None:
    code, lines, data = checkupdates(system)
    assert code == 2 and lines == [], lines
    assert data["apiVersion"] == "arkes/v1" and data["errors"] == [] and data["updates"] == []


def test_checkupdates_without_packages_finds_nothing(system: System) -> None:
    code, lines, data = checkupdates(system, "--no-packages")
    assert code == 2 and lines == [] and data["updates"] == []
    status = system.os("status").stdout
    assert "Last update check:" in status and "no updates" in status


def test_checkupdates_reports_each_declared_input(system: System) -> None:
    system_dir = system.etc() / "system"
    original = system.systemfile.read_text()
    system.add_line("RUN true")
    (system_dir / "extra.conf").write_text("x\n")
    (system_dir / "kargs").write_text("# test\narkes.test=1\n")
    try:
        code, lines, _ = checkupdates(system, "--no-packages")
        assert code == 0
        kinds = sorted(line.split()[0] for line in lines)
        assert kinds == ["context", "kargs", "systemfile"], lines
        assert "context extra.conf: added" in lines
        assert any(line.startswith("kargs ") and line.endswith("-> arkes.test=1") for line in lines)
    finally:
        system.systemfile.write_text(original)
        (system_dir / "extra.conf").unlink()
        (system_dir / "kargs").unlink()
    assert checkupdates(system, "--no-packages")[0] == 2


def test_checkupdates_error_exit(tmp_path: Path) -> None:
    empty = System(tmp_path / "nothing")
    result = empty.os("checkupdates", check=False)
    assert result.returncode == 2 and "holds no Arkēs system" in result.stderr


def test_download_only_then_upgrade_without_building(system: System) -> None:
    system.add_line("RUN echo downloaded > /usr/share/arkes-downloaded")
    before = system.snapshot()[0]
    first = system.os("upgrade", "--download-only")
    assert "deploys it without building" in first.stderr
    assert system.snapshot()[0] == before, "nothing is deployed"
    second = system.os("upgrade")
    assert "built earlier" in second.stderr and "build..." not in second.stderr
    assert (system.deployment_dir(0) / "usr/share/arkes-downloaded").is_file()


def test_diff_packages_and_files(system: System) -> None:
    system.add_line("RUN install_packages hello")
    system.add_line("RUN echo added > /usr/share/arkes-added")
    upgraded = system.os("upgrade")
    assert "  hello (new) -> " in upgraded.stderr, "named before it deploys"
    packages = system.os("diff").stdout.splitlines()
    assert any(line.startswith("+ hello  ") for line in packages), packages
    files = system.os("diff", "--files").stdout.splitlines()
    assert "+ /usr/share/arkes-added" in files
    data = json.loads(system.os("diff", "1", "0", "--json").stdout)
    assert [c["name"] for c in data["changes"] if c["kind"] == "added"] == ["hello"]


def test_diff_etc_shows_the_local_overlay(system: System) -> None:
    etc = system.etc()
    (etc / "motd").write_text("local motd\n")
    (etc / "arkes-added.conf").write_text("mine\n")
    (etc / "issue.net").unlink()
    lines = system.os("diff", "--etc").stdout.splitlines()
    assert "M /etc/motd" in lines
    assert "+ /etc/arkes-added.conf" in lines
    assert "- /etc/issue.net" in lines


def test_du_adds_up_with_du(system: System) -> None:
    data = json.loads(system.os("du", "--json").stdout)
    measured = int(
        subprocess.run(
            ["du", "-sB1", str(system.repo / "objects")], capture_output=True, text=True, check=True
        ).stdout.split()[0]
    )
    assert data["objectsBytes"] == measured
    own_objects = sum(d["own"] for d in data["deployments"]) - data["etcBytes"]
    assert own_objects + data["sharedBytes"] + data["otherBytes"] == data["objectsBytes"]
    assert len(data["deployments"]) == len(system.status())
    assert data["repoBytes"] >= data["objectsBytes"]


def test_kargs_reach_the_boot_entry(system: System) -> None:
    (system.etc() / "system/kargs").write_text("# machine arguments\nquiet arkes.test=1\n")
    system.os("upgrade")
    (newest, *_) = system.status()
    assert "arkes.test=1" in newest["kargs"] and "quiet" in newest["kargs"]
    assert "console=ttyS0,115200" in newest["kargs"], "the image's own arguments stay"
    entries = list((system.path / "boot/loader/entries").glob("*.conf"))
    assert any("arkes.test=1" in e.read_text() for e in entries)


def test_preflight_refuses_an_etc_conflict(system: System) -> None:
    (system.etc() / "arkes-conflict").write_text("a file here\n")
    system.add_line("RUN mkdir /etc/arkes-conflict")
    before = system.snapshot()[0]
    result = system.os("upgrade", check=False)
    assert result.returncode == 1
    assert "/etc/arkes-conflict: this machine has a file, the new image has a directory" in result.stderr
    assert system.snapshot()[0] == before
    (system.etc() / "arkes-conflict").unlink()


def test_preflight_refuses_a_full_boot(system: System, tmp_path: Path) -> None:
    # A new initramfs (a dracut setting changed) needs room on /boot. /boot becomes a small filesystem holding
    # what it holds now and 4 MiB more.
    # (dracut 106 builds the same initramfs from the same inputs, so the setting must change what it holds.)
    system.add_line(
        "RUN echo marker > /usr/share/arkes-initramfs-marker && "
        "echo 'install_items+=\" /usr/share/arkes-initramfs-marker \"' > /etc/dracut.conf.d/90-test.conf"
    )
    boot, saved = system.path / "boot", tmp_path / "boot"
    subprocess.run(["cp", "-a", str(boot), str(saved)], check=True)
    used = int(subprocess.run(["du", "-sB1", str(saved)], capture_output=True, text=True, check=True).stdout.split()[0])
    before = system.snapshot()[0]
    subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={used + 4 * 1024 * 1024}", "tmpfs", str(boot)], check=True)
    try:
        subprocess.run(["cp", "-a", f"{saved}/.", str(boot)], check=True)
        result = system.os("upgrade", check=False)
    finally:
        subprocess.run(["umount", str(boot)], check=True)
    assert result.returncode == 1, result.stderr
    assert "not enough space on /boot" in result.stderr and "MiB needed" in result.stderr
    assert system.snapshot()[0] == before


def test_unlock_needs_a_booted_system(system: System) -> None:
    result = system.os("unlock", check=False)
    assert result.returncode == 2 and "only a booted system can be unlocked" in result.stderr


def test_edit_checks_and_saves(system: System, tmp_path: Path) -> None:
    editor = tmp_path / "editor"
    editor.write_text(
        f"#!{sys.executable}\nimport sys\nopen(sys.argv[1], 'a').write(open('{tmp_path}/append').read())\n"
    )
    editor.chmod(0o755)
    path = system.systemfile
    env = {**os.environ, "EDITOR": str(editor)}

    def edit(append: str, answers: str) -> subprocess.CompletedProcess[str]:
        (tmp_path / "append").write_text(append)
        return subprocess.run(
            [str(OS), "--sysroot", str(system.path), "edit"],
            input=answers,
            capture_output=True,
            text=True,
            env=env,
            check=False,
        )

    before = path.read_text()
    bad = edit("RUNN oops\n", "n\n")
    assert bad.returncode == 2 and f"{path}:" in bad.stdout and "unknown instruction RUNN" in bad.stdout
    assert path.read_text() == before, "an invalid edit is not saved"
    good = edit("RUN echo edited\n", "n\n")
    assert good.returncode == 0 and "saved" in good.stderr
    assert path.read_text() == before + "RUN echo edited\n"
    assert "os upgrade" in good.stderr
    same = edit("", "")
    assert same.returncode == 0 and "no changes" in same.stderr
