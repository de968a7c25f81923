"""Unit tests for arkes.services: links the merged /etc keeps for units the new image no longer ships."""

from __future__ import annotations

from pathlib import Path

from arkes import services


def deployment(tmp_path: Path) -> Path:
    root = tmp_path / "deploy"
    units = root / "usr/lib/systemd/system"
    units.mkdir(parents=True)
    for name in ("nginx.service", "getty@.service", "ssh.service"):
        (units / name).write_text("[Unit]\n")
    wants = root / "etc/systemd/system/multi-user.target.wants"
    wants.mkdir(parents=True)
    (wants / "nginx.service").symlink_to("/usr/lib/systemd/system/nginx.service")
    (wants / "gone.service").symlink_to("/usr/lib/systemd/system/gone.service")
    getty = root / "etc/systemd/system/getty.target.wants"
    getty.mkdir()
    (getty / "getty@tty1.service").symlink_to("/usr/lib/systemd/system/getty@.service")
    top = root / "etc/systemd/system"
    (top / "masked.service").symlink_to("/dev/null")
    (top / "sshd.service").symlink_to("/usr/lib/systemd/system/ssh.service")
    (top / "old-alias.service").symlink_to("/usr/lib/systemd/system/gone.service")
    (top / "local.service").write_text("[Unit]\n")
    (wants / "local.service").symlink_to("../local.service")
    return root


def test_links_to_units_the_image_no_longer_ships_are_removed(tmp_path: Path) -> None:
    root = deployment(tmp_path)
    removed = services.remove_dangling(root)
    assert removed == [
        "/etc/systemd/system/multi-user.target.wants/gone.service",
        "/etc/systemd/system/old-alias.service",
    ]
    top = root / "etc/systemd/system"
    assert (top / "multi-user.target.wants/nginx.service").is_symlink()
    assert (top / "multi-user.target.wants/local.service").is_symlink(), "a unit of the machine's own stays"
    assert (top / "getty.target.wants/getty@tty1.service").is_symlink(), "template instances resolve"
    assert (top / "masked.service").is_symlink(), "a mask stays"
    assert (top / "sshd.service").is_symlink()


def test_links_are_resolved_inside_the_deployment_not_on_the_host(tmp_path: Path) -> None:
    root = tmp_path / "deploy"
    wants = root / "etc/systemd/system/multi-user.target.wants"
    wants.mkdir(parents=True)
    # The host has /usr/lib/os-release; the deployment does not.
    (wants / "host.service").symlink_to("/usr/lib/os-release")
    assert services.dangling_links(root) == [wants / "host.service"]
