"""Layer-aware commits with the real builder and OSTree: each image layer is committed once, by digest; the system
commit made from the layers' commits is the full commit of the same image, file for file, whiteouts and opaque
directories included; an upgrade after a one-line change imports only the layers that changed; prune drops the
layers no kept deployment is made of, and `os du` counts them."""

from __future__ import annotations

import json
import re
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from arkes import podman, tree
from arkes.ostree import Sysroot
from tests.integration.conftest import System, build_tags, installed, own_copy

pytestmark = pytest.mark.integration

# Files removed (whiteouts) in /usr and /etc, a directory removed whole, and one made again in the same step:
# overlayfs marks that one opaque, and none of what the earlier layer had in it may come back.
SYSTEMFILE = """
    FROM localhost/arkes:base
    RUN mkdir -p /opt/app/old && echo a > /opt/app/old/file && echo b > /usr/share/arkes-gone \\
     && echo c > /etc/arkes-gone && mkdir -p /usr/share/arkes-dir/sub && echo d > /usr/share/arkes-dir/sub/f
    RUN rm -rf /opt/app /usr/share/arkes-dir/sub /usr/share/arkes-gone /etc/arkes-gone /usr/share/doc/bash \\
     && mkdir -p /opt/app && echo new > /opt/app/new
    RUN post_build
"""


@pytest.fixture(scope="module")
def installed_once(tmp_path_factory: pytest.TempPathFactory, base_image: str) -> System:
    return installed(tmp_path_factory, "layers", SYSTEMFILE)


@pytest.fixture
def system(installed_once: System, tmp_path: Path) -> Iterator[System]:
    yield from own_copy(installed_once, tmp_path)


def listing(system: System, rev: str) -> list[str]:
    out = subprocess.run(
        ["ostree", "ls", f"--repo={system.repo}", "-R", "-C", rev, "/"], capture_output=True, text=True, check=True
    )
    return out.stdout.splitlines()


def layer_refs(system: System) -> dict[str, str]:
    out = subprocess.run(["ostree", "refs", f"--repo={system.repo}"], capture_output=True, text=True, check=True)
    names = sorted(r for r in out.stdout.split() if r.startswith("arkes/layers/"))
    parsed = subprocess.run(
        ["ostree", "rev-parse", f"--repo={system.repo}", *names], capture_output=True, text=True, check=True
    )
    return dict(zip(names, parsed.stdout.split(), strict=True))


def test_the_commit_of_the_layers_is_the_full_commit_of_the_image(system: System) -> None:
    deployed = system.status()[0]["checksum"]
    # The same build image, committed whole the way it was before layers: mounted, rewritten, every file read.
    (tag,) = build_tags(system)
    sysroot = Sysroot.open(system.path)
    with podman.mounted_container(tag) as root:
        tree.rewrite(root)
        full = sysroot.write_commit(
            root, subject="full", metadata=sysroot.commit(deployed).metadata, ref="test/full-commit"
        )
    assert listing(system, full) == listing(system, deployed), "the same tree, file for file"

    paths = {line.split()[-1] for line in listing(system, deployed)}
    assert "/usr/share/factory/var/opt/app/new" in paths
    assert not {"/usr/share/factory/var/opt/app/old/file", "/usr/share/arkes-gone", "/usr/etc/arkes-gone"} & paths
    assert "/usr/share/arkes-dir" in paths and "/usr/share/arkes-dir/sub" not in paths
    assert not any(p.startswith("/usr/share/doc/bash/") for p in paths)
    assert not any("/.wh." in p for p in paths), "no whiteout reaches a system tree"

    # The layer that removed them holds them as OCI does: whiteouts, and the opaque marker.
    refs = layer_refs(system)
    marks = [
        {line.split()[-1] for line in listing(system, refs["arkes/layers/" + digest.removeprefix("sha256:")])}
        for digest in sysroot.commit(deployed).metadata.layers
    ]
    (removing,) = [m for m in marks if "/opt/app/.wh..wh..opq" in m]
    assert {"/usr/share/.wh.arkes-gone", "/etc/.wh.arkes-gone", "/usr/share/doc/.wh.bash"} <= removing
    system.fsck()


def test_an_upgrade_reads_only_the_layers_that_changed(system: System) -> None:
    before = layer_refs(system)
    old_layers = Sysroot.open(system.path).commit(system.status()[0]["checksum"]).metadata.layers
    system.add_line("RUN echo one line > /usr/share/arkes-one-line")
    said = system.os("upgrade").stderr
    new_layers = Sysroot.open(system.path).commit(system.status()[0]["checksum"]).metadata.layers
    changed = [d for d in new_layers if d not in old_layers]
    (counted,) = re.findall(r"layers: (\d+), (\d+) imported, (\d+) already committed", said)
    assert counted == (str(len(new_layers)), str(len(changed)), str(len(new_layers) - len(changed)))
    assert 0 < len(changed) < len(new_layers) // 2, "most layers are reused"
    after = layer_refs(system)
    assert {r: c for r, c in after.items() if r in before} == before, "no layer is committed again"
    assert len(after) == len(before) + len(changed)
    assert "/usr/share/arkes-one-line" in {line.split()[-1] for line in listing(system, system.status()[0]["checksum"])}

    # Nothing changed: nothing is imported, nothing built.
    assert "up to date" in system.os("upgrade").stderr
    system.fsck()


def test_prune_drops_the_layers_no_kept_deployment_is_made_of(system: System) -> None:
    old_layers = set(Sysroot.open(system.path).commit(system.status()[0]["checksum"]).metadata.layers)
    system.add_line("RUN echo pruned > /usr/share/arkes-pruned")
    system.os("upgrade")
    new_layers = set(Sysroot.open(system.path).commit(system.status()[0]["checksum"]).metadata.layers)
    usage = json.loads(system.os("du", "--json").stdout)
    assert usage["layers"] == len(layer_refs(system)) == len(old_layers | new_layers)

    pruned = json.loads(system.os("prune", "--keep", "1", "--json").stdout)
    assert pruned["removedLayers"] == len(old_layers - new_layers) > 0
    remaining = {"sha256:" + r.removeprefix("arkes/layers/") for r in layer_refs(system)}
    assert remaining == new_layers
    assert json.loads(system.os("du", "--json").stdout)["layers"] == len(new_layers)
    system.fsck()
