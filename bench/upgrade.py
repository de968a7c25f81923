"""Benchmark: `os` against the raw tools on the same base image, printed as ratios.

    make bench            (or: .venv/bin/python bench/upgrade.py [--runs N])

Measures, in one run: the no-op `os upgrade`; a one-line Systemfile change through `os upgrade` against Podman's
build of such a change plus a raw `ostree commit` of the same tree; `os status` against `ostree admin status`.
"""

from __future__ import annotations

import argparse
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

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


def raw_build_and_commit(context: Path, systemfile: Path, repo: Path) -> tuple[float, float]:
    """Podman's build of the Systemfile, then `ostree commit` of the image's tree into the same repository."""
    tag = "localhost/arkes-bench:raw"
    build = timed(
        lambda: sh("podman", "build", "--isolation=chroot", "-q", "-f", str(systemfile), "-t", tag, str(context))
    )
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


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--runs", type=int, default=5, help="repetitions of the fast measurements")
    args = parser.parse_args()
    tmp = tempfile.mkdtemp(prefix="arkes-bench-")
    try:
        sysroot = Path(tmp) / "sysroot"
        print("installing the default system ...", file=sys.stderr)
        os_(sysroot, "install")
        status = __import__("json").loads(os_(sysroot, "status", "--json"))["deployments"][0]
        deployment = sysroot / "ostree/deploy/arkes/deploy" / f"{status['checksum']}.{status['serial']}"
        systemfile = deployment / "etc/system/Systemfile"

        noop = statistics.median(timed(lambda: os_(sysroot, "upgrade")) for _ in range(args.runs))

        stamp = time.time_ns()
        # The raw tools build a change of their own (so Podman's layer cache cannot answer it) on a copy.
        raw_dir = Path(tmp) / "raw"
        raw_dir.mkdir()
        raw_file = raw_dir / "Systemfile"
        raw_file.write_text(systemfile.read_text())
        add_line(raw_file, f"RUN echo raw-{stamp} > /usr/share/bench-change")
        raw_build, raw_commit = raw_build_and_commit(raw_dir, raw_file, sysroot / "ostree/repo")

        add_line(systemfile, f"RUN echo os-{stamp} > /usr/share/bench-change")
        change = timed(lambda: os_(sysroot, "upgrade"))

        status_os = statistics.median(timed(lambda: os_(sysroot, "status")) for _ in range(args.runs))
        status_raw = statistics.median(
            timed(lambda: sh("ostree", "admin", "status", f"--sysroot={sysroot}")) for _ in range(args.runs)
        )
    finally:
        # OSTree makes each deployment's root immutable; lift that so the scratch sysroot can go.
        for deployment_dir in Path(tmp).glob("sysroot/ostree/deploy/*/deploy/*"):
            subprocess.run(["chattr", "-i", str(deployment_dir)], check=False)
        shutil.rmtree(tmp)

    raw = raw_build + raw_commit
    print(f"no-op os upgrade:            {noop:7.3f} s")
    print(f"one-line change, os upgrade: {change:7.3f} s")
    print(f"  podman build + ostree commit: {raw:7.3f} s  ({raw_build:.3f} + {raw_commit:.3f})")
    print(f"  ratio os/raw:                 {change / raw:7.2f}")
    print(f"os status:                   {status_os:7.3f} s")
    print(f"  ostree admin status:          {status_raw:7.3f} s")
    print(f"  ratio os/raw:                 {status_os / status_raw:7.2f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
