"""Unit tests for arkes.builderfile: what `os check` accepts is rewritten, line for line, into what the builder
builds to the same tree."""

from __future__ import annotations

from pathlib import Path

import pytest

from arkes import builder, builderfile, systemfile
from arkes.errors import ValidationError


def translate(tmp_path: Path, text: str, files: dict[str, str] | None = None) -> builderfile.Translated:
    context = tmp_path / "context"
    context.mkdir(exist_ok=True)
    for name, content in (files or {}).items():
        (context / name).parent.mkdir(parents=True, exist_ok=True)
        (context / name).write_text(content)
    (context / "Systemfile").write_text(text)
    sf = systemfile.load(context / "Systemfile")
    return builderfile.translate(sf, context, tmp_path / "staging")


def test_plain_systemfile_is_unchanged(tmp_path: Path) -> None:
    text = "FROM localhost/arkes:base\nRUN <<EOF\necho hi\nEOF\nRUN post_build\n"
    assert translate(tmp_path, text) == builderfile.Translated(text, {})


def test_escape_directive_moves_to_the_first_line(tmp_path: Path) -> None:
    text = "# syntax=docker/dockerfile:1\n# check=skip=all\n# escape=`\nFROM localhost/arkes:base\nRUN echo a `\n  b\n"
    out = translate(tmp_path, text).text.split("\n")
    assert out[:3] == ["# escape=`", "# syntax=docker/dockerfile:1", "# check=skip=all"]
    assert out[3:] == text.split("\n")[3:]


def test_link_and_sandbox_flags_are_dropped_in_place(tmp_path: Path) -> None:
    text = (
        "FROM localhost/arkes:base\n"
        "COPY --link --chmod=0644 a.txt /a\n"
        "ADD --link=true a.txt /b\n"
        "COPY --link=false a.txt /c\n"
        "RUN --security=sandbox --network=none true\n"
    )
    out = translate(tmp_path, text, {"a.txt": "a"}).text.split("\n")
    assert out == [
        "FROM localhost/arkes:base",
        "COPY --chmod=0644 a.txt /a",
        "ADD a.txt /b",
        "COPY a.txt /c",
        "RUN --network=none true",
        "",
    ]


def test_heredoc_openers_lose_their_blanks(tmp_path: Path) -> None:
    text = (
        "FROM localhost/arkes:base\n"
        'RUN << ONE cat > /one && <<\t"TWO" cat > /two\n'
        "cat << ONE\n"  # the body, not an opener
        "ONE\n"
        "TWO\n"
        "RUN <<EOF\n"
        "x << EOF\n"
        "EOF\n"
        "COPY <<  'X' /x\n"
        "hi\n"
        "X\n"
    )
    out = translate(tmp_path, text).text.split("\n")
    assert out[1] == """RUN <<ONE cat > /one && <<"TWO" cat > /two"""
    assert out[2] == "cat << ONE" and out[6] == "x << EOF"
    assert out[8] == "COPY <<'X' /x"
    assert len(out) == len(text.split("\n"))


def test_parents_are_staged_as_a_build_context(tmp_path: Path) -> None:
    files = {"src/a/one.txt": "1", "src/b/two.txt": "2", "src/b/deep/three.md": "3", "top.txt": "t"}
    text = (
        "FROM localhost/arkes:base\n"
        "COPY --parents --chmod=0644 src/a/one.txt top.txt /dest/\n"
        "COPY --parents src/./b/deep/three.md /pivot/\n"
        "COPY --parents src/**/*.txt \\\n"
        "    /globbed/\n"
        "RUN true\n"
    )
    out = translate(tmp_path, text, files)
    lines = out.text.split("\n")
    assert lines[1] == 'COPY --chmod=0644 --from=arkes-parents-2 [".", "/dest/"]'
    assert lines[2] == 'COPY --from=arkes-parents-3 [".", "/pivot/"]'
    assert lines[3:6] == ['COPY --from=arkes-parents-4 [".", "/globbed/"]', "", "RUN true"]
    staged = {
        name: sorted(p.relative_to(path).as_posix() for p in path.rglob("*") if p.is_file())
        for name, path in out.contexts.items()
    }
    assert staged == {
        "arkes-parents-2": ["src/a/one.txt", "top.txt"],
        "arkes-parents-3": ["b/deep/three.md"],
        "arkes-parents-4": ["src/a/one.txt", "src/b/two.txt"],
    }


def test_parents_that_cannot_be_staged_are_refused(tmp_path: Path) -> None:
    context = tmp_path / "context"
    context.mkdir()
    (context / "Systemfile").write_text("FROM localhost/arkes:base\nCOPY --parents a.txt /x/\n")
    # A source removed after `os check` (between check and build) gets a message with its line.
    (context / "a.txt").write_text("a")
    sf = systemfile.load(context / "Systemfile")
    (context / "a.txt").unlink()
    with pytest.raises(ValidationError) as caught:
        builderfile.translate(sf, context, tmp_path / "staging")
    assert caught.value.problems == [
        f"{context}/Systemfile:2: COPY --parents: a.txt matches nothing in the build context"
    ]


@pytest.mark.parametrize(
    ("name", "working"),
    [
        ("arkes-working-container", True),
        ("arkes-working-container-1", True),
        ("localhost-arkes-working-container-12", True),
        ("arkes-builder-4242", False),
        ("working-container", False),
        ("arkes-working-container-x", False),
    ],
)
def test_working_containers_are_known_by_name(name: str, working: bool) -> None:
    assert builder.is_working_container(name) is working
