"""What `os status` reads of a machine's boots, with nothing else loaded: GRUB's environment block, where the boot
loader counts the tries of a deployment on trial, and the records of what each commit's boots showed. arkes.health
writes them and tells the whole rule."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

ENV = Path("grub/grubenv")  # below /boot, beside the menu
ENV_SIZE = 1024
ENV_HEADER = "# GRUB Environment Block\n"
TRIAL = "arkes_trial"  # the id of the deployment on trial (CHECKSUM.SERIAL)
TRIES = "arkes_tries"  # the boots it has left, taken one by one by GRUB
RECORDS = "boots.json"  # in the state directory (/var/lib/arkes): what each commit's boots showed
LAST = "health.json"  # in the state directory: the last health result


def read_env(path: Path) -> dict[str, str]:
    """The variables of a GRUB environment block; none when there is no block."""
    try:
        text = path.read_text(encoding="utf-8", errors="replace")
    except FileNotFoundError:
        return {}
    found: dict[str, str] = {}
    for line in text.splitlines():
        if not line or line.startswith("#"):
            continue
        key, sep, value = line.partition("=")
        if sep:
            found[key] = value.replace("\\n", "\n").replace("\\\\", "\\")
    return found


@dataclass(frozen=True)
class Record:
    """What the boots of one commit showed: `good`, or `failed` with the reason, when, and the last lines of the
    check or unit that failed."""

    state: str
    at: str
    reason: str = ""
    output: tuple[str, ...] = ()
    input_hash: str = ""  # what it was built from: a build of the same inputs is the same system

    def to_json(self) -> dict[str, Any]:
        return {
            "state": self.state,
            "at": self.at,
            "reason": self.reason,
            "output": list(self.output),
            "inputHash": self.input_hash,
        }


def records(state: Path) -> dict[str, Record]:
    """Each commit's record, by checksum, as the state directory `state` keeps them."""
    try:
        data = json.loads((state / RECORDS).read_text())
    except (FileNotFoundError, ValueError):
        return {}
    found = {}
    for checksum, entry in data.get("commits", {}).items():
        if isinstance(entry, dict) and entry.get("state") in ("good", "failed"):
            output = tuple(str(line) for line in entry.get("output", []))
            at, reason, inputs = (str(entry.get(k, "")) for k in ("at", "reason", "inputHash"))
            found[checksum] = Record(entry["state"], at, reason, output, inputs)
    return found


def failed_before(state: Path, checksum: str, input_hash: str) -> Record | None:
    """The record of a failed boot of this commit, or of another built from the same inputs; None without one."""
    for found_checksum, found in records(state).items():
        same = found_checksum == checksum or (input_hash and found.input_hash == input_hash)
        if same and found.state == "failed":
            return found
    return None


def last(state: Path) -> dict[str, Any] | None:
    try:
        data: dict[str, Any] = json.loads((state / LAST).read_text())
    except (FileNotFoundError, ValueError):
        return None
    return data
