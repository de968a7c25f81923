"""Package updates reach the machine: a signed repository of its own (real apt, gpg and HTTP on loopback) publishes
a new version, and `os checkupdates`, `os upgrade` and `os diff --packages` follow it."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.integration.aptrepo import AptRepository, hello_repository
from tests.integration.conftest import System, installed

pytestmark = pytest.mark.integration

SYSTEMFILE = """
    FROM localhost/arkes:base
    COPY repo.asc /tmp/repo.asc
    RUN add_package_repository arkes-test {url} stable main /tmp/repo.asc && rm /tmp/repo.asc \\
     && install_packages arkes-hello
    RUN post_build
"""


@pytest.fixture(scope="module")
def repository(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[AptRepository, str]]:
    with hello_repository(tmp_path_factory.mktemp("aptrepo") / "www") as served:
        yield served


def installed_version(system: System, index: int = 0) -> str:
    return (system.deployment_dir(index) / "usr/share/arkes-hello/version").read_text().strip()


def test_package_updates_reach_the_machine(
    tmp_path_factory: pytest.TempPathFactory, repository: tuple[AptRepository, str]
) -> None:
    repo, key = repository
    system = installed(tmp_path_factory, "packages", SYSTEMFILE.format(url=repo.url), **{"repo.asc": key})
    assert installed_version(system) == "1.0"

    # The repository the Systemfile added is part of the recorded state: nothing changed, nothing is built.
    unchanged = system.os("upgrade", "--json")
    assert json.loads(unchanged.stdout)["upToDate"] is True, unchanged.stderr
    assert "build" not in unchanged.stderr.replace("up to date", ""), unchanged.stderr
    assert system.os("checkupdates", check=False).returncode == 2

    # A line that installs nothing: its packages are those already brought up to date at this package state, so
    # the repositories are not asked again; a line that installs a package changes them, and they are.
    system.add_line("RUN echo a line > /usr/share/arkes-a-line")
    quick = system.os("upgrade").stderr
    assert "brought up to date at this package state already" in quick, quick
    assert "apt is asked" not in quick, "no package step is built"
    assert installed_version(system) == "1.0"
    system.add_line("RUN install_packages hello")
    asked = system.os("upgrade").stderr
    assert "brought up to date at this package state" not in asked and "apt is asked" in asked, asked
    assert "every package is at its repository's version" in asked, asked
    assert (system.deployment_dir() / "usr/bin/hello").is_file()

    # A fix is published: 1.1, which needs a package the repository adds; another new package nobody asked for.
    repo.add("arkes-extra", "1.0", files={"/usr/share/arkes-extra/here": "yes\n"})
    repo.add("arkes-hello", "1.1", depends="arkes-extra", files={"/usr/share/arkes-hello/version": "1.1\n"})
    repo.add("arkes-unrelated", "1.0")
    repo.publish()

    check = system.os("checkupdates", check=False)
    assert check.returncode == 0, check.stderr
    assert f"repository {repo.url}dists/stable/: new release" in check.stdout
    assert "package arkes-hello 1.0 -> 1.1" in check.stdout

    upgraded = system.os("upgrade")
    log = upgraded.stderr
    assert f"package repository {repo.url}dists/stable/ published a new release" in log
    assert "  arkes-hello 1.0 -> 1.1" in log and "  arkes-extra (new) -> 1.0" in log, log
    assert log.index("arkes-hello 1.0 -> 1.1") < log.index("deployed version"), "named before it deploys"
    assert "arkes-unrelated" not in log
    assert installed_version(system) == "1.1" and installed_version(system, 1) == "1.0"
    assert (system.deployment_dir() / "usr/share/arkes-extra/here").is_file()

    assert system.os("checkupdates", check=False).returncode == 2, "nothing left to update"
    diff = system.os("diff", "--packages").stdout
    assert "~ arkes-hello  1.0 -> 1.1" in diff and "+ arkes-extra  1.0" in diff, diff
    assert "arkes-unrelated" not in diff
    assert json.loads(system.os("upgrade", "--json").stdout)["upToDate"] is True

    # The next release, but the person keeps the package state; then the repository cannot be reached at all.
    repo.add("arkes-hello", "1.2", depends="arkes-extra", files={"/usr/share/arkes-hello/version": "1.2\n"})
    repo.publish()
    kept = system.os("upgrade", "--no-package-updates", "--json")
    assert json.loads(kept.stdout)["upToDate"] is True, kept.stderr
    repo.stop()
    try:
        offline = system.os("upgrade", "--json")
        assert json.loads(offline.stdout)["upToDate"] is True, offline.stderr
        assert f"cannot reach a package repository, its packages count as unchanged: {repo.url}" in offline.stderr
    finally:
        repo.serve_again()
    # A one-line change once the repositories moved on: the recorded fingerprint is of another package state, so
    # the update runs in full and takes 1.2.
    system.add_line("RUN echo another line > /usr/share/arkes-another-line")
    moved = system.os("upgrade").stderr
    assert "brought up to date at this package state" not in moved and "arkes-hello 1.1 -> 1.2" in moved, moved
    assert installed_version(system) == "1.2"
    system.fsck()


def test_the_timer_policy_stages_or_only_checks(
    tmp_path_factory: pytest.TempPathFactory, repository: tuple[AptRepository, str]
) -> None:
    repo, key = repository
    system = installed(tmp_path_factory, "policy", SYSTEMFILE.format(url=repo.url), **{"repo.asc": key})
    before = installed_version(system)
    repo.add("arkes-hello", "1.3", files={"/usr/share/arkes-hello/version": "1.3\n"})
    repo.publish()
    checked = system.os("upgrade", "--automatic")
    assert "automatic updates: check" in checked.stderr
    assert "package arkes-hello" in checked.stdout and len(system.status()) == 1
    (system.etc() / "system/updates.conf").write_text("policy = stage\n")
    staged = system.os("upgrade", "--automatic")
    assert "automatic updates: stage" in staged.stderr
    assert installed_version(system) == "1.3" and installed_version(system, 1) == before
    (system.etc() / "system/updates.conf").write_text("policy = sometimes\n")
    bad = system.os("upgrade", "--automatic", check=False)
    assert bad.returncode != 0 and "updates.conf:1: unknown policy 'sometimes'" in bad.stderr
    assert Path(system.etc() / "system/updates.conf").is_file()
