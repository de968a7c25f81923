"""No shared secrets, with the real builder and OSTree: the default system's commit holds no private key and no
machine identity; a Systemfile that COPYs a private key is refused naming it, and deploys with --allow-secret; a
machine installed from an image that still carried SSH host keys keeps them through an upgrade (OSTree's own 3-way
merge), `os status` names them until `os rotate-host-keys` replaces them, and a rollback keeps the new ones."""

from __future__ import annotations

import json
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.integration.conftest import System, installed, own_copy, write_systemfile

pytestmark = pytest.mark.integration

IDENTITY = ("etc/ssh/ssh_host_", "etc/ssl/private/ssl-cert-snakeoil", "var/lib/systemd/random-seed")


@pytest.fixture(scope="module")
def installed_once(tmp_path_factory: pytest.TempPathFactory, base_image: str) -> System:
    return installed(tmp_path_factory, "identity", "FROM localhost/arkes:base\nRUN post_build\n")


@pytest.fixture
def system(installed_once: System, tmp_path: Path) -> Iterator[System]:
    yield from own_copy(installed_once, tmp_path)


def commit_paths(system: System) -> list[str]:
    checksum = system.status()[0]["checksum"]
    listing = subprocess.run(
        ["ostree", "ls", f"--repo={system.repo}", "-R", "-C", checksum, "/"], capture_output=True, text=True, check=True
    ).stdout
    return [line.split()[-1] for line in listing.splitlines() if line.startswith("-")]


def test_the_default_system_carries_no_private_key_and_no_identity(installed_once: System) -> None:
    paths = commit_paths(installed_once)
    assert "/usr/sbin/sshd" in paths, "the SSH server is in the image"
    assert [p for p in paths if any(part in p for part in IDENTITY)] == []
    # Read the configuration and the seeded /var of the deployed tree, as anyone with the image could.
    assert (installed_once.deployment_dir() / "usr/share/factory").is_dir()
    found = subprocess.run(
        ["grep", "-rlE", "--exclude-dir=modules", "BEGIN ([A-Z0-9]+ )*PRIVATE KEY", "usr/etc", "usr/share/factory"],
        cwd=installed_once.deployment_dir(),
        capture_output=True,
        text=True,
        check=False,
    )
    assert found.stdout == "", found.stdout
    assert (installed_once.deployment_dir() / "usr/etc/machine-id").read_text() == ""
    assert list((installed_once.etc() / "ssh").glob("ssh_host_*")) == [], "made by the machine on its first boot"
    unit = installed_once.deployment_dir() / "usr/lib/systemd/system/arkes-identity.service"
    wanted = installed_once.deployment_dir() / "usr/etc/systemd/system/sysinit.target.wants/arkes-identity.service"
    assert unit.is_file() and wanted.is_symlink()


def make_key(directory: Path) -> Path:
    directory.mkdir(parents=True, exist_ok=True)
    subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", directory / "site.key"], check=True)
    return directory / "site.key"


def test_a_copied_private_key_is_refused_by_path_and_allowed_on_purpose(system: System, tmp_path: Path) -> None:
    before = system.snapshot()
    context = tmp_path / "source"
    make_key(context)
    source = write_systemfile(
        context,
        """
        FROM localhost/arkes:base
        COPY site.key /etc/app/site.key
        RUN post_build
        """,
    )
    refused = system.os("upgrade", "--systemfile", str(source), check=False)
    assert refused.returncode == 1
    assert "the image holds private keys" in refused.stderr
    assert "/etc/app/site.key (openssh private key)" in refused.stderr
    assert "--allow-secret /etc/app/site.key" in refused.stderr
    assert system.snapshot() == before, "nothing is deployed, no ref moves"

    allowed = system.os("upgrade", "--systemfile", str(source), "--allow-secret", "/etc/app/site.key")
    assert "carries the private key /etc/app/site.key" in allowed.stderr
    assert "/usr/etc/app/site.key" in commit_paths(system)
    checksum = system.status()[0]["checksum"]
    shown = subprocess.run(
        ["ostree", "show", f"--repo={system.repo}", "--print-metadata-key=arkes.allowed-secrets", checksum],
        capture_output=True,
        text=True,
        check=True,
    )
    assert "/etc/app/site.key" in shown.stdout


def test_a_key_in_usr_is_refused_though_the_build_never_checks_that_directory_out(
    system: System, tmp_path: Path
) -> None:
    # Most of /usr goes from the layers' commits into the system commit without a checkout; its keys are read
    # from the layers that hold them, once per layer: the second build takes that layer from the cache.
    before = system.snapshot()
    context = tmp_path / "source"
    make_key(context)
    text = """
        FROM localhost/arkes:base
        COPY site.key /usr/share/app/site.key
        RUN post_build
        """
    source = write_systemfile(context, text)
    for attempt in range(2):
        refused = system.os("upgrade", "--systemfile", str(source), check=False)
        assert refused.returncode == 1, f"attempt {attempt}"
        assert "/usr/share/app/site.key (openssh private key)" in refused.stderr
        text = text.replace("RUN post_build", "RUN echo another line\n        RUN post_build")
        source = write_systemfile(context, text)
    assert system.snapshot() == before

    # Overwritten by a later layer with something that is no key, it is no key.
    source = write_systemfile(
        context, text.replace("RUN post_build", "RUN echo no key > /usr/share/app/site.key\n        RUN post_build")
    )
    system.os("upgrade", "--systemfile", str(source))
    assert "/usr/share/app/site.key" in commit_paths(system)


def fingerprints(etc: Path) -> list[str]:
    return [
        subprocess.run(["ssh-keygen", "-l", "-f", key], capture_output=True, text=True, check=True).stdout.split()[1]
        for key in sorted((etc / "ssh").glob("ssh_host_*_key.pub"))
    ]


def test_keys_an_older_image_carried_are_kept_named_and_rotated(system: System, tmp_path: Path) -> None:
    # A machine installed before images lost their keys: the keys in its image's /usr/etc, and the same in /etc.
    made = tmp_path / "made"
    (made / "etc/ssh").mkdir(parents=True)
    subprocess.run(["ssh-keygen", "-A", "-f", made], check=True, capture_output=True)
    old = system.deployment_dir()
    subprocess.run(["chattr", "-i", old], check=True)
    for key in sorted((made / "etc/ssh").iterdir()):
        for where in (old / "usr/etc/ssh", old / "etc/ssh"):
            subprocess.run(["cp", "-p", key, where], check=True)
    subprocess.run(["chattr", "+i", old], check=True)
    before = fingerprints(system.etc())
    assert len(before) == 3

    shown = system.os("status", "--json")
    shared = json.loads(shown.stdout)["identityFromImage"]
    assert "/etc/ssh/ssh_host_ed25519_key" in shared and len(shared) == 6
    assert "os rotate-host-keys" in shown.stderr

    system.add_line("RUN echo upgraded > /usr/share/arkes-upgraded")
    upgraded = system.os("upgrade")
    assert "kept this machine's identity" in upgraded.stderr
    assert len(system.status()) == 2
    assert fingerprints(system.etc()) == before, "the upgrade keeps the machine's host keys"
    assert not list((system.deployment_dir() / "usr/etc/ssh").glob("ssh_host_*")), "the new image has none"
    assert "os rotate-host-keys" in system.os("status").stderr, "still shared with every machine of that image"

    rotated = json.loads(system.os("rotate-host-keys", "--json").stdout)
    after = [k["fingerprint"] for k in rotated["keys"]]
    assert len(after) == 3 and not set(after) & set(before)
    assert fingerprints(system.etc()) == after
    quiet = system.os("status", "--json")
    assert json.loads(quiet.stdout)["identityFromImage"] == [] and "rotate-host-keys" not in quiet.stderr

    rolled = system.os("rollback")
    assert "carried this machine's identity along" in rolled.stderr
    assert fingerprints(system.etc()) == after, "the rollback keeps the new keys"
