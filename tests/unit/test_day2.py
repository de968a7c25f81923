"""Pure pieces of the day-2 verbs: apt's upgradable list, the /etc overlay, finding lines."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from arkes import etc as etc_module
from arkes import results, updates
from arkes.records import Metadata

APT = """\
Listing...
less/stable-security 590-2.1~deb12u2 amd64 [upgradable from: 590-2.1~deb12u1]
libc6/stable 2.36-9+deb12u10 amd64 [upgradable from: 2.36-9+deb12u9]
linux-image-amd64/stable-security 6.12.118-1 amd64 [upgradable from: 6.12.117-1]
WARNING: apt does not have a stable CLI interface.
"""


def test_parse_upgradable() -> None:
    findings = updates.parse_upgradable(APT)
    assert [f.line() for f in findings] == [
        "package less 590-2.1~deb12u1 -> 590-2.1~deb12u2",
        "package libc6 2.36-9+deb12u9 -> 2.36-9+deb12u10",
        "kernel 6.12.117 -> 6.12.118 (linux-image-amd64)",
    ]
    assert [f.kind for f in findings] == ["package", "package", "kernel"]
    rt = updates.parse_upgradable("linux-image-rt-amd64/stable 6.12.118-1 amd64 [upgradable from: 6.12.117-1]\n")
    assert rt[0].kind == "kernel"
    versioned = "linux-image-6.12.118+deb13-amd64/stable 6.12.118-2 amd64 [upgradable from: 6.12.118-1]\n"
    assert updates.parse_upgradable(versioned)[0].kind == "package"


def test_finding_lines() -> None:
    assert results.Finding("context", "nginx.conf", "", "modified").line() == "context nginx.conf: modified"
    assert results.Finding("kargs", "/etc/system/kargs", "", "quiet").line() == "kargs /etc/system/kargs: - -> quiet"
    line = results.Finding("base-image", "localhost/arkes:base", "sha256:a", "sha256:b").line()
    assert line == "base-image localhost/arkes:base: sha256:a -> sha256:b"


def test_etc_overlay(tmp_path: Path) -> None:
    defaults, etc = tmp_path / "usr/etc", tmp_path / "etc"
    for root in (defaults, etc):
        (root / "ssh").mkdir(parents=True)
        (root / "same.conf").write_text("same\n")
        (root / "ssh/sshd_config").write_text("Port 22\n")
        (root / "link").symlink_to("same.conf")
    (defaults / "gone.conf").write_text("x\n")
    (etc / "mine.conf").write_text("mine\n")
    (etc / "ssh/sshd_config").write_text("Port 2222\n")
    (etc / "newdir").mkdir()
    (etc / "newdir/a").write_text("a\n")
    os.chmod(etc / "same.conf", 0o600)
    (etc / "link").unlink()
    (etc / "link").symlink_to("mine.conf")
    (defaults / "was-file").write_text("f\n")
    (etc / "was-file").mkdir()
    changes = {(c.kind, c.name) for c in etc_module.overlay(etc, defaults)}
    assert changes == {
        ("removed", "/etc/gone.conf"),
        ("added", "/etc/mine.conf"),
        ("modified", "/etc/ssh/sshd_config"),
        ("added", "/etc/newdir"),
        ("modified", "/etc/same.conf"),
        ("modified", "/etc/link"),
        ("modified", "/etc/was-file"),
    }


def test_base_image_findings_local_and_registry(monkeypatch: pytest.MonkeyPatch) -> None:
    """Digest comparison only: Podman and the registry are replaced by their answers."""
    from arkes import podman

    monkeypatch.setattr(podman, "image_info", lambda ref: {"Digest": "sha256:local", "Id": "1" * 64})
    monkeypatch.setattr(podman, "registry_digest", lambda ref: "sha256:remote")
    errors: list[str] = []
    meta = Metadata(base_image="quay.io/example/base:1", base_digest="sha256:recorded")
    findings = updates._base_findings(meta, errors)
    assert [f.line() for f in findings] == [
        "base-image quay.io/example/base:1: sha256:recorded -> sha256:local",
        "registry quay.io/example/base:1: sha256:recorded -> sha256:remote",
    ]
    assert errors == []
    local = Metadata(base_image="localhost/arkes:base", base_digest="sha256:local")
    assert updates._base_findings(local, errors) == [], "a local image has no registry to ask"
    # An image pulled from its registry is also known by the digest of the manifest it was pulled as.
    pulled = {"Digest": "sha256:local", "Id": "1" * 64, "RepoDigests": ["quay.io/example/base@sha256:recorded"]}
    monkeypatch.setattr(podman, "image_info", lambda ref: pulled)
    assert [f.kind for f in updates._base_findings(meta, errors)] == ["registry"]
