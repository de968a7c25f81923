"""`os edit`: edit the Systemfile in $EDITOR, check it like `os check`, and offer to upgrade.

The person edits a copy; the Systemfile is replaced only by a saved, valid and changed version.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from collections.abc import Callable
from pathlib import Path

from arkes import bootloader, log, run, systemfile
from arkes.errors import UsageError
from arkes.target import Target

FALLBACK_EDITORS = ("editor", "nano", "vim", "vi")


def editor() -> list[str]:
    for variable in ("VISUAL", "EDITOR"):
        value = os.environ.get(variable, "").strip()
        if value:
            return value.split()
    for name in FALLBACK_EDITORS:
        if shutil.which(name):
            return [name]
    raise UsageError("no editor found", hint="set $EDITOR, e.g. EDITOR=nano os edit")


def ask(question: str, default: bool) -> bool:
    suffix = " [Y/n] " if default else " [y/N] "
    try:
        answer = input(question + suffix).strip().lower()
    except EOFError:
        return default
    return default if not answer else answer.startswith("y")


def edit(target: Target, upgrade: Callable[[Target], None]) -> int:
    path = target.systemfile()
    original = path.read_text()
    command = editor()
    with tempfile.TemporaryDirectory(prefix="arkes-edit-") as tmp:
        draft = Path(tmp) / "Systemfile"
        draft.write_text(original)
        while True:
            status = run.interactive([*command, draft])
            if status != 0:
                log.info(f"the editor exited with status {status}; nothing was changed")
                return 1
            text = draft.read_text(errors="replace")
            if text == original:
                log.info("no changes")
                return 0
            problems = [p.replace(str(draft), str(path), 1) for p in systemfile.problems(draft, context=path.parent)]
            if not problems:
                break
            for problem in problems:
                print(problem)
            if not ask("Edit again?", True):
                log.info("the Systemfile was left unchanged")
                return 2
    bootloader.atomic_write(path, text)
    log.info(f"saved {path}")
    if ask("Run `os upgrade` now?", False):
        upgrade(target)
    else:
        log.info("the change takes effect with `os upgrade`")
    return 0
