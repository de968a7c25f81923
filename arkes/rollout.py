"""Waves: a published update reaches a share of the fleet first, and the publisher widens or halts it without a
rebuild.

The rollout of REGISTRY/NAME:TAG is a small record in the same repository, under the tag `TAG.rollout`: an OCI
manifest without layers whose annotations name the system it governs (its commit, which the image's
org.arkes.commit label records) and the percentage of machines that may take it. `os publish --rollout P` writes
it before it pushes the image, so that no machine sees the image without it; `os rollout REF P` changes it.
Asking for it is one manifest request, as asking for the image's digest is.

Each machine has a wave, 0 to 99, derived from its machine-id, so it stays the same across updates and reboots:
the same machines go first every time, as canaries. A machine takes the update when its wave is below the
percentage: 0 halts the rollout, 100 lets every machine take it. A record that names another system than the one
REF names now governs nothing: an update published without --rollout goes to every machine.
"""

from __future__ import annotations

import datetime
import hashlib
import json
import tempfile
from dataclasses import dataclass
from pathlib import Path

from arkes import log, run, skopeo
from arkes.errors import ArkesError, CommandError, UsageError

SUFFIX = ".rollout"
ANNOTATION = "org.arkes.rollout."
WAVES = 100
_MANIFEST = "application/vnd.oci.image.manifest.v1+json"


@dataclass(frozen=True)
class Rollout:
    """What the publisher set: the share of machines (`percent`) that may take the system `commit`, since when."""

    commit: str
    percent: int
    set_at: str

    def admits(self, wave: int) -> bool:
        return wave < self.percent


def record(ref: str) -> str:
    """Where the rollout of `ref` (REGISTRY/NAME:TAG) is kept: REGISTRY/NAME:TAG.rollout."""
    repository, _, tag = ref.rpartition(":")
    if len(tag) + len(SUFFIX) > 128:
        raise UsageError(f"the tag {tag} is too long to carry a rollout (a tag has at most 128 characters)")
    return f"{repository}:{tag}{SUFFIX}"


def wave(etc: Path) -> int:
    """This machine's wave, 0 to 99: from its machine-id, which stays the same for the machine's life. A system
    that has not booted yet has none (systemd writes it on the first boot): it is in the last wave."""
    try:
        machine_id = (etc / "machine-id").read_text().strip()
    except OSError:
        machine_id = ""
    if not machine_id or machine_id == "uninitialized":
        log.debug(f"{etc / 'machine-id'} holds no machine-id: the last wave of a rollout")
        return WAVES - 1
    return int.from_bytes(hashlib.sha256(f"arkes rollout wave {machine_id}".encode()).digest()[:8]) % WAVES


def read(ref: str) -> Rollout | None:
    """The rollout the publisher set for `ref`; None when there is none."""
    argv = [*skopeo.on_host(), "inspect", "--raw", f"docker://{record(ref)}"]
    result = run.run(argv, check=False, what=f"asking the registry for the rollout of {ref}")
    if result.returncode != 0:
        if "manifest unknown" in result.stderr:
            return None
        raise CommandError(f"asking the registry for the rollout of {ref}:\n{run.tail(result.stderr, 3)}")
    try:
        annotations = json.loads(result.stdout).get("annotations", {})
        return Rollout(
            str(annotations[f"{ANNOTATION}commit"]),
            int(annotations[f"{ANNOTATION}percent"]),
            str(annotations.get(f"{ANNOTATION}set-at", "")),
        )
    except (ValueError, KeyError, TypeError, AttributeError):
        raise ArkesError(f"{record(ref)} is not a rollout `os rollout` wrote") from None


def governing(ref: str, commit: str) -> Rollout | None:
    """The rollout that governs the system `commit` that `ref` names now; None when every machine may take it."""
    found = read(ref) if commit else None
    return found if found is not None and found.commit == commit else None


def write(ref: str, commit: str, percent: int) -> Rollout:
    """Set the rollout of the system `commit` published as `ref` to `percent` of the fleet."""
    if not 0 <= percent <= 100:
        raise UsageError(f"a rollout is a percentage of the fleet, 0 to 100, not {percent}")
    now = datetime.datetime.now(datetime.UTC).replace(microsecond=0).isoformat()
    rollout = Rollout(commit, percent, now)
    annotations = {f"{ANNOTATION}commit": commit, f"{ANNOTATION}percent": str(percent), f"{ANNOTATION}set-at": now}
    with tempfile.TemporaryDirectory(prefix="arkes-rollout-") as tmp:
        layout = Path(tmp)
        config = json.dumps({"architecture": "amd64", "os": "linux", "rootfs": {"type": "layers", "diff_ids": []}})
        config_digest = _blob(layout, config.encode())
        config_ref = {"mediaType": "application/vnd.oci.image.config.v1+json", "digest": config_digest}
        manifest = json.dumps(
            {
                "schemaVersion": 2,
                "mediaType": _MANIFEST,
                "config": config_ref | {"size": len(config)},
                "layers": [],
                "annotations": annotations,
            }
        ).encode()
        index = {"mediaType": _MANIFEST, "digest": _blob(layout, manifest), "size": len(manifest)}
        index["annotations"] = {"org.opencontainers.image.ref.name": "rollout"}
        (layout / "oci-layout").write_text(json.dumps({"imageLayoutVersion": "1.0.0"}))
        (layout / "index.json").write_text(json.dumps({"schemaVersion": 2, "manifests": [index]}))
        argv = [*skopeo.on_host(), "copy", "--preserve-digests", f"oci:{layout}:rollout", f"docker://{record(ref)}"]
        run.run(argv, what=f"writing the rollout of {ref}")
    log.debug(f"rollout of {ref}: {percent} % of the fleet may take {commit}")
    return rollout


def _blob(layout: Path, data: bytes) -> str:
    digest = hashlib.sha256(data).hexdigest()
    (layout / "blobs/sha256").mkdir(parents=True, exist_ok=True)
    (layout / "blobs/sha256" / digest).write_bytes(data)
    return f"sha256:{digest}"
