"""The life of a system: install → upgrade with an /etc merge → no-op → build → rollback → revert → prune → pin.

Each test gets a sysroot of its own, copied from one installed once (`fresh`) or from that one after its first
upgrade (`upgraded`), so that any test runs alone and in any order."""

from __future__ import annotations

import datetime
import json
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.integration.conftest import System, build_tags, copied, installed, own_copy

pytestmark = pytest.mark.integration

V1 = """
    FROM localhost/arkes:base
    COPY hello.txt /etc/arkes-test/hello.txt
    RUN printf 'v1\\n' > /etc/arkes-test/defaults.conf && printf 'v1\\n' > /etc/arkes-test/edited.conf
    RUN post_build
"""


@pytest.fixture(scope="module")
def installed_once(tmp_path_factory: pytest.TempPathFactory, base_image: str) -> System:
    return installed(tmp_path_factory, "lifecycle", V1, **{"hello.txt": "hello from the context\n"})


def local_changes_and_v2(system: System) -> None:
    """What the first upgrade brings: local changes in /etc, and a Systemfile with new defaults and a /usr marker."""
    etc = system.etc()
    # Local changes: an edited default and an added file.
    (etc / "arkes-test/edited.conf").write_text("local\n")
    (etc / "arkes-test/added.conf").write_text("added\n")
    # The person changes the declared system: new defaults in /etc and a marker under /usr.
    systemfile = etc / "system/Systemfile"
    text = systemfile.read_text()
    text = text.replace("'v1\\n' > /etc/arkes-test/defaults.conf", "'v2\\n' > /etc/arkes-test/defaults.conf")
    text = text.replace("'v1\\n' > /etc/arkes-test/edited.conf", "'v2\\n' > /etc/arkes-test/edited.conf")
    text = text.replace("RUN post_build", "RUN echo marker > /usr/share/arkes-marker\nRUN post_build")
    systemfile.write_text(text)


@pytest.fixture(scope="module")
def upgraded_once(installed_once: System, tmp_path_factory: pytest.TempPathFactory) -> System:
    system = copied(installed_once, tmp_path_factory.mktemp("upgraded") / "sysroot")
    local_changes_and_v2(system)
    system.os("upgrade")
    return system


@pytest.fixture
def system(installed_once: System, tmp_path: Path) -> Iterator[System]:
    """A system as `os install` left it."""
    yield from own_copy(installed_once, tmp_path)


@pytest.fixture
def upgraded(upgraded_once: System, tmp_path: Path) -> Iterator[System]:
    """A system after its first upgrade: two deployments, the newer one the default."""
    yield from own_copy(upgraded_once, tmp_path)


def today() -> str:
    return datetime.datetime.now(datetime.UTC).strftime("%Y%m%d")


def test_install_deploys_one_default_deployment(system: System) -> None:
    (d,) = system.status()
    assert d["default"] and not d["booted"] and not d["pinned"]
    assert d["version"] == f"{today()}.1"
    assert d["baseImage"] == "localhost/arkes:base"
    assert d["baseDigest"].startswith("sha256:")
    assert len(d["inputHash"]) == 64
    assert d["packages"] > 100
    (modules,) = (system.deployment_dir() / "usr/lib/modules").iterdir()
    assert d["kernel"] == modules.name and d["kernel"].startswith("6.12."), "the kernel it boots"
    assert f"kernel      {modules.name}" in system.os("status").stdout
    assert "console=ttyS0,115200" in d["kargs"]


def test_install_layout(system: System) -> None:
    deployment = system.deployment_dir()
    etc = deployment / "etc"
    assert (etc / "system/Systemfile").read_text().startswith("FROM localhost/arkes:base")
    assert (etc / "system/hello.txt").is_file(), "the context travels with the Systemfile"
    assert (etc / "arkes-test/hello.txt").read_text() == "hello from the context\n"
    assert (deployment / "usr/etc/arkes-test/defaults.conf").read_text() == "v1\n"
    assert (deployment / "home").readlink() == Path("var/home")
    assert (deployment / "usr/lib/tmpfiles.d/arkes-var.conf").is_file()
    assert list((deployment / "boot").iterdir()) == []
    system.fsck()


def test_install_refuses_a_sysroot_that_holds_a_system(system: System) -> None:
    result = system.os("install", check=False)
    assert result.returncode == 2
    assert "already holds a system" in result.stderr


def test_noop_upgrade_builds_nothing(system: System) -> None:
    # How fast it is, `make bench` measures; here: that it does nothing.
    before = system.snapshot()
    result = system.os("upgrade")
    assert "up to date" in result.stderr
    assert "build" not in result.stderr.replace("up to date", "")
    assert system.snapshot() == before


def test_upgrade_merges_etc(system: System) -> None:
    local_changes_and_v2(system)
    result = system.os("upgrade", "--json")
    assert '"deployed": true' in result.stdout
    new, old = system.status()
    assert new["default"] and old["rollback"]
    assert new["version"] == f"{today()}.2"
    assert new["inputHash"] != old["inputHash"]

    new_dir, new_etc = system.deployment_dir(0), system.etc(0)
    assert (new_dir / "usr/share/arkes-marker").read_text() == "marker\n"
    assert not (system.deployment_dir(1) / "usr/share/arkes-marker").exists()
    assert (new_etc / "arkes-test/edited.conf").read_text() == "local\n", "a local edit is kept"
    assert (new_etc / "arkes-test/added.conf").read_text() == "added\n", "a local addition is kept"
    assert (new_etc / "arkes-test/defaults.conf").read_text() == "v2\n", "an unedited default follows the image"
    assert "arkes-marker" in (new_etc / "system/Systemfile").read_text()
    system.fsck()


def test_second_upgrade_is_a_noop(upgraded: System) -> None:
    result = upgraded.os("upgrade")
    assert "up to date" in result.stderr
    assert len(upgraded.status()) == 2


def test_build_commits_without_deploying(system: System) -> None:
    before = system.snapshot()
    system.add_line("RUN true")
    result = system.os("build")
    checksum = result.stdout.strip()
    assert len(checksum) == 64
    assert system.snapshot()[0] == before[0], "os build deploys nothing"
    rev = subprocess.run(
        ["ostree", "rev-parse", f"--repo={system.repo}", "arkes/build"], capture_output=True, text=True, check=True
    )
    assert rev.stdout.strip() == checksum


def test_rollback_swaps_the_default(upgraded: System) -> None:
    first, second = (d["checksum"] for d in upgraded.status())
    upgraded.os("rollback")
    assert [d["checksum"] for d in upgraded.status()] == [second, first]
    upgraded.os("rollback")
    assert [d["checksum"] for d in upgraded.status()] == [first, second]


def test_revert_removes_the_newest(upgraded: System) -> None:
    _newest, previous = upgraded.status()
    result = upgraded.os("revert")
    assert "removed deployment 0" in result.stderr
    (only,) = upgraded.status()
    assert only["checksum"] == previous["checksum"] and only["default"]
    again = upgraded.os("revert", check=False)
    assert again.returncode == 2 and "only one deployment" in again.stderr
    upgraded.fsck()


def test_prune_keeps_newest_and_pinned(system: System) -> None:
    for n in (1, 2):
        system.add_line(f"RUN echo {n}")
        system.os("upgrade")
    deployments = system.status()
    assert len(deployments) == 3
    oldest = deployments[2]["checksum"]
    system.os("pin", "2")
    assert system.status()[2]["pinned"]

    result = system.os("prune", "--keep", "1", "--json")
    assert '"removedDeployments"' in result.stdout
    remaining = system.status()
    assert [d["checksum"] for d in remaining] == [deployments[0]["checksum"], oldest], "the pinned one stays"

    unpin = system.os("pin", "--unpin", "1")
    assert "unpinned" in unpin.stderr
    system.os("prune", "--keep", "1")
    (only,) = system.status()
    assert only["checksum"] == deployments[0]["checksum"]
    system.fsck()
    assert build_tags(system) == [f"localhost/arkes-build:{only['inputHash'][:16]}-{system_id(system)[:12]}"], (
        "this system's build images that no deployment came from are removed"
    )


def system_id(system: System) -> str:
    config = (system.repo / "config").read_text()
    (line,) = [line for line in config.splitlines() if line.startswith("system-id=")]
    return line.split("=", 1)[1].strip()


def test_prune_and_du_leave_other_systems_images_alone(
    system: System, tmp_path_factory: pytest.TempPathFactory
) -> None:
    # A second system on the same container storage, built from the same inputs and from its own.
    body = V1 + "RUN echo neighbour > /usr/share/neighbour\n"
    other = installed(tmp_path_factory, "neighbour", body, **{"hello.txt": "hello from the context\n"})
    theirs = build_tags(other)
    assert len(theirs) == 1 and theirs[0] not in build_tags(system)
    empty = tmp_path_factory.mktemp("empty") / "sysroot"
    empty.mkdir()
    subprocess.run(["ostree", "admin", "init-fs", "--modern", str(empty)], check=True, capture_output=True)
    du = json.loads(System(empty).os("du", "--json").stdout)
    assert du["pruneImageBytes"] == 0, "a system that built nothing has no build images to prune"
    system.os("prune", "--keep", "1")
    assert build_tags(other) == theirs, "pruning one system leaves the other's build images"
    other.os("prune", "--keep", "1")
    assert build_tags(other) == theirs, "its own deployment still comes from it"


def test_pin_of_a_missing_index_is_refused(system: System) -> None:
    result = system.os("pin", "7", check=False)
    assert result.returncode == 2 and "no deployment 7" in result.stderr
