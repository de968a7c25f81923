"""The live installer's pure parts: where an unattended install finds its answers, the medium's boot menu, and the
QEMU command line that boots an installer image."""

from __future__ import annotations

from pathlib import Path

from arkes import installer, iso, vm


def test_answers_come_from_the_kernel_command_line_first(tmp_path: Path) -> None:
    (tmp_path / "arkes").mkdir()
    (tmp_path / "arkes/answers.toml").write_text('disk = "/dev/vda"\n')
    cmdline = "BOOT_IMAGE=/live/vmlinuz root=live:CDLABEL=X arkes.answers=/run/other.toml quiet"
    assert installer.answers_path(cmdline, tmp_path) == Path("/run/other.toml")
    assert installer.answers_path("quiet", tmp_path) == tmp_path / "arkes/answers.toml", "the medium's file"
    assert installer.answers_path("quiet arkes.answers=none", tmp_path) is None, "none: no unattended install"
    assert installer.answers_path("quiet", tmp_path / "nothing-here") is None


def test_a_karg_that_only_starts_alike_is_not_the_answers() -> None:
    assert installer.answers_path("arkes.answers_file=/x", Path("/nonexistent")) is None


def test_the_menu_boots_the_live_root_by_its_label_with_the_systems_kernel_arguments() -> None:
    menu = iso._menu("ARKES_0123456789", "20261207.1", ["console=ttyS0,115200", "systemd.gpt_auto=0"], False)
    assert "serial --unit=0 --speed=115200" in menu and "terminal_output console serial" in menu
    lines = [line.strip() for line in menu.splitlines()]
    linux = [line for line in lines if line.startswith("linux ")]
    assert linux == [
        "linux /live/vmlinuz root=live:CDLABEL=ARKES_0123456789 rd.live.image rd.live.overlay.overlayfs=1 "
        "console=ttyS0,115200 systemd.gpt_auto=0"
    ]
    assert "initrd /live/initrd.img" in lines
    assert menu.count("menuentry ") == 1, "without answers, one entry: the installer that asks"


def test_with_answers_the_second_entry_boots_without_them() -> None:
    menu = iso._menu("L", "1", [], True)
    titles = [line for line in menu.splitlines() if line.startswith("menuentry ")]
    assert len(titles) == 2 and "unattended" in titles[0]
    assert menu.splitlines()[-3].strip().endswith("arkes.answers=none"), menu
    assert "set default=0" in menu, "the unattended install is what boots when no one chooses"


def test_an_installer_image_is_attached_as_a_cd_and_booted_first(tmp_path: Path) -> None:
    config = vm.Config(disk=tmp_path / "disk.img", cdrom=tmp_path / "arkes.iso", offline=True)
    argv = vm.qemu_argv(config, tmp_path, kvm=False, interactive=False)
    drives = [argv[i + 1] for i, a in enumerate(argv) if a == "-drive"]
    assert f"file={tmp_path / 'arkes.iso'},format=raw,if=none,id=cd0,media=cdrom,readonly=on" in drives
    assert "ide-cd,drive=cd0,bootindex=0" in argv
    assert "user,model=virtio-net-pci,restrict=on" in argv, "offline: the guest reaches nothing"
    plain = vm.qemu_argv(vm.Config(disk=tmp_path / "disk.img"), tmp_path, kvm=False, interactive=False)
    assert not any("cdrom" in a for a in plain) and "user,model=virtio-net-pci" in plain
