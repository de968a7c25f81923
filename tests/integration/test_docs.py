"""Every Systemfile example of the docs is one `os check` takes: each ```dockerfile block of README.md and
docs/*.md is written to a build context of its own (with empty stand-ins for the files it copies) and checked."""

from __future__ import annotations

import re
import shlex
import subprocess
from pathlib import Path

import pytest

from tests.integration.conftest import OS

pytestmark = pytest.mark.integration

ROOT = Path(__file__).resolve().parents[2]
PAGES = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
BLOCK = re.compile(r"^```(?:dockerfile|Dockerfile|containerfile)\n(.*?)^```", re.MULTILINE | re.DOTALL)
EXAMPLES = [
    (page, page.read_text().count("\n", 0, found.start(1)) + 1, found.group(1))
    for page in PAGES
    for found in BLOCK.finditer(page.read_text())
]


def stand_ins(context: Path, text: str) -> None:
    """The files a COPY or ADD of the example takes from its context, made empty (a directory for NAME/)."""
    for line in text.splitlines():
        words = shlex.split(line) if line.startswith(("COPY ", "ADD ")) else []
        sources = [w for w in words[1:-1] if not w.startswith("--")]
        for source in sources:
            if "://" in source or source.startswith("<<"):
                continue
            path = context / source
            if source.endswith("/"):
                path.mkdir(parents=True, exist_ok=True)
            else:
                path.parent.mkdir(parents=True, exist_ok=True)
                path.touch()


def test_the_docs_have_systemfile_examples() -> None:
    assert len(EXAMPLES) >= 5 and any(page.name == "systemfile.md" for page, _, _ in EXAMPLES)


@pytest.mark.parametrize(("page", "line", "text"), EXAMPLES, ids=[f"{p.name}:{n}" for p, n, _ in EXAMPLES])
def test_a_systemfile_example_of_the_docs_passes_os_check(page: Path, line: int, text: str, tmp_path: Path) -> None:
    (tmp_path / "Systemfile").write_text(text)
    stand_ins(tmp_path, text)
    result = subprocess.run([str(OS), "check", str(tmp_path / "Systemfile")], capture_output=True, text=True)
    assert result.returncode == 0, f"{page.relative_to(ROOT)}:{line}:\n{result.stdout}{result.stderr}"
    assert "valid" in result.stderr
