"""The answers of an installation: the disk, the machine's name, root's password and a first user.

`os install --disk` asks for them at a terminal, or reads them from an answer file (TOML, `--answers FILE`), which
is also what an unattended installation runs from. Every problem of a file is reported as `FILE:LINE: message`,
and all of them at once, before anything is written.

    disk = "/dev/vda"                 # the disk to install to (every partition on it is erased with wipe = true)
    hostname = "shop-1"
    root_password = "…"               # or root_password_hash = "$6$…" (as `openssl passwd -6` prints it)
    user = "alice"                    # a first person, in the groups below, with a home under /var/home
    user_password = "…"               # or user_password_hash = "$6$…"
    user_groups = ["sudo"]            # default: sudo
    ssh_authorized_keys = ["ssh-ed25519 AAAA… alice@laptop"]   # default: none
    wipe = false                      # erase a disk that holds partitions (default: refuse it)
    after = "poweroff"                # what the live installer does when done: poweroff (default), reboot
"""

from __future__ import annotations

import re
import tomllib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from arkes.errors import ValidationError

# A Debian user or group name, as adduser's default NAME_REGEX allows it.
NAME = re.compile(r"^[a-z][-a-z0-9_]{0,31}$")
# One label of a host name (RFC 1123); a name is up to 253 characters of such labels joined by dots.
LABEL = re.compile(r"^(?!-)[A-Za-z0-9-]{1,63}(?<!-)$")
HASH = re.compile(r"^\$(1|5|6|y|gy|7|2[abxy])\$[./A-Za-z0-9$=,]+$")  # a crypt(5) hash
AFTER = ("poweroff", "reboot")
RESERVED = frozenset({"root", "daemon", "bin", "sys", "nobody", "postgres", "www-data", "systemd-network"})

KEYS: dict[str, type] = {
    "disk": str,
    "hostname": str,
    "root_password": str,
    "root_password_hash": str,
    "user": str,
    "user_password": str,
    "user_password_hash": str,
    "user_groups": list,
    "ssh_authorized_keys": list,
    "wipe": bool,
    "after": str,
}
REQUIRED = ("disk", "hostname", "root_password", "user", "user_password")


@dataclass(frozen=True)
class Answers:
    """What an installation needs to know. A password is kept as given (`*_password`) or as a crypt(5) hash
    (`*_password_hash`); `hashed` turns the first into the second."""

    disk: str = ""
    hostname: str = ""
    root_password: str | None = None
    root_password_hash: str | None = None
    user: str = ""
    user_password: str | None = None
    user_password_hash: str | None = None
    user_groups: tuple[str, ...] = ("sudo",)
    ssh_authorized_keys: tuple[str, ...] = ()
    wipe: bool = False
    after: str = "poweroff"
    source: str = field(default="", compare=False)  # the file they came from, for messages


def hostname_problem(name: str) -> str | None:
    """Why `name` cannot be a host name, or None."""
    if not name or len(name) > 253:
        return "a host name has 1 to 253 characters"
    bad = [label for label in name.split(".") if not LABEL.match(label)]
    if bad:
        return f"{name!r} is not a host name: letters, digits and inner hyphens, up to 63 between dots"
    return None


def user_problem(name: str) -> str | None:
    """Why `name` cannot be the first person's login, or None."""
    if not NAME.match(name):
        return f"{name!r} is not a user name: a lowercase letter, then up to 31 lowercase letters, digits, - or _"
    if name in RESERVED:
        return f"{name!r} is a name the system uses itself"
    return None


def _line_of(lines: list[str], key: str) -> int:
    """The line (1-based) where `key` is set or opens a table; the first line when it cannot be found."""
    pattern = re.compile(rf"^\s*(\[+\s*)?[\"']?{re.escape(key)}[\"']?\s*(=|\])")
    return next((i for i, line in enumerate(lines, 1) if pattern.match(line)), 1)


def load(path: Path, *, given: tuple[str, ...] = ()) -> Answers:
    """Read and check an answer file: every problem at once, as `FILE:LINE: message`. `given`: required settings
    that the command line gives instead (the disk of `os install --disk PATH`)."""
    try:
        text = path.read_text()
    except OSError as e:
        raise ValidationError([f"{path}: cannot read it: {e.strerror}"]) from e
    try:
        data = tomllib.loads(text)
    except tomllib.TOMLDecodeError as e:
        found = re.search(r"\(at line (\d+), column \d+\)", str(e))
        where = found.group(1) if found else "1"
        message = re.sub(r"\s*\(at line \d+, column \d+\)", "", str(e)) or "not TOML"
        raise ValidationError([f"{path}:{where}: {message[0].lower()}{message[1:]}"]) from e
    return check(data, text.splitlines(), str(path), given)


def check(data: dict[str, Any], lines: list[str], source: str, given: tuple[str, ...] = ()) -> Answers:
    problems: list[str] = []

    def problem(key: str, message: str) -> None:
        problems.append(f"{source}:{_line_of(lines, key)}: {message}")

    for key, value in data.items():
        kind = KEYS.get(key)
        if kind is None:
            problem(key, f"unknown setting {key!r} (known: {', '.join(KEYS)})")
        elif not isinstance(value, kind):
            problem(key, f"{key} must be a {'list of strings' if kind is list else kind.__name__}")
        elif isinstance(value, list) and not all(isinstance(item, str) for item in value):
            problem(key, f"{key} must be a list of strings")
    for key in (k for k in REQUIRED if k not in given):
        if key not in data and f"{key}_hash" not in data:
            hashed = f" (or {key}_hash)" if key.endswith("password") else ""
            problems.append(f"{source}:1: {key}{hashed} is missing")
    for key in ("root_password", "user_password"):
        if key in data and f"{key}_hash" in data:
            problem(f"{key}_hash", f"give {key} or {key}_hash, not both")
        if isinstance(data.get(f"{key}_hash"), str) and not HASH.match(data[f"{key}_hash"]):
            problem(f"{key}_hash", f"{key}_hash is not a crypt(5) hash (make one with `openssl passwd -6`)")
        if data.get(key) == "":
            problem(key, f"{key} is empty")
    if isinstance(data.get("hostname"), str) and (why := hostname_problem(data["hostname"])):
        problem("hostname", why)
    if isinstance(data.get("user"), str) and (why := user_problem(data["user"])):
        problem("user", why)
    for group in data.get("user_groups", []) if isinstance(data.get("user_groups"), list) else []:
        if isinstance(group, str) and not NAME.match(group):
            problem("user_groups", f"{group!r} is not a group name")
    if isinstance(data.get("disk"), str) and not data["disk"].startswith("/dev/"):
        problem("disk", f"disk must name a device under /dev, not {data['disk']!r}")
    if isinstance(data.get("after"), str) and data["after"] not in AFTER:
        problem("after", f"after is one of {', '.join(AFTER)}, not {data['after']!r}")
    if problems:
        raise ValidationError(problems)
    fields: dict[str, Any] = {key: tuple(value) if isinstance(value, list) else value for key, value in data.items()}
    return Answers(**fields, source=source)
