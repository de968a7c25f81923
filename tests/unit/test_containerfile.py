"""Unit tests for arkes.containerfile: the grammar as BuildKit's current parser reads it, and where Buildah differs.

The cases are our own, written from reading BuildKit's parser and its tests (moby/buildkit frontend/dockerfile).
"""

from __future__ import annotations

import pytest

from arkes import containerfile
from arkes.containerfile import Heredoc, Instruction, Lexer, ShellError, parse


def only(text: str) -> Instruction:
    parsed = parse(text)
    assert not parsed.errors, parsed.errors
    assert len(parsed.instructions) == 1, parsed.instructions
    return parsed.instructions[0]


# Parser directives


def test_directives_at_the_top_with_any_case_and_spacing() -> None:
    parsed = parse("# SYNTAX = docker/dockerfile:1\n#escape=`\n# Check=skip=all\nFROM x\nRUN a `\n  b\n")
    assert [(d.name, d.value, d.line) for d in parsed.directives] == [
        ("syntax", "docker/dockerfile:1", 1),
        ("escape", "`", 2),
        ("check", "skip=all", 3),
    ]
    assert parsed.escape == "`"
    assert parsed.instructions[1].value == ("a   b",)


def test_a_byte_order_mark_before_the_first_directive() -> None:
    parsed = parse("\ufeff# escape=`\nFROM x\n")
    assert parsed.escape == "`" and parsed.directives[0].line == 1
    assert parsed.instructions[0].start_line == 2


@pytest.mark.parametrize(
    "text",
    [
        "\n# escape=`\nFROM x\n",  # a blank line ends the directives
        "# a comment\n# escape=`\nFROM x\n",  # so does a comment
        "# key=value\n# escape=`\nFROM x\n",  # and an unknown directive
        "FROM x\n# escape=`\n",  # and an instruction
    ],
)
def test_directives_only_at_the_very_top(text: str) -> None:
    parsed = parse(text)
    assert parsed.escape == "\\" and not parsed.directives and not parsed.errors


def test_directive_errors() -> None:
    assert parse("# escape=x\nFROM x\n").errors == ((1, "invalid escape token 'x' does not match ` or \\"),)
    assert parse("# syntax=a\n# Syntax=b\nFROM x\n").errors == ((2, "only one syntax parser directive can be used"),)


def test_escape_directive_after_another_counts() -> None:
    # BuildKit reads directives in any order (the builder only on line 1: arkes.builderfile moves it there).
    parsed = parse("# syntax=docker/dockerfile:1\n# escape=`\nFROM x\n")
    assert parsed.escape == "`"
    assert not parsed.divergences and not parsed.errors


# Lines, continuations and comments


def test_continuations_comments_and_line_numbers() -> None:
    text = (
        "# comment\n"  # 1
        "\n"  # 2
        "FROM x\n"  # 3
        "RUN a \\\n"  # 4
        "# a comment inside is dropped\n"  # 5
        "    # so is an indented one\n"  # 6
        "  b \\\n"  # 7
        "  c\n"  # 8
        "   LABEL k=v\n"  # 9
    )
    parsed = parse(text)
    assert [(i.cmd, i.start_line, i.end_line) for i in parsed.instructions] == [
        ("FROM", 3, 3),
        ("RUN", 4, 8),
        ("LABEL", 9, 9),
    ]
    assert parsed.instructions[1].value == ("a   b   c",)
    assert parsed.instructions[1].original == "RUN a   b   c"
    assert not parsed.warnings


def test_empty_continuation_line_is_a_warning() -> None:
    parsed = parse("FROM x\nRUN a \\\n\n  b\n")
    assert parsed.instructions[1].value == ("a   b",)
    assert parsed.warnings == (
        (3, "RUN: empty continuation line (BuildKit warns that a future release will refuse it)"),
    )


def test_lone_escape_line_continues_and_last_line_continuation_ends_the_file() -> None:
    assert parse("FROM x\nRUN a \\\n\\\n  b\n").instructions[1].value == ("a   b",)
    assert parse("FROM x\nRUN a \\").instructions[1].value == ("a",)


def test_escaped_escape_at_the_end_of_a_line() -> None:
    # BuildKit ends the instruction after `a\\`; Buildah's parser joins the next line to it.
    parsed = parse("FROM x\nENV A=a\\\\\nENV B=b\n")
    assert [i.cmd for i in parsed.instructions] == ["FROM", "ENV", "ENV"]
    assert parsed.divergences[0][0] == 2 and "continues it on the next line" in parsed.divergences[0][1]


def test_crlf_line_endings() -> None:
    parsed = parse("FROM x\r\nRUN a \\\r\n  b\r\n")
    assert parsed.instructions[1].value == ("a   b",)
    assert parsed.lines == ("FROM x", "RUN a \\", "  b")


def test_a_line_over_64_kib_stops_the_parse() -> None:
    parsed = parse("FROM x\nLABEL a=" + "x" * 70000 + "\nRUN true\n")
    assert parsed.errors == ((2, "line longer than 65535 bytes: BuildKit stops reading here"),)
    assert [i.cmd for i in parsed.instructions] == ["FROM"]


def test_empty_and_comment_only_files_have_no_instructions() -> None:
    assert parse("").instructions == () and parse("# a\n\n# b\n").instructions == ()


# Heredocs


@pytest.mark.parametrize(
    ("line", "name", "expand", "chomp", "fd"),
    [
        ("RUN <<EOF", "EOF", True, False, 0),
        ("RUN <<-EOF", "EOF", True, True, 0),
        ("RUN <<'EOF'", "EOF", False, False, 0),
        ('RUN <<"EOF"', "EOF", False, False, 0),
        ('RUN <<EO"F"', "EOF", False, False, 0),
        ("RUN <<eo\\'f", "eo'f", True, False, 0),
        ("RUN <<'one two'", "one two", False, False, 0),
        ("RUN 3<<EOF cat /dev/fd/3", "EOF", True, False, 3),
        ("RUN <<$EOF", "$EOF", True, False, 0),
        ("RUN --mount=type=cache,target=/c <<EOF", "EOF", True, False, 0),
        ("RUN <<EOF python3", "EOF", True, False, 0),
        ("RUN cat <<EOF > /etc/motd", "EOF", True, False, 0),
    ],
)
def test_heredoc_openers(line: str, name: str, expand: bool, chomp: bool, fd: int) -> None:
    indent = "\t" if chomp else ""
    ins = only(f"{line}\n\tbody $X\n{indent}{name}\n")
    assert ins.heredocs == (Heredoc(name, "\tbody $X\n", expand, chomp, fd),)
    assert ins.end_line == 3
    assert ins.heredocs[0].text == ("body $X\n" if chomp else "\tbody $X\n")


def test_several_heredocs_and_their_bodies() -> None:
    ins = only("COPY <<X <<Y /dest/\nY\nX\nX\nY\n")
    assert [(doc.name, doc.content) for doc in ins.heredocs] == [("X", "Y\n"), ("Y", "X\n")]
    assert ins.value == ("<<X", "<<Y", "/dest/")
    assert ins.original == "COPY <<X <<Y /dest/\nY\nX\nX\nY"


def test_heredoc_bodies_are_not_instructions_and_keep_comments() -> None:
    parsed = parse("FROM x\nRUN <<EOF\n# not a comment here\nFROM y\nRUNN z\nEOF\nUSER u\n")
    assert [i.cmd for i in parsed.instructions] == ["FROM", "RUN", "USER"]
    assert parsed.instructions[1].heredocs[0].content == "# not a comment here\nFROM y\nRUNN z\n"
    assert parsed.instructions[1].value == ("<<EOF",)


@pytest.mark.parametrize(
    "text",
    [
        'RUN "<<EOF"\nEOF\n',  # quoted: a string, not a heredoc
        "RUN echo '<<EOF'\nEOF\n",
        'RUN ["<<EOF"]\nEOF\n',  # JSON form takes no heredocs
        "USER <<EOF\nEOF\n",  # only RUN, COPY and ADD do
        "RUN echo a<<EOF\nEOF\n",  # `<<` must start a word
        "RUN echo it's <<EOF\nEOF\n",  # an unmatched quote: BuildKit finds no heredoc on the line at all
    ],
)
def test_not_heredocs(text: str) -> None:
    parsed = parse(text)
    assert all(not i.heredocs for i in parsed.instructions)
    assert parsed.instructions[-1].cmd == "EOF"


def test_space_after_heredoc_operator() -> None:
    # Current BuildKit reads `<< EOF` as a heredoc (arkes.builderfile writes it as `<<EOF` for Buildah 1.39).
    parsed = parse("FROM x\nRUN << EOF\necho hi\nEOF\n")
    assert parsed.instructions[1].heredocs[0].name == "EOF"
    assert not parsed.errors and not parsed.divergences
    # `<<- EOF` is a heredoc to neither: its body becomes instructions.
    parsed = parse("FROM x\nRUN cat <<- EOF\nhi\nEOF\n")
    assert [i.cmd for i in parsed.instructions] == ["FROM", "RUN", "HI", "EOF"]
    assert parsed.errors[0][0] == 2 and "no space is allowed after '<<-'" in parsed.errors[0][1]


def test_onbuild_heredoc_belongs_to_its_trigger() -> None:
    ins = only("ONBUILD RUN <<EOF\necho hi\nEOF\n")
    assert ins.value == ("RUN", "<<EOF") and ins.heredocs[0].content == "echo hi\n"
    assert ins.trigger is not None and ins.trigger.heredocs == ins.heredocs


def test_unterminated_heredoc_resumes_at_the_next_instruction() -> None:
    parsed = parse("FROM x\nRUN <<A <<B\na\nA\nb\nuser x\nENV A=1\n")
    assert parsed.errors == ((2, "unterminated heredoc: RUN opens <<B but no line 'B' closes it"),)
    assert [(i.cmd, i.start_line) for i in parsed.instructions] == [("FROM", 1), ("ENV", 7)]


def test_chomped_terminator_may_be_indented_with_tabs_only() -> None:
    assert only("RUN <<-EOF\n\tx\n\t\tEOF\n").heredocs[0].content == "\tx\n"
    assert parse("FROM x\nRUN <<EOF\nx\n\tEOF\n").errors[0][1].startswith("unterminated heredoc")
    assert parse("FROM x\nRUN <<EOF\nx\nEOF \n").errors[0][1].startswith("unterminated heredoc")


def test_parse_heredoc_words() -> None:
    for word in ("<<EOF", "<<'EOF'", '<<"EOF"', "<<-EOF", "<<-'EOF'", '<<EO"F"', "<< EOF", "<<- EOF"):
        doc = containerfile.parse_heredoc(word)
        assert doc is not None and doc.name == "EOF", word
    for word in ("", "EOF", "<<", "<<-", "<EOF", "<<<EOF", "<<EOF sh"):
        assert containerfile.parse_heredoc(word) is None, word
    for word in ("<<'EOF", '<<"EOF', "<<EOF'", '<<EOF"'):
        with pytest.raises(ShellError):
            containerfile.parse_heredoc(word)


# Flags, JSON and shell forms, arguments


def test_flags_are_split_off_with_quotes_removed() -> None:
    ins = only("COPY --chown=a:b --chmod=\"0755\" --from='s' --exclude=a\\ b src dst")
    assert ins.flags == ("--chown=a:b", "--chmod=0755", "--from=s", "--exclude=a b")
    assert ins.value == ("src", "dst")
    assert only("RUN --network=none -- --not-a-flag").flags == ("--network=none",)
    assert only("RUN --network=none -- --not-a-flag").value == ("--not-a-flag",)
    assert only("COPY --from x a b").flags == ("--from",)


@pytest.mark.parametrize(
    ("line", "value", "is_json"),
    [
        ('CMD ["a", "b c"]', ("a", "b c"), True),
        ("CMD []", (), True),
        ("RUN [ -f /etc/motd ]", ("[ -f /etc/motd ]",), False),
        ("RUN [[ -f /etc/motd ]]", ("[[ -f /etc/motd ]]",), False),
        ("RUN ['a']", ("['a']",), False),
        ("COPY [Mm]akefile /src/", ("[Mm]akefile", "/src/"), False),
        ('COPY ["a b", "/c d/"]', ("a b", "/c d/"), True),
        ("VOLUME /a  /b", ("/a", "/b"), False),
        ("ENTRYPOINT /bin/sh -c  'x'", ("/bin/sh -c  'x'",), False),
        ('HEALTHCHECK --interval=5s CMD ["curl", "x"]', ("CMD", "curl", "x"), True),
        ("HEALTHCHECK CMD curl  x", ("CMD", "curl  x"), False),
        ("HEALTHCHECK NONE", ("NONE",), False),
        ("FROM a  AS  b", ("a", "AS", "b"), False),
        ("EXPOSE 80  443/udp", ("80", "443/udp"), False),
        ("USER  a b", ("a b",), False),
        ('ARG A=1 B="x y" C', ("A=1", 'B="x y"', "C"), False),
        ('ENV A=1 B="x y"', ("A", "1", "B", '"x y"'), False),
        ("ENV A  b c", ("A", "b c"), False),
        ("LABEL a\\ b=c", ("a\\ b", "c"), False),
        ("ONBUILD RUN x", ("RUN", "x"), False),
        ("FROBNICATE a b", (), False),
    ],
)
def test_arguments(line: str, value: tuple[str, ...], is_json: bool) -> None:
    ins = only(line)
    assert (ins.value, ins.json) == (value, is_json)


@pytest.mark.parametrize(
    ("text", "error"),
    [
        ("FROM x\nENV PATH\n", "ENV must have two arguments"),
        ("FROM x\nLABEL a=1 b\n", 'LABEL: Syntax error - can\'t find = in "b". Must be of the form: name=value'),
        ('FROM x\nCMD [ "echo", [ "nested json" ] ]\n', "CMD: when using JSON array syntax, arrays must be"),
        ('FROM x\nCOPY ["a", 1]\n', "COPY: when using JSON array syntax, arrays must be"),
        ("FROM x\nONBUILD ENV A\n", "ONBUILD: ENV must have two arguments"),
    ],
)
def test_parser_errors(text: str, error: str) -> None:
    [(line, message)] = parse(text).errors
    assert line == 2 and message.startswith(error)


def test_text_after_a_json_array_is_read_differently_by_buildah() -> None:
    # BuildKit parses the whole rest as JSON, fails, and runs it in a shell; Buildah decodes the leading array.
    ins = only('RUN ["true"] && echo')
    assert (ins.value, ins.json) == (('["true"] && echo',), False)
    assert parse('RUN ["true"] && echo').divergences[0][1].startswith('RUN: text after the JSON array ["true"]')


# The shell lexer


@pytest.mark.parametrize(
    ("word", "result"),
    [
        ("$A ${A}", "a a"),
        ("${UNSET:-d} ${EMPTY:-d} ${EMPTY-d} ${UNSET-d}", "d d  d"),
        ("${A:+x} ${EMPTY:+x} ${EMPTY+x} ${UNSET+x}", "x  x "),
        ("${FILE%.gz} ${FILE%%.*} ${FILE#*.} ${FILE##*.}", "a.tar a tar.gz gz"),
        ("${FILE/a/o} ${FILE//a/o}", "o.tar.gz o.tor.gz"),
        ("'$A' \"$A\" \\$A", "$A a $A"),
        ('"a\\"b"', 'a"b'),
        ("$1 $ ${A:?unused}", " $ a"),
    ],
)
def test_substitution(word: str, result: str) -> None:
    env: dict[str, str | None] = {"A": "a", "EMPTY": "", "FILE": "a.tar.gz"}
    assert Lexer(env=env).word(word) == result


@pytest.mark.parametrize(
    ("word", "message"),
    [
        ("${X:?set X first}", "X: set X first"),
        ("${X:?}", "X: is not allowed to be unset"),
        ("${EMPTY:?}", "EMPTY: is not allowed to be empty"),
        ("${X?}", "X: is not allowed to be unset"),
        ("${}", "syntax error: bad substitution"),
        ("${:a}", "syntax error: bad substitution"),
        ("${A", "syntax error: missing '}'"),
        ("${A:-x", "syntax error: missing '}'"),
        ("${A:#x}", "unsupported modifier (:#) in substitution"),
        ("${A!x}", "unsupported modifier (!) in substitution"),
        ("'abc", "unexpected end of statement while looking for matching single-quote"),
        ('"abc', "unexpected end of statement while looking for matching double-quote"),
    ],
)
def test_substitution_errors(word: str, message: str) -> None:
    with pytest.raises(ShellError) as caught:
        Lexer(env={"A": "a", "EMPTY": ""}).word(word)
    assert str(caught.value) == message


def test_unknown_variables_are_left_alone() -> None:
    # In a stage built on an image, any name the stage does not set may come from the image.
    lexer = Lexer(env={"A": "a", "DECLARED": None}, complete=False)
    assert lexer.word("$A ${IMAGE_VAR:?x} $IMAGE_VAR") == "a ${IMAGE_VAR:?x} $IMAGE_VAR"
    assert lexer.uncertain
    with pytest.raises(ShellError, match="DECLARED: unset"):
        lexer.word("${DECLARED:?unset}")


def test_words_and_the_modifiers_buildah_lacks() -> None:
    lexer = Lexer(env={"A": "x y"})
    assert lexer.words('$A "b c" d\\ e') == ["x", "y", "b c", "d e"]
    lexer.word("${A-x} ${A:-x} ${B+y}")
    assert lexer.plain_modifiers == {"${A-...}", "${B+...}"}
