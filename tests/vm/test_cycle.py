"""The life of an installed system, every state checked from inside a booted guest, on one disk (a boot costs
about two minutes under TCG, so each boot checks all it can).

install a Systemfile that takes its kernel from trixie-backports → boot (that kernel runs, read-only /usr,
writable /etc and /var, one booted deployment, the update timer, `os diff --etc`, a development unlock) → boot: the
unlock is gone; in the guest go back to the image's own Systemfile (Debian's stable kernel) with additions
(heredocs, built by the guest's own Buildah to the same tree as this host's build), change /etc and /var/home,
`os upgrade` (staged), an /etc edit after staging → reboot into the new deployment (the stable kernel runs, the
edit reached it, the menu lists both), `os rollback` → boot: the backports kernel again, `os rollback` → boot the
previous entry from the menu and `os revert` → boot with UEFI: the reverted system by default; a hotfix unlock →
boot: the hotfix persists. A blank disk fails at once with the console's last lines.
"""

from __future__ import annotations

import json
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.integration.conftest import OS
from tests.vm.conftest import guest, install_disk, last_json, report

pytestmark = pytest.mark.vm

TIMINGS: dict[str, float] = {}
KERNELS: dict[str, str] = {}  # the kernel version of each deployment, as the guest booted them
HOST_KEYS: dict[str, str] = {}  # the SSH host key fingerprints each machine made on its first boot
SOURCES: list[Path] = []  # the Systemfile the disk was installed from

FACTS = r"""
fact() { printf '%s=%s\n' "$1" "$2"; }
if touch /usr/.probe 2>/dev/null; then fact usr writable; else fact usr readonly; fi
if touch /etc/.probe 2>/dev/null; then fact etc writable; rm -f /etc/.probe; else fact etc readonly; fi
if touch /var/.probe 2>/dev/null; then fact var writable; rm -f /var/.probe; else fact var readonly; fi
fact home "$(readlink -f /home)"
fact hostname "$(hostname)"
fact login "$(command -v login || echo absent)"
fact marker "$(cat /usr/share/arkes-marker 2>/dev/null || echo absent)"
fact heredoc "$(cat /usr/share/arkes-heredoc 2>/dev/null || echo absent)"
fact motd "$(tail -n1 /etc/motd)"
fact homefile "$(cat /var/home/tester/file 2>/dev/null || echo absent)"
fact after_staging "$(cat /etc/arkes-after-staging 2>/dev/null || echo absent)"
fact hotfix "$(cat /usr/share/arkes-hotfix 2>/dev/null || echo absent)"
fact menu "$(grep -c menuentry /boot/grub/grub.cfg)"
fact kernel "$(uname -r)"
# Deployments share their files with the repository: one inode for the object and every deployment holding it.
fact links "$(stat -c %h /usr/bin/bash)"
fact hostkeys "$(for k in /etc/ssh/ssh_host_*_key.pub; do ssh-keygen -lf "$k" | cut -d' ' -f2; done | paste -sd,)"
fact ssh "$(systemctl is-active ssh.service)"
fact kernel_package "$(dpkg-query -W -f '${Version}' "linux-image-$(uname -r)")"
fact status "$(os status --json | tr -d '\n')"
"""

DEFAULT = Path(__file__).resolve().parents[2] / "image/base/overlay/etc/system/Systemfile"

# The kernel from trixie-backports, with the same first layers as the integration test of kernels (a cache hit).
BACKPORTS = """FROM localhost/arkes:base
RUN add_package_repository backports http://deb.debian.org/debian trixie-backports main
RUN apt-get update -q && DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends \\
      -t trixie-backports linux-image-amd64 && apt-get clean && rm -rf /var/lib/apt/lists/*
"""

# What the guest adds to its Systemfile: current syntax (heredocs), built by the guest's own Buildah.
ADDED = """RUN <<EOF
set -e
echo marker > /usr/share/arkes-marker
EOF
COPY <<EOF /usr/share/arkes-heredoc
built from a heredoc
EOF
"""

# The files of a commit (mode, owner, size, content checksum, path), as a digest both sides compute alike.
# os-release carries the build's time (post_build stamps BUILD_ID), so it is the one file that must differ.
TREE_DIGEST = (
    "ostree ls --repo={repo} -R -C {commit} / | awk '$1 ~ /^[-l]/ && $6 != \"/usr/lib/os-release\"' | sha256sum"
    " | cut -c1-64"
)

# The first boot, after its facts: the update timer, the local /etc change, a development unlock of /usr.
DAY2 = r"""
fact timer "$(systemctl is-enabled arkes-checkupdates.timer)"
fact menu_unit "$(systemctl is-enabled arkes-boot-menu.service)"
echo 'edited in the guest' >> /etc/motd
fact diff_etc "$(os diff --etc | grep -c '^M /etc/motd$')"
os unlock >/dev/null && touch /usr/share/arkes-dev && fact dev_written yes
first='import json, sys; print(json.load(sys.stdin)["deployments"][0]["unlocked"])'
fact unlocked "$(os status --json | python3 -c "$first")"
"""

CHANGE = (
    r"""
set -e
if [ -e /usr/share/arkes-dev ]; then echo dev-kept; else echo dev-gone; fi
cp /usr/etc/system/Systemfile /etc/system/Systemfile
cat >> /etc/system/Systemfile <<'ADDED'
"""
    + ADDED
    + r"""ADDED
echo 'changed in the guest' >> /etc/motd
mkdir -p /var/home/tester && echo kept > /var/home/tester/file
os upgrade
echo 'written after staging' > /etc/arkes-after-staging
commit=$(os status --json | python3 -c 'import json,sys; print(json.load(sys.stdin)["deployments"][0]["checksum"])')
echo "tree=$("""
    + TREE_DIGEST.format(repo="/ostree/repo", commit="$commit")
    + r""")"
os status --json | tr -d '\n'
"""
)


@pytest.fixture(scope="module")
def disk(tmp_path_factory: pytest.TempPathFactory, request: pytest.FixtureRequest) -> Iterator[Path]:
    path = tmp_path_factory.mktemp("vm") / "arkes.img"
    source = tmp_path_factory.mktemp("backports")
    (source / "Systemfile").write_text(BACKPORTS + DEFAULT.read_text().replace("FROM localhost/arkes:base\n", ""))
    start = time.monotonic()
    result = install_disk(path, source / "Systemfile")
    SOURCES.append(source / "Systemfile")
    TIMINGS["install"] = time.monotonic() - start
    assert "root has no password" in result.stderr
    yield path
    used = int(subprocess.run(["du", "-B1", str(path)], capture_output=True, text=True).stdout.split()[0])
    report(request, "\nvm cycle timings: " + ", ".join(f"{k} {v:.0f}s" for k, v in TIMINGS.items()))
    report(request, f"disk image: {used / 1024**3:.2f} GiB used after the cycle")
    path.unlink()


def boot(disk: Path, command: str, name: str, *args: str) -> subprocess.CompletedProcess[str]:
    start = time.monotonic()
    result = guest(disk, command, *args)
    TIMINGS[name] = time.monotonic() - start
    return result


def facts(disk: Path, name: str, *args: str, then: str = "") -> dict[str, Any]:
    result = boot(disk, FACTS + then, name, *args)
    found: dict[str, Any] = {}
    for line in result.stdout.splitlines():
        key, sep, value = line.partition("=")
        if sep:
            found[key] = value
    found["deployments"] = json.loads(found.pop("status"))["deployments"]
    return found


def booted_index(found: dict[str, Any]) -> int:
    (index,) = [d["index"] for d in found["deployments"] if d["booted"]]
    return int(index)


def test_a_installed_system_boots(disk: Path) -> None:
    found = facts(disk, "boot", then=DAY2)
    assert "~bpo" in found["kernel_package"], f"the backports kernel runs: {found['kernel']} {found['kernel_package']}"
    assert found["kernel"] == found["deployments"][0]["kernel"], "os status names the kernel that runs"
    assert found["hostkeys"].count("SHA256:") == 3 and found["ssh"] == "active", "the machine made its host keys"
    HOST_KEYS["first"] = found["hostkeys"]
    assert found["usr"] == "readonly"
    assert found["etc"] == "writable" and found["var"] == "writable"
    assert found["home"] == "/var/home"
    assert found["hostname"] == "arkes", "the hostname the Systemfile declares"
    assert found["login"] != "absent", "the console has a login program (Debian 13 no longer makes it essential)"
    assert len(found["deployments"]) == 1 and booted_index(found) == 0
    assert found["timer"] == "enabled" and found["menu_unit"] == "enabled"
    assert found["diff_etc"] == "1", "os diff --etc names the local change"
    assert found["dev_written"] == "yes" and found["unlocked"] == "development"


def test_b_upgrade_in_the_guest(disk: Path, tmp_path: Path) -> None:
    result = boot(disk, CHANGE, "upgrade")
    assert "dev-gone" in result.stdout.splitlines(), "a development unlock ends with the boot"
    deployments = last_json(result)["deployments"]
    assert len(deployments) == 2
    assert deployments[0]["staged"] and not deployments[0]["booted"], "on a running system the upgrade is staged"
    assert deployments[1]["booted"], "the system the upgrade ran on stays, second in the menu"
    (guest_tree,) = [line.removeprefix("tree=") for line in result.stdout.splitlines() if line.startswith("tree=")]

    # The same Systemfile built on this host, by the same builder, is the same tree.
    source = tmp_path / "source"
    source.mkdir()
    (source / "Systemfile").write_text(DEFAULT.read_text() + ADDED)
    sysroot = tmp_path / "sysroot"
    start = time.monotonic()
    install = [str(OS), "--sysroot", str(sysroot), "install", "--systemfile", str(source / "Systemfile")]
    subprocess.run(install, check=True, capture_output=True)
    TIMINGS["host build"] = time.monotonic() - start
    shown = subprocess.run([str(OS), "--sysroot", str(sysroot), "status", "--json"], capture_output=True, text=True)
    commit = json.loads(shown.stdout)["deployments"][0]["checksum"]
    command = TREE_DIGEST.format(repo=sysroot / "ostree/repo", commit=commit)
    host_tree = subprocess.run(["sh", "-c", command], capture_output=True, text=True, check=True).stdout.strip()
    try:
        assert host_tree == guest_tree, "the guest's build and the host's build are the same tree"
    finally:
        subprocess.run(["chattr", "-R", "-i", str(sysroot)], check=False, capture_output=True)
        subprocess.run(["rm", "-rf", str(sysroot)], check=False)


def test_c_reboot_into_the_new_deployment(disk: Path) -> None:
    found = facts(disk, "reboot", then="fact rollback \"$(os rollback --json | tr -d '\\n')\"\n")
    assert booted_index(found) == 0
    assert "~bpo" not in found["kernel_package"], f"the stable kernel runs: {found['kernel']}"
    new, old = found["deployments"]
    assert found["kernel"] == new["kernel"] != old["kernel"], "each deployment boots its own kernel"
    KERNELS.update(stable=new["kernel"], backports=old["kernel"])
    assert found["hostkeys"] == HOST_KEYS["first"], "the upgrade to a rebuilt system keeps the machine's host keys"
    assert json.loads(found["rollback"])["default"] == old["checksum"], "os rollback makes the previous the default"
    assert found["marker"] == "marker"
    assert found["heredoc"] == "built from a heredoc"
    assert found["after_staging"] == "written after staging", "an /etc edit made after staging is kept"
    assert found["menu"] == "2", "the boot menu lists both deployments after finalization"
    assert not found["deployments"][0]["staged"]
    assert found["motd"] == "changed in the guest"
    assert found["homefile"] == "kept"
    assert int(found["links"]) >= 2, "the deployment made in the guest hard-links the repository's objects"


def test_d_a_rollback_boots_the_previous_kernel(disk: Path) -> None:
    found = facts(disk, "rollback", then="os rollback >/dev/null && fact again yes\n")
    assert found["kernel"] == KERNELS["backports"], "the rollback made the backports system the default"
    assert found["marker"] == "absent"
    assert booted_index(found) == 0
    assert found["again"] == "yes", "and a second rollback makes the stable system the default again"


def test_e_previous_entry_then_revert(disk: Path) -> None:
    result = boot(
        disk, FACTS + "os revert && echo reverted && os status --json | tr -d '\\n'", "revert", "--boot-entry", "1"
    )
    assert "marker=absent" in result.stdout
    assert "reverted" in result.stdout
    after = last_json(result)["deployments"]
    assert len(after) == 1 and after[0]["booted"]


def test_f_reverted_system_boots_by_default_with_uefi(disk: Path) -> None:
    hotfix = "os unlock --hotfix >/dev/null && echo fix > /usr/share/arkes-hotfix && fact hotfix_written yes\n"
    found = facts(disk, "boot-uefi", "--uefi", then=hotfix)
    assert len(found["deployments"]) == 1 and booted_index(found) == 0
    assert found["marker"] == "absent"
    assert found["homefile"] == "kept"
    assert found["hotfix_written"] == "yes"


def test_g_hotfix_persists_across_a_reboot(disk: Path) -> None:
    found = facts(disk, "hotfix")
    assert found["hotfix"] == "fix"
    (booted,) = [d for d in found["deployments"] if d["booted"]]
    assert booted["unlocked"] == "hotfix"


def test_h_a_disk_that_does_not_boot_gives_a_clear_error(tmp_path: Path) -> None:
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


def test_i_a_second_machine_from_the_same_image_makes_keys_of_its_own(tmp_path: Path) -> None:
    second = tmp_path / "second.img"
    install_disk(second, SOURCES[0])
    try:
        found = facts(second, "second machine")
    finally:
        second.unlink()
    assert found["hostkeys"].count("SHA256:") == 3 and found["ssh"] == "active"
    assert found["hostkeys"] != HOST_KEYS["first"], "two machines from one image never share a host key"
    assert not set(found["hostkeys"].split(",")) & set(HOST_KEYS["first"].split(","))
