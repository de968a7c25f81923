"""Where the host's Podman keeps its images: asked once, kept until the next boot while nothing it depends on
changes."""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest

from arkes import builder, run


@pytest.fixture
def asked(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> list[list[str]]:
    calls: list[list[str]] = []
    graphroot = tmp_path / "storage"
    graphroot.mkdir()

    def fake_run(argv: list[str], **_: object) -> subprocess.CompletedProcess[str]:
        calls.append(argv)
        return subprocess.CompletedProcess(argv, 0, f"{graphroot}\n/run/containers/storage\noverlay\n", "")

    monkeypatch.setattr(run, "run", fake_run)
    monkeypatch.setattr(builder, "HOST_STORAGE_CACHE", tmp_path / "run/host-storage")
    monkeypatch.setattr(builder, "_host_storage", None)
    monkeypatch.setenv("CONTAINERS_STORAGE_CONF", str(tmp_path / "storage.conf"))
    return calls


def test_podman_is_asked_once_per_configuration(
    asked: list[list[str]], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    first = builder.host_storage().result(timeout=10)
    assert first == [str(tmp_path / "storage"), "/run/containers/storage", "overlay"] and len(asked) == 1

    monkeypatch.setattr(builder, "_host_storage", None)  # another `os` command
    assert builder.host_storage().result(timeout=10) == first and len(asked) == 1, "kept"

    (tmp_path / "storage.conf").write_text('[storage]\ndriver = "overlay"\n')
    monkeypatch.setattr(builder, "_host_storage", None)
    assert builder.host_storage().result(timeout=10) == first and len(asked) == 2, "the configuration changed"


def test_a_kept_answer_whose_storage_is_gone_is_not_believed(
    asked: list[list[str]], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    builder.host_storage().result(timeout=10)
    (tmp_path / "storage").rmdir()
    monkeypatch.setattr(builder, "_host_storage", None)
    builder.host_storage().result(timeout=10)
    assert len(asked) == 2
