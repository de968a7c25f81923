"""`os install --disk` with an answer file: the disk it makes holds the machine's host name, root's password and a
first person (groups, home from /etc/skel under /var/home, SSH keys), read back from the disk's own filesystems.
A bad answer file is refused before the disk is touched."""

from __future__ import annotations

import subprocess
from collections.abc import Iterator
from contextlib import ExitStack
from pathlib import Path

import pytest

from arkes import diskimage
from tests.integration.conftest import OS

pytestmark = pytest.mark.integration

ANSWERS = """\
hostname = "till-1.shop.example"
root_password = "root secret"
user = "alice"
user_password = "alice secret"
user_groups = ["sudo", "adm", "no-such-group"]
ssh_authorized_keys = ["ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIFakeKeyForTheTest alice@laptop"]
"""


def verifies(hashed: str, password: str) -> bool:
    """Whether a crypt(5) SHA-512 hash is that of `password`, as openssl computes it with the hash's salt."""
    salt = hashed.split("$")[2]
    again = subprocess.run(
        ["openssl", "passwd", "-6", "-salt", salt, "-stdin"], input=password, capture_output=True, text=True
    )
    return again.stdout.strip() == hashed


@pytest.fixture(scope="module")
def installed_disk(tmp_path_factory: pytest.TempPathFactory, base_image: str) -> Iterator[tuple[Path, str]]:
    work = tmp_path_factory.mktemp("answers")
    (work / "answers.toml").write_text(ANSWERS)
    disk = work / "disk.img"
    argv = [str(OS), "install", "--disk", str(disk), "--size", "6G", "--answers", str(work / "answers.toml")]
    result = subprocess.run(argv, capture_output=True, text=True, stdin=subprocess.DEVNULL, check=False)
    assert result.returncode == 0, result.stderr
    yield disk, result.stderr
    disk.unlink(missing_ok=True)


@pytest.fixture(scope="module")
def root(installed_disk: tuple[Path, str], tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    """The disk's root filesystem, mounted read-only."""
    disk, _ = installed_disk
    with ExitStack() as stack:
        part = diskimage.read_partitions(disk)["root"]
        device = stack.enter_context(diskimage.loop_device(disk, part))
        yield stack.enter_context(diskimage.mounted(device, tmp_path_factory.mktemp("root"), "-o", "ro"))


def deployment(root: Path) -> Path:
    (found,) = [d for d in (root / "ostree/deploy/arkes/deploy").iterdir() if d.is_dir()]
    return found


def test_the_machine_has_the_host_name_and_root_s_password(root: Path) -> None:
    etc = deployment(root) / "etc"
    assert (etc / "hostname").read_text() == "till-1.shop.example\n"
    assert "127.0.1.1\ttill-1.shop.example\ttill-1" in (etc / "hosts").read_text().splitlines()
    shadow = {line.split(":")[0]: line.split(":") for line in (etc / "shadow").read_text().splitlines()}
    assert verifies(shadow["root"][1], "root secret")


def test_the_first_person_logs_in_with_a_home_of_their_own(root: Path, installed_disk: tuple[Path, str]) -> None:
    etc = deployment(root) / "etc"
    passwd = {line.split(":")[0]: line.split(":") for line in (etc / "passwd").read_text().splitlines()}
    shadow = {line.split(":")[0]: line.split(":") for line in (etc / "shadow").read_text().splitlines()}
    groups = {line.split(":")[0]: line.split(":") for line in (etc / "group").read_text().splitlines()}
    _, _, uid, gid, _, home, shell = passwd["alice"]
    assert (home, shell) == ("/home/alice", "/bin/bash")
    assert int(uid) >= 1000 and groups["alice"][2] == gid, "a group of the person's own"
    assert verifies(shadow["alice"][1], "alice secret")
    assert "alice" in groups["sudo"][3].split(",") and "alice" in groups["adm"][3].split(",")
    _, said = installed_disk
    assert "the system has no group 'no-such-group'" in said
    kept = root / "ostree/deploy/arkes/var/home/alice"
    assert kept.stat().st_uid == int(uid) and kept.stat().st_mode & 0o777 == 0o700
    assert (kept / ".bashrc").read_bytes() == (etc / "skel/.bashrc").read_bytes(), "filled from /etc/skel"
    keys = kept / ".ssh/authorized_keys"
    assert keys.read_text() == "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIFakeKeyForTheTest alice@laptop\n"
    assert keys.stat().st_mode & 0o777 == 0o600 and keys.stat().st_uid == int(uid)
    assert (deployment(root) / "home").is_symlink(), "/home on the machine is /var/home"


def test_a_bad_answer_file_is_refused_before_the_disk_is_made(tmp_path: Path) -> None:
    bad = tmp_path / "answers.toml"
    bad.write_text('hostname = "till_1"\nroot_password = "x"\nuser = "alice"\nuser_password = "y"\nwipe = "yes"\n')
    disk = tmp_path / "disk.img"
    argv = [str(OS), "install", "--disk", str(disk), "--answers", str(bad)]
    result = subprocess.run(argv, capture_output=True, text=True, stdin=subprocess.DEVNULL, check=False)
    assert result.returncode == 2, result.stderr
    assert f"{bad}:1: 'till_1' is not a host name" in result.stderr
    assert f"{bad}:5: wipe must be a bool" in result.stderr
    assert not disk.exists(), "nothing was written"


def test_a_guided_installation_needs_a_terminal(tmp_path: Path) -> None:
    result = subprocess.run(
        [str(OS), "install", "--disk"], capture_output=True, text=True, stdin=subprocess.DEVNULL, check=False
    )
    assert result.returncode == 2
    assert "asks which disk, at a terminal" in result.stderr


def test_os_iso_refuses_a_bad_answer_file_before_building(tmp_path: Path) -> None:
    (tmp_path / "answers.toml").write_text('disk = "/dev/vda"\nhostname = "no_underscores"\nuser = "root"\n')
    output = tmp_path / "out/arkes.iso"
    output.parent.mkdir()
    argv = [str(OS), "iso", str(output), "--answers", str(tmp_path / "answers.toml")]
    result = subprocess.run(argv, capture_output=True, text=True, stdin=subprocess.DEVNULL, check=False)
    assert result.returncode != 0
    said = result.stderr
    assert f"{tmp_path / 'answers.toml'}:2: " in said and f"{tmp_path / 'answers.toml'}:3: " in said, said
    assert "root_password" in said and "user_password" in said, "every missing answer is named at once"
    assert "build" not in said, said
    assert list(output.parent.iterdir()) == [], "no image, no staging directory"
