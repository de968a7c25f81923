"""The unit layer needs nothing but Python: PyGObject is imported by arkes.ostree alone, when libostree is used."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import arkes

BLOCK = """
import importlib, sys
class Block:
    def find_spec(self, name, path=None, target=None):
        if name == "gi" or name.startswith("gi."):
            raise ImportError("PyGObject is not there")
sys.meta_path.insert(0, Block())
for name in sys.argv[1:]:
    importlib.import_module(name)
"""


def test_every_module_but_the_libostree_boundary_imports_without_pygobject() -> None:
    names = sorted(
        f"arkes.{path.stem}" for path in Path(arkes.__file__).parent.glob("*.py") if path.stem not in ("ostree",)
    )
    assert "arkes.cli" in names and "arkes.deploy" in names
    result = subprocess.run([sys.executable, "-c", BLOCK, *names], capture_output=True, text=True)
    assert result.returncode == 0, result.stderr


def test_the_libostree_boundary_does_need_it() -> None:
    result = subprocess.run([sys.executable, "-c", BLOCK, "arkes.ostree"], capture_output=True, text=True)
    assert result.returncode != 0 and "PyGObject is not there" in result.stderr
