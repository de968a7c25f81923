"""Status rendering from saved models: JSON and the human view are pure functions of the model."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import pytest

from arkes import status, trust

DATA = Path(__file__).parent / "data"


def deployment(index: int, **overrides: object) -> status.Deployment:
    fields: dict[str, object] = {
        "index": index,
        "checksum": f"{index}" * 64,
        "stateroot": "arkes",
        "serial": 0,
        "version": f"20261129.{2 - index}",
        "timestamp": f"2026-11-29T0{4 - index}:00:00+00:00",
        "input_hash": f"{'ab' if index else 'cd'}" * 32,
        "base_image": "localhost/arkes:base",
        "base_digest": "sha256:" + "e" * 64,
        "systemfile_sha256": "f" * 64,
        "packages": 312,
        "kernel": "6.12.118+deb13-amd64",
        "kargs": ("console=tty0", "console=ttyS0,115200"),
        "booted": False,
        "default": index == 0,
        "rollback": index == 1,
        "staged": False,
        "pinned": False,
        "unlocked": "none",
    }
    fields.update(overrides)
    return status.Deployment(**fields)  # type: ignore[arg-type]


MODEL = status.Status(
    "/srv/sysroot",
    (
        deployment(
            0,
            source="registry.example.com/fleet/system@sha256:" + "9" * 64,
            boot=status.Boot("trial", tries_left=2),
            verification=trust.Verification(
                "registry.example.com/fleet",
                (trust.Requirement("sigstoreSigned", ("/etc/pki/containers/fleet.pub",)),),
            ),
        ),
        deployment(
            1,
            booted=True,
            pinned=True,
            unlocked="hotfix",
            boot=status.Boot(
                "failed",
                "2026-11-29T05:00:00+00:00",
                "health check 50-web failed (exit 7)",
                ("curl: (7) Failed to connect to 127.0.0.1 port 80",),
            ),
        ),
    ),
    last_health_check=status.LastHealth("2026-11-29T05:01:00+00:00", True, "1" * 64),
    upgrade_in_progress=status.InProgress(4242, "2026-11-29T05:02:00+00:00", "upgrading the system (os upgrade)"),
)


def golden(name: str, text: str) -> None:
    path = DATA / name
    if os.environ.get("ARKES_UPDATE_GOLDEN"):
        path.write_text(text)
    assert text == path.read_text()


def test_human_rendering_matches_saved_output() -> None:
    golden("status.txt", status.render(MODEL))


def test_json_matches_saved_output() -> None:
    golden("status.json", json.dumps(status.to_json(MODEL), indent=2) + "\n")


def test_json_schema_fields() -> None:
    data: Any = status.to_json(MODEL)
    assert data["apiVersion"] == "arkes/v1" and data["kind"] == "Status"
    first = data["deployments"][0]
    for key in (
        "index",
        "checksum",
        "serial",
        "version",
        "timestamp",
        "inputHash",
        "baseImage",
        "baseDigest",
        "booted",
        "default",
        "rollback",
        "pinned",
        "unlocked",
    ):
        assert key in first
    assert [d["booted"] for d in data["deployments"]] == [False, True]


def test_empty_status() -> None:
    assert "No deployments" in status.render(status.Status("/x", ()))


@pytest.mark.parametrize("flag", ["booted", "pinned", "staged"])
def test_flags_are_shown(flag: str) -> None:
    text = status.render(status.Status("/x", (deployment(0, **{flag: True}),)))
    assert flag in text.splitlines()[0]


def test_a_staged_deployment_is_verified_as_the_running_etc_says(tmp_path: Path) -> None:
    """Staged on a running system, a deployment's /etc holds the image's defaults until shutdown merges the running
    /etc into it: what the machine requires is what the running /etc says."""
    defaults = {"default": [{"type": "insecureAcceptAnything"}]}
    required = {
        "default": [{"type": "insecureAcceptAnything"}],
        "transports": {"docker": {"registry.example.com/fleet/system": [{"type": "sigstoreSigned", "keyPath": "/k"}]}},
    }
    staged_root, machine = tmp_path / "staged", tmp_path / "etc"
    for etc, policy in ((staged_root / "etc", defaults), (machine, required)):
        (etc / "containers").mkdir(parents=True)
        (etc / "containers/policy.json").write_text(json.dumps(policy))
    source = "registry.example.com/fleet/system@sha256:" + "9" * 64
    staged = status._verified(deployment(0, source=source, staged=True), staged_root, machine, tmp_path)
    assert staged.verification is not None and staged.verification.requirements[0].type == "sigstoreSigned"
    booted = status._verified(deployment(0, source=source, booted=True), staged_root, machine, tmp_path)
    assert booted.verification is not None and booted.verification.requirements[0].type == "insecureAcceptAnything"
