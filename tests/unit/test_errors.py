"""Unit tests for the one place where errors become messages: no GLib error reaches a person as a traceback."""

from __future__ import annotations

import argparse
from pathlib import Path

import pytest
from gi.repository import GLib

from arkes import __main__, cli


def test_an_unwrapped_glib_error_is_one_message(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    def fails(_args: argparse.Namespace) -> int:
        raise GLib.Error("opening repo: Read-only file system")

    monkeypatch.setattr(cli, "cli_status", fails)
    assert __main__.main(["status"]) == 1
    err = capsys.readouterr().err
    assert "error: opening repo: Read-only file system" in err
    assert "Traceback" not in err


def test_other_exceptions_are_not_taken_for_glib_errors() -> None:
    assert __main__._is_glib_error(GLib.Error("x"))
    assert not __main__._is_glib_error(ValueError("x"))


def test_a_disk_image_inside_the_build_context_is_refused_before_anything_is_made(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    (tmp_path / "Systemfile").write_text("FROM localhost/arkes:base\nRUN post_build\n")
    disk = tmp_path / "images/server.img"
    argv = ["install", "--disk", str(disk), "--systemfile", str(tmp_path / "Systemfile"), "--no-root-password"]
    assert __main__.main(argv) == 2
    err = capsys.readouterr().err
    assert f"{disk} is inside the Systemfile's build context {tmp_path}" in err
    assert not disk.exists() and not disk.parent.exists()
