"""The status cache: its fingerprint changes with everything libostree reads to list deployments, it gives back
the very model it was given, and a damaged or foreign cache is never used. The sysroots here are the files
libostree reads, laid out by hand."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import pytest

from arkes import status, statuscache, target
from tests.unit.test_status import deployment

BOOTCSUM = "b" * 64
NEW, OLD = "1" * 64, "0" * 64


def symlink(path: Path, to: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.symlink_to(to)


def write(path: Path, text: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)


def replace_file(path: Path, text: str) -> None:
    """Write a file as libostree does: a new file renamed over the old one."""
    new = path.with_name(path.name + ".new")
    new.write_text(text)
    new.rename(path)


def sysroot_at(path: Path) -> Path:
    """A sysroot with two deployments as libostree lays it out: boot loader entries whose ostree= argument names a
    link in ostree/boot.0, which names the deployment's directory, and each deployment's origin file."""
    symlink(path / "boot/loader", "loader.0")
    symlink(path / "ostree/boot.0", "boot.0.0")
    deploy = path / "ostree/deploy/arkes/deploy"
    for serial, checksum in enumerate((NEW, OLD)):
        write(
            path / f"boot/loader.0/entries/ostree-{2 - serial}-arkes.conf",
            f"title Arkēs\nversion {2 - serial}\nlinux /ostree/arkes-{BOOTCSUM}/vmlinuz-6.12\n"
            f"options console=ttyS0 ostree=/ostree/boot.0/arkes/{BOOTCSUM}/{serial}\n",
        )
        symlink(path / f"ostree/boot.0.0/arkes/{BOOTCSUM}/{serial}", f"../../../deploy/arkes/deploy/{checksum}.0")
        (deploy / f"{checksum}.0/etc").mkdir(parents=True)
        write(deploy / f"{checksum}.0.origin", "[origin]\nunconfigured-state=os upgrade\n")
    (path / "ostree/deploy/arkes/var/lib/arkes").mkdir(parents=True)
    write(path / "ostree/repo/config", "[core]\nrepo_version=1\n")
    return path


@pytest.fixture
def run(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """This boot's state, in a directory of its own rather than the host's /run and /proc."""
    run = tmp_path / "run"
    write(run / "boot_id", "5c7e4a52-0d3b-4a3e-9d57-8f2b1f6f0a11\n")
    (run / "ostree").mkdir()
    monkeypatch.setattr(statuscache, "BOOT_ID", str(run / "boot_id"))
    monkeypatch.setattr(statuscache, "RUN_OSTREE", str(run / "ostree"))
    monkeypatch.setattr(target, "BOOTED_MARKER", run / "ostree-booted")
    return run


@pytest.fixture
def sysroot(tmp_path: Path, run: Path) -> Path:
    return sysroot_at(tmp_path / "sysroot")


def booted(sysroot: Path, run: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Make `sysroot` the booted root, as libostree tells: /run/ostree-booted exists and the sysroot is /."""
    write(run / "ostree-booted", "")
    monkeypatch.setattr(statuscache, "ROOT", str(sysroot))


def fingerprint(path: Path) -> tuple[str, ...]:
    found = statuscache.fingerprint(path)
    assert found is not None
    return found


def test_the_fingerprint_is_stable(sysroot: Path) -> None:
    first = fingerprint(sysroot)
    statuscache.save(sysroot / "ostree/deploy/arkes/var/lib/arkes", first, listing(sysroot))
    assert fingerprint(sysroot) == first, "nothing changed, not even by saving the cache"


def origin(sysroot: Path, checksum: str) -> Path:
    return sysroot / f"ostree/deploy/arkes/deploy/{checksum}.0.origin"


def entry(sysroot: Path, n: int) -> Path:
    return sysroot / f"boot/loader.0/entries/ostree-{n}-arkes.conf"


def swap_bootlinks(sysroot: Path) -> None:
    """What libostree does when the new deployment order keeps every boot entry: new links in boot.0.1, swapped in."""
    for serial, checksum in enumerate((OLD, NEW)):
        symlink(sysroot / f"ostree/boot.0.1/arkes/{BOOTCSUM}/{serial}", f"../../../deploy/arkes/deploy/{checksum}.0")
    link = sysroot / "ostree/boot.0"
    link.unlink()
    link.symlink_to("boot.0.1")


def new_boot_version(sysroot: Path) -> None:
    """What libostree does when the entries change: a whole new loader.1, then boot/loader swapped to it."""
    for n in (1, 2):
        write(sysroot / f"boot/loader.1/entries/ostree-{n}-arkes.conf", entry(sysroot, n).read_text())
    link = sysroot / "boot/loader"
    link.unlink()
    link.symlink_to("loader.1")


def retarget_bootlink(sysroot: Path) -> None:
    link = sysroot / f"ostree/boot.0.0/arkes/{BOOTCSUM}/1"
    link.unlink()
    link.symlink_to(f"../../../deploy/arkes/deploy/{OLD}.1")


def replace_deployment(sysroot: Path) -> None:
    """The same name, another directory (undeployed and deployed again)."""
    old = sysroot / f"ostree/deploy/arkes/deploy/{OLD}.0"
    old.rename(sysroot / "undeployed")  # kept: the new directory cannot reuse its inode
    old.mkdir()


CHANGES: dict[str, Callable[[Path], object]] = {
    "boot loader entries swapped to loader.1": new_boot_version,
    "a boot loader entry added": lambda s: write(entry(s, 3), "title x\n"),
    "a boot loader entry removed": lambda s: entry(s, 1).unlink(),
    "a boot loader entry rewritten (new kernel arguments)": lambda s: replace_file(entry(s, 2), "options quiet\n"),
    "a boot loader entry's mtime": lambda s: os.utime(entry(s, 2), ns=(1, 1)),
    "deployment links swapped (ostree/boot.0)": swap_bootlinks,
    "a deployment link retargeted": retarget_bootlink,
    "ostree/deploy touched (libostree's own change marker)": lambda s: os.utime(s / "ostree/deploy", ns=(1, 1)),
    "a deployment added": lambda s: (s / f"ostree/deploy/arkes/deploy/{OLD}.1").mkdir(),
    "a deployment directory replaced": replace_deployment,
    "an origin rewritten (pinned)": lambda s: replace_file(
        origin(s, OLD), "[origin]\nunconfigured-state=os upgrade\n\n[libostree-transient]\npinned=true\n"
    ),
    "an origin rewritten (hotfix unlock)": lambda s: replace_file(
        origin(s, NEW), "[origin]\nunconfigured-state=os upgrade\nunlocked=hotfix\n"
    ),
    "an origin edited in place": lambda s: origin(s, OLD).write_text("[origin]\nunlocked=hotfix\n"),
    "an origin's mtime": lambda s: os.utime(origin(s, OLD), ns=(1, 1)),
    "the repository's config rewritten": lambda s: replace_file(s / "ostree/repo/config", "[core]\n"),
    "the stateroot's deploy directory's mtime": lambda s: os.utime(s / "ostree/deploy/arkes/deploy", ns=(1, 1)),
}


@pytest.mark.parametrize("change", CHANGES, ids=list(CHANGES))
def test_the_fingerprint_follows_the_sysroot(sysroot: Path, change: str) -> None:
    before = fingerprint(sysroot)
    CHANGES[change](sysroot)
    assert fingerprint(sysroot) != before


RUN_CHANGES: dict[str, Callable[[Path], object]] = {
    "a reboot (boot id)": lambda run: (run / "boot_id").write_text("0d9c1f4e-8a7b-4c2d-b3e1-6f5a4d3c2b1a\n"),
    "a development unlock": lambda run: write(run / f"ostree/deployment-state/{OLD}.0/unlocked-development", ""),
    "a transient unlock": lambda run: write(run / f"ostree/deployment-state/{NEW}.0/unlocked-transient", ""),
    "a soft reboot's next root": lambda run: write(run / "ostree/nextroot-booted", "x"),
    "/run/ostree-booted": lambda run: write(run / "ostree-booted", ""),
}


@pytest.mark.parametrize("change", RUN_CHANGES, ids=list(RUN_CHANGES))
def test_the_fingerprint_follows_this_boots_state(sysroot: Path, run: Path, change: str) -> None:
    before = fingerprint(sysroot)
    RUN_CHANGES[change](run)
    assert fingerprint(sysroot) != before


@pytest.mark.parametrize("name", ["staged-deployment", "staged-deployment-locked"])
def test_the_booted_fingerprint_follows_the_staged_deployment(
    sysroot: Path, run: Path, monkeypatch: pytest.MonkeyPatch, name: str
) -> None:
    booted(sysroot, run, monkeypatch)
    before = fingerprint(sysroot)
    assert any("booted True" in line for line in before)
    write(run / "ostree" / name, "staged")
    assert fingerprint(sysroot) != before


def test_the_fingerprint_names_the_tool_the_format_and_the_sysroot(
    sysroot: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    before = fingerprint(sysroot)
    monkeypatch.setattr(statuscache, "__version__", "99.0")
    assert fingerprint(sysroot) != before
    monkeypatch.undo()
    monkeypatch.setattr(statuscache, "FORMAT", statuscache.FORMAT + 1)
    assert fingerprint(sysroot) != before
    monkeypatch.undo()
    moved = sysroot.rename(sysroot.with_name("elsewhere"))
    assert fingerprint(moved) != before


def test_what_libostree_could_not_read_gives_no_fingerprint(sysroot: Path) -> None:
    (sysroot / "boot/loader").unlink()
    (sysroot / "boot/loader").write_text("not a link")
    assert statuscache.fingerprint(sysroot) is None


# --- the cache ------------------------------------------------------------------------------------------------


def listing(sysroot: Path) -> status.Listing:
    roots = tuple(sysroot / f"ostree/deploy/arkes/deploy/{c}.0" for c in (NEW, OLD))
    deployments = (
        deployment(0, checksum=NEW),
        deployment(1, checksum=OLD, pinned=True, unlocked="hotfix", kargs=()),
    )
    return status.Listing(str(sysroot), deployments, roots, roots[0] / "etc")


def state_dir(sysroot: Path) -> Path:
    return sysroot / "ostree/deploy/arkes/var/lib/arkes"


def test_the_cache_gives_back_the_same_model(sysroot: Path) -> None:
    found, kept = fingerprint(sysroot), listing(sysroot)
    statuscache.save(state_dir(sysroot), found, kept)
    loaded = statuscache.load(state_dir(sysroot), found)
    assert loaded == kept
    assert loaded is not None
    assert all(type(a) is type(b) for a, b in zip(loaded.roots, kept.roots, strict=True))
    fresh, cached = status.finish(kept, state_dir(sysroot)), status.finish(loaded, state_dir(sysroot))
    assert cached == fresh
    assert cached.render() == fresh.render()
    assert json.dumps(cached.to_json()) == json.dumps(fresh.to_json())
    assert sorted(p.name for p in state_dir(sysroot).iterdir()) == [statuscache.NAME], "no temporary file left"


def test_a_cache_of_another_fingerprint_is_not_used(sysroot: Path) -> None:
    found = fingerprint(sysroot)
    statuscache.save(state_dir(sysroot), found, listing(sysroot))
    assert statuscache.load(state_dir(sysroot), (*found[:-1], "something else")) is None
    assert statuscache.load(state_dir(sysroot), found[1:]) is None


def damaged(document: dict[str, object], path: str, value: object) -> dict[str, object]:
    """`document` with the value at `path` (keys and list indexes, /-separated) replaced, or removed if `value` is
    REMOVE."""
    copy = json.loads(json.dumps(document))
    *parents, last = path.split("/")
    where = copy
    for key in parents:
        where = where[int(key)] if isinstance(where, list) else where[key]
    if value is REMOVE:
        del where[last]
    else:
        where[int(last) if isinstance(where, list) else last] = value
    return copy  # type: ignore[no-any-return]


REMOVE = object()
DAMAGE = {
    "a field of the wrong type": ("listing/deployments/0/index", "0"),
    "a flag that is not a boolean": ("listing/deployments/1/pinned", 1),
    "kernel arguments that are not strings": ("listing/deployments/0/kargs", [1, 2]),
    "a missing field": ("listing/deployments/0/checksum", REMOVE),
    "an unknown field": ("listing/deployments/0/colour", "blue"),
    "a deployment that is no object": ("listing/deployments/0", "deployment"),
    "fewer roots than deployments": ("listing/roots", []),
    "no listing": ("listing", REMOVE),
    "a sysroot that is no string": ("listing/sysroot", None),
}


@pytest.mark.parametrize("damage", DAMAGE, ids=list(DAMAGE))
def test_a_damaged_cache_is_not_used(sysroot: Path, damage: str) -> None:
    found = fingerprint(sysroot)
    statuscache.save(state_dir(sysroot), found, listing(sysroot))
    path = state_dir(sysroot) / statuscache.NAME
    document = json.loads(path.read_text())
    path.write_text(json.dumps(damaged(document, *DAMAGE[damage])))
    assert statuscache.load(state_dir(sysroot), found) is None


@pytest.mark.parametrize(
    "content", [b"", b"\x00\xff garbage", b"[1, 2]", b"null"], ids=["empty", "bytes", "list", "null"]
)
def test_a_cache_that_is_not_json_of_one_is_not_used(sysroot: Path, content: bytes) -> None:
    found = fingerprint(sysroot)
    statuscache.save(state_dir(sysroot), found, listing(sysroot))
    path = state_dir(sysroot) / statuscache.NAME
    path.write_bytes(content)
    assert statuscache.load(state_dir(sysroot), found) is None


def test_a_cache_cut_short_is_not_used(sysroot: Path) -> None:
    found = fingerprint(sysroot)
    statuscache.save(state_dir(sysroot), found, listing(sysroot))
    path = state_dir(sysroot) / statuscache.NAME
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])
    assert statuscache.load(state_dir(sysroot), found) is None


def test_no_cache_where_the_state_directory_cannot_be_written(sysroot: Path) -> None:
    var = sysroot / "ostree/deploy/arkes/var"
    (var / "lib/arkes").rmdir()
    (var / "lib").rmdir()
    (var / "lib").write_text("a file where a directory should be")
    statuscache.save(var / "lib/arkes", fingerprint(sysroot), listing(sysroot))  # no error: just no cache


def test_collect_uses_the_cache_only_while_the_fingerprint_matches(sysroot: Path) -> None:
    calls = []

    def from_libostree() -> status.Listing:
        calls.append(1)
        return listing(sysroot)

    first = statuscache.collect(sysroot, from_libostree)
    assert len(calls) == 1
    assert statuscache.collect(sysroot, from_libostree) == first
    assert len(calls) == 1, "the second status came from the cache"
    replace_file(origin(sysroot, NEW), "[origin]\nunlocked=hotfix\n")
    statuscache.collect(sysroot, from_libostree)
    assert len(calls) == 2, "a changed origin is read again"


def test_the_cached_status_reads_the_update_check_afresh(sysroot: Path) -> None:
    statuscache.collect(sysroot, lambda: listing(sysroot))
    report = {"checkedAt": "2026-12-01T00:00:00+00:00", "updates": [{}, {}], "errors": []}
    (state_dir(sysroot) / target.UPDATE_CHECK).write_text(json.dumps(report))

    def refused() -> status.Listing:
        raise AssertionError("libostree was asked although nothing it reads changed")

    found = statuscache.collect(sysroot, refused)
    assert found.last_update_check == status.LastCheck("2026-12-01T00:00:00+00:00", 2, 0)
    assert found == status.finish(listing(sysroot), state_dir(sysroot))


FAST_PATH = """
import sys
from arkes.__main__ import main
code = main(sys.argv[1:])
loaded = sorted(m for m in sys.modules if m == "gi" or m.startswith(("gi.", "arkes.")))
print(" ".join(loaded), file=sys.stderr)
sys.exit(code)
"""


def test_os_status_from_the_cache_loads_no_libostree(tmp_path: Path) -> None:
    # The host's own boot state: the command below runs in a process of its own.
    sysroot = sysroot_at(tmp_path / "sysroot")
    kept = listing(sysroot)
    statuscache.save(state_dir(sysroot), fingerprint(sysroot), kept)
    for extra in ([], ["--json"]):
        result = subprocess.run(
            [sys.executable, "-c", FAST_PATH, "--sysroot", str(sysroot), "status", *extra],
            capture_output=True,
            text=True,
            check=False,
        )
        assert result.returncode == 0, result.stderr
        model = status.finish(kept, state_dir(sysroot))
        assert result.stdout == (json.dumps(model.to_json(), indent=2) + "\n" if extra else model.render())
        loaded = result.stderr.split()
        assert "gi" not in loaded
        for heavy in ("ostree", "records", "build", "deploy", "tree", "podman", "run"):
            assert f"arkes.{heavy}" not in loaded
