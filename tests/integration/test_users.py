"""Users and groups across upgrades and rollbacks, on a sysroot: made by the Systemfile, by a package's maintainer
script, and on the machine with the real shadow tools (`useradd --prefix`, `usermod`, `userdel`)."""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest

from tests.integration.conftest import System, installed

pytestmark = pytest.mark.integration

V1 = """
    FROM localhost/arkes:base
    RUN useradd --create-home --shell /bin/bash dave && useradd --create-home frank
    RUN post_build
"""

# dave is dropped; carol and erin are new; tcpdump's maintainer script makes a system user; the image changes
# www-data's comment and adds carol to adm.
V2 = """
    FROM localhost/arkes:base
    RUN useradd --create-home frank \\
     && useradd --create-home --shell /bin/bash carol && useradd --create-home erin \\
     && usermod --comment "the web server" www-data && usermod --append --groups adm carol
    RUN install_packages tcpdump
    RUN post_build
"""


def accounts(etc: Path, kind: str = "passwd") -> dict[str, list[str]]:
    return {line.split(":")[0]: line.split(":") for line in (etc / kind).read_text().splitlines() if line}


def on_machine(system: System, *argv: str) -> None:
    """A shadow tool run on the machine's /etc (the default deployment's), as a person would run it."""
    done = subprocess.run(
        [argv[0], "--prefix", str(system.deployment_dir()), *argv[1:]], capture_output=True, text=True
    )
    assert done.returncode == 0, done.stderr


def test_users_and_groups_survive_upgrades_and_rollback(tmp_path_factory: pytest.TempPathFactory) -> None:
    system = installed(tmp_path_factory, "users", V1)
    first = accounts(system.etc())
    assert first["dave"][2] == "1000" and first["frank"][2] == "1001"

    on_machine(system, "useradd", "--shell", "/bin/bash", "bob")
    on_machine(system, "usermod", "--append", "--groups", "adm", "bob")
    on_machine(system, "usermod", "--password", "$y$j9T$machine$hash", "root")
    on_machine(system, "usermod", "--shell", "/bin/sh", "root")
    on_machine(system, "userdel", "frank")
    on_machine(system, "groupadd", "--gid", "2000", "ops")
    bob = accounts(system.etc())["bob"]
    assert bob[2] == "1002"
    machine_ids = {int(f[2]) for f in accounts(system.etc()).values()} | {1001}  # frank's id may own files

    system.systemfile.write_text(V2.replace("\n    ", "\n").strip() + "\n")
    upgraded = system.os("upgrade")
    log = upgraded.stderr
    etc = system.etc()
    passwd, group, shadow = accounts(etc), accounts(etc, "group"), accounts(etc, "shadow")

    assert {"bob", "carol", "erin", "tcpdump", "www-data", "root"} <= set(passwd), sorted(passwd)
    assert "dave" not in passwd and "dave" not in shadow, (
        "the image no longer declares dave, the machine did not make him"
    )
    assert "frank" not in passwd, "the machine deleted frank; he stays deleted"
    assert passwd["bob"] == bob, "the machine's user is untouched"
    assert group["ops"][2] == "2000" and "ops" in accounts(etc, "gshadow")
    assert passwd["root"][6] == "/bin/sh" and shadow["root"][1] == "$y$j9T$machine$hash", "chsh and passwd stay"
    assert passwd["www-data"][4] == "the web server", "the image's change to a user the machine left alone arrives"
    assert set(group["adm"][3].split(",")) >= {"bob", "carol"}, "memberships of both sides"
    for kind in ("passwd", "group"):
        ids = [f[2] for f in accounts(etc, kind).values()]
        assert len(ids) == len(set(ids)), f"two names share an id in {kind}"
    # In the new image frank is 1000, carol 1001 and erin 1002: ids that frank (deleted here) and bob had.
    carol, erin = int(passwd["carol"][2]), int(passwd["erin"][2])
    assert carol not in machine_ids and erin not in machine_ids, "new users get ids no one on the machine had"
    assert f"carol: uid 1001 was frank's on this machine; carol gets {carol}" in log, log
    assert f"erin: uid 1002 is bob's on this machine; erin gets {erin}" in log, log
    assert log.index("erin: uid 1002") < log.index("deployed version"), "said before it deploys"
    assert set(accounts(etc, "subuid")) >= {"bob", "carol", "erin"}
    spans = [(int(f[1]), int(f[1]) + int(f[2])) for f in accounts(etc, "subuid").values()]
    assert all(a[1] <= b[0] or b[1] <= a[0] for i, a in enumerate(spans) for b in spans[i + 1 :]), spans

    # Homes in /var are seeded by owner name, so carol's home is hers at her id on this machine; the account
    # files keep their owners through the rewrite (shadow is root:shadow).
    tmpfiles = (system.deployment_dir() / "usr/lib/tmpfiles.d/arkes-var.conf").read_text()
    assert "d /var/home/carol :0700 :carol :carol -" in tmpfiles
    shadow_group = int(group["shadow"][2])
    assert (system.deployment_dir() / "usr/etc/shadow").stat().st_gid == shadow_group
    assert (etc / "shadow").stat().st_gid == shadow_group

    # A second upgrade with nothing new for users leaves the files as they are.
    before = {kind: (etc / kind).read_text() for kind in ("passwd", "group", "shadow")}
    system.add_line("RUN echo again > /usr/share/arkes-again")
    system.os("upgrade")
    assert {kind: (system.etc() / kind).read_text() for kind in ("passwd", "group", "shadow")} == before

    # Rollback takes the machine's users along to the older deployment.
    on_machine(system, "useradd", "gina")
    system.os("rollback")
    back = accounts(system.etc())
    assert {"bob", "gina", "carol", "erin", "tcpdump"} <= set(back), sorted(back)
    assert back["carol"][2] == str(carol)
    system.fsck()


def test_a_usr_file_of_a_colliding_user_is_refused(tmp_path_factory: pytest.TempPathFactory) -> None:
    system = installed(tmp_path_factory, "users-refused", "FROM localhost/arkes:base\nRUN post_build\n")
    on_machine(system, "useradd", "bob")
    assert accounts(system.etc())["bob"][2] == "1000"
    before = system.snapshot()
    system.add_line("RUN useradd carol && install -d -o carol /usr/share/carol")
    refused = system.os("upgrade", check=False)
    assert refused.returncode == 1
    assert "carol: uid 1000 is bob's on this machine" in refused.stderr
    assert "/usr/share/carol" in refused.stderr and "useradd --uid" in refused.stderr
    assert system.snapshot()[0] == before[0], "nothing is deployed"
