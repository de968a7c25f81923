"""The docs stay true to the tool: every `os …` command line in a shell block of README.md and docs/*.md names a
verb `os` has and only options that verb (or `os` itself) takes, as its own parser defines them."""

from __future__ import annotations

import argparse
import re
import shlex
from pathlib import Path

import pytest

from arkes import cli

ROOT = Path(__file__).resolve().parents[2]
PAGES = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
SHELL_BLOCK = re.compile(r"^```(?:sh|bash|console)?\n(.*?)^```", re.MULTILINE | re.DOTALL)


def command_lines(page: Path) -> list[tuple[int, str]]:
    """Every line of a shell block (or an unlabelled one) that runs `os`: (line number, the command)."""
    text = page.read_text()
    found = []
    for block in SHELL_BLOCK.finditer(text):
        first = text.count("\n", 0, block.start(1)) + 1
        for offset, line in enumerate(block.group(1).splitlines()):
            command = re.sub(r"^(\$ |\.venv/bin/|sudo )+", "", line.strip())
            if command.startswith("os "):
                found.append((first + offset, command))
    return found


def words(command: str) -> list[str]:
    try:
        return shlex.split(command, comments=True)
    except ValueError:  # a synopsis line with a lone quote or bracket
        return command.split("#")[0].split()


def options(parser: argparse.ArgumentParser) -> set[str]:
    return {flag for action in parser._actions for flag in action.option_strings}


def verbs() -> dict[str, argparse.ArgumentParser]:
    for action in cli.parser()._actions:
        if isinstance(action, argparse._SubParsersAction):
            return dict(action.choices)
    raise AssertionError("os has no verbs")


LINES = [(page, number, command) for page in PAGES for number, command in command_lines(page)]


def test_the_docs_have_command_lines() -> None:
    assert len(LINES) > 50 and {page.name for page, _, _ in LINES} >= {"README.md", "handbook.md", "install.md"}


@pytest.mark.parametrize(("page", "number", "command"), LINES, ids=[f"{p.name}:{n}" for p, n, _ in LINES])
def test_a_command_line_of_the_docs_is_one_os_takes(page: Path, number: int, command: str) -> None:
    where = f"{page.relative_to(ROOT)}:{number}: {command}"
    top = options(cli.parser())
    tokens = iter(words(command)[1:])
    verb = None
    for token in tokens:
        if token == "--sysroot":
            next(tokens, None)
        elif token.startswith("-"):
            assert token in top, f"{where}: os has no option {token}"
        else:
            verb = token
            break
    known = verbs()
    assert verb in known, f"{where}: os has no verb {verb!r}"
    allowed = top | options(known[verb])
    for token in tokens:
        flag = re.sub(r"^[\[(|]+", "", token).split("=")[0].rstrip("])|,")
        if flag.startswith("--") or re.fullmatch(r"-[a-zA-Z]", flag):
            assert flag in allowed, f"{where}: `os {verb}` has no option {flag}"
