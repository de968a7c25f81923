"""Benchmark of the vm path: one-line upgrades inside a booted guest (QEMU; TCG where no usable KVM).

    make bench-vm            (or: .venv/bin/python bench/vm.py)

Installs the default system to a disk image with `os install --disk`, boots it, and inside the guest changes its
Systemfile by one line and runs `os upgrade`, twice: the first upgrade after installing (which finds every other
step in the build cache the disk was installed with) and a second one. For each it prints the whole upgrade and
the seconds of every step `os upgrade` reports (build, layers, checkout, check, commit, deploy), then a raw
`ostree admin deploy` of the same commit in the same guest for comparison with the deploy step.
"""

from __future__ import annotations

import argparse
import json
import re
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

OS = Path(sys.executable).parent / "os"

# Run in the guest: each upgrade's wall time and its log; then a raw deploy of the new commit, undone again.
GUEST = r"""
set -e
upgrade() {
    sed -i "s|^RUN post_build|RUN echo $1 > /usr/share/bench-$1\nRUN post_build|" /etc/system/Systemfile
    start=$(date +%s.%N)
    os upgrade > /run/bench-$1.log 2>&1 || { cat /run/bench-$1.log >&2; exit 1; }
    end=$(date +%s.%N)
    echo "UPGRADE $1 $(python3 -c "print($end - $start)")"
    sed 's/^/LOG /' /run/bench-$1.log
}
upgrade first
upgrade second
commit=$(os status --json | python3 -c 'import json,sys; print(json.load(sys.stdin)["deployments"][0]["checksum"])')
start=$(date +%s.%N)
ostree admin deploy --retain --stage "$commit" > /dev/null
end=$(date +%s.%N)
echo "RAWDEPLOY $(python3 -c "print($end - $start)")"
ostree admin undeploy 0 > /dev/null
"""

STEP = re.compile(r"^([a-z-]+): done \(([0-9.]+)s\)$")


def sh(*argv: str) -> subprocess.CompletedProcess[str]:
    result = subprocess.run(argv, capture_output=True, text=True, stdin=subprocess.DEVNULL, check=False)
    if result.returncode != 0:
        raise SystemExit(f"{' '.join(argv)} failed:\n{result.stdout}\n{result.stderr}")
    return result


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--keep", action="store_true", help="keep the disk image and its console log")
    args = parser.parse_args()
    work = Path(tempfile.mkdtemp(prefix="arkes-bench-vm-"))
    try:
        disk = work / "bench.img"
        print("installing the default system to a disk image ...", file=sys.stderr)
        start = time.monotonic()
        sh(str(OS), "install", "--disk", str(disk), "--no-root-password")
        install = time.monotonic() - start
        print("booting it and upgrading inside it ...", file=sys.stderr)
        start = time.monotonic()
        argv = [str(OS), "vm", str(disk), "--timeout", "900", "--console-log", str(work / "console.log")]
        result = sh(*argv, "--exec", GUEST)
        guest = time.monotonic() - start
        boot = re.search(r"reached multi-user in ([0-9.]+)s", result.stderr)
    finally:
        if not args.keep:
            shutil.rmtree(work, ignore_errors=True)
        else:
            print(f"kept {work}", file=sys.stderr)

    upgrades: dict[str, float] = {}
    steps: dict[str, dict[str, float]] = {}
    raw_deploy = 0.0
    for line in result.stdout.splitlines():
        if line.startswith("UPGRADE "):
            _, name, took = line.split()
            upgrades[name] = float(took)
            steps[name] = {}
        elif line.startswith("LOG ") and steps:
            if found := STEP.match(line.removeprefix("LOG ")):
                steps[list(steps)[-1]][found[1]] = float(found[2])
        elif line.startswith("RAWDEPLOY "):
            raw_deploy = float(line.split()[1])
    print(f"install to a disk image (host):      {install:7.1f} s")
    print(f"boot to multi-user (guest):          {float(boot[1]) if boot else 0.0:7.1f} s")
    for name, seconds in upgrades.items():
        print(f"{name} one-line os upgrade (guest):  {seconds:7.1f} s")
        print("  " + ", ".join(f"{step} {s:.1f}s" for step, s in steps[name].items()))
    deploy = steps.get("second", {}).get("deploy", 0.0)
    print(f"  deploy step of the second:          {deploy:7.1f} s")
    print(f"  ostree admin deploy --stage (raw):  {raw_deploy:7.1f} s")
    print(f"  ratio os/raw:                       {deploy / max(raw_deploy, 0.001):7.2f}")
    print(f"the whole guest session:             {guest:7.1f} s")
    print(json.dumps({"upgrades": upgrades, "steps": steps, "rawDeploy": raw_deploy}), file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
