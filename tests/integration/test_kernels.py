"""Which kernel boots: one, chosen by rule, with Debian's real kernel packages (the rt flavour beside the generic).

The image with two flavours and no declaration is refused naming both; `set_kernel rt` makes the rt kernel the one
in the boot entry, built with an initramfs of its own and the other kernel left out of the boot path."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.integration.conftest import System, installed, own_copy, write_systemfile

pytestmark = pytest.mark.integration

TWO_FLAVOURS = """
    FROM localhost/arkes:base
    RUN install_packages linux-image-rt-amd64
    RUN post_build
"""


@pytest.fixture(scope="module")
def installed_once(tmp_path_factory: pytest.TempPathFactory, base_image: str) -> System:
    return installed(tmp_path_factory, "kernels", "FROM localhost/arkes:base\nRUN post_build\n")


@pytest.fixture
def system(installed_once: System, tmp_path: Path) -> Iterator[System]:
    """The base system with the stable kernel, a sysroot of each test's own."""
    yield from own_copy(installed_once, tmp_path)


def test_two_flavours_without_a_choice_are_refused_naming_both(
    system: System, tmp_path_factory: pytest.TempPathFactory
) -> None:
    before = system.snapshot()
    source = write_systemfile(tmp_path_factory.mktemp("two"), TWO_FLAVOURS)
    result = system.os("upgrade", "--systemfile", str(source), check=False)
    assert result.returncode != 0
    assert "more than one kernel would boot" in result.stderr, result.stderr
    assert "-rt-amd64" in result.stderr and "set_kernel rt" in result.stderr
    assert system.snapshot() == before, "nothing is deployed"


def test_the_declared_flavour_boots(system: System, tmp_path_factory: pytest.TempPathFactory) -> None:
    body = TWO_FLAVOURS.replace("RUN post_build", "RUN set_kernel rt\nRUN post_build")
    source = write_systemfile(tmp_path_factory.mktemp("rt"), body)
    system.os("upgrade", "--systemfile", str(source))
    new = system.status()[0]
    assert new["kernel"].endswith("-rt-amd64"), new["kernel"]
    modules = system.deployment_dir() / "usr/lib/modules"
    booting = [d.name for d in modules.iterdir() if (d / "vmlinuz").is_file()]
    assert booting == [new["kernel"]], "only the chosen kernel is where OSTree looks for one"
    assert (modules / new["kernel"] / "initramfs.img").is_file()
    assert "linux-image-rt-amd64" in system.os("diff", "--packages").stdout


BACKPORTS = """
    FROM localhost/arkes:base
    RUN add_package_repository backports http://deb.debian.org/debian trixie-backports main
    RUN apt-get update -q && DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends \\
          -t trixie-backports linux-image-amd64 && apt-get clean && rm -rf /var/lib/apt/lists/*
    RUN post_build
"""


def test_the_newest_kernel_boots_and_the_one_it_supersedes_is_gone(
    system: System, tmp_path_factory: pytest.TempPathFactory
) -> None:
    (stable,) = (system.deployment_dir() / "usr/lib/modules").iterdir()
    source = write_systemfile(tmp_path_factory.mktemp("backports"), BACKPORTS)
    system.os("upgrade", "--systemfile", str(source))
    new = system.status()[0]
    assert new["kernel"] != stable.name and new["kernel"].endswith("-amd64"), new["kernel"]
    modules = [d.name for d in (system.deployment_dir() / "usr/lib/modules").iterdir()]
    assert modules == [new["kernel"]], "the superseded kernel's modules do not ride along"
    packages = system.os("diff", "--packages").stdout
    assert packages.splitlines()[0] == f"~ kernel  {stable.name} -> {new['kernel']}", "the kernel change comes first"
    assert f"linux-image-{stable.name}" in packages and f"linux-image-{new['kernel']}" in packages
