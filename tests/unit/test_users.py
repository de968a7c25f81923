"""Unit tests for arkes.users: the three-way merge of passwd, group, shadow, gshadow, subuid and subgid."""

from __future__ import annotations

import os
from pathlib import Path

from arkes import users

ROOT = "root:x:0:0:root:/root:/bin/bash\n"
BASE = {
    "passwd": ROOT + "www-data:x:33:33:www-data:/var/www:/usr/sbin/nologin\nold:x:998:998::/:/usr/sbin/nologin\n",
    "group": "root:x:0:\nwww-data:x:33:\nold:x:998:\nadm:x:4:\n",
    "shadow": "root:*:19000:0:99999:7:::\nwww-data:*:19000:0:99999:7:::\nold:!:19000::::::\n",
    "gshadow": "root:*::\nwww-data:*::\nold:!::\nadm:*::\n",
    "subuid": "",
    "subgid": "",
}


def machine() -> dict[str, str]:
    """What `useradd -m bob`, `passwd root`, `usermod -aG adm bob` and `chsh` left on the machine."""
    return {
        "passwd": BASE["passwd"].replace("/root:/bin/bash", "/root:/bin/zsh")
        + "bob:x:1000:1000:Bob:/home/bob:/bin/bash\n",
        "group": BASE["group"].replace("adm:x:4:", "adm:x:4:bob") + "bob:x:1000:\n",
        "shadow": BASE["shadow"].replace("root:*:", "root:$y$machine:") + "bob:$y$bob:20000:0:99999:7:::\n",
        "gshadow": BASE["gshadow"].replace("adm:*::", "adm:*::bob") + "bob:!::\n",
        "subuid": "bob:100000:65536\n",
        "subgid": "bob:100000:65536\n",
    }


def image() -> dict[str, str]:
    """The new image: postgres (a package's system user) and carol (the Systemfile's), `old` dropped, a new
    shell for www-data, a member for adm, and a uid change the machine must not take."""
    return {
        "passwd": ROOT.replace("root:x:0:0:root:", "root:x:0:0:the admin:")
        + "www-data:x:33:33:www-data:/var/www:/bin/sh\n"
        + "postgres:x:101:104:PostgreSQL:/var/lib/postgresql:/bin/bash\n"
        + "carol:x:1000:1000:Carol:/home/carol:/bin/bash\n",
        "group": "root:x:0:\nwww-data:x:33:\nadm:x:4:syslog\npostgres:x:104:\ncarol:x:1000:\n",
        "shadow": "root:*:19000:0:99999:7:::\nwww-data:*:19000:0:99999:7:::\npostgres:!:19500::::::\n"
        + "carol:$y$carol:19600:0:99999:7:::\n",
        "gshadow": "root:*::\nwww-data:*::\nadm:*::syslog\npostgres:!::\ncarol:!::\n",
        "subuid": "carol:100000:65536\n",
        "subgid": "carol:100000:65536\n",
    }


def merged() -> users.Merged:
    return users.merge(BASE, machine(), image())


def entries(kind: str) -> users.Entries:
    return users.parse(merged().files[kind])


def test_every_source_of_users_is_kept() -> None:
    passwd = entries("passwd")
    assert list(passwd) == ["root", "www-data", "bob", "postgres", "carol"]
    assert passwd["bob"] == ["bob", "x", "1000", "1000", "Bob", "/home/bob", "/bin/bash"], "the machine's user stays"
    assert passwd["postgres"][2:4] == ["101", "104"], "a package's system user arrives with its ids"
    assert "old" not in passwd and "old" not in entries("group") and "old" not in entries("shadow")


def test_no_two_names_share_an_id_and_the_collision_is_named() -> None:
    result = merged()
    passwd, group = users.parse(result.files["passwd"]), users.parse(result.files["group"])
    assert passwd["carol"][2:4] == ["1001", "1001"], "carol's group moved too, and her passwd entry follows it"
    assert group["carol"][2] == "1001"
    for kind in ("passwd", "group"):
        ids = [f[2] for f in users.parse(result.files[kind]).values()]
        assert len(ids) == len(set(ids)), kind
    lines = users.log_lines(result)
    assert "carol: uid 1000 is bob's on this machine; carol gets 1001" in lines
    assert "carol: gid 1000 is bob's on this machine; carol gets 1001" in lines
    assert result.uid_map() == {1000: 1001} and result.gid_map() == {1000: 1001}


def test_fields_merge_one_by_one() -> None:
    passwd, shadow = entries("passwd"), entries("shadow")
    assert passwd["root"][4] == "the admin", "the image's change to a field the machine left alone arrives"
    assert passwd["root"][6] == "/bin/zsh", "the machine's chsh stays"
    assert passwd["www-data"][6] == "/bin/sh"
    assert shadow["root"][1] == "$y$machine", "the machine's password stays"
    assert shadow["carol"][1] == "$y$carol" and shadow["bob"][1] == "$y$bob"


def test_member_lists_merge_as_sets() -> None:
    assert entries("group")["adm"][3] == "syslog,bob"
    assert entries("gshadow")["adm"][3] == "syslog,bob"
    machine_removed = machine()
    machine_removed["group"] = machine_removed["group"].replace("adm:x:4:bob", "adm:x:4:")
    base = dict(BASE, group=BASE["group"].replace("adm:x:4:", "adm:x:4:bob"))
    again = users.merge(base, machine_removed, image())
    assert users.parse(again.files["group"])["adm"][3] == "syslog", "gpasswd -d on the machine stays"


def test_ids_never_change_hands() -> None:
    theirs = image()
    theirs["passwd"] = theirs["passwd"].replace("www-data:x:33:33:", "www-data:x:133:133:")
    theirs["group"] = theirs["group"].replace("www-data:x:33:", "www-data:x:133:")
    result = users.merge(BASE, machine(), theirs)
    assert users.parse(result.files["passwd"])["www-data"][2:4] == ["33", "33"]
    assert users.parse(result.files["group"])["www-data"][2] == "33"


def test_a_user_deleted_on_the_machine_stays_deleted() -> None:
    ours = machine()
    ours["passwd"] = ours["passwd"].replace("www-data:x:33:33:www-data:/var/www:/usr/sbin/nologin\n", "")
    ours["shadow"] = ours["shadow"].replace("www-data:*:19000:0:99999:7:::\n", "")
    result = users.merge(BASE, ours, image())
    assert "www-data" not in users.parse(result.files["passwd"])
    assert "www-data" not in users.parse(result.files["shadow"])


def test_subordinate_ranges_do_not_overlap() -> None:
    result = merged()
    assert users.parse(result.files["subuid"]) == {
        "bob": ["bob", "100000", "65536"],
        "carol": ["carol", "165536", "65536"],
    }
    assert "carol: subgid 100000 is bob's on this machine; carol gets 165536" in users.log_lines(result)


def test_without_a_base_the_machine_changes_stay_and_nothing_it_has_is_dropped() -> None:
    result = users.merge({}, machine(), image())
    passwd = users.parse(result.files["passwd"])
    assert {"root", "www-data", "old", "bob", "postgres", "carol"} == set(passwd)
    assert passwd["root"][6] == "/bin/zsh" and passwd["carol"][2] == "1001"


def test_an_unchanged_machine_takes_the_image() -> None:
    result = users.merge(BASE, BASE, image())
    assert result.files["passwd"] == image()["passwd"]
    assert result.remaps == []


def write(directory: Path, files: dict[str, str]) -> None:
    directory.mkdir(parents=True, exist_ok=True)
    for kind, text in files.items():
        (directory / kind).write_text(text)
        os.chmod(directory / kind, 0o640 if "shadow" in kind else 0o644)


def test_apply_writes_the_merge_keeps_modes_and_the_next_base(tmp_path: Path) -> None:
    etc, usr_etc = tmp_path / "etc", tmp_path / "usr/etc"
    write(etc, machine())
    write(etc / users.BASE_DIR, BASE)
    write(usr_etc, image())
    (usr_etc / "carol.conf").write_text("carol's\n")
    os.chown(usr_etc / "carol.conf", 1000, 1000)
    (etc / "carol.conf").write_text("carol's\n")
    os.chown(etc / "carol.conf", 1000, 1000)
    (etc / "bob.conf").write_text("bob's own\n")
    os.chown(etc / "bob.conf", 1000, 1000)
    result = users.apply(etc, usr_etc)
    assert (etc / "passwd").read_text() == result.files["passwd"]
    assert (etc / "shadow").stat().st_mode & 0o777 == 0o640
    assert (etc / users.BASE_DIR / "passwd").read_text() == image()["passwd"]
    assert (etc / users.BASE_DIR / "passwd").stat().st_mode & 0o777 == 0o600
    assert (etc / "carol.conf").stat().st_uid == 1001, "the image's file follows carol's new id"
    assert (etc / "bob.conf").stat().st_uid == 1000, "the machine's file stays bob's"
    assert users.in_step(etc, usr_etc)
    assert users.apply(etc, usr_etc).files["passwd"] == result.files["passwd"], "a second merge changes nothing"


def test_usr_files_of_a_moved_id_are_conflicts() -> None:
    result = merged()
    listing = [("/usr/share/carol", 1000, 1000), ("/usr/etc/carol.conf", 1000, 0), ("/usr/bin/ls", 0, 0)]
    assert users.usr_conflicts(result, lambda: listing) == ["/usr/share/carol"]
    asked: list[int] = []

    def listing_asked() -> list[tuple[str, int, int]]:
        asked.append(1)
        return []

    assert users.usr_conflicts(users.merge(BASE, BASE, image()), listing_asked) == []
    assert asked == [], "the tree is walked only when an id moves"


def test_an_id_a_removed_user_had_is_not_given_again() -> None:
    base = dict(BASE, passwd=BASE["passwd"] + "dave:x:1001:1001::/home/dave:/bin/sh\n")
    ours = machine()
    ours["passwd"] += "dave:x:1001:1001::/home/dave:/bin/sh\n"
    result = users.merge(base, ours, image())
    assert users.parse(result.files["passwd"])["carol"][2] == "1002", "1000 is bob's, 1001 was dave's"
