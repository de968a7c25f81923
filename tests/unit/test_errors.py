"""Unit tests for errors that become one message before anything is made."""

from __future__ import annotations

from pathlib import Path

import pytest

from arkes import __main__


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
