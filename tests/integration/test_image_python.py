"""The tool runs on the distribution's own Python: the unit layer, run again inside the base image (Python 3.13),
with pytest from a directory that `make setup` fills for that Python. The linters are the host's business."""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest

pytestmark = pytest.mark.integration

ROOT = Path(__file__).resolve().parents[2]
PYTEST_DIR = ROOT / "build/pytest-image"


def test_unit_layer_passes_on_the_image_python(base_image: str) -> None:
    assert (PYTEST_DIR / "pytest").is_dir(), f"{PYTEST_DIR} is filled by `make setup` (scripts/setup)"
    argv = ["podman", "run", "--rm", "--runtime=runc", "--pull=never", "--network=none"]
    argv += ["--ulimit", "nofile=20000:20000", "--ulimit", "nproc=4096:4096"]
    # A copy of the checkout's tool and tests, so that the image's own copy of the tool is not what is tested.
    argv += ["-v", f"{ROOT}:/src:ro", "-v", f"{PYTEST_DIR}:/opt/pytest:ro", "--workdir", "/src"]
    # GRUB's images, which the boot unit tests read, come from the host (`make setup` installs them).
    argv += ["-v", "/usr/lib/grub:/usr/lib/grub:ro"]
    argv += ["--env", "PYTHONPATH=/src:/opt/pytest", "--env", "PYTHONDONTWRITEBYTECODE=1"]
    argv += [base_image, "python3", "-c", "import sys; print(sys.version)"]
    version = subprocess.run(argv, capture_output=True, text=True, check=True).stdout
    assert version.startswith("3.13"), version
    argv[-3:] = ["python3", "-m", "pytest", "-q", "-p", "no:cacheprovider", "tests/unit"]
    argv += ["--ignore", "tests/unit/test_linters.py"]
    # The image has no GRUB programs (its boot loader is written by the tool) and no zsh: those run on the host.
    argv += ["-m", "not grub_tools and not zsh"]
    result = subprocess.run(argv, capture_output=True, text=True, timeout=900)
    print(result.stdout[-2000:])
    assert result.returncode == 0, result.stdout[-6000:] + result.stderr[-3000:]
    assert " passed" in result.stdout and "no tests ran" not in result.stdout
