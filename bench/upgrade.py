"""Benchmark: `os` against the raw tools on the same base image, printed as ratios.

    make bench            (or: .venv/bin/python bench/upgrade.py [--runs N] [--changes N])

Measures, in one run: the no-op `os upgrade`; one-line Systemfile changes through `os upgrade` (the median of
--changes of them) against the distribution's Buildah building such a change by hand plus a raw `ostree admin
deploy`, next to what a raw
`ostree commit` of the whole tree costs (what every upgrade paid before layer-aware commits); how much the
repository grew for that change against the bytes of the layers it added (the new objects' bytes against the
layers' uncompressed tar, and both in whole blocks on disk); a rebuild with every layer cached (the
build step of `os build` against the same Buildah by hand); `os status` against `ostree admin status`, from its
cache and without it.
"""

from __future__ import annotations

import argparse
import json
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

from arkes import layers, podman, statuscache, target
from arkes.ostree import Sysroot

OS = Path(sys.executable).parent / "os"


def timed(func: Callable[[], object]) -> float:
    start = time.perf_counter()
    func()
    return time.perf_counter() - start


def sh(*argv: str) -> str:
    result = subprocess.run(argv, capture_output=True, text=True, stdin=subprocess.DEVNULL, check=False)
    if result.returncode != 0:
        raise SystemExit(f"{' '.join(argv)} failed:\n{result.stderr}")
    return result.stdout


def os_(sysroot: Path, *args: str) -> str:
    return sh(str(OS), "--sysroot", str(sysroot), *args)


def add_line(systemfile: Path, line: str) -> None:
    systemfile.write_text(systemfile.read_text().replace("RUN post_build", f"{line}\nRUN post_build"))


def raw_buildah(context: Path, systemfile: Path, tag: str) -> float:
    """The distribution's Buildah run by hand in a container of the base image over this host's storage: the
    builder `os` uses, without `os`."""
    argv = ["podman", "run", "--rm", "--privileged", "--runtime=runc", "--network=host", "--pull=never"]
    argv += ["--ulimit", "nofile=20000:20000", "--ulimit", "nproc=4096:4096"]
    argv += ["-v", "/var/lib/containers/storage:/var/lib/containers/storage"]
    argv += ["-v", "/run/containers/storage:/run/containers/storage"]
    argv += ["-v", f"{context}:/ctx:ro", "-v", f"{systemfile}:/Systemfile:ro", "localhost/arkes:base"]
    argv += ["buildah", "build", "--isolation=chroot", "--layers", "--force-rm", "--pull=never", "-q"]
    argv += ["--ulimit", "nofile=20000:20000", "--ulimit", "nproc=4096:4096", "-f", "/Systemfile", "-t", tag, "/ctx"]
    return timed(lambda: sh(*argv))


def raw_build_and_commit(context: Path, systemfile: Path, repo: Path) -> tuple[float, float]:
    """The builder's build of the Systemfile, then `ostree commit` of the image's tree into the same repository."""
    tag = "localhost/arkes-bench:raw"
    build = raw_buildah(context, systemfile, tag)
    container = sh("podman", "create", tag, "/bin/true").strip()
    try:
        mount = sh("podman", "mount", container).strip()
        # OSTree stores no device nodes; the bootstrap leaves a few in /dev (os's rewrite empties it too).
        for node in Path(mount, "dev").iterdir():
            node.unlink() if not node.is_dir() or node.is_symlink() else shutil.rmtree(node)
        commit = timed(lambda: sh("ostree", "commit", f"--repo={repo}", "--branch=bench/raw", f"--tree=dir={mount}"))
    finally:
        sh("podman", "umount", container)
        sh("podman", "rm", container)
        sh("ostree", "refs", f"--repo={repo}", "--delete", "bench/raw")
        sh("podman", "rmi", tag)
    return build, commit


def raw_deploy(sysroot: Path, commit: str) -> float:
    """`ostree admin deploy` of a commit the repository has, then that deployment removed again."""
    seconds = timed(lambda: sh("ostree", "admin", "deploy", f"--sysroot={sysroot}", "--os=arkes", "--retain", commit))
    sh("ostree", "admin", "undeploy", f"--sysroot={sysroot}", "0")
    return seconds


def default_systemfile(sysroot: Path, deployment: dict[str, object]) -> Path:
    """The Systemfile in the /etc of a deployment (as `os status --json` lists it), which `os upgrade` reads."""
    name = f"{deployment['checksum']}.{deployment['serial']}"
    return sysroot / "ostree/deploy/arkes/deploy" / name / "etc/system/Systemfile"


def objects_bytes(repo: Path) -> int:
    """What the repository's objects take on disk (whole blocks)."""
    return int(sh("du", "-sB1", str(repo / "objects")).split()[0])


def object_sizes(repo: Path) -> dict[str, int]:
    """Each object file of the repository and its size in bytes."""
    found = {}
    for path in (repo / "objects").rglob("*"):
        if path.is_file():
            found[str(path)] = path.stat().st_size
    return found


def layer_tar_bytes(digests: list[str]) -> int:
    """Bytes of image layers as the image format counts them: the size of each layer's uncompressed tar, as the
    container storage recorded it when it made the layer."""
    storage = Path(sh("podman", "info", "--format", "{{.Store.GraphRoot}}").strip())
    recorded = json.loads((storage / "overlay-layers/layers.json").read_text())
    sizes = {layer.get("diff-digest"): int(layer.get("diff-size", 0)) for layer in recorded}
    return sum(sizes.get(digest, 0) for digest in set(digests))


def layer_bytes(digests: list[str]) -> int:
    """Bytes of image layers as container storage holds them (what a change added to the image)."""
    found = 0
    for image in podman.list_images("localhost/arkes-build"):
        for layer in layers.of_image(str(image["Id"])) or []:
            if layer.digest in digests:
                found += int(sh("du", "-sB1", str(layer.diff)).split()[0])
                digests = [d for d in digests if d != layer.digest]
    return found


def uncached_status(sysroot: Path, cache: Path) -> float:
    """Seconds of an `os status` that finds no cache (it reads libostree, and leaves a cache again)."""
    cache.unlink(missing_ok=True)
    return timed(lambda: os_(sysroot, "status"))


def build_step(sysroot: Path) -> float:
    """Seconds of the `build` step of `os build`, as its progress line reports them."""
    result = subprocess.run([str(OS), "--sysroot", str(sysroot), "build"], capture_output=True, text=True, check=True)
    (line,) = [line for line in result.stderr.splitlines() if line.startswith("build: done (")]
    return float(line.removeprefix("build: done (").rstrip("s)"))


def commit_layers(sysroot: Path, checksum: str) -> list[str]:
    return list(Sysroot.open(sysroot).commit(checksum).metadata.layers)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--runs", type=int, default=5, help="repetitions of the fast measurements")
    parser.add_argument("--changes", type=int, default=3, help="one-line changes measured on each side")
    args = parser.parse_args()
    tmp = tempfile.mkdtemp(prefix="arkes-bench-")
    try:
        sysroot = Path(tmp) / "sysroot"
        print("installing the default system ...", file=sys.stderr)
        os_(sysroot, "install")
        status = json.loads(os_(sysroot, "status", "--json"))["deployments"][0]
        systemfile = default_systemfile(sysroot, status)

        noop = statistics.median(timed(lambda: os_(sysroot, "upgrade")) for _ in range(args.runs))

        stamp = time.time_ns()
        # The raw tools build a change of their own (so Podman's layer cache cannot answer it) on a copy.
        raw_dir = Path(tmp) / "raw"
        raw_dir.mkdir()
        raw_file = raw_dir / "Systemfile"
        raw_file.write_text(systemfile.read_text())
        add_line(raw_file, f"RUN echo raw-{stamp} > /usr/share/bench-change")
        raw_build, raw_commit = raw_build_and_commit(raw_dir, raw_file, sysroot / "ostree/repo")

        deployed = status["checksum"]
        raw_deploy_s = raw_deploy(sysroot, deployed)
        old_layers = commit_layers(sysroot, deployed)
        before = objects_bytes(sysroot / "ostree/repo")
        sizes_before = object_sizes(sysroot / "ostree/repo")
        add_line(systemfile, f"RUN echo os-{stamp} > /usr/share/bench-change")
        change = timed(lambda: os_(sysroot, "upgrade"))
        grown = objects_bytes(sysroot / "ostree/repo") - before
        new_objects = {p: size for p, size in object_sizes(sysroot / "ostree/repo").items() if p not in sizes_before}
        grown_bytes = sum(new_objects.values())
        kinds: dict[str, list[int]] = {}
        for path, size in new_objects.items():
            kinds.setdefault(path.rpartition(".")[2], []).append(size)
        new = json.loads(os_(sysroot, "status", "--json"))["deployments"][0]["checksum"]
        new_layers = [d for d in commit_layers(sysroot, new) if d not in old_layers]
        added = layer_bytes(new_layers)
        added_bytes = layer_tar_bytes(new_layers)

        # More one-line changes, each side its own, for a median: a single run varies by tenths of a second.
        changes, raws = [change], [raw_build + raw_deploy_s]
        for i in range(1, args.changes):
            add_line(raw_file, f"RUN echo raw-{stamp}-{i} > /usr/share/bench-change-{i}")
            built = raw_buildah(raw_dir, raw_file, "localhost/arkes-bench:raw")
            sh("podman", "rmi", "localhost/arkes-bench:raw")
            current = json.loads(os_(sysroot, "status", "--json"))["deployments"][0]
            raws.append(built + raw_deploy(sysroot, current["checksum"]))
            add_line(default_systemfile(sysroot, current), f"RUN echo os-{stamp}-{i} > /usr/share/bench-change-{i}")
            changes.append(timed(lambda: os_(sysroot, "upgrade")))
        systemfile = default_systemfile(sysroot, json.loads(os_(sysroot, "status", "--json"))["deployments"][0])

        # Every layer cached: the build step of `os build` against the same build by hand with the builder.
        cached_raw = statistics.median(
            raw_buildah(systemfile.parent, systemfile, "localhost/arkes-bench:cached") for _ in range(args.runs)
        )
        sh("podman", "rmi", "localhost/arkes-bench:cached")
        cached_os = statistics.median(build_step(sysroot) for _ in range(args.runs))

        status_os = statistics.median(timed(lambda: os_(sysroot, "status")) for _ in range(args.runs))
        cache = target.var_dir(sysroot) / target.STATE_DIR / statuscache.NAME
        status_uncached = statistics.median(uncached_status(sysroot, cache) for _ in range(args.runs))
        status_raw = statistics.median(
            timed(lambda: sh("ostree", "admin", "status", f"--sysroot={sysroot}")) for _ in range(args.runs)
        )
    finally:
        # OSTree makes each deployment's root immutable; lift that so the scratch sysroot can go.
        for deployment_dir in Path(tmp).glob("sysroot/ostree/deploy/*/deploy/*"):
            subprocess.run(["chattr", "-i", str(deployment_dir)], check=False)
        shutil.rmtree(tmp)

    raw = statistics.median(raws)
    print(f"no-op os upgrade:            {noop:7.3f} s")
    print(f"one-line change, os upgrade: {statistics.median(changes):7.3f} s  (median of {len(changes)} changes)")
    print(
        f"  podman build + ostree admin deploy: {raw:7.3f} s  (median; the first {raw_build:.3f} + {raw_deploy_s:.3f})"
    )
    print(f"  ratio os/raw:                       {statistics.median(changes) / raw:7.2f}")
    print(
        "  each change, os and raw:            "
        + ", ".join(f"{a:.2f}/{b:.2f}" for a, b in zip(changes, raws, strict=True))
    )
    print(f"  a full ostree commit of the tree:   {raw_commit:7.3f} s  (what each upgrade paid before layers)")
    print(f"repository growth for it:    {grown_bytes / 1024:7.1f} KiB  (its new objects' bytes)")
    print(f"  the layers it added:          {added_bytes / 1024:7.1f} KiB  (their tar's bytes)")
    print(f"  ratio growth/added:           {grown_bytes / max(added_bytes, 1):7.2f}")
    for kind, sizes in sorted(kinds.items()):
        print(
            f"    {kind + ' objects:':20} {len(sizes):3} of {sum(sizes) / 1024:6.1f} KiB  (largest {max(sizes)} bytes)"
        )
    print(f"  on disk, in whole blocks:     {grown / 1024:7.1f} KiB  against {added / 1024:.1f} KiB of layers")
    print(f"cached rebuild, os build's build step: {cached_os:7.3f} s")
    print(f"  the builder by hand:                 {cached_raw:7.3f} s")
    print(f"  ratio os/raw:                        {cached_os / cached_raw:7.2f}")
    print(f"os status:                   {status_os:7.3f} s")
    print(f"  ostree admin status:          {status_raw:7.3f} s")
    print(f"  ratio os/raw:                 {status_os / status_raw:7.2f}")
    print(f"  os status without its cache:  {status_uncached:7.3f} s  (libostree through PyGObject)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
