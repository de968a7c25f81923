"""A build that runc could not start a step of (it failed to seal its own copy: a busy file) goes on once more
from its cached steps; any other failure is the build's own and is not repeated."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pytest

from arkes import builder, run
from arkes.errors import BuildError

BUSY = "STEP 3/4: RUN post_build\nClose_Fd sealing memfd copy: Device or resource busy\nError: exit status 1"


def attempts(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path, failures: list[str], ran: list[list[str]] | None = None
) -> list[list[str]]:
    """Run builder.build on this system's own (fake) Buildah that fails with each of `failures` in turn; each
    command it ran goes into `ran`."""
    ran = [] if ran is None else ran

    def stream(argv: list[str], on_line: Callable[[str], None], **_: object) -> str:
        ran.append(list(argv))
        if failures:
            raise BuildError(failures.pop(0))
        on_line("Successfully tagged localhost/t:1")
        return ""

    monkeypatch.setattr(run, "stream", stream)
    the_builder = builder.Builder(None, tmp_path / "graph", tmp_path / "run", "overlay", tmp_path / "state")
    (tmp_path / "Containerfile").write_text("FROM scratch\n")
    builder.build(the_builder, tmp_path / "Containerfile", tmp_path, "localhost/t:1")
    return ran


def test_a_step_runc_could_not_start_is_built_again(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    assert len(attempts(monkeypatch, tmp_path, [BUSY])) == 2


def test_runc_failing_twice_is_the_builds_error(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    ran: list[list[str]] = []
    with pytest.raises(BuildError, match="sealing memfd"):
        attempts(monkeypatch, tmp_path, [BUSY, BUSY], ran)
    assert len(ran) == 2


def test_a_failing_step_is_not_repeated(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    ran: list[list[str]] = []
    with pytest.raises(BuildError, match="exit status 2"):
        attempts(monkeypatch, tmp_path, ["STEP 2/4: RUN false\nError: exit status 2"], ran)
    assert len(ran) == 1
