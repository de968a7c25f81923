"""The manual pages and the shell completions are generated from the parser `os` runs with: every verb has its
page, the pages render without a warning, and bash and zsh read the completions (and bash completes with them)."""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest

from arkes import cli, manual

VERBS = [verb.name for verb in cli.VERBS]


def test_every_verb_has_a_page_and_os_8_names_them_all() -> None:
    pages = manual.man_pages()
    assert sorted(pages) == sorted(["os.8", *(f"os-{name}.8" for name in VERBS)])
    for name in VERBS:
        assert f".BR {manual._roff('os-' + name)} (8)" in pages["os.8"], name
    upgrade = pages["os-upgrade.8"]
    assert upgrade.startswith(".TH OS\\-UPGRADE 8 ")
    assert "\\fB\\-\\-download\\-only\\fR" in upgrade, "each option of the verb"
    assert "\\fB\\-\\-systemfile\\fR \\fIFILE\\fR" in upgrade, "with its value"


def test_the_pages_render_without_warnings(tmp_path: Path) -> None:
    manual.write(tmp_path)
    for page in sorted((tmp_path / "share/man/man8").iterdir()):
        result = subprocess.run(
            ["man", "--warnings", "-l", "-Tutf8", str(page)],
            capture_output=True,
            text=True,
            env={"PATH": "/usr/bin:/bin", "MANWIDTH": "100", "LC_ALL": "C.UTF-8"},
        )
        assert result.returncode == 0 and result.stderr == "", f"{page.name}: {result.stderr}"
    text = subprocess.run(
        ["man", "-l", str(tmp_path / "share/man/man8/os-iso.8")],
        capture_output=True,
        text=True,
        env={"PATH": "/usr/bin:/bin", "MANWIDTH": "100", "LC_ALL": "C.UTF-8", "MANPAGER": "cat"},
    ).stdout
    assert "os-iso - make a live installer image" in text and "--answers FILE" in text, text[:800]


def complete(tmp_path: Path, line: str) -> list[str]:
    """What bash completes `line` to (the cursor at its end), with the generated completion loaded."""
    manual.write(tmp_path)
    script = f"""
source /usr/share/bash-completion/bash_completion
source {tmp_path}/share/bash-completion/completions/os
_os_indexes() {{ echo 0 1 2; }}
COMP_LINE={line!r}; COMP_POINT=${{#COMP_LINE}}
read -ra COMP_WORDS <<< "$COMP_LINE"
[[ "$COMP_LINE" == *" " ]] && COMP_WORDS+=("")
COMP_CWORD=$(( ${{#COMP_WORDS[@]}} - 1 ))
_os os "${{COMP_WORDS[COMP_CWORD]}}" "${{COMP_WORDS[COMP_CWORD-1]}}"
printf '%s\\n' "${{COMPREPLY[@]}}"
"""
    result = subprocess.run(["bash", "-c", script], capture_output=True, text=True, cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    return result.stdout.split()


def test_bash_completes_verbs_flags_indexes_and_files(tmp_path: Path) -> None:
    assert complete(tmp_path, "os up") == ["upgrade"]
    assert complete(tmp_path, "os upgrade --sys") == ["--systemfile"]
    assert complete(tmp_path, "os --sysroot /srv/sys upgrade --dow") == ["--download-only"]
    assert complete(tmp_path, "os pin ") == ["0", "1", "2"], "a deployment index"
    (tmp_path / "answers.toml").write_text("")
    assert "answers.toml" in complete(tmp_path, "os iso out.iso --answers "), "a file"
    assert complete(tmp_path, "os images ") == ["all", "rootfs", "base"]


def test_bash_reads_the_completion(tmp_path: Path) -> None:
    manual.write(tmp_path)
    for name in ("os", "arkes"):
        path = tmp_path / "share/bash-completion/completions" / name
        assert subprocess.run(["bash", "-n", str(path)], capture_output=True).returncode == 0


@pytest.mark.zsh
def test_zsh_reads_the_completion(tmp_path: Path) -> None:
    manual.write(tmp_path)
    path = tmp_path / "share/zsh/vendor-completions/_os"
    result = subprocess.run(["zsh", "-n", str(path)], capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
    text = path.read_text()
    assert text.startswith("#compdef os arkes")
    assert all(f"'{name}:" in text for name in VERBS), "every verb is offered"
