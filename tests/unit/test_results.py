"""Every command's result from saved models: its JSON document and what people see are pure functions of it."""

from __future__ import annotations

import json
import os
import re
from pathlib import Path

import pytest

from arkes import results, status

DATA = Path(__file__).parent / "data" / "results"
C = "c" * 64
D = "d" * 64

MODELS: dict[str, results.Result] = {
    "check-invalid": results.Check(
        "Systemfile", False, ("Systemfile:2: unknown instruction FORM (did you mean FROM?)",), ()
    ),
    "check-valid": results.Check("Systemfile", True, (), ("Systemfile:1: extra FROM: the stage ...",)),
    "install": results.Installed(C, "20261203.1", True, False, path="/srv/sys"),
    "iso": results.Iso("/srv/till.iso", 486455296, C, "20261203.1", "ARKES_CCCCCCCCCC", True),
    "build": results.Built(C, "20261203.2", False, False),
    "upgrade": results.Upgraded(C, "20261203.2", True, False),
    "upgrade-download-only": results.Upgraded(C, "20261203.2", False, False, download_only=True),
    "upgrade-up-to-date": results.Upgraded(C, "20261203.1", False, True),
    "revert": results.Reverted(C, "20261203.2"),
    "rollback": results.RolledBack(D, "20261203.1", ("users and groups the new image no longer has: carol",)),
    "pin": results.Pinned(1, D, True),
    "prune": results.Pruned((D,), 1234, 5 * 1024 * 1024, ("localhost/arkes-build:ab-cd",), 800 * 1024 * 1024),
    "du": results.Usage(
        repo_bytes=900 * 1024 * 1024,
        objects_bytes=880 * 1024 * 1024,
        shared_bytes=700 * 1024 * 1024,
        other_bytes=10 * 1024 * 1024,
        deployments=(results.DeploymentUsage(0, C, 120 * 1024 * 1024, 700 * 1024 * 1024),),
        etc_bytes=2 * 1024 * 1024,
        podman_bytes=3 * 1024 * 1024 * 1024,
        prune_bytes=0,
        prune_image_bytes=512,
    ),
    "diff-packages": results.Diff(
        "packages",
        (
            results.Change("kernel", "kernel", "6.12.117+deb13-amd64", "6.12.118+deb13-amd64"),
            results.Change("changed", "arkes-hello", "1.0", "1.1"),
            results.Change("added", "tcpdump", "", "4.99.5-2"),
            results.Change("removed", "less", "668-1", ""),
        ),
    ),
    "diff-etc": results.Diff(
        "etc",
        (results.Change("modified", "/etc/motd"), results.Change("modified", "/etc/x", "file", "dir")),
    ),
    "diff-var": results.Diff("var", (results.Change("modified", "/var/lib/db/conf", "machine's copy kept"),)),
    "diff-none": results.Diff("files", ()),
    "checkupdates": results.UpdateCheck(
        "2026-12-03T04:40:00+00:00",
        C,
        (
            results.Finding("package", "less", "668-1", "668-2"),
            results.Finding("kernel", "linux-image-amd64", "6.12.117-1", "6.12.118-1"),
            results.Finding("repository", "http://deb.debian.org/debian/dists/trixie", "aaaa", "bbbb"),
        ),
        (),
    ),
    "checkupdates-none": results.UpdateCheck("2026-12-03T04:40:00+00:00", C, (), ()),
    "images": results.Images((results.Image("localhost/arkes:base", "sha256:" + "e" * 64, False),)),
    "status": status.Status("/srv/sys", ()),
    "status-shared-keys": status.Status("/", (), identity_from_image=("/etc/ssh/ssh_host_ed25519_key",)),
    "publish": results.Published("127.0.0.1:5000/fleet/system:stable", "sha256:" + "f" * 64, "20261203.2", C, "a" * 64),
    "publish-signed": results.Published(
        "127.0.0.1:5000/fleet/system:stable", "sha256:" + "f" * 64, "20261203.2", C, "a" * 64, "/root/fleet.private"
    ),
    "keygen": results.KeyPair("/root/fleet.private", "/root/fleet.pub"),
    "publish-rollout": results.Published(
        "127.0.0.1:5000/fleet/system:stable", "sha256:" + "f" * 64, "20261203.2", C, "a" * 64, "", 10
    ),
    "rollout": results.RolloutSet(
        "127.0.0.1:5000/fleet/system:stable", "sha256:" + "f" * 64, C, 50, "2026-12-07T12:00:00+00:00"
    ),
    "publish-tree": results.PublishedTree(
        "/srv/www/repo", "arkes/stable", C, "20261207.2", "b" * 64, 734003, "fleet@example.com"
    ),
    "rollout-none": results.RolloutSet("127.0.0.1:5000/fleet/system:stable", "sha256:" + "f" * 64, C, 100, ""),
    "checkupdates-held": results.UpdateCheck(
        "2026-12-07T04:40:00+00:00",
        C,
        (
            results.Finding(
                "published",
                "127.0.0.1:5000/fleet/system:stable",
                "sha256:" + "1" * 64,
                "sha256:" + "2" * 64,
                results.Wave(10, 37, False),
            ),
        ),
        (),
    ),
    "host-keys": results.HostKeys(
        (results.HostKey("/etc/ssh/ssh_host_ed25519_key.pub", "ED25519", "SHA256:2Hq0Yc8m5yYh0Xb1l0FQp6nq5R0aQ"),)
    ),
}


def golden(name: str, text: str) -> None:
    path = DATA / name
    if os.environ.get("ARKES_UPDATE_GOLDEN"):
        path.write_text(text)
    assert text == path.read_text()


@pytest.mark.parametrize("name", sorted(MODELS))
def test_json_matches_saved_output(name: str) -> None:
    golden(f"{name}.json", json.dumps(MODELS[name].to_json(), indent=2) + "\n")


@pytest.mark.parametrize("name", sorted(MODELS))
def test_human_view_matches_saved_output(name: str) -> None:
    model = MODELS[name]
    golden(f"{name}.txt", model.render() + "".join(f"stderr: {line}\n" for line in model.said()))


def keys(value: object) -> list[str]:
    if isinstance(value, dict):
        return [k for key, v in value.items() for k in [key, *keys(v)]]
    if isinstance(value, list):
        return [k for v in value for k in keys(v)]
    return []


@pytest.mark.parametrize("name", sorted(MODELS))
def test_every_document_has_version_kind_and_camel_case_keys(name: str) -> None:
    document = MODELS[name].to_json()
    assert document["apiVersion"] == "arkes/v1"
    assert document["kind"] == type(MODELS[name]).KIND
    assert [k for k in keys(document) if not re.fullmatch("[a-z][a-zA-Z0-9]*", k)] == []


def test_every_kind_is_documented() -> None:
    text = (Path(__file__).parents[2] / "docs/json.md").read_text()
    kinds = {type(model).KIND for model in MODELS.values()}
    assert [kind for kind in sorted(kinds) if f"`{kind}`" not in text] == []


def test_camel() -> None:
    assert results.camel("prune_image_bytes") == "pruneImageBytes"
    assert results.camel("systemfile_sha256") == "systemfileSha256"
    assert results.camel("index") == "index"
