"""A real server's life, checked from inside a booted guest: a web server and a database with rows in it, a person made
on the machine and people declared in the Systemfile, two upgrades run in the guest (the second adds a Debian
package whose maintainer script creates a system user, and brings a package update its repository published), a
reboot after each.

`os iso` makes the installer of the server (nginx, PostgreSQL) with an answer file → its live system, booted with
BIOS and told to leave the answers aside, installs nothing by itself and refuses the CD and another Systemfile →
booted with UEFI beside a blank disk, it installs there unattended and powers off → boot (BIOS): rows in a database,
a page under /var/www, `bob` made with useradd/chpasswd/usermod, a unit disabled; the Systemfile declares `carol`
(whose id the machine already gave bob) and a package from a signed repository of the person's own (served on this
host's loopback, reached through QEMU's user-mode network); `os upgrade` → boot: every service active, rows, page
and homes kept, bob and carol log in with their passwords, ids distinct and unchanged; carol's password and bob's
groups changed on the machine; the repository publishes 1.1 of its package; the Systemfile adds tcpdump; `os
upgrade` names both changes → boot: the same, the update and the package's system user are there, no id shared, no
failed unit, `os checkupdates` finds nothing and `os diff --packages 1 0` shows the change, the upgrade was proven
good on its first boot (the image's health check asks the web server); the machine goes offline (its links down),
the Systemfile disables nginx, `os upgrade` builds from the build cache the installer brought → boot: the health
check fails, the boot check records why and reboots into the previous deployment by itself, where `os status` and
the journal say so and `os upgrade` refuses to deploy the same system again.
"""

from __future__ import annotations

import json
import re
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.integration.aptrepo import AptRepository, hello_repository
from tests.integration.conftest import OS
from tests.vm.conftest import discard_disk, guest, report

pytestmark = pytest.mark.vm

TIMINGS: dict[str, float] = {}
SIZES: dict[str, int] = {}
INSTALLED: dict[str, str] = {}  # what the installer image carries
UPGRADE_STEPS: list[dict[str, float]] = []  # each guest upgrade's steps and their seconds

# The image's health check: the shop's front page answers (a boot where it does not is not good).
SYSTEMFILE = """FROM localhost/arkes:base
ENV SYSTEM_HOSTNAME=server SYSTEM_TIMEZONE=Etc/UTC SYSTEM_LOCALE=C.UTF-8 SYSTEM_KEYMAP=us
RUN setup_machine
RUN install_packages nginx postgresql
RUN <<CHECK
mkdir -p /usr/lib/arkes/health.d
cat > /usr/lib/arkes/health.d/50-web <<'PROBE'
#!/bin/sh
echo "asking http://127.0.0.1/"
exec python3 -c 'import urllib.request as u; print(u.urlopen("http://127.0.0.1/", timeout=10).status)'
PROBE
chmod 755 /usr/lib/arkes/health.d/50-web
CHECK
RUN post_build
"""

# Logs in as USER with PASSWORD through PAM, as a person at a terminal would: `su` on a pseudo-terminal, run by an
# unprivileged user so that the password is asked for and checked.
LOGIN = r"""
import os, pty, sys, time
user, password = sys.argv[1], sys.argv[2]
pid, fd = pty.fork()
report = "echo in=$(id -un):$HOME:$(test -w . && echo w)"
if pid == 0:
    os.execvp("runuser", ["runuser", "-u", "nobody", "--", "su", "-", user, "-c", report])
out, deadline = b"", time.monotonic() + 120
while b"assword" not in out and time.monotonic() < deadline:
    out += os.read(fd, 1024)
os.write(fd, password.encode() + b"\n")
while True:
    try:
        data = os.read(fd, 1024)
    except OSError:
        break
    if not data:
        break
    out += data
_, status = os.waitpid(pid, 0)
sys.stdout.write(out.decode(errors="replace").replace("\r", "").split("in=")[-1].strip() if status == 0 else "refused")
"""

# What every boot reports, one `key=value` per line.
FACTS = (
    r"""
fact() { printf '%s=%s\n' "$1" "$2"; }
cat > /run/login.py <<'PY'
"""
    + LOGIN
    + r"""PY
login() { python3 /run/login.py "$1" "$2"; }
sql() { runuser -u postgres -- psql -d shop -tAc "$1" 2>&1 | tr '\n' ' ' | sed 's/ $//'; }
fact state "$(systemctl is-system-running)"
fact failed "$(systemctl --failed --no-legend --plain | awk '{print $1}' | tr '\n' ' ')"
fact nginx "$(systemctl is-active nginx)"
fact postgresql "$(systemctl is-active postgresql@17-main)"
page='import urllib.request; print(urllib.request.urlopen("http://127.0.0.1/").read().decode().strip())'
fact page "$(python3 -c "$page" 2>&1 | tr '\n' ' ')"
accounts() {
    fact ids "$(getent passwd | awk -F: '{print $1 ":" $3}' | sort | tr '\n' ' ')"
    fact gids "$(getent group | awk -F: '{print $1 ":" $3}' | sort | tr '\n' ' ')"
}
accounts
fact shared_uid "$(cut -d: -f3 /etc/passwd | sort | uniq -d | tr '\n' ' ')"
fact shared_gid "$(cut -d: -f3 /etc/group | sort | uniq -d | tr '\n' ' ')"
fact pg_owner "$(stat -c %U /var/lib/postgresql/17/main)"
fact hello "$(cat /usr/share/arkes-hello/version 2>/dev/null || echo absent)"
fact timesyncd "$(systemctl is-enabled systemd-timesyncd)"
# ssl-cert's certificate (PostgreSQL serves TLS with it): made on this machine at its first boot, then kept.
fact snakeoil "$(sha256sum /etc/ssl/certs/ssl-cert-snakeoil.pem 2>/dev/null | cut -c1-16 || echo absent)"
key=/etc/ssl/private/ssl-cert-snakeoil.key
fact snakeoil_key "$(test -s $key && stat -c %G $key)"
upgrade() {
    rc=0; os upgrade > /var/log/arkes-test-upgrade.log 2>&1 || rc=$?
    fact upgrade_rc "$rc"
    fact upgrade "$(tr '\n' '|' < /var/log/arkes-test-upgrade.log)"
}
for u in bob carol; do
    if id "$u" >/dev/null 2>&1; then
        fact "${u}_groups" "$(id -nG "$u" | tr ' ' '\n' | sort | tr '\n' ' ')"
        fact "${u}_home" "$(stat -c %U /var/home/$u) $(cat /var/home/$u/note 2>/dev/null || echo none)"
    fi
done
"""
)

FIRST_BOOT = r"""
set -e
fact hostname "$(hostname)"
one='import json, sys; d = json.load(sys.stdin)["deployments"]; print(len(d), d[0]["booted"], d[0]["version"])'
fact deployments "$(os status --json | python3 -c "$one")"
fact dave_login "$(login dave dave-secret)"
fact health "$(os health --json | tr -d '\n')"
printf 'required-units = nginx.service postgresql@17-main.service\ncheck-timeout = 30\n' > /etc/system/boot.conf
runuser -u postgres -- createdb shop
sql "CREATE TABLE items (name text); INSERT INTO items VALUES ('apple'), ('pear')" >/dev/null
echo 'served from /var' > /var/www/html/index.html
useradd -m -s /bin/bash bob && echo 'bob:bob-secret' | chpasswd && usermod -aG www-data bob
echo bob-note > /var/home/bob/note && chown bob: /var/home/bob/note
systemctl disable systemd-timesyncd 2>/dev/null
fact bob_login "$(login bob bob-secret)"
accounts
cat > /etc/system/repo.asc <<'KEY'
{key}KEY
cat > /run/added <<'ADDED'
RUN useradd -m -s /bin/bash carol && echo carol:carol-secret | chpasswd && echo carol-note > /home/carol/note
COPY repo.asc /tmp/repo.asc
RUN add_package_repository mine {url} stable main /tmp/repo.asc && rm /tmp/repo.asc && install_packages arkes-hello
ADDED
sed -i '/^RUN post_build/e cat /run/added' /etc/system/Systemfile
upgrade
"""

SECOND_BOOT = r"""
set -e
fact rows "$(sql 'SELECT name FROM items ORDER BY name')"
fact bob_login "$(login bob bob-secret)"
fact carol_login "$(login carol carol-secret)"
sql "INSERT INTO items VALUES ('plum')" >/dev/null
echo 'carol:changed-on-the-machine' | chpasswd
groupadd editors && usermod -aG editors bob
sed -i '/^RUN post_build/i RUN install_packages tcpdump' /etc/system/Systemfile
upgrade
"""

THIRD_BOOT = r"""
rc=0; os checkupdates > /run/checkupdates 2>&1 || rc=$?
fact checkupdates "$rc $(tr '\n' '|' < /run/checkupdates)"
fact diff "$(os diff --packages 1 0 2>&1 | tr '\n' '|')"
fact rows "$(sql 'SELECT name FROM items ORDER BY name')"
fact bob_login "$(login bob bob-secret)"
fact carol_login "$(login carol changed-on-the-machine)"
fact carol_old "$(login carol carol-secret)"
fact tcpdump "$(command -v tcpdump || echo absent)"
fact dave_login "$(login dave dave-secret)"
booted='import json, sys; print(json.load(sys.stdin)["deployments"][0]["boot"]["state"])'
fact boot "$(os status --json | python3 -c "$booted")"
fact trial "$(grep -c '^arkes_trial=' /boot/grub/grubenv 2>/dev/null)"
sed -i '/^RUN post_build/i RUN systemctl disable nginx' /etc/system/Systemfile
# From here on the machine has no network: the upgrade builds from the cache the installer brought.
for link in $(ip -o link show | awk -F': ' '$2 != "lo" {print $2}'); do ip link set "$link" down; done
fact offline "$(ip -o route show default | wc -l) $(getent hosts deb.debian.org >/dev/null && echo resolves)"
upgrade
"""

# The system that disabled its web server booted, failed its health check and rebooted into the previous one.
FOURTH_BOOT = r"""
fact status "$(os status --json | tr -d '\n')"
fact shown "$(os status | grep -c 'FAILED .*health check 50-web failed')"
said='the previous boot, of deployment [0-9a-f]*, failed: required unit nginx.service .*health check 50-web failed'
fact journal "$(journalctl -b -u arkes-boot-check --no-pager | grep -c "$said")"
fact refused "$(journalctl -b -u arkes-boot-check --no-pager | grep -c 'Connection refused')"
rc=0; os upgrade > /run/again 2>&1 || rc=$?
fact again "$rc $(tr '\n' '|' < /run/again)"
"""


@pytest.fixture(scope="module")
def repository(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[AptRepository, str]]:
    """The person's own signed package repository, on this host's loopback; the guest reaches it as 10.0.2.2."""
    with hello_repository(tmp_path_factory.mktemp("aptrepo") / "www") as served:
        yield served


# The installer's answers: the machine's name, root's password and its first person, and the disk to install to.
ANSWERS = """\
disk = "/dev/vda"
hostname = "shop"
root_password = "root-secret"
user = "dave"
user_password = "dave-secret"
"""

# The live installer, booted with BIOS and its menu's second entry (the answer file left aside), as a person who
# installs by hand finds it: nothing is installed by itself, the medium is no disk to install to, and the
# installer installs only what it carries.
LIVE = r"""
fact() { printf '%s=%s\n' "$1" "$2"; }
fact hostname "$(hostname)"
fact root "$(findmnt -n -o FSTYPE /)"
fact unattended "$(journalctl -b -u arkes-unattended --no-pager | grep -c 'no answer file: nothing to install')"
fact partitions "$(lsblk -n -o NAME /dev/vda | wc -l)"
fact motd "$(grep -c 'This is the Arkes installer' /etc/motd)"
rc=0; os install --disk /dev/sr0 --answers /run/initramfs/live/arkes/answers.toml > /run/sr0 2>&1 || rc=$?
fact cd "$rc $(tr '\n' '|' < /run/sr0)"
echo 'FROM localhost/arkes:base' > /run/Systemfile
rc=0; os install --disk /dev/vda --systemfile /run/Systemfile --answers /run/initramfs/live/arkes/answers.toml \
    > /run/other 2>&1 || rc=$?
fact other "$rc $(tr '\n' '|' < /run/other)"
"""


@pytest.fixture(scope="module")
def installer(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The server's installer image, made by `os iso` with an answer file on it."""
    work = tmp_path_factory.mktemp("iso")
    (work / "source").mkdir()
    (work / "source/Systemfile").write_text(SYSTEMFILE)
    (work / "answers.toml").write_text(ANSWERS)
    path = work / "server.iso"
    start = time.monotonic()
    argv = [str(OS), "iso", str(path), "--systemfile", str(work / "source/Systemfile")]
    argv += ["--answers", str(work / "answers.toml"), "--json"]
    result = subprocess.run(argv, capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
    TIMINGS["iso"] = time.monotonic() - start
    SIZES["installer image"] = path.stat().st_size
    INSTALLED["version"] = json.loads(result.stdout)["version"]
    return path


@pytest.fixture(scope="module")
def disk(installer: Path, request: pytest.FixtureRequest) -> Iterator[Path]:
    """A blank disk, installed by the live installer, unattended, under UEFI firmware; it powers off when done."""
    failed_before = request.session.testsfailed
    path = installer.parent / "server.img"
    subprocess.run(["truncate", "-s", "14G", str(path)], check=True)
    start = time.monotonic()
    argv = [str(OS), "vm", str(path), "--cdrom", str(installer), "--uefi", "--until-poweroff", "--timeout", "1200"]
    argv += ["--console-log", str(path.parent / "console-live.log")]
    result = subprocess.run(argv, capture_output=True, text=True)
    assert result.returncode == 0, f"{result.stdout}\n{result.stderr}"
    TIMINGS["unattended install"] = time.monotonic() - start
    yield path
    report(request, "\nserver timings: " + ", ".join(f"{k} {v:.0f}s" for k, v in TIMINGS.items()))
    report(request, "server sizes: " + ", ".join(f"{k} {v / 2**20:.0f} MiB" for k, v in SIZES.items()))
    for i, steps in enumerate(UPGRADE_STEPS, 1):
        report(request, f"guest upgrade {i}: " + ", ".join(f"{k} {v:.1f}s" for k, v in steps.items()))
    if request.session.testsfailed > failed_before:
        print(f"the disk is kept for a look at what failed: os vm {path}")
    else:
        discard_disk(path)


def facts(disk: Path, name: str, script: str) -> dict[str, Any]:
    start = time.monotonic()
    result = guest(disk, FACTS + script)
    TIMINGS[name] = time.monotonic() - start
    found: dict[str, Any] = {}
    for line in result.stdout.splitlines():
        key, sep, value = line.partition("=")
        if sep:
            found[key] = value.strip()
    print(json.dumps(found, indent=1))
    return found


def ids(text: str) -> dict[str, int]:
    return {name: int(number) for name, _, number in (item.partition(":") for item in text.split())}


def healthy(found: dict[str, Any]) -> None:
    assert found["failed"] == "", "no failed unit"
    assert found["state"] == "running"
    assert found["nginx"] == "active" and found["postgresql"] == "active"
    assert found["page"] == "served from /var", "the machine's page under /var is served"
    assert found["shared_uid"] == "" and found["shared_gid"] == "", "no two names share an id"
    assert found["pg_owner"] == "postgres", "the database's files keep their owner"
    assert found["timesyncd"] == "disabled", "a unit the person disabled stays so"
    assert found["snakeoil"] and found["snakeoil_key"] == "ssl-cert", "the machine made its own certificate"
    first = CERTIFICATE.setdefault("first", found["snakeoil"])
    assert found["snakeoil"] == first, "every upgrade keeps the machine's certificate"


def upgraded(found: dict[str, Any]) -> None:
    said = found["upgrade"].replace("|", "\n")
    # Where an upgrade's time goes inside the guest, step by step (printed with the timings at the end).
    steps = re.findall(r"^([a-z][\w -]*): done \(([\d.]+)s\)$", said, re.MULTILINE)
    UPGRADE_STEPS.append({step: float(seconds) for step, seconds in steps})
    assert found["upgrade_rc"] == "0", said
    assert "it becomes active on the next boot" in said, said
    assert "CRITICAL" not in said and "Traceback" not in said, said


SEEN: dict[str, dict[str, int]] = {}
CERTIFICATE: dict[str, str] = {}  # the digest of the self-signed certificate the machine made


def test_0_the_live_installer_asks_when_told_to_leave_its_answers_aside(installer: Path, tmp_path: Path) -> None:
    blank = tmp_path / "blank.img"
    subprocess.run(["truncate", "-s", "4G", str(blank)], check=True)
    start = time.monotonic()
    result = guest(blank, LIVE, "--cdrom", str(installer), "--boot-entry", "1")
    TIMINGS["live boot"] = time.monotonic() - start
    found = {k: v.strip() for k, sep, v in (line.partition("=") for line in result.stdout.splitlines()) if sep}
    print(json.dumps(found, indent=1))
    assert found["hostname"] == "arkes-installer" and found["root"] == "overlay", "a live system, writes in memory"
    assert found["unattended"] == "1" and found["partitions"] == "1", "nothing installed by itself: a blank disk"
    assert found["motd"] == "1", "the console says how to install"
    rc, _, said = found["cd"].partition(" ")
    assert rc != "0" and "/dev/sr0" in said, said
    rc, _, said = found["other"].partition(" ")
    assert rc == "2" and "installs the system it carries" in said, said
    assert found["partitions"] == "1"


def test_1_a_server_is_set_up_and_upgraded(disk: Path, repository: tuple[AptRepository, str]) -> None:
    repo, key = repository
    script = FIRST_BOOT.replace("{key}", key).replace("{url}", f"http://10.0.2.2:{repo.port}/")
    found = facts(disk, "first boot", script)
    assert found["nginx"] == "active" and found["postgresql"] == "active"
    assert found["failed"] == "" and found["state"] == "running"
    assert found["bob_login"] == "bob:/home/bob:w"
    assert found["hostname"] == "shop", "the answer file's name, over the Systemfile's"
    count, booted, version = found["deployments"].split()
    assert (count, booted) == ("1", "True"), "the installer made one deployment, booted"
    assert version == INSTALLED["version"], "the system the installer image carried"
    assert found["dave_login"] == "dave:/home/dave:w", "the first person the installation made logs in"
    checked = json.loads(found["health"])
    assert checked["good"] and [c["name"] for c in checked["checks"]] == ["50-web"], checked
    assert checked["checks"][0]["output"] == ["asking http://127.0.0.1/", "200"], checked
    upgraded(found)
    # The install copied the build cache onto the disk: the guest's first build runs only the lines it added.
    # They install a package, so the package step is added and the image built again, every other step cached.
    first, second = re.findall(r"build: (\d+) of (\d+) steps from the cache", found["upgrade"])
    assert int(first[0]) >= 3, f"ENV, setup_machine and the package installation come from the cache: {first}"
    assert "apt is asked" in found["upgrade"] and int(second[0]) == int(second[1]) - 1, second
    SEEN["uids"], SEEN["gids"] = ids(found["ids"]), ids(found["gids"])
    assert "postgres" in SEEN["uids"] and "bob" in SEEN["uids"] and "carol" not in SEEN["uids"]


def test_2_after_the_first_upgrade(disk: Path, repository: tuple[AptRepository, str]) -> None:
    repo, _ = repository
    repo.add("arkes-hello", "1.1", files={"/usr/share/arkes-hello/version": "1.1\n"})
    repo.publish()
    found = facts(disk, "second boot", SECOND_BOOT)
    healthy(found)
    assert found["rows"] == "apple pear", "the database's rows are kept"
    assert found["bob_login"] == "bob:/home/bob:w", "a person made on the machine still logs in"
    assert found["carol_login"] == "carol:/home/carol:w", "a person the Systemfile declares logs in"
    assert found["bob_home"] == "bob bob-note" and found["carol_home"] == "carol carol-note"
    assert "www-data" in found["bob_groups"].split()
    uids, gids = ids(found["ids"]), ids(found["gids"])
    assert {k: v for k, v in uids.items() if k in SEEN["uids"]} == SEEN["uids"], "no id changes hands"
    assert {k: v for k, v in gids.items() if k in SEEN["gids"]} == SEEN["gids"]
    assert "carol" in uids
    assert found["hello"] == "1.0", "a package from the person's own signed repository"
    SEEN["uids"], SEEN["gids"] = uids, gids
    upgraded(found)
    said = found["upgrade"].split("|")
    assert "  arkes-hello 1.0 -> 1.1" in said, "the upgrade names the update its repository published"
    assert any(line.startswith("  tcpdump (new) -> ") for line in said), "and the package the Systemfile adds"
    mine = f"package repository http://10.0.2.2:{repo.port}/"
    assert any(line.startswith(mine) and line.endswith("published a new release") for line in said), said


def test_3_after_the_second_upgrade(disk: Path) -> None:
    found = facts(disk, "third boot", THIRD_BOOT)
    healthy(found)
    assert found["rows"] == "apple pear plum"
    assert found["bob_login"] == "bob:/home/bob:w"
    assert found["carol_login"] == "carol:/home/carol:w", "a password changed on the machine stays"
    assert found["carol_old"] == "refused"
    assert found["dave_login"] == "dave:/home/dave:w", "two upgrades later"
    assert set(found["bob_groups"].split()) >= {"bob", "www-data", "editors"}, "group memberships stay"
    assert found["tcpdump"] != "absent"
    assert found["hello"] == "1.1", "the package update reached the machine"
    rc, _, said = found["checkupdates"].partition(" ")
    assert "10.0.2.2" not in said and "arkes-hello" not in said, said
    # 2: nothing to update; Debian's own mirror may have published meanwhile, and is then the only thing named.
    assert rc == "2" or (rc == "0" and "deb.debian.org" in said), said
    changed = [line.split() for line in found["diff"].split("|")]
    assert ["~", "arkes-hello", "1.0", "->", "1.1"] in changed, found["diff"]
    assert found["boot"] == "good", "a good upgrade is proven good on its first boot"
    assert found["trial"] == "0", "and the boot loader counts its tries no more"
    upgraded(found)
    # Offline: the repositories cannot be asked; the build cache the installer brought is on the disk.
    assert found["offline"] == "0", "no route, no name resolves: the machine is offline"
    said = found["upgrade"].replace("|", "\n")
    assert "cannot reach a package repository" in said, said
    cached, steps = map(int, re.findall(r"build: (\d+) of (\d+) steps from the cache", said)[-1])
    assert cached >= steps - 2, f"only the new line and post_build run: {said}"
    assert any(line[:2] == ["+", "tcpdump"] for line in changed), found["diff"]
    uids, gids = ids(found["ids"]), ids(found["gids"])
    assert "tcpdump" in uids, "the system user a package's maintainer script made exists"
    assert {k: v for k, v in uids.items() if k in SEEN["uids"]} == SEEN["uids"], "no id changes hands"
    assert {k: v for k, v in gids.items() if k in SEEN["gids"]} == SEEN["gids"]


def test_4_a_system_that_fails_its_health_check_goes_back_by_itself(disk: Path) -> None:
    """The third upgrade disabled nginx: its first boot fails the image's health check, marks it failed, makes the
    previous deployment the default and reboots into it, once."""
    start = time.monotonic()
    result = guest(disk, FACTS + FOURTH_BOOT, "--reboots", "1")
    TIMINGS["fallback"] = time.monotonic() - start
    found = {k: v.strip() for k, sep, v in (line.partition("=") for line in result.stdout.splitlines()) if sep}
    healthy(found)
    assert "the guest booted again (boot 2)" in result.stderr, "one reboot, by the boot check"
    deployments = json.loads(found["status"])["deployments"]
    previous, failed = deployments[0], deployments[1]
    assert previous["booted"] and previous["boot"]["state"] == "good"
    assert failed["boot"]["state"] == "failed", failed
    # nginx is required by the machine's boot.conf and probed by the image's check: both say so.
    assert failed["boot"]["reason"] == (
        "required unit nginx.service never started in this boot (unit file disabled); "
        "health check 50-web failed (exit 1)"
    ), failed["boot"]
    assert any("Connection refused" in line for line in failed["boot"]["output"]), failed["boot"]["output"]
    assert found["shown"] == "1", "os status says why"
    assert found["journal"] == "1" and int(found["refused"]) >= 1, "and this boot's journal, with the output"
    rc, _, said = found["again"].partition(" ")
    assert rc == "2" and "failed a boot on this machine" in said, said
