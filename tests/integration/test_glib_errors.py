"""The one place where errors become messages: no GLib error reaches a person as a traceback (needs PyGObject,
so it is not in the unit layer)."""

from __future__ import annotations

import argparse
from pathlib import Path

import pytest
from gi.repository import GLib

from arkes import __main__, cli

pytestmark = pytest.mark.integration


def test_an_unwrapped_glib_error_is_one_message(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    def fails(_args: argparse.Namespace, *, writes: bool = False) -> object:
        raise GLib.Error("opening repo: Read-only file system")

    monkeypatch.setattr(cli, "open_target", fails)
    # A sysroot with no status cache: `os status` opens it through libostree.
    assert __main__.main(["--sysroot", str(tmp_path), "status"]) == 1
    err = capsys.readouterr().err
    assert "error: opening repo: Read-only file system" in err
    assert "Traceback" not in err


def test_other_exceptions_are_not_taken_for_glib_errors() -> None:
    assert __main__._is_glib_error(GLib.Error("x"))
    assert not __main__._is_glib_error(ValueError("x"))


@pytest.mark.parametrize(
    ("message", "hint"),
    [
        ("opening file: No space left on device", "os prune"),
        ("mkdir: Read-only file system", "must be writable"),
        ("opening repo: Permission denied", "run as root"),
        ("Couldn't find file object 'ab'", "--debug"),
    ],
)
def test_every_libostree_error_gets_a_hint(message: str, hint: str) -> None:
    from arkes import ostree

    error = ostree._error("deploying", GLib.Error(message))
    assert str(error).startswith("deploying: ") and error.hint is not None and hint in error.hint
