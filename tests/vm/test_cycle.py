"""The life of an installed system, every state checked from inside a booted guest, on one disk (a boot costs
about two minutes under TCG, so each boot checks all it can).

install a Systemfile that takes its kernel from trixie-backports → boot (that kernel runs, read-only /usr,
writable /etc and /var, one booted deployment, the update timer, `os diff --etc`, a development unlock) → boot: the
unlock is gone; in the guest go back to the image's own Systemfile (Debian's stable kernel) with additions
(heredocs, built by the guest's own Buildah to the same tree as this host's build), change /etc and /var/home,
`os upgrade` (staged), an /etc edit after staging → reboot into the new deployment (the stable kernel runs, the
edit reached it, the menu lists both), `os rollback` → boot: the backports kernel again, `os rollback` → boot the
previous entry from the menu with UEFI, `os revert` and a hotfix unlock → boot: the reverted system by default, the
hotfix persists; an upgrade whose kernel cannot start init runs while shutdown is refused → three boots that panic,
counted by GRUB, then the previous system by itself, which records why. A blank disk fails at once with the
console's last lines.

A second machine installed from the same Systemfile makes host keys of its own, then follows a system published on
this host (a registry on 127.0.0.1, reached through QEMU's forwarding), with its signature required: an unsigned
image is refused, the signed one taken, downloading only the layers the machine does not hold → boot: it runs the
published system; a newer one is published, `os checkupdates` finds it and `os upgrade` downloads only its change
→ boot: the newer system runs; a third one, altered in the registry after it was signed, is refused.
"""

from __future__ import annotations

import json
import os
import subprocess
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from tests.integration.conftest import OS, System
from tests.integration.registry import Registry, running_registry
from tests.vm.conftest import discard_disk, guest, install_disk, last_json, report

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
fact trial "$(grep -c '^arkes_trial=' /boot/grub/grubenv 2>/dev/null)"
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
fact man "$(MANPAGER=cat MANWIDTH=100 man os-upgrade 2>&1 | grep -c 'os-upgrade - build the Systemfile')"
# What an interactive login shell completes `os` with (bash-completion loads it at the first Tab).
fact complete "$(bash -lic '{ _comp_load os || _completion_loader os; } 2>/dev/null; complete -p os' 2>/dev/null)"
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
    discard_disk(path)


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
    assert found["man"] == "1", "`man os-upgrade` renders the page the image carries"
    assert found["complete"] == "complete -F _os os", "and bash completes `os`"
    assert found["login"] != "absent", "the console has a login program (Debian 13 no longer makes it essential)"
    assert len(found["deployments"]) == 1 and booted_index(found) == 0
    assert found["deployments"][0]["boot"]["state"] == "good", "the first boot is proven good by the boot check"
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
    assert found["deployments"][0]["boot"]["state"] == "good", "the upgrade is proven good on its first boot"
    assert found["trial"] == "0", "and the boot loader counts its tries no more"
    assert found["motd"] == "changed in the guest"
    assert found["homefile"] == "kept"
    assert int(found["links"]) >= 2, "the deployment made in the guest hard-links the repository's objects"


def test_d_a_rollback_boots_the_previous_kernel(disk: Path) -> None:
    found = facts(disk, "rollback", then="os rollback >/dev/null && fact again yes\n")
    assert found["kernel"] == KERNELS["backports"], "the rollback made the backports system the default"
    assert found["marker"] == "absent"
    assert booted_index(found) == 0
    assert found["again"] == "yes", "and a second rollback makes the stable system the default again"


REVERT = r"""
os revert >/dev/null && fact reverted yes
fact after "$(os status --json | tr -d '\n')"
os unlock --hotfix >/dev/null && echo fix > /usr/share/arkes-hotfix && fact hotfix_written yes
"""


def test_e_previous_entry_with_uefi_then_revert(disk: Path) -> None:
    found = facts(disk, "revert-uefi", "--uefi", "--boot-entry", "1", then=REVERT)
    assert found["marker"] == "absent", "the menu's second entry is the previous system"
    assert booted_index(found) == 1
    assert found["reverted"] == "yes"
    after = json.loads(found["after"])["deployments"]
    assert len(after) == 1 and after[0]["booted"], "os revert removed the newest deployment"
    assert found["hotfix_written"] == "yes"


# A new system whose kernel cannot start init: `init=/bin/false` exits, the kernel panics and (panic=5) reboots.
# Its upgrade runs in the background while someone tries to power the machine off.
BROKEN = r"""
echo 'init=/bin/false panic=5' >> /etc/system/kargs
os upgrade > /root/broken-upgrade.log 2>&1 &
pid=$!
i=0; while [ ! -e /run/arkes/upgrade.json ] && [ $i -lt 600 ]; do sleep 0.1; i=$((i+1)); done
fact in_progress "$(os status | grep -c '^In progress: upgrading the system (os upgrade)')"
fact holding "$(systemd-inhibit --list --no-legend 2>/dev/null | grep -c 'upgrading the system')"
if kill -0 $pid 2>/dev/null; then systemctl poweroff 2>/root/poweroff.err; fact poweroff_exit $?; fi
fact poweroff_said "$(tr '\n' ' ' < /root/poweroff.err)"
wait $pid; fact broken_upgrade $?
fact upgrade_log "$(tail -n 3 /root/broken-upgrade.log | tr '\n' ' ')"
fact inhibitors "$(systemd-inhibit --list --no-legend 2>/dev/null | grep -c 'upgrading the system')"
first='import json, sys; print(json.load(sys.stdin)["deployments"][0]["staged"])'
fact staged "$(os status --json | python3 -c "$first")"
"""

# GRUB gave the broken system its three tries, then started the previous one, whose boot check marked it failed.
FELL_BACK = r"""
fact journal "$(journalctl -b -u arkes-boot-check --no-pager | grep -c 'boot tries were used up')"
fact shown "$(os status | grep -c 'FAILED .*boot tries were used up')"
sed -i '/init=/d' /etc/system/kargs
"""


def test_f_reverted_system_boots_by_default_its_hotfix_persists_and_shutdown_waits_for_an_upgrade(
    disk: Path,
) -> None:
    found = facts(disk, "hotfix", then=BROKEN)
    # (A hotfix keeps an untouched copy of the deployment it unlocked, second in the menu, to go back to.)
    assert booted_index(found) == 0, "the reverted system boots by default"
    assert {d["checksum"] for d in found["deployments"]} == {found["deployments"][0]["checksum"]}
    assert found["marker"] == "absent"
    assert found["homefile"] == "kept"
    assert found["hotfix"] == "fix"
    (booted,) = [d for d in found["deployments"] if d["booted"]]
    assert booted["unlocked"] == "hotfix"
    assert found["in_progress"] == "1", "os status shows the upgrade that runs"
    assert found["holding"] == "1", "the upgrade holds logind's inhibitor"
    # logind refuses: "Operation inhibited", or, where no polkit could let root override it, "Access denied".
    assert found["poweroff_exit"] != "0", found["poweroff_said"]
    assert found["broken_upgrade"] == "0", found["upgrade_log"]
    assert found["inhibitors"] == "0", "the upgrade's lock went with it"
    assert found["staged"] == "True", "the broken system is staged for the next boot"


def test_g_a_system_whose_kernel_panics_gives_way_to_the_previous_one_by_itself(disk: Path) -> None:
    result = boot(disk, FACTS + FELL_BACK, "fallback", "--uefi", "--reboots", "3")
    found = {k: v for k, sep, v in (line.partition("=") for line in result.stdout.splitlines()) if sep}
    deployments = json.loads(found["status"])["deployments"]
    assert "Attempted to kill init" in result.stderr, "the earlier boots panicked, as expected"
    assert result.stderr.count("the guest booted again") == 3, "three tries, then the previous deployment"
    previous, failed = deployments
    assert previous["booted"] and previous["boot"]["state"] == "good"
    assert failed["boot"]["state"] == "failed" and "boot tries were used up" in failed["boot"]["reason"], failed
    assert "init=/bin/false" in failed["kargs"]
    assert found["journal"] == "1" and found["shown"] == "1", "the journal and os status say why"
    assert found["trial"] == "0"


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


@dataclass
class Fleet:
    """A system published on this host, as a build machine publishes for a fleet."""

    registry: Registry
    publisher: System
    key: Path
    sign: list[str]
    digests: dict[str, str]

    @property
    def repository(self) -> str:
        return f"{self.registry.host}/fleet/system"

    def publish(self, tag: str, *, signed: bool) -> str:
        published = self.publisher.os("publish", f"{self.repository}:{tag}", *(self.sign if signed else []), "--json")
        digest: str = json.loads(published.stdout)["digest"]
        return digest

    def get(self, what: str) -> dict[str, Any]:
        url = f"http://{self.registry.host}/v2/fleet/system/{what}"
        raw = subprocess.run(
            ["curl", "-sf", "-H", "Accept: application/vnd.oci.image.manifest.v1+json", url],
            capture_output=True,
            text=True,
            check=True,
        ).stdout
        found: dict[str, Any] = json.loads(raw)
        return found

    def manifest(self, digest: str) -> dict[str, Any]:
        return self.get(f"manifests/{digest}")

    def made_from(self, digest: str, instruction: str) -> set[str]:
        """The blobs of a published image that a machine built from the Systemfile without `instruction` lacks:
        the layers of that instruction and of every one after it (as the image's history names them), and the
        image's configuration."""
        manifest = self.manifest(digest)
        history = self.get(f"blobs/{manifest['config']['digest']}")["history"]
        steps = [step.get("created_by", "") for step in history if not step.get("empty_layer")]
        first = next(i for i, step in enumerate(steps) if instruction in step)
        return {layer["digest"] for layer in manifest["layers"][first:]} | {manifest["config"]["digest"]}

    def layers(self, digest: str) -> set[str]:
        """The blobs of a published image: its layers and its configuration."""
        manifest = self.manifest(digest)
        return {layer["digest"] for layer in manifest["layers"]} | {manifest["config"]["digest"]}

    def size(self, digest: str) -> int:
        """The bytes of a published image's layers, as the registry holds them."""
        return sum(int(layer["size"]) for layer in self.manifest(digest)["layers"])


@pytest.fixture(scope="module")
def fleet(disk: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Fleet]:
    """The installed Systemfile with one line more, published signed as :stable; the same with a second line,
    published unsigned as :unsigned."""
    root = tmp_path_factory.mktemp("fleet")
    with running_registry(root / "registry") as registry:
        previous = os.environ.get("CONTAINERS_REGISTRIES_CONF")
        os.environ["CONTAINERS_REGISTRIES_CONF"] = str(registry.registries_conf)
        publisher = System(root / "sysroot")
        try:
            source = root / "source"
            source.mkdir()
            line = "RUN echo v1 > /usr/share/arkes-fleet\nRUN post_build"
            (source / "Systemfile").write_text(SOURCES[0].read_text().replace("RUN post_build", line))
            publisher.os("install", "--systemfile", str(source / "Systemfile"))
            passphrase = root / "passphrase"
            passphrase.write_text("fleet of one\n")
            publisher.os("keygen", str(root / "fleet"), "--passphrase-file", str(passphrase))
            sign = ["--sign-by", str(root / "fleet.private"), "--sign-passphrase-file", str(passphrase)]
            found = Fleet(registry, publisher, root / "fleet.pub", sign, {})
            found.digests["v1"] = found.publish("stable", signed=True)
            publisher.add_line("RUN echo v2 > /usr/share/arkes-fleet-2")
            publisher.os("upgrade")
            found.digests["v2"] = found.publish("unsigned", signed=False)
            yield found
        finally:
            if previous is None:
                os.environ.pop("CONTAINERS_REGISTRIES_CONF", None)
            else:
                os.environ["CONTAINERS_REGISTRIES_CONF"] = previous
            for tag in ("stable", "unsigned"):
                subprocess.run(["podman", "rmi", "-i", f"{registry.host}/fleet/system:{tag}"], capture_output=True)
            subprocess.run(["chattr", "-R", "-i", str(publisher.path)], check=False, capture_output=True)
            subprocess.run(["rm", "-rf", str(publisher.path)], check=False)


# The machine reaches the registry on this host at 10.0.2.2 (QEMU's forwarding to the host's loopback) and names
# it as the publisher did, 127.0.0.1:PORT, the name its signatures are for: a socket unit forwards that address,
# and registries.conf declares it plain HTTP. Then it asks to follow the unsigned image, and the signed one.
FOLLOW = r"""
cat > /etc/systemd/system/fleet-registry.socket <<'UNIT'
[Socket]
ListenStream=127.0.0.1:{port}
[Install]
WantedBy=sockets.target
UNIT
cat > /etc/systemd/system/fleet-registry.service <<'UNIT'
[Service]
ExecStart=/usr/lib/systemd/systemd-socket-proxyd 10.0.2.2:{port}
UNIT
systemctl daemon-reload && systemctl enable --now fleet-registry.socket
printf '[[registry]]
location = "127.0.0.1:{port}"
insecure = true
' > /etc/containers/registries.conf.d/50-fleet.conf
cat > /root/fleet.pub <<'KEY'
{key}KEY
os switch {repository}:unsigned --require-signed /root/fleet.pub 2>/root/refused; fact unsigned_exit $?
fact unsigned_why "$(grep -c 'not signed, and this machine requires a signature' /root/refused)"
fact after_refusal "$(os status --json | python3 -c 'import json,sys; print(len(json.load(sys.stdin)["deployments"]))')"
os switch {repository}:stable --require-signed /root/fleet.pub 2>/root/switch; fact switch_exit $?
fact switch_log "$(tail -n 3 /root/switch | tr '
' ' ')"
fact requires "$(os status | grep -c 'requires .*sigstore signature by /etc/pki/containers/')"
fact switched "$(os status --json | tr -d '
')"
"""

# The next boot: the published system runs; the publisher has signed a newer one meanwhile.
UPDATE = r"""
fact fleet "$(cat /usr/share/arkes-fleet 2>/dev/null || echo absent)"
os checkupdates --json > /root/check.json 2>/root/check.err; fact check_exit $?
fact check "$(tr -d '
' < /root/check.json)"
os upgrade 2>/root/upgrade; fact upgrade_exit $?
fact upgrade_log "$(tail -n 3 /root/upgrade | tr '
' ' ')"
fact upgraded "$(os status --json | tr -d '
')"
"""

# The boot after the upgrade: the newer published system runs; the publisher has signed a third one meanwhile, and
# a byte of its configuration was changed in the registry's storage after it was signed.
ALTERED = r"""
fact fleet2 "$(cat /usr/share/arkes-fleet-2 2>/dev/null || echo absent)"
os upgrade 2>/root/altered; fact altered_exit $?
fact altered_why "$(grep -c 'altered after it was published' /root/altered)"
fact after "$(os status --json | tr -d '
')"
"""

FLEET: dict[str, Path] = {}  # the second machine's disk, kept for the boot after it followed the published system


def test_i_a_second_machine_makes_keys_of_its_own_and_follows_a_signed_published_system(
    tmp_path_factory: pytest.TempPathFactory, fleet: Fleet, request: pytest.FixtureRequest
) -> None:
    second = tmp_path_factory.mktemp("second") / "second.img"
    install_disk(second, SOURCES[0])
    FLEET["disk"] = second
    script = FOLLOW.format(port=fleet.registry.port, key=fleet.key.read_text(), repository=fleet.repository)
    start = fleet.registry.mark()
    found = facts(second, "second machine follows", then=script)
    assert found["hostkeys"].count("SHA256:") == 3 and found["ssh"] == "active"
    assert found["hostkeys"] != HOST_KEYS["first"], "two machines from one image never share a host key"
    assert not set(found["hostkeys"].split(",")) & set(HOST_KEYS["first"].split(","))

    assert found["unsigned_exit"] == "1" and found["unsigned_why"] == "1", "an unsigned system is refused"
    assert found["after_refusal"] == "1", "nothing was deployed"
    assert found["switch_exit"] == "0", found["switch_log"]
    followed, own = json.loads(found["switched"])["deployments"]
    assert followed["staged"] and own["booted"]
    assert followed["source"] == f"{fleet.repository}@{fleet.digests['v1']}"
    assert followed["verification"]["requirements"][0]["type"] == "sigstoreSigned"
    assert found["requires"] == "1", "os status shows what the machine requires"
    # The machine holds every layer of the system it was installed with: only the layers of the published line
    # and of what follows it travel (post_build's among them: it made a new initramfs for the backports kernel).
    # (Besides layers, a pull reads configurations and signatures: small blobs.)
    sent, fetched = fleet.registry.sent(start), fleet.registry.fetched_blobs(start) & fleet.layers(fleet.digests["v1"])
    lacking = fleet.made_from(fleet.digests["v1"], "echo v1")
    assert fetched and fetched <= lacking, f"only the layers the machine lacks: {fetched - lacking} too"
    whole = fleet.size(fleet.digests["v1"])
    report(request, f"fleet: the switch downloaded {sent['blobs']} bytes of blobs of an image of {whole} bytes")


def test_j_the_follower_learns_of_a_newer_system_and_takes_only_its_change(
    fleet: Fleet, request: pytest.FixtureRequest
) -> None:
    second = FLEET["disk"]
    try:
        v2 = fleet.publish("stable", signed=True)
        assert v2 == fleet.digests["v2"], "the same image, now signed"
        start = fleet.registry.mark()
        found = facts(second, "second machine upgrades", then=UPDATE)
    except BaseException:
        discard_disk(second)
        raise
    assert found["fleet"] == "v1", "the published system runs"
    (booted,) = [d for d in found["deployments"] if d["booted"]]
    assert booted["source"] == f"{fleet.repository}@{fleet.digests['v1']}"
    assert found["check_exit"] == "0", "an update is there"
    (finding,) = json.loads(found["check"])["updates"]
    assert (finding["kind"], finding["old"], finding["new"]) == ("published", fleet.digests["v1"], v2)
    assert found["upgrade_exit"] == "0", found["upgrade_log"]
    upgraded = json.loads(found["upgraded"])["deployments"]
    assert upgraded[0]["staged"] and upgraded[0]["source"] == f"{fleet.repository}@{v2}"
    fetched = fleet.registry.fetched_blobs(start) & fleet.layers(v2)
    new = fleet.layers(v2) - fleet.layers(fleet.digests["v1"])
    assert fetched and fetched <= new, f"only the layers v1 lacks: {fetched - new} too"
    whole = fleet.size(v2)
    report(request, f"fleet: the upgrade downloaded {fleet.registry.sent(start)['blobs']} bytes of an image of {whole}")


def test_k_the_follower_runs_its_update_and_refuses_an_altered_one(fleet: Fleet) -> None:
    second = FLEET["disk"]
    try:
        fleet.publisher.add_line("RUN echo v3 > /usr/share/arkes-fleet-3")
        fleet.publisher.os("upgrade")
        v3 = fleet.publish("stable", signed=True)
        config = fleet.manifest(v3)["config"]["digest"].removeprefix("sha256:")
        blob = fleet.registry.root / "storage/docker/registry/v2/blobs/sha256" / config[:2] / config / "data"
        original = blob.read_bytes()
        blob.write_bytes(original[: len(original) // 2] + b"~" + original[len(original) // 2 + 1 :])
        try:
            found = facts(second, "second machine refuses an altered update", then=ALTERED)
        finally:
            blob.write_bytes(original)
    finally:
        discard_disk(second)
    assert found["fleet2"] == "v2", "the machine rebooted into the system its upgrade took"
    (booted,) = [d for d in found["deployments"] if d["booted"]]
    assert booted["source"] == f"{fleet.repository}@{fleet.digests['v2']}" and booted["index"] == 0
    assert found["altered_exit"] == "1" and found["altered_why"] == "1", "an image altered after signing is refused"
    after = json.loads(found["after"])["deployments"]
    assert [d["checksum"] for d in after] == [d["checksum"] for d in found["deployments"]], "nothing deployed"
