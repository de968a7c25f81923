"""Fixtures for integration tests: the real `os` command on real Podman images and OSTree sysroots."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import textwrap
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

OS = Path(sys.executable).parent / "os"


@dataclass
class System:
    """A sysroot under test, driven through the `os` command as a person would."""

    path: Path

    def os(self, *args: str, check: bool = True, timeout: float = 900) -> subprocess.CompletedProcess[str]:
        result = subprocess.run(
            [str(OS), "--sysroot", str(self.path), *args],
            capture_output=True,
            text=True,
            timeout=timeout,
            stdin=subprocess.DEVNULL,
            check=False,
        )
        if check and result.returncode != 0:
            raise AssertionError(f"os {' '.join(args)} failed ({result.returncode}):\n{result.stderr}")
        return result

    def status(self) -> list[dict[str, Any]]:
        deployments: list[dict[str, Any]] = json.loads(self.os("status", "--json").stdout)["deployments"]
        return deployments

    def deployment_dir(self, index: int = 0) -> Path:
        d = self.status()[index]
        return self.path / "ostree/deploy/arkes/deploy" / f"{d['checksum']}.{d['serial']}"

    def etc(self, index: int = 0) -> Path:
        return self.deployment_dir(index) / "etc"

    @property
    def repo(self) -> Path:
        return self.path / "ostree/repo"

    def refs(self) -> list[str]:
        """Each ref with the commit it points at."""
        out = subprocess.run(["ostree", "refs", f"--repo={self.repo}"], capture_output=True, text=True, check=True)
        names = sorted(out.stdout.split())
        if not names:
            return []
        parsed = subprocess.run(
            ["ostree", "rev-parse", f"--repo={self.repo}", *names], capture_output=True, text=True, check=True
        )
        return [f"{name} {checksum}" for name, checksum in zip(names, parsed.stdout.split(), strict=True)]

    def fsck(self) -> None:
        result = subprocess.run(["ostree", "fsck", f"--repo={self.repo}"], capture_output=True, text=True, check=False)
        assert result.returncode == 0, result.stdout + result.stderr

    @property
    def systemfile(self) -> Path:
        return self.etc() / "system/Systemfile"

    def add_line(self, line: str) -> None:
        """Declare one more instruction, before the Systemfile's final `RUN post_build`."""
        text = self.systemfile.read_text()
        self.systemfile.write_text(text.replace("RUN post_build", f"{line}\nRUN post_build"))

    def snapshot(self) -> tuple[list[tuple[str, int]], list[str]]:
        """What must not change when a command fails: the deployments in order, and the refs."""
        return [(d["checksum"], d["serial"]) for d in self.status()], self.refs()


def write_systemfile(directory: Path, body: str, **files: str) -> Path:
    directory.mkdir(parents=True, exist_ok=True)
    path = directory / "Systemfile"
    path.write_text(textwrap.dedent(body).lstrip())
    for name, content in files.items():
        (directory / name).write_text(content)
    return path


def installed(factory: pytest.TempPathFactory, name: str, body: str, **files: str) -> System:
    """A new sysroot with the system of a Systemfile (and context files) installed, as `os install` does it."""
    root = factory.mktemp(name)
    system = System(root / "sysroot")
    system.os("install", "--systemfile", str(write_systemfile(root / "source", body, **files)))
    return system


def _system_id(repo: Path) -> str:
    for line in (repo / "config").read_text().splitlines():
        if line.startswith("system-id="):
            return line.split("=", 1)[1].strip()
    return ""


def build_tags(system: System) -> list[str]:
    """The tags of the build images in the host's storage that belong to `system` (see podman.build_tag)."""
    tags = subprocess.run(
        ["podman", "images", "--format", "{{.Repository}}:{{.Tag}}", "--filter", "reference=localhost/arkes-build"],
        capture_output=True,
        text=True,
        check=True,
    ).stdout.split()
    suffix = "-" + _system_id(system.repo)[:12]
    return sorted(t for t in tags if t.endswith(suffix))


# What commands and tests write in place, or lock, in a sysroot: each deployment's /etc and origin, the stateroot's
# /var, the boot directory, the repository's configuration, scratch and locks. A copy gets files of its own there.
OWN = (
    "boot",
    "ostree/lock",
    "ostree/deploy/*/var",
    "ostree/deploy/*/deploy/*/etc",
    "ostree/deploy/*/deploy/*.origin",
    "ostree/repo/config",
    "ostree/repo/.lock",
    "ostree/repo/tmp",
    "ostree/repo/state",
)


def copied(template: System, destination: Path) -> System:
    """A system of its own with the state of `template`: its sysroot copied, a new system id, and its build images
    tagged for that id as well, so that the copy is a system like any other. What OSTree never writes in place (the
    repository's objects, the deployments' trees made of them, refs written by renaming) is hard-linked, the rest
    (OWN) copied."""
    destination.parent.mkdir(parents=True, exist_ok=True)
    settled(template)
    subprocess.run(["cp", "-a", "--link", str(template.path), str(destination)], check=True)
    for pattern in OWN:
        for linked in destination.glob(pattern):
            # (cp does not carry the immutable flag of OSTree's deployment roots over: the copy's are writable.)
            original = template.path / linked.relative_to(destination)
            if linked.is_dir() and not linked.is_symlink():
                shutil.rmtree(linked)
            else:
                linked.unlink()
            subprocess.run(["cp", "-a", "--reflink=auto", str(original), str(linked)], check=True)
    copy = System(destination)
    old = _system_id(copy.repo)
    if old:
        new = uuid.uuid4().hex
        config = copy.repo / "config"
        config.write_text(config.read_text().replace(f"system-id={old}", f"system-id={new}"))
        for tag in build_tags(template):
            subprocess.run(["podman", "tag", tag, tag.replace(f"-{old[:12]}", f"-{new[:12]}")], check=True)
    return copy


def settled(system: System, timeout: float = 300) -> None:
    """Wait until `os` has removed the trees it built from (it removes them at the lowest priority after it has
    returned, see arkes.layers): a copy made meanwhile would race with that removal."""
    scratch = system.repo / "tmp"
    deadline = time.monotonic() + timeout
    while any(scratch.glob("arkes-tree-*")):
        if time.monotonic() > deadline:
            raise AssertionError(f"the trees in {scratch} are still there after {timeout:.0f}s")
        time.sleep(0.2)


def own_copy(template: System, tmp_path: Path) -> Iterator[System]:
    """A copy of `template` for one test (see `copied`), removed after it: `yield from` it in a fixture."""
    copy = copied(template, tmp_path / "sysroot")
    yield copy
    discard(copy)


def discard(system: System) -> None:
    """Remove a system made by `copied`, and the tags of its build images."""
    for tag in build_tags(system):
        # `podman untag IMAGE NAME` removes just that name; the image keeps the template's.
        subprocess.run(["podman", "untag", tag, tag], check=False, capture_output=True)
    deployments = list(system.path.glob("ostree/deploy/*/deploy/*"))
    if deployments:
        subprocess.run(["chattr", "-i", *map(str, deployments)], check=False)
    shutil.rmtree(system.path, ignore_errors=True)


def os_reaching(system: System, args: list[str], reached: Callable[[str], bool]) -> subprocess.Popen[str]:
    """Start `os ARGS` on the system in its own process group; return it once a line of its stderr is `reached`."""
    proc = subprocess.Popen(
        [str(OS), "--sysroot", str(system.path), *args],
        stderr=subprocess.PIPE,
        stdin=subprocess.DEVNULL,
        text=True,
        start_new_session=True,
        # As from a terminal: Ctrl-C reaches it even when these tests run where SIGINT is ignored (in background).
        preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL),
    )
    assert proc.stderr is not None
    seen = []
    deadline = time.monotonic() + 600
    for line in proc.stderr:
        seen.append(line)
        if reached(line):
            return proc
        if time.monotonic() > deadline:
            break
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()
    pytest.fail(f"os {' '.join(args)} never got there:\n{''.join(seen)}")


def tree_containers() -> list[str]:
    out = subprocess.run(
        ["podman", "ps", "--all", "--format", "{{.Names}}", "--filter", "name=arkes-tree-"],
        capture_output=True,
        text=True,
        check=True,
    )
    return out.stdout.split()


@pytest.fixture(scope="session")
def base_image() -> str:
    """The distribution's base image, built (or found current) once per session by the tool itself."""
    result = subprocess.run([str(OS), "images", "base"], capture_output=True, text=True, check=False, timeout=3600)
    assert result.returncode == 0, result.stderr
    return "localhost/arkes:base"


@pytest.fixture
def empty_sysroot(tmp_path: Path) -> Iterator[System]:
    yield System(tmp_path / "sysroot")


@pytest.fixture(scope="session", autouse=True)
def _remove_sysroots(tmp_path_factory: pytest.TempPathFactory) -> Iterator[None]:
    """Sysroots are large; remove them after the session. OSTree marks deployment roots immutable, so lift that."""
    yield
    base = tmp_path_factory.getbasetemp()
    # Sysroots sit at <test dir>/sysroot (or one level deeper); a recursive glob would walk their whole trees.
    sysroots = [p for p in [*base.glob("*/sysroot"), *base.glob("*/*/sysroot")] if (p / "ostree/repo").is_dir()]
    deployments = [str(d) for sysroot in sysroots for d in sysroot.glob("ostree/deploy/*/deploy/*") if d.is_dir()]
    if deployments:
        subprocess.run(["chattr", "-i", *deployments], check=False)
    # In the background: this machine's file system frees their blocks slowly, and nothing waits for it.
    if sysroots:
        subprocess.Popen(["rm", "-rf", *map(str, sysroots)], start_new_session=True, stdin=subprocess.DEVNULL)
