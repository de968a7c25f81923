"""Services across an upgrade, on a real sysroot: what the new image enables is enabled, what the machine disabled
or masked stays so, and a unit the new image no longer ships leaves no dangling link."""

from __future__ import annotations

import subprocess

import pytest

from tests.integration.conftest import System, installed

pytestmark = pytest.mark.integration

UNIT = "[Unit]\\nDescription=%s\\n[Service]\\nExecStart=/bin/true\\n[Install]\\nWantedBy=multi-user.target\\n"
V1 = f"""
    FROM localhost/arkes:base
    RUN for u in old kept masked disabled; do printf '{UNIT}' $u > /usr/lib/systemd/system/t-$u.service; done \\
     && systemctl enable t-kept.service t-masked.service t-disabled.service
    RUN post_build
"""


def test_enablement_follows_the_image_and_the_machine(tmp_path_factory: pytest.TempPathFactory) -> None:
    system: System = installed(tmp_path_factory, "services", V1)
    units = system.etc() / "systemd/system"
    wants = units / "multi-user.target.wants"
    # The machine's own choices: enable t-old, mask t-masked, disable t-disabled.
    (wants / "t-old.service").symlink_to("/usr/lib/systemd/system/t-old.service")
    (wants / "t-masked.service").unlink()
    (units / "t-masked.service").symlink_to("/dev/null")
    (wants / "t-disabled.service").unlink()
    # The new image no longer ships t-old and enables a new unit.
    text = system.systemfile.read_text().replace("for u in old kept", "for u in new kept")
    system.systemfile.write_text(text.replace("enable t-kept.service", "enable t-new.service t-kept.service"))
    result = system.os("upgrade")
    assert "removed /etc/systemd/system/multi-user.target.wants/t-old.service" in result.stderr
    new_units = system.etc(0) / "systemd/system"
    new_wants = new_units / "multi-user.target.wants"
    assert not (new_wants / "t-old.service").is_symlink(), "no link to a unit the image no longer ships"
    assert (new_wants / "t-new.service").is_symlink(), "what the new image enables is enabled"
    assert (new_wants / "t-kept.service").is_symlink()
    assert (new_units / "t-masked.service").readlink().as_posix() == "/dev/null", "the machine's mask stays"
    assert not (new_wants / "t-masked.service").exists()
    assert not (new_wants / "t-disabled.service").exists(), "the machine's disable stays"


def test_the_base_image_boots_without_an_ordering_cycle(base_image: str) -> None:
    """systemd breaks an ordering cycle at boot by dropping a job (udev, say) and the boot stalls on devices: ask
    systemd itself, in the image, for the transaction of the default target."""
    argv = ["podman", "run", "--rm", "--runtime=runc", "--pull=never", "--network=none"]
    argv += ["--ulimit", "nofile=20000:20000", "--ulimit", "nproc=4096:4096", base_image]
    argv += ["systemd-analyze", "verify", "--man=no", "default.target", "arkes-etc-merge.service"]
    result = subprocess.run(argv, capture_output=True, text=True, timeout=300, check=False)
    assert "ordering cycle" not in result.stderr + result.stdout, result.stderr
    assert "arkes-etc-merge.service" not in result.stderr, result.stderr
