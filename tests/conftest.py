"""Test layers: unit tests need nothing; integration tests probe for root, Podman and OSTree; vm tests for QEMU.

A layer that cannot run here is skipped with the reason on a developer's machine, and fails under CI (CI=true),
where every layer must run.
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import pytest


def missing_for_integration() -> list[str]:
    missing = []
    if os.geteuid() != 0:
        missing.append("root")
    for program in ("podman", "ostree", "mmdebstrap"):
        if shutil.which(program) is None:
            missing.append(program)
    try:
        import gi

        gi.require_version("OSTree", "1.0")
    except (ImportError, ValueError):
        missing.append("PyGObject with the OSTree typelib (gir1.2-ostree-1.0)")
    return missing


def missing_for_vm() -> list[str]:
    missing = missing_for_integration()
    for program in ("qemu-system-x86_64", "sfdisk", "losetup", "mkfs.vfat", "grub-mkimage"):
        if shutil.which(program) is None:
            missing.append(program)
    return missing


def pytest_runtest_setup(item: pytest.Item) -> None:
    if "vm" in item.keywords:
        layer, missing = "vm", missing_for_vm()
    elif "integration" in item.keywords:
        layer, missing = "integration", missing_for_integration()
    else:
        return
    if missing:
        reason = f"{layer} tests need " + ", ".join(missing)
        if os.environ.get("CI"):
            pytest.fail(f"{reason}: every layer must run in CI")
        pytest.skip(reason)


ROOT = Path(__file__).resolve().parent.parent
