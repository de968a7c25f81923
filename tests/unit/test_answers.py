"""Answer files of an installation: what is taken, and each mistake as FILE:LINE: message, all at once."""

from __future__ import annotations

from pathlib import Path

import pytest

from arkes import answers
from arkes.errors import ValidationError

COMPLETE = """\
# the shop's till
disk = "/dev/vda"
hostname = "till-1.shop.example"
root_password = "root secret"
user = "alice"
user_password = "alice secret"
user_groups = ["sudo", "adm"]
ssh_authorized_keys = ["ssh-ed25519 AAAAC3Nza alice@laptop"]
wipe = true
after = "reboot"
"""


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "answers.toml"
    path.write_text(text)
    return path


def problems(tmp_path: Path, text: str, **kwargs: tuple[str, ...]) -> list[str]:
    path = write(tmp_path, text)
    with pytest.raises(ValidationError) as raised:
        answers.load(path, **kwargs)
    return [p.replace(f"{path}:", "FILE:") for p in raised.value.problems]


def test_a_complete_file_is_taken(tmp_path: Path) -> None:
    taken = answers.load(write(tmp_path, COMPLETE))
    assert taken.disk == "/dev/vda" and taken.hostname == "till-1.shop.example"
    assert taken.root_password == "root secret" and taken.root_password_hash is None
    assert taken.user == "alice" and taken.user_groups == ("sudo", "adm")
    assert taken.ssh_authorized_keys == ("ssh-ed25519 AAAAC3Nza alice@laptop",)
    assert taken.wipe and taken.after == "reboot"


def test_the_defaults_and_hashes(tmp_path: Path) -> None:
    text = (
        'disk = "/dev/sda"\nhostname = "kiosk"\nroot_password_hash = "$6$salt$abcdefghijklmnop"\n'
        'user = "kiosk-user"\nuser_password_hash = "$y$j9T$salt$hash"\n'
    )
    taken = answers.load(write(tmp_path, text))
    assert taken.root_password is None and taken.root_password_hash == "$6$salt$abcdefghijklmnop"
    assert taken.user_groups == ("sudo",) and taken.ssh_authorized_keys == ()
    assert not taken.wipe and taken.after == "poweroff"


def test_toml_that_does_not_parse_is_named_by_its_line(tmp_path: Path) -> None:
    found = problems(tmp_path, 'disk = "/dev/vda"\nhostname = till\n')
    assert len(found) == 1 and found[0].startswith("FILE:2: invalid value"), found


def test_every_mistake_at_once_each_at_its_line(tmp_path: Path) -> None:
    text = """\
disk = "sda"
hostname = "-bad-"
root_password = "x"
root_password_hash = "plain"
user = "Root"
user_password = ""
user_groups = ["sudo", 7]
wipe = "yes"
after = "halt"
colour = "blue"
"""
    assert problems(tmp_path, text) == [
        "FILE:7: user_groups must be a list of strings",
        "FILE:8: wipe must be a bool",
        "FILE:10: unknown setting 'colour' (known: disk, hostname, root_password, root_password_hash, user, "
        "user_password, user_password_hash, user_groups, ssh_authorized_keys, wipe, after)",
        "FILE:4: give root_password or root_password_hash, not both",
        "FILE:4: root_password_hash is not a crypt(5) hash (make one with `openssl passwd -6`)",
        "FILE:6: user_password is empty",
        "FILE:2: '-bad-' is not a host name: letters, digits and inner hyphens, up to 63 between dots",
        "FILE:5: 'Root' is not a user name: a lowercase letter, then up to 31 lowercase letters, digits, - or _",
        "FILE:1: disk must name a device under /dev, not 'sda'",
        "FILE:9: after is one of poweroff, reboot, not 'halt'",
    ]


def test_what_is_missing_and_what_the_command_line_gives(tmp_path: Path) -> None:
    text = 'hostname = "box"\nuser = "bob"\n'
    assert problems(tmp_path, text) == [
        "FILE:1: disk is missing",
        "FILE:1: root_password (or root_password_hash) is missing",
        "FILE:1: user_password (or user_password_hash) is missing",
    ]
    given = ("disk", "root_password", "user_password")
    assert answers.load(write(tmp_path, text), given=given).user == "bob"


def test_a_table_is_an_unknown_setting_at_its_line(tmp_path: Path) -> None:
    found = problems(tmp_path, COMPLETE + "\n[network]\ndhcp = true\n")
    assert found == [f"FILE:12: unknown setting 'network' (known: {', '.join(answers.KEYS)})"]


@pytest.mark.parametrize(
    ("name", "good"),
    [("web", True), ("web-1.example.org", True), ("a" * 63, True), ("a" * 64, False), ("x_y", False), ("", False)],
)
def test_host_names(name: str, good: bool) -> None:
    assert (answers.hostname_problem(name) is None) == good


@pytest.mark.parametrize(
    ("name", "good"), [("alice", True), ("a-b_c1", True), ("1alice", False), ("Alice", False), ("root", False)]
)
def test_user_names(name: str, good: bool) -> None:
    assert (answers.user_problem(name) is None) == good


def test_an_unreadable_file_is_named(tmp_path: Path) -> None:
    with pytest.raises(ValidationError, match="cannot read it"):
        answers.load(tmp_path / "absent.toml")
