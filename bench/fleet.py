"""Benchmark: what a machine that follows a published system downloads for a one-line change.

    make bench            (after bench/upgrade.py; or: .venv/bin/python bench/fleet.py [--change-bytes N])

A publisher installs a system and publishes it to Debian's docker-registry on 127.0.0.1. Another machine, with a
container storage of its own as another machine has (it holds the distribution's images and nothing else),
switches to it. The publisher adds one line to its Systemfile, upgrades and publishes; the machine upgrades. The
registry's access log counts every byte the machine downloaded for that update, against the compressed size of
the layers the change made (and against those plus the new manifest and configuration, which every update
carries). The line writes --change-bytes of random data, so that the layer has a size worth measuring.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from tests.integration.registry import running_registry

OS = Path(sys.executable).parent / "os"
SYSTEMFILE = """FROM localhost/arkes:base
RUN echo published > /usr/share/arkes-published
RUN post_build
"""


def sh(*argv: str, env: dict[str, str] | None = None) -> str:
    result = subprocess.run(argv, capture_output=True, text=True, stdin=subprocess.DEVNULL, env=env, check=False)
    if result.returncode != 0:
        raise SystemExit(f"{' '.join(argv)} failed:\n{result.stderr}")
    return result.stdout


def os_(sysroot: Path, *args: str, env: dict[str, str] | None = None) -> str:
    return sh(str(OS), "--sysroot", str(sysroot), *args, env=env)


def manifest(ref: str, env: dict[str, str]) -> tuple[dict[str, object], int]:
    raw = sh("skopeo", "--registries-conf", env["CONTAINERS_REGISTRIES_CONF"], "inspect", "--raw", f"docker://{ref}")
    return json.loads(raw), len(raw.encode())


def own_storage(root: Path) -> dict[str, str]:
    """An environment whose Podman (and `os`) use a container storage of their own, holding a copy of the
    distribution's images: what another machine's storage holds before it follows anything."""
    graphroot, runroot = root / "storage", Path(f"/run/arkes-bench-fleet-{os.getpid()}")
    conf = root / "storage.conf"
    conf.write_text(f'[storage]\ndriver = "overlay"\ngraphroot = "{graphroot}"\nrunroot = "{runroot}"\n')
    for image in ("localhost/arkes:rootfs", "localhost/arkes:base"):
        sh(
            "skopeo",
            "copy",
            "-q",
            "--remove-signatures",
            f"containers-storage:{image}",
            f"containers-storage:[overlay@{graphroot}+{runroot}]{image}",
        )
    return {**os.environ, "CONTAINERS_STORAGE_CONF": str(conf)}


def remove_storage(root: Path, env: dict[str, str]) -> None:
    subprocess.run(["podman", "rmi", "-a", "-f"], env=env, capture_output=True, check=False)
    mounts = sh("findmnt", "-rn", "-o", "TARGET").splitlines()
    for mount in sorted((m for m in mounts if m.startswith(str(root))), key=len, reverse=True):
        subprocess.run(["umount", "-l", mount], check=False)
    runroot = Path(f"/run/arkes-bench-fleet-{os.getpid()}")
    shutil.rmtree(runroot, ignore_errors=True)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--change-bytes", type=int, default=1 << 20, help="random bytes the one line writes")
    args = parser.parse_args()
    tmp = Path(tempfile.mkdtemp(prefix="arkes-bench-fleet-", dir="/var/tmp"))
    client_env: dict[str, str] = {}
    try:
        with running_registry(tmp / "registry") as registry:
            env = {**os.environ, "CONTAINERS_REGISTRIES_CONF": str(registry.registries_conf)}
            ref = f"{registry.host}/fleet/system:stable"
            print("installing the publisher's system ...", file=sys.stderr)
            publisher = tmp / "publisher"
            (tmp / "source").mkdir()
            (tmp / "source/Systemfile").write_text(SYSTEMFILE)
            os_(publisher, "install", "--systemfile", str(tmp / "source/Systemfile"), env=env)
            first = json.loads(os_(publisher, "publish", ref, "--json", env=env))
            archive = tmp / "archive"
            os_(publisher, "publish", "--ostree", str(archive), env=env)

            print("giving the follower a container storage of its own ...", file=sys.stderr)
            client_env = own_storage(tmp) | {"CONTAINERS_REGISTRIES_CONF": str(registry.registries_conf)}
            follower = tmp / "follower"
            sh("cp", "-a", "--reflink=auto", str(publisher), str(follower))
            start = registry.mark()
            switched_at = time.perf_counter()
            os_(follower, "switch", ref, env=client_env)
            switch_s = time.perf_counter() - switched_at
            switch = registry.sent(start)

            print("one line changed and published ...", file=sys.stderr)
            deployed = json.loads(os_(publisher, "status", "--json", env=env))["deployments"][0]
            name = f"{deployed['checksum']}.{deployed['serial']}"
            systemfile = publisher / "ostree/deploy/arkes/deploy" / name / "etc/system/Systemfile"
            line = f"RUN head -c {args.change_bytes} /dev/urandom > /usr/share/bench-fleet-change"
            systemfile.write_text(systemfile.read_text().replace("RUN post_build", f"{line}\nRUN post_build"))
            os_(publisher, "upgrade", env=env)
            old, _ = manifest(f"{ref.rpartition(':')[0]}@{first['digest']}", env)
            second = json.loads(os_(publisher, "publish", ref, "--json", env=env))
            tree = json.loads(os_(publisher, "publish", "--ostree", str(archive), "--json", env=env))
            new, manifest_bytes = manifest(ref, env)
            old_layers = {layer["digest"] for layer in old["layers"]}  # type: ignore[attr-defined]
            changed = [layer for layer in new["layers"] if layer["digest"] not in old_layers]  # type: ignore[attr-defined]
            changed_bytes = sum(int(layer["size"]) for layer in changed)
            config_bytes = int(new["config"]["size"])  # type: ignore[index]

            start = registry.mark()
            upgraded_at = time.perf_counter()
            os_(follower, "upgrade", env=client_env)
            upgrade_s = time.perf_counter() - upgraded_at
            got = registry.sent(start)
            taken = json.loads(os_(follower, "status", "--json", env=env))["deployments"][0]
            assert taken["source"].endswith(second["digest"]), taken
            total = got["blobs"] + got["manifests"] + got["other"]

        print()
        print(f"follower's switch: {switch['blobs'] / 2**20:.1f} MiB of blobs in {switch_s:.1f} s (its first pull)")
        print(f"one-line change ({args.change_bytes} random bytes), `os upgrade` on the follower: {upgrade_s:.1f} s")
        print(f"  changed layers       {changed_bytes:>10} B  ({len(changed)} of {len(new['layers'])} layers)")  # type: ignore[arg-type]
        print(f"  new configuration    {config_bytes:>10} B")
        print(f"  new manifest         {manifest_bytes:>10} B")
        parts = f"blobs {got['blobs']}, manifests {got['manifests']}, other {got['other']}"
        print(f"  downloaded           {total:>10} B  in {got['requests']} requests: {parts}")
        print(f"  downloaded / changed layers: {total / changed_bytes:.3f}  (goal <= 1.05)")
        carried = changed_bytes + config_bytes + manifest_bytes
        print(f"  downloaded / (changed layers + configuration + manifest): {total / carried:.3f}")
        delta = tree["deltaBytes"]
        print(f"the same change as an OSTree static delta (os publish --ostree): {delta} B")
        print(f"  static delta / changed layers: {delta / changed_bytes:.3f}")
        return 0
    finally:
        if client_env:
            remove_storage(tmp, client_env)
        # OSTree makes each deployment's root immutable; lift that so the scratch sysroots can go.
        for deployment_dir in tmp.glob("*/ostree/deploy/*/deploy/*"):
            subprocess.run(["chattr", "-i", str(deployment_dir)], check=False)
        shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
