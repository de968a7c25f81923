"""Unit tests for arkes.systemfile: every problem with its exact line, valid files, and the parsed model."""

from __future__ import annotations

from pathlib import Path

import pytest

from arkes import systemfile
from arkes.errors import UsageError, ValidationError


def write(directory: Path, text: str | bytes) -> Path:
    path = directory / "Systemfile"
    if isinstance(text, str):
        path.write_text(text)
    else:
        path.write_bytes(text)
    return path


def found(directory: Path, text: str | bytes, build_args: dict[str, str] | None = None) -> list[str]:
    """The problems, with the directory stripped so assertions read `Systemfile:LINE: ...`."""
    path = write(directory, text)
    return [p.removeprefix(f"{directory}/") for p in systemfile.problems(path, build_args=build_args)]


def only(directory: Path, text: str | bytes, build_args: dict[str, str] | None = None) -> str:
    """The one problem expected in `text`."""
    result = found(directory, text, build_args)
    assert len(result) == 1, result
    return result[0]


# Valid files


def test_single_stage_is_valid(tmp_path: Path) -> None:
    (tmp_path / "etc").mkdir()
    (tmp_path / "etc" / "motd").write_text("hello\n")
    text = (
        "# syntax=docker/dockerfile:1\n"
        "FROM localhost/arkes:base\n"
        "\n"
        "# packages\n"
        "RUN dnf -y install vim \\\n"
        "    && dnf clean all\n"
        'LABEL org.opencontainers.image.title="my system"\n'
        "ENV EDITOR=vim\n"
        "COPY etc/motd /etc/motd\n"
        "COPY ./etc/ /etc/\n"
        'CMD ["/sbin/init"]\n'
        "RUN [ -f /etc/motd ] && echo ok\n"
        "RUN post_build\n"
    )
    assert found(tmp_path, text) == []


def test_multi_stage_with_copy_from_is_valid(tmp_path: Path) -> None:
    text = (
        "FROM registry.fedoraproject.org/fedora:41 AS builder\n"
        "RUN make -C /src\n"
        "FROM localhost/arkes:base\n"
        "COPY --from=builder /src/out /usr/local/bin/\n"
    )
    assert found(tmp_path, text) == []


def test_stage_name_in_another_case_is_refused_for_the_builder(tmp_path: Path) -> None:
    # BuildKit lower-cases stage names, so it finds `Builder` as `builder`; Buildah 1.39 matches names exactly and
    # would look for an image called `builder` (this used to be valid, before Buildah was the reference builder).
    text = "FROM fedora AS Builder\nRUN make\nFROM localhost/arkes:base\nCOPY --from=builder /out /usr/\n"
    assert only(tmp_path, text).startswith(
        "Systemfile:4: COPY --from=builder: the stage is named 'Builder': BuildKit and the builder (Buildah 1.39)"
    )
    path = write(tmp_path, text)
    assert systemfile.warnings(path) == [
        f"{path}:1: stage name 'Builder' is not in lower case (BuildKit lower-cases stage names, the builder matches"
        " them exactly); write 'builder'"
    ]


def test_unnamed_stage_used_by_index_is_valid(tmp_path: Path) -> None:
    assert found(tmp_path, "FROM fedora\nRUN make\nFROM localhost/arkes:base\nCOPY --from=0 /out /usr/\n") == []


def test_stage_used_by_run_mount_is_valid(tmp_path: Path) -> None:
    text = "FROM fedora AS tools\nFROM localhost/arkes:base\nRUN --mount=type=bind,from=tools,target=/t /t/go\n"
    assert found(tmp_path, text) == []


def test_heredocs_are_valid(tmp_path: Path) -> None:
    text = (
        "FROM localhost/arkes:base\n"
        "RUN <<EOF\n"
        "set -e\n"
        "dnf -y install vim\n"
        "EOF\n"
        "COPY <<CONF /etc/vim.conf\n"
        "set nu\n"
        "CONF\n"
        "RUN python3 <<-'PY'\n"
        "\tprint('hi')\n"
        "\tPY\n"
    )
    assert found(tmp_path, text) == []


def test_arg_with_default_in_from_is_valid_and_substituted(tmp_path: Path) -> None:
    text = "ARG TAG=base\nARG IMAGE=localhost/arkes\nFROM ${IMAGE}:$TAG\nRUN true\n"
    assert found(tmp_path, text) == []
    assert systemfile.load(write(tmp_path, text)).base_image == "localhost/arkes:base"


def test_build_arg_overrides_default_and_fills_missing(tmp_path: Path) -> None:
    path = write(tmp_path, "ARG TAG=base\nARG REGISTRY\nFROM $REGISTRY/arkes:$TAG\n")
    loaded = systemfile.load(path, build_args={"TAG": "next", "REGISTRY": "localhost"})
    assert loaded.base_image == "localhost/arkes:next"


def test_arg_fallback_syntax_needs_no_default(tmp_path: Path) -> None:
    text = "ARG TAG\nFROM localhost/arkes:${TAG:-base}\n"
    assert found(tmp_path, text) == []
    assert systemfile.load(write(tmp_path, text)).base_image == "localhost/arkes:base"


# Bytes that are not text


def test_invalid_utf8_reports_line_of_first_bad_byte_and_stops(tmp_path: Path) -> None:
    # Line 1 would be a problem too (RUN before FROM); nothing after the bad bytes is trusted.
    problem = only(tmp_path, b"RUN x\nFROM localhost/arkes:base\nRUN echo caf\xe9\nRUNN y\n")
    assert problem == "Systemfile:3: byte 0xe9 is not UTF-8: this is not a text file"


def test_nul_byte_reports_its_line(tmp_path: Path) -> None:
    problem = only(tmp_path, b"FROM localhost/arkes:base\n\nRUN a\x00b\n")
    assert problem == "Systemfile:3: NUL byte: this is not a text file"


def test_first_of_nul_and_invalid_utf8_wins(tmp_path: Path) -> None:
    assert only(tmp_path, b"FROM x\n\x00\n\xff\n").startswith("Systemfile:2: NUL byte")


# FROM


def test_no_from(tmp_path: Path) -> None:
    assert found(tmp_path, "# just a comment\nARG X=1\n") == [
        "Systemfile:1: no FROM instruction: a Systemfile starts FROM an image (e.g. FROM localhost/arkes:base)"
    ]


def test_empty_file_has_no_from(tmp_path: Path) -> None:
    assert only(tmp_path, "").startswith("Systemfile:1: no FROM instruction")


def test_instruction_before_first_from(tmp_path: Path) -> None:
    text = "ARG X=1\n\nLABEL a=b\nFROM localhost/arkes:base\n"
    assert only(tmp_path, text) == "Systemfile:3: LABEL before the first FROM: only ARG may come before FROM"


@pytest.mark.parametrize(
    ("line", "message"),
    [
        ("FROM", "FROM needs an image"),
        ("FROM AS builder", "FROM needs an image"),
        ("FROM fedora AS", "FROM ... AS needs a stage name"),
        ("FROM fedora builder", "FROM takes an image and an optional AS name, not 'fedora builder'"),
    ],
)
def test_from_without_image(tmp_path: Path, line: str, message: str) -> None:
    assert found(tmp_path, f"FROM localhost/arkes:base AS base\nRUN true\n{line}\n") == [f"Systemfile:3: {message}"]


def test_from_empty_after_substitution(tmp_path: Path) -> None:
    assert only(tmp_path, "ARG IMAGE=\nFROM $IMAGE\n") == (
        "Systemfile:2: FROM image '$IMAGE' is empty once ARGs are substituted"
    )


def test_extra_from_without_name_and_unused_is_a_warning(tmp_path: Path) -> None:
    # BuildKit skips a stage nothing uses: the file builds, so this is a warning (it used to be an error).
    text = "FROM fedora\nRUN dnf -y install gcc\n\nFROM localhost/arkes:base\nRUN true\n"
    assert found(tmp_path, text) == []
    [warning] = systemfile.warnings(write(tmp_path, text))
    assert warning.startswith(f"{tmp_path}/Systemfile:4: extra FROM: the stage from line 1 has no AS name and nothing")
    assert "BuildKit skips it" in warning


def test_extra_from_is_reported_once_per_unused_stage(tmp_path: Path) -> None:
    text = "FROM a\nFROM b\nFROM c AS c\nFROM localhost/arkes:base\nCOPY --from=c /x /y\n"
    assert found(tmp_path, text) == []
    warnings = systemfile.warnings(write(tmp_path, text))
    assert [w.removeprefix(f"{tmp_path}/").split(": ")[0:2] for w in warnings] == [
        ["Systemfile:2", "extra FROM"],
        ["Systemfile:3", "extra FROM"],
    ]


def test_stage_copying_from_itself_is_a_circular_dependency(tmp_path: Path) -> None:
    # `COPY --from=0` in stage 0 itself: BuildKit refuses the circular dependency (this used to pass silently, with
    # only the unused stage reported); the stage is still unused by what follows.
    text = "FROM fedora\nCOPY --from=0 /a /b\nFROM localhost/arkes:base\n"
    assert found(tmp_path, text) == ["Systemfile:2: COPY --from=0: names its own stage (circular dependency)"]
    assert systemfile.warnings(write(tmp_path, text))[0].startswith(f"{tmp_path}/Systemfile:3: extra FROM")


def test_from_earlier_stage_counts_as_use(tmp_path: Path) -> None:
    text = "FROM localhost/arkes:base AS base\nRUN true\nFROM base\nRUN post_build\n"
    assert found(tmp_path, text) == []


def test_duplicate_and_invalid_stage_names(tmp_path: Path) -> None:
    text = "FROM a AS one\nFROM b AS ONE\nFROM c AS 2x\nCOPY --from=one /a /b\n"
    assert found(tmp_path, text) == [
        "Systemfile:2: duplicate stage name 'one' (first at line 1)",
        "Systemfile:3: invalid stage name '2x': use lower-case letters, digits, '-', '_' and '.'",
    ]


# Unknown instructions and missing arguments


def test_unknown_instruction_suggests_closest(tmp_path: Path) -> None:
    text = "FROM localhost/arkes:base\nRUN true\nRUNN dnf -y install vim\nCOPPY a b\n"
    assert found(tmp_path, text) == [
        "Systemfile:3: unknown instruction RUNN (did you mean RUN?)",
        "Systemfile:4: unknown instruction COPPY (did you mean COPY?)",
    ]


def test_unknown_instruction_without_close_match(tmp_path: Path) -> None:
    assert only(tmp_path, "FROM x\nFROBNICATE a\n") == "Systemfile:2: unknown instruction FROBNICATE"


@pytest.mark.parametrize(
    ("line", "message"),
    [
        ("RUN", "RUN needs a command"),
        ("RUN --mount=type=cache,target=/var/cache", "RUN needs a command"),
        ("CMD", "CMD needs a command"),
        ("COPY onlyone", "COPY needs a source and a destination"),
        ("ADD", "ADD needs a source and a destination"),
        ("ENV", "ENV needs NAME=value"),
        ("WORKDIR", "WORKDIR needs a directory"),
        ("USER", "USER needs a user name or UID"),
        ("ARG", "ARG needs a name (ARG NAME or ARG NAME=default)"),
        ("EXPOSE", "EXPOSE needs a port"),
        ("VOLUME", "VOLUME needs a path"),
        ("STOPSIGNAL", "STOPSIGNAL needs a signal"),
        ("HEALTHCHECK CMD", "HEALTHCHECK needs NONE, or CMD followed by a command"),
        ("ONBUILD", "ONBUILD needs an instruction to run in images built FROM this one"),
    ],
)
def test_missing_arguments(tmp_path: Path, line: str, message: str) -> None:
    assert found(tmp_path, f"FROM localhost/arkes:base\n\n{line}\n") == [f"Systemfile:3: {message}"]


def test_missing_arguments_found_by_the_parser(tmp_path: Path) -> None:
    # The parser itself rejects these; each is still reported at its own line.
    text = "FROM x\nENV EDITOR\nRUN true\nLABEL \\\n  title\n"
    assert found(tmp_path, text) == [
        "Systemfile:2: ENV must have two arguments",
        "Systemfile:4: LABEL must have two arguments",
    ]


def test_empty_names(tmp_path: Path) -> None:
    assert found(tmp_path, "ARG =1\nFROM x\nENV =1\n") == [
        "Systemfile:1: ARG has an empty name",
        "Systemfile:3: ENV has an empty name",
    ]


def test_onbuild_triggers(tmp_path: Path) -> None:
    assert found(tmp_path, "FROM x\nONBUILD RUN true\nONBUILD FROM y\nONBUILD RUNN z\n") == [
        "Systemfile:3: ONBUILD: FROM is not allowed as an ONBUILD trigger",
        "Systemfile:4: ONBUILD: unknown instruction RUNN (did you mean RUN?)",
    ]


def test_empty_json_cmd_is_allowed(tmp_path: Path) -> None:
    assert found(tmp_path, "FROM x\nCMD []\nENTRYPOINT []\n") == []


# Heredocs and line continuations


def test_unterminated_heredoc_reports_opening_line(tmp_path: Path) -> None:
    text = "FROM x\nRUN <<EOF\necho ok\nEOF\nRUN true\nRUN <<SCRIPT\ndnf -y install vim\n"
    assert found(tmp_path, text) == [
        "Systemfile:6: unterminated heredoc: RUN opens <<SCRIPT but no line 'SCRIPT' closes it"
    ]


def test_unterminated_heredoc_does_not_hide_later_problems(tmp_path: Path) -> None:
    # Parsing resumes at the next upper-case instruction, where the forgotten terminator most likely belonged.
    text = "FROM x\nCOPY <<CONF /etc/a.conf\nkey=value\nrunn body\nRUN true\nRUNN x\nENV A\n"
    assert found(tmp_path, text) == [
        "Systemfile:2: unterminated heredoc: COPY opens <<CONF but no line 'CONF' closes it",
        "Systemfile:6: unknown instruction RUNN (did you mean RUN?)",
        "Systemfile:7: ENV must have two arguments",
    ]


def test_unterminated_heredoc_opened_on_a_continuation_line(tmp_path: Path) -> None:
    text = "FROM x\nRUN true\nCOPY \\\n  <<EOF /etc/a\nbody\n"
    assert only(tmp_path, text).startswith("Systemfile:3: unterminated heredoc: COPY opens <<EOF")


def test_continuation_on_last_line_reports_instruction_start(tmp_path: Path) -> None:
    text = "FROM x\nRUN dnf -y install \\\n    vim \\\n    git \\\n"
    assert only(tmp_path, text) == "Systemfile:2: RUN: line continuation '\\' on the last line of the file"


def test_continuation_on_last_line_without_newline(tmp_path: Path) -> None:
    assert only(tmp_path, "FROM x\nRUN true\nRUN echo \\").startswith("Systemfile:3: RUN: line continuation")


def test_continuation_with_backtick_escape_directive(tmp_path: Path) -> None:
    text = "# escape=`\nFROM x\nRUN echo a `\n  b\nRUN echo c `\n"
    assert only(tmp_path, text) == "Systemfile:5: RUN: line continuation '`' on the last line of the file"


def test_backslash_is_not_a_continuation_under_backtick_escape(tmp_path: Path) -> None:
    assert found(tmp_path, "# escape=`\nFROM x\nRUN echo \\\n") == []


# JSON forms


@pytest.mark.parametrize(
    ("line", "message"),
    [
        ("CMD ['/sbin/init']", "CMD: malformed JSON array (expecting value)"),
        # Python 3.13's json names the trailing comma where 3.11 said "expecting value": we say the same on both.
        ('ENTRYPOINT ["/bin/sh", ]', "ENTRYPOINT: malformed JSON array (a trailing comma)"),
        ('RUN ["dnf", "-y" "install"]', "RUN: malformed JSON array (expecting ',' delimiter)"),
        ("VOLUME [/var/data]", "VOLUME: malformed JSON array (expecting value)"),
        ('COPY ["a" "b"]', "COPY: malformed JSON array (expecting ',' delimiter)"),
        ('CMD ["sleep", 1]', "CMD: when using JSON array syntax, arrays must be comprised of strings only"),
        ("SHELL /bin/bash -c", 'SHELL needs a JSON array such as ["/bin/sh", "-c"]'),
    ],
)
def test_malformed_json(tmp_path: Path, line: str, message: str) -> None:
    result = found(tmp_path, f"FROM x\nRUN true\n{line}\n")
    assert len(result) == 1, result
    assert result[0].startswith(f"Systemfile:3: {message}")


def test_shell_test_command_is_not_json(tmp_path: Path) -> None:
    assert found(tmp_path, 'FROM x\nRUN [ -d /etc ] && echo yes\nRUN [ "$A" = "b" ] || true\n') == []


# ARGs in FROM


def test_undeclared_arg_in_from(tmp_path: Path) -> None:
    # A build argument alone does not declare it: buildkit ignores undeclared build arguments.
    assert found(tmp_path, "ARG TAG=base\nFROM ${REGISTRY}/arkes:$TAG\n", build_args={"REGISTRY": "x"}) == [
        "Systemfile:2: FROM uses $REGISTRY, but no ARG REGISTRY is declared before the first FROM"
    ]


def test_arg_declared_only_inside_a_stage_is_undeclared_for_from(tmp_path: Path) -> None:
    text = "FROM x AS one\nARG IMAGE=fedora\nFROM $IMAGE\nCOPY --from=one /a /b\n"
    assert only(tmp_path, text) == "Systemfile:3: FROM uses $IMAGE, but no ARG IMAGE is declared before the first FROM"


def test_arg_without_default_and_no_build_arg(tmp_path: Path) -> None:
    assert found(tmp_path, "ARG TAG\n\nFROM localhost/arkes:$TAG\n") == [
        "Systemfile:3: FROM uses $TAG, but ARG TAG has no default and no build argument sets it"
    ]


def test_platform_args_are_predefined(tmp_path: Path) -> None:
    assert found(tmp_path, "FROM localhost/arkes:base-$TARGETARCH\n") == []


# COPY and ADD sources


def test_copy_source_missing(tmp_path: Path) -> None:
    (tmp_path / "present").write_text("")
    text = "FROM x\nCOPY present /a\nCOPY present missing /dir/\n"
    assert found(tmp_path, text) == [
        f"Systemfile:3: COPY source missing does not exist in the build context {tmp_path}"
    ]


def test_add_source_missing_in_json_form(tmp_path: Path) -> None:
    assert only(tmp_path, 'FROM x\nADD ["gone.tar", "/"]\n').startswith(
        "Systemfile:2: ADD source gone.tar does not exist"
    )


def test_copy_glob_must_match(tmp_path: Path) -> None:
    (tmp_path / "conf").mkdir()
    (tmp_path / "conf" / "a.conf").write_text("")
    (tmp_path / "conf" / ".hidden.conf").write_text("")
    text = "FROM x\nCOPY conf/*.conf /etc/\nCOPY conf/*.ini /etc/\nCOPY conf/.h?dden.conf /etc/\n"
    assert found(tmp_path, text) == ["Systemfile:3: COPY source conf/*.ini matches nothing in the build context"]


def test_copy_source_outside_context(tmp_path: Path) -> None:
    context = tmp_path / "context"
    context.mkdir()
    (tmp_path / "secret").write_text("")
    path = context / "Systemfile"
    path.write_text("FROM x\nCOPY ../secret /a\nCOPY sub/../../secret /b\n")
    assert systemfile.problems(path) == [
        f"{path}:2: COPY source ../secret is outside the build context {context}",
        f"{path}:3: COPY source sub/../../secret is outside the build context {context}",
    ]


def test_absolute_source_is_relative_to_context(tmp_path: Path) -> None:
    (tmp_path / "etc").mkdir()
    assert found(tmp_path, "FROM x\nCOPY /etc /etc\nCOPY /nope /x\n") == [
        f"Systemfile:3: COPY source /nope does not exist in the build context {tmp_path}"
    ]


def test_sources_that_are_not_in_the_context_are_skipped(tmp_path: Path) -> None:
    text = (
        "FROM fedora AS build\n"
        "FROM x\n"
        "COPY --from=build /usr/bin/tool /usr/bin/\n"
        "COPY --from=quay.io/some/image /x /y\n"
        "ADD https://example.com/a.tar.gz /tmp/\n"
        "ADD git@github.com:o/r.git /src\n"
        "COPY <<EOF /etc/a\nhi\nEOF\n"
        "ARG F=x\n"
        "COPY $F /x\n"
    )
    assert found(tmp_path, text) == []


def test_explicit_context(tmp_path: Path) -> None:
    context = tmp_path / "ctx"
    context.mkdir()
    (context / "file").write_text("")
    path = write(tmp_path, "FROM x\nCOPY file /file\n")
    assert systemfile.problems(path, context=context) == []
    assert systemfile.problems(path) == [f"{path}:2: COPY source file does not exist in the build context {tmp_path}"]


def test_context_that_is_not_a_directory(tmp_path: Path) -> None:
    with pytest.raises(UsageError, match="is not a directory"):
        systemfile.problems(write(tmp_path, "FROM x\n"), context=tmp_path / "nope")


# Parser errors and reporting every problem


def test_escape_directive_errors(tmp_path: Path) -> None:
    assert found(tmp_path, "# escape=x\nFROM x\nENV A\n") == [
        "Systemfile:1: invalid escape token 'x' does not match ` or \\",
        "Systemfile:3: ENV must have two arguments",
    ]
    assert only(tmp_path, "# escape=`\n# escape=\\\nFROM x\n") == (
        "Systemfile:2: only one escape parser directive can be used"
    )


def test_multi_line_parser_error_reports_first_line(tmp_path: Path) -> None:
    text = "FROM x\nLABEL a=1 \\\n  # a comment\n  b\nRUN true\n"
    assert only(tmp_path, text).startswith('Systemfile:2: LABEL: Syntax error - can\'t find = in "b"')


def test_valid_continuation_before_a_parser_error_is_not_blamed(tmp_path: Path) -> None:
    # Cutting the file after `ENV \` would fail the same way; the error belongs to line 5.
    text = "FROM x\nENV \\\n  A=1\nRUN true\nENV B\n"
    assert found(tmp_path, text) == ["Systemfile:5: ENV must have two arguments"]


def test_crlf_line_endings_keep_line_numbers(tmp_path: Path) -> None:
    text = "FROM x\r\nRUN a \\\r\n  b\r\nENV A\r\nRUNN\r\n"
    assert found(tmp_path, text.encode()) == [
        "Systemfile:4: ENV must have two arguments",
        "Systemfile:5: unknown instruction RUNN (did you mean RUN?)",
    ]


def test_every_problem_is_reported_in_line_order(tmp_path: Path) -> None:
    text = (
        "RUN early\n"  # 1
        "FROM localhost/arkes:$TAG\n"  # 2
        "ENV A\n"  # 3
        'CMD ["a", 1]\n'  # 4
        "WORKDIR\n"  # 5
        "RUNN x\n"  # 6
        "COPY missing /x\n"  # 7
        "RUN <<EOF\n"  # 8
        "echo\n"
    )
    result = found(tmp_path, text)
    assert [p.split(":")[1] for p in result] == ["1", "2", "3", "4", "5", "6", "7", "8"]


def test_path_is_reported_as_given(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    Path("Systemfile").write_text("FROM x\nRUNN\n")
    assert systemfile.problems(Path("Systemfile")) == ["Systemfile:2: unknown instruction RUNN (did you mean RUN?)"]


# load() and the model


def test_load_raises_with_every_problem(tmp_path: Path) -> None:
    path = write(tmp_path, "FROM x\nRUNN a\nENV B\n")
    with pytest.raises(ValidationError) as caught:
        systemfile.load(path)
    assert caught.value.problems == [
        f"{path}:2: unknown instruction RUNN (did you mean RUN?)",
        f"{path}:3: ENV must have two arguments",
    ]
    assert caught.value.message == "\n".join(caught.value.problems)
    assert caught.value.exit_code == 2


def test_load_missing_file_is_a_usage_error(tmp_path: Path) -> None:
    with pytest.raises(UsageError) as caught:
        systemfile.load(tmp_path / "Nope")
    assert not isinstance(caught.value, ValidationError)
    assert "cannot read" in caught.value.message
    assert caught.value.hint


def test_load_directory_is_a_usage_error(tmp_path: Path) -> None:
    with pytest.raises(UsageError, match="cannot read"):
        systemfile.load(tmp_path)


def test_instructions_model(tmp_path: Path) -> None:
    text = 'from localhost/arkes:base as Base\nrun --network=none echo \\\n  hi\nCMD ["/sbin/init"]\nONBUILD RUN x\n'
    loaded = systemfile.load(write(tmp_path, text))
    assert loaded.text == text
    assert loaded.path == tmp_path / "Systemfile"
    assert loaded.instructions[1] == systemfile.Instruction(
        cmd="RUN",
        value=("echo   hi",),
        json=False,
        flags=("--network=none",),
        start_line=2,
        end_line=3,
        original="run --network=none echo   hi",
    )
    assert loaded.instructions[2].json and loaded.instructions[2].value == ("/sbin/init",)
    assert loaded.instructions[3].value == ("RUN", "x")
    assert loaded.stages == (systemfile.Stage(base="localhost/arkes:base", name="base", line=1, external=True),)


def test_base_image_and_external_images_on_multi_stage(tmp_path: Path) -> None:
    (tmp_path / "src").mkdir()
    text = (
        "ARG FEDORA=41\n"
        "FROM registry.fedoraproject.org/fedora:$FEDORA AS build\n"
        "COPY src /src\n"
        "FROM scratch AS empty\n"
        "FROM localhost/arkes:base AS system\n"
        "COPY --from=build /src /usr/src\n"
        "COPY --from=empty / /\n"
        "FROM registry.fedoraproject.org/fedora:41 AS tools\n"
        "FROM system\n"
        "COPY --from=tools /usr/bin/jq /usr/bin/\n"
    )
    loaded = systemfile.load(write(tmp_path, text))
    assert [(s.base, s.name, s.line, s.external) for s in loaded.stages] == [
        ("registry.fedoraproject.org/fedora:41", "build", 2, True),
        ("scratch", "empty", 4, False),
        ("localhost/arkes:base", "system", 5, True),
        ("registry.fedoraproject.org/fedora:41", "tools", 8, True),
        ("system", None, 9, False),
    ]
    assert loaded.base_image == "localhost/arkes:base"
    assert loaded.external_images == ("registry.fedoraproject.org/fedora:41", "localhost/arkes:base")


def test_base_image_of_single_stage(tmp_path: Path) -> None:
    loaded = systemfile.load(write(tmp_path, "FROM localhost/arkes:base\nRUN true\n"))
    assert loaded.base_image == "localhost/arkes:base"
    assert loaded.external_images == ("localhost/arkes:base",)


def test_the_grammar_is_our_own() -> None:
    # The compiled `dockerfile` wheel (BuildKit v0.12.5, cp311 only) is gone: Python 3.13 in the image runs os check.
    import sys

    import arkes.containerfile

    sources = Path(systemfile.__file__).read_text() + Path(arkes.containerfile.__file__).read_text()
    assert "import dockerfile" not in sources and "dockerfile" not in sys.modules


def test_report_has_errors_and_warnings_apart(tmp_path: Path) -> None:
    path = write(tmp_path, "FROM fedora\nMAINTAINER me\nFROM localhost/arkes:base\nRUNN x\n")
    report = systemfile.check(path)
    assert report.errors == (f"{path}:4: unknown instruction RUNN (did you mean RUN?)",)
    assert [w.split(": ")[1] for w in report.warnings] == ["MAINTAINER is deprecated", "extra FROM"]
    assert report.systemfile.base_image == "localhost/arkes:base"
    assert systemfile.problems(path) == list(report.errors) and systemfile.warnings(path) == list(report.warnings)


def test_writes_under_var_are_warned_about_and_kept_for_the_build(tmp_path: Path) -> None:
    (tmp_path / "site").mkdir()
    (tmp_path / "site/index.html").write_text("hi\n")
    text = (
        "FROM localhost/arkes:base\n"
        "COPY site/ /var/www/html/\n"
        "ENV D=/var/lib/app\n"
        "COPY site/index.html ${D}/\n"
        "COPY site/index.html /var/cache/app/\n"
        "COPY site/index.html /usr/share/app/\n"
        "RUN post_build\n"
    )
    path = write(tmp_path, text)
    warnings = systemfile.warnings(path)
    assert [w.split(": ")[0].rsplit(":", 1)[1] for w in warnings] == ["2", "4"]
    assert "COPY to /var/www/html/: /var belongs to the machine" in warnings[0]
    assert "tmpfiles.d" in warnings[0] and "StateDirectory=" in warnings[0]
    assert systemfile.load(path).state_warnings == tuple(warnings)
