"""What `os check` accepts and refuses, file by file: BuildKit's current grammar and instruction rules, and the
features Buildah 1.39 (the builder) lacks or reads differently. Every case is our own, derived from BuildKit's
parser and frontend tests and checked against Buildah 1.39.3 where the two might differ.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from arkes import systemfile

BASE = "FROM localhost/arkes:base\n"
BUILDER = "the builder (Buildah 1.39) does not support it"


def check(tmp_path: Path, text: str, files: tuple[str, ...] = ()) -> systemfile.Report:
    for name in files:
        (tmp_path / name).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / name).write_text("x\n")
    path = tmp_path / "Systemfile"
    path.write_text(text)
    return systemfile.check(path)


def strip(tmp_path: Path, found: tuple[str, ...]) -> list[str]:
    return [line.removeprefix(f"{tmp_path}/Systemfile:") for line in found]


VALID: dict[str, tuple[str, tuple[str, ...]]] = {
    "heredoc": (BASE + "RUN <<EOF\nset -e\necho hi\nEOF\n", ()),
    "two heredocs": (BASE + "RUN <<A <<B\necho a\nA\necho b\nB\n", ()),
    "heredocs on descriptors": (BASE + "RUN cat /dev/fd/3 3<<A && cat <<B\na\nA\nb\nB\n", ()),
    "chomped heredoc": (BASE + "RUN <<-EOF\n\techo hi\n\tEOF\n", ()),
    "quoted delimiters": (BASE + "RUN <<'EOF'\necho $HOME\nEOF\nRUN <<\"EOF\"\necho $HOME\nEOF\n", ()),
    "heredoc with a command": (BASE + "RUN python3 <<EOF\nprint('hi')\nEOF\n", ()),
    "heredoc to a program's stdin": (BASE + "RUN <<EOF sh -s -- a\necho $1\nEOF\n", ()),
    "heredoc piped": (BASE + "RUN <<'EOF' | python3\nprint('hi')\nEOF\n", ()),
    "copy heredoc": (BASE + "COPY <<EOF /etc/motd\nhello $USER\nEOF\n", ()),
    "copy two heredocs": (BASE + "COPY --chmod=0644 <<A <<B /etc/dir/\na\nA\nb\nB\n", ()),
    "copy heredoc and a file": (BASE + "COPY <<EOF file /etc/\nx\nEOF\n", ("file",)),
    "heredoc body like instructions": (BASE + "RUN <<EOF\nFROM scratch\nRUNN x\nCOPY a b\nEOF\n", ()),
    "onbuild heredoc": (BASE + "ONBUILD RUN <<EOF\necho hi\nEOF\n", ()),
    "cache mount": (BASE + "RUN --mount=type=cache,target=/var/cache/apt,id=apt,sharing=locked apt-get update\n", ()),
    "cache mount options": (
        BASE + "RUN --mount=type=cache,dst=/c,sharing=shared,mode=0700,uid=1000,gid=1000,ro true\n"
        "RUN --mount=type=cache,destination=/c,readwrite,source=/ true\n",
        (),
    ),
    "bind mounts": (
        "FROM localhost/arkes:base AS tools\n"
        + BASE
        + "RUN --mount=type=bind,from=tools,source=/usr/bin,target=/t,ro /t/true\n"
        "RUN --mount=target=/src --mount=type=bind,src=.,dst=/ctx,readonly true\n",
        (),
    ),
    "tmpfs mount": (BASE + "RUN --mount=type=tmpfs,target=/tmp true\n", ()),
    "secret mounts": (
        BASE + "RUN --mount=type=secret,id=token,target=/run/token,required=true,mode=0400,uid=0,gid=0 true\n"
        "RUN --mount=type=secret,id=token,required true\n",
        (),
    ),
    "ssh mounts": (BASE + "RUN --mount=type=ssh true\nRUN --mount=type=ssh,id=gh,target=/s,required=false true\n", ()),
    "mount with variables": (BASE + "ARG DIR=/cache\nRUN --mount=type=cache,target=$DIR true\n", ()),
    "networks": (BASE + "RUN --network=default a\nRUN --network=none b\nRUN --network=host c\n", ()),
    "copy flags": (
        BASE + "COPY --chown=1000:1000 --chmod=0755 --link=false --parents=false --exclude=*.txt"
        " --exclude=*.md dir /opt/\n",
        ("dir/a",),
    ),
    "add flags": (
        BASE + "ADD --checksum=sha256:24454f830cdb571e2c4ad15481119c43b3cafd48dd869a9b2945d1036d1dc68d"
        " https://example.com/a.tar.gz /tmp/\nADD --keep-git-dir=false --link=false https://example.com/b /b\n",
        (),
    ),
    "copy from stage, index and image": (
        "FROM fedora AS build\nRUN make\nFROM fedora\nRUN make\n"
        + BASE
        + "COPY --from=build /a /a\nCOPY --from=1 /b /b\nCOPY --from=quay.io/x/y:1 /c /c\n",
        (),
    ),
    "arg before from": ("ARG TAG=base\nARG REGISTRY=localhost\nFROM $REGISTRY/arkes:${TAG}\n", ()),
    "directives": ("\ufeff# escape=`\n# syntax=docker/dockerfile:1\n# CHECK=skip=all;error=true\n" + BASE, ()),
    "shell tests and globs": (
        BASE + 'RUN [[ -f /etc/os-release ]]\nRUN [ -f /etc/os-release ]\nRUN [ "$A" = b ] || true\n'
        "COPY [Mm]akefile /src/\n",
        ("Makefile",),
    ),
    "double star matches no directory": (BASE + "COPY conf/**/app.conf /etc/\n", ("conf/app.conf",)),
    "double star matches deep": (BASE + "COPY conf/**/*.conf /etc/\n", ("conf/a/b/c.conf",)),
    "unused unnamed stage": ("FROM fedora\nRUN true\n" + BASE, ()),
    "healthcheck": (
        BASE + "HEALTHCHECK --interval=30s --timeout=1m30s --start-period=1.5s --start-interval=500ms --retries=3"
        " CMD curl -f http://localhost/\nHEALTHCHECK NONE\n",
        (),
    ),
    "substitutions": (
        BASE + 'ARG V=1.2\nENV A=${V:-0} B=${V:+set} C=${V%.*} D="${V:?needs V}"\nWORKDIR /opt/$V\nUSER ${U:-root}\n',
        (),
    ),
    "substitution set by a build argument": (
        'ARG FOO=${FOO:?"custom error"}\nARG TAG\nFROM localhost/arkes:${TAG:?no-tag}\nARG FOO=${FOO:?x}\n',
        (),
    ),
    "platform": ("FROM --platform=$BUILDPLATFORM localhost/arkes:base\n", ()),
    "expose and stopsignal": (BASE + "EXPOSE 80 443/tcp 8000-8010/udp\nSTOPSIGNAL SIGRTMIN+3\nSTOPSIGNAL 9\n", ()),
    "json forms": (BASE + 'CMD ["/sbin/init"]\nENTRYPOINT []\nVOLUME ["/data"]\nRUN ["/bin/true"]\n', ()),
    "onbuild": (BASE + "ONBUILD COPY . /src\nONBUILD RUN make\n", ()),
    "maintainer": (BASE + "MAINTAINER someone\n", ()),
}


@pytest.mark.parametrize("name", sorted(VALID))
def test_valid(tmp_path: Path, name: str) -> None:
    text, files = VALID[name]
    build_args = {"TAG": "base", "FOO": "bar"} if name == "substitution set by a build argument" else None
    for each in files:
        (tmp_path / each).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / each).write_text("x\n")
    (tmp_path / "Systemfile").write_text(text)
    assert systemfile.check(tmp_path / "Systemfile", build_args=build_args).errors == ()


def test_valid_files_give_warnings_where_buildkit_does(tmp_path: Path) -> None:
    assert strip(tmp_path, check(tmp_path, VALID["maintainer"][0]).warnings) == [
        "2: MAINTAINER is deprecated: use LABEL org.opencontainers.image.authors=..."
    ]
    assert strip(tmp_path, check(tmp_path, VALID["unused unnamed stage"][0]).warnings)[0].startswith("3: extra FROM")
    warned = check(tmp_path, BASE + "HEALTHCHECK --interval=5s NONE\nARG --x A\nRUN a \\\n\n  b\n").warnings
    assert strip(tmp_path, warned) == [
        "2: HEALTHCHECK ignores flags: --interval=5s has no effect",
        "2: HEALTHCHECK has no effect: the builder (Buildah 1.39) writes OCI images, which cannot hold it",
        "3: ARG ignores flags: --x has no effect",
        "5: RUN: empty continuation line (BuildKit warns that a future release will refuse it)",
    ]


INVALID: list[tuple[str, str]] = [
    # Flags, per instruction as BuildKit defines them
    ("COPY --form=x a b", "COPY: unknown flag --form (did you mean --from?)"),
    ("COPY --from x /a /b", "COPY: flag --from is missing a value (write --from=VALUE)"),
    ("COPY --link=maybe a b", "COPY --link: expecting true or false, not 'maybe'"),
    ("COPY --link= a b", "COPY --link: missing a value"),
    ("COPY --from=a --from=b /x /y", "COPY: duplicate flag --from"),
    ("RUN --network=none --network=host true", "RUN: duplicate flag --network"),
    ("ENV --foo=bar A=b", "ENV takes no flags, not --foo=bar"),
    ("LABEL --x=y a=b", "LABEL takes no flags, not --x=y"),
    ("MAINTAINER --boo joe@example.com", "MAINTAINER takes no flags, not --boo"),
    ("ADD --from=x a b", "ADD: unknown flag --from"),
    ("COPY --chmod=rwx a b", "COPY --chmod=rwx: not an octal mode between 0 and 07777 (nor a symbolic one)"),
    ("COPY --chmod=999 a b", "COPY --chmod=999: not an octal mode between 0 and 07777 (nor a symbolic one)"),
    ("COPY --chmod=10000 a b", "COPY --chmod=10000: not an octal mode between 0 and 07777 (nor a symbolic one)"),
    # HEALTHCHECK
    ("HEALTHCHECK --interval=5 CMD true", "HEALTHCHECK --interval=5: not a duration (write e.g. 30s, 1m30s, 500ms)"),
    ("HEALTHCHECK --timeout=abc CMD true", "HEALTHCHECK --timeout=abc: not a duration"),
    ("HEALTHCHECK --start-period=50us CMD true", "HEALTHCHECK --start-period=50us: cannot be less than 1ms"),
    ("HEALTHCHECK --start-interval=-1s CMD true", "HEALTHCHECK --start-interval=-1s: cannot be less than 1ms"),
    ("HEALTHCHECK --retries=x CMD true", "HEALTHCHECK --retries=x: not a whole number"),
    ("HEALTHCHECK --retries=-1 CMD true", "HEALTHCHECK --retries=-1: --retries cannot be negative"),
    ("HEALTHCHECK --foo=1 CMD true", "HEALTHCHECK: unknown flag --foo"),
    ("HEALTHCHECK --interval=1s --interval=2s CMD true", "HEALTHCHECK: duplicate flag --interval"),
    ("HEALTHCHECK CMD", "HEALTHCHECK needs NONE, or CMD followed by a command"),
    ("HEALTHCHECK NONE x", "HEALTHCHECK needs NONE, or CMD followed by a command"),
    ("HEALTHCHECK CURL x", "HEALTHCHECK needs NONE, or CMD followed by a command"),
    # RUN
    ("RUN --network=bridge true", "RUN --network=bridge: invalid network mode (use default, none or host)"),
    ("RUN --security=bogus true", "RUN --security=bogus: not valid (use insecure or sandbox)"),
    ("RUN --mont=type=cache,target=/c true", "RUN: unknown flag --mont (did you mean --mount?)"),
    ("RUN --mount=type=tmp,target=/t true", "RUN --mount=type=tmp,target=/t: unsupported mount type 'tmp' (did you"),
    ("RUN --mount=typ=cache,target=/c true", "RUN --mount=typ=cache,target=/c: unexpected key 'typ' in 'typ=cache'"),
    ("RUN --mount=type=bind,target=/t,ro=maybe true", "RUN --mount=type=bind,target=/t,ro=maybe: invalid value for ro"),
    ("RUN --mount=type=bind,target=/t,required true", "RUN --mount=type=bind,target=/t,required: unexpected key"),
    ("RUN --mount=required,type=secret,id=a true", "RUN --mount=required,type=secret,id=a: unexpected key 'requi"),
    ("RUN --mount=type=cache,target=/c,size=1g true", "RUN --mount=type=cache,target=/c,size=1g: unexpected key 'size"),
    ("RUN --mount=type=cache,target=/c,sharing=all true", "RUN --mount=type=cache,target=/c,sharing=all: unsupporte"),
    ("RUN --mount=type=cache,target=/c,mode=abc true", "RUN --mount=type=cache,target=/c,mode=abc: invalid value ab"),
    ("RUN --mount=type=cache,target=/c,uid=-1 true", "RUN --mount=type=cache,target=/c,uid=-1: invalid value -1 f"),
    ("RUN --mount=type=bind,target=/t,mode=0755 true", "RUN --mount=type=bind,target=/t,mode=0755: mode not allowe"),
    ("RUN --mount=type=bind,target=/t,foo true", "RUN --mount=type=bind,target=/t,foo: invalid field 'foo' must be"),
    ("RUN --mount=type=bind,target=/ true", 'RUN --mount=type=bind,target=/: invalid mount target "/"'),
    ("RUN --mount=type=bind,target=/t,sharing=shared true", "RUN --mount=type=bind,target=/t,sharing=shared: invali"),
    ("RUN --mount=type=secret,id=a,from=x true", "RUN --mount=type=secret,id=a,from=x: secret mount should not"),
    ("RUN --mount=type=secret,src=a,id=b true", "RUN --mount=type=secret,src=a,id=b: both source and id can't"),
    ("ARG S=x\nRUN --mount=from=$S,target=/t true", "RUN --mount=from=$S,target=/t: 'from' doesn't support"),
    ("RUN --mount=type=cache,target=/c", "RUN needs a command"),
    # COPY and ADD
    ("COPY /foo <<EOF\nEOF", "COPY cannot accept a heredoc as a destination"),
    ("COPY onlyone", "COPY needs a source and a destination"),
    ("COPY http://example.com/a /a", "COPY source http://example.com/a is a URL or Git repository: COPY cannot"),
    ("ARG F=b\nCOPY --from=$F /a /b", "COPY --from=$F: variable expansion is not supported for --from"),
    ("COPY --from=7 /a /b", "COPY --from=7: invalid stage index 7 (the file has 1 stages)"),
    ("ADD --checksum=sha256:00 a /a", "ADD --checksum requires HTTP(S) or Git sources"),
    ("ADD --checksum=sha256:00 https://x/a https://x/b /d/", "ADD --checksum can't be specified for multiple sou"),
    # Other instructions
    ('VOLUME [""]', "VOLUME specified can not be an empty string"),
    ('VOLUME ["  "]', "VOLUME specified can not be an empty string"),
    ("ARG EMPTY=\nVOLUME $EMPTY", "VOLUME specified can not be an empty string"),
    ("EXPOSE 80/xyz", "EXPOSE: invalid port '80/xyz': invalid proto 'xyz'"),
    ("EXPOSE 70000", "EXPOSE: invalid port '70000': a port is a number from 0 to 65535"),
    ("STOPSIGNAL FOO", "STOPSIGNAL: invalid signal 'FOO' (use a name such as SIGTERM, or a number)"),
    ("SHELL []", 'SHELL needs a JSON array such as ["/bin/sh", "-c"]'),
    ("ONBUILD ONBUILD RUN x", "ONBUILD: ONBUILD is not allowed as an ONBUILD trigger"),
    ("ONBUILD MAINTAINER me", "ONBUILD: MAINTAINER is not allowed as an ONBUILD trigger"),
    ("ONBUILD COPY --form=x a b", "ONBUILD COPY: unknown flag --form (did you mean --from?)"),
    ('SHELL ["/bin/bash", "-c"]', "SHELL: the builder (Buildah 1.39) drops it (it writes OCI images, which have no"),
    # Substitutions
    ('ARG UNSET\nENV A="${UNSET:?set UNSET first}"', "ENV: UNSET: set UNSET first"),
    ("ARG VERSION\nENV V=${VERSION:?}", "ENV: VERSION: is not allowed to be unset"),
    ("ENV A=${}", "ENV: syntax error: bad substitution"),
    ("WORKDIR ${A", "WORKDIR: syntax error: missing '}'"),
    ('ENV A="abc', "ENV: unexpected end of statement while looking for matching double-quote"),
    ("ARG X\nCOPY <<EOF /a\n${X:?x}\nEOF", "COPY: X: x"),
    # Heredocs
    ("RUN <<EOF\necho", "unterminated heredoc: RUN opens <<EOF but no line 'EOF' closes it"),
    ("RUN cat <<- EOF\nEOF", "RUN: no space is allowed after '<<-' ('<<- EOF'): it is not a heredoc"),
]


@pytest.mark.parametrize(("body", "message"), INVALID)
def test_invalid(tmp_path: Path, body: str, message: str) -> None:
    errors = strip(tmp_path, check(tmp_path, BASE + body + "\n").errors)
    line = 3 if body.startswith("ARG ") and "\n" in body else 2  # after BASE, and after the ARG that sets it up
    assert [e for e in errors if e.startswith(f"{line}: {message}")], errors


BUILDER_GAPS: list[tuple[str, str]] = [
    # What BuildKit accepts and Buildah 1.39 refuses (each checked with Buildah 1.39.3)
    ("RUN --security=insecure true", "RUN --security"),
    ("RUN --device=/dev/fuse true", "RUN --device"),
    ("COPY --link=TRUE a /a", "COPY --link=TRUE: a value in upper case"),
    ("COPY --parents --from=img a /a", "COPY --parents with --from"),
    ("COPY --parents <<EOF /a\nx\nEOF", "COPY --parents of a heredoc"),
    ("ADD --keep-git-dir https://example.com/r.git /r", "ADD --keep-git-dir"),
    ("ADD --unpack=true a /a", "ADD --unpack"),
    ("COPY --chown= a /a", "COPY --chown= with an empty value"),
    ("COPY --from= a /a", "COPY --from= with an empty value"),
    ("COPY --chmod=u+x a /a", "COPY --chmod=u+x: a symbolic mode (write it in octal, such as 0755)"),
    ("HEALTHCHECK --retries=0 CMD true", "HEALTHCHECK --retries=0 (it must be at least 1)"),
    ("HEALTHCHECK --interval=0s CMD true", "HEALTHCHECK --interval=0s: a zero interval (leave the flag out instead)"),
    ("RUN --mount=type=tmpfs,target=/t,size=64m true", "RUN --mount=type=tmpfs,target=/t,size=64m: the key 'size'"),
    ("RUN --mount=type=tmpfs,target=/t,rw true", "RUN --mount=type=tmpfs,target=/t,rw: the key 'rw' for a tmpfs"),
    ("RUN --mount=type=cache,target=/c,sharing=private true", "RUN --mount=type=cache,target=/c,sharing=private:"),
    ("RUN --mount=type=secret,id=s,env=TOKEN true", "RUN --mount=type=secret,id=s,env=TOKEN: the key 'env'"),
    ("RUN --mount=type=secret,target=/s true", "RUN --mount=type=secret,target=/s: a secret mount without id="),
    ("RUN --mount=type=bind,target=/t,readonly=true true", "RUN --mount=type=bind,target=/t,readonly=true: a value"),
    ("RUN --mount=type=bind,target=/t,rw true", "RUN --mount=type=bind,target=/t,rw: a read-write bind mount"),
    ("RUN --mount=type=bind,Target=/t true", "RUN --mount=type=bind,Target=/t: the key 'Target' in upper case"),
    ("RUN --mount=type=TMPFS,target=/t true", "RUN --mount=type=TMPFS,target=/t: the type 'TMPFS' in upper case"),
    ("RUN --mount=type=cache,id=x true", "RUN --mount=type=cache,id=x: a cache mount without target="),
    ("RUN --mount=type=ssh,required true", "RUN --mount=type=ssh,required: required without a value"),
    ("ENV A=${B-x}", "ENV: ${B-...} without ':' (write ${NAME:-...})"),
    ("ARG TARGETPLATFORM=linux/amd64", "ARG: a default for TARGETPLATFORM, which the builder sets itself"),
    ("RUN <<EOF\n#!/bin/sh\necho hi\nEOF", "RUN <<EOF: a heredoc script that starts with #!"),
]


@pytest.mark.parametrize(("body", "message"), BUILDER_GAPS)
def test_buildah_gaps(tmp_path: Path, body: str, message: str) -> None:
    errors = strip(tmp_path, check(tmp_path, BASE + body + "\n", ("a",)).errors)
    assert [e for e in errors if e.startswith(f"2: {message}") and e.endswith(BUILDER)], errors


DIFFERENCES: list[tuple[str, int, str]] = [
    # What the two parsers read differently: refused, since the build would not do what BuildKit does
    ('RUN ["true"] && echo done\n', 2, 'RUN: text after the JSON array ["true"]: BuildKit runs all of it'),
    ("ENV A=a\\\\\nENV B=b\n", 2, "the line ends with an escaped '\\': BuildKit ends the instruction here"),
]


@pytest.mark.parametrize(("body", "line", "message"), DIFFERENCES)
def test_parser_differences(tmp_path: Path, body: str, line: int, message: str) -> None:
    assert [e for e in strip(tmp_path, check(tmp_path, BASE + body).errors) if e.startswith(f"{line}: {message}")]


def test_escape_directive_after_another_is_accepted(tmp_path: Path) -> None:
    assert check(tmp_path, "# syntax=docker/dockerfile:1\n# escape=`\n" + BASE).errors == ()


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("FROM a AS s\nCOPY --from=s /a /b\n" + BASE, ["2: COPY --from=s: names its own stage (circular dependency)"]),
        (
            BASE + "COPY --from=later /a /b\nFROM fedora AS later\n",
            ["2: COPY --from=later: names a later stage; a stage can only use stages defined before it"],
        ),
        (
            "FROM a AS one\nCOPY --from=two /a /b\nFROM b AS two\nCOPY --from=one /a /b\n",
            [
                "2: COPY --from=two: names a later stage; a stage can only use stages defined before it and that stage"
                " depends on this one (circular dependency)"
            ],
        ),
        (
            BASE + "RUN --mount=from=later,target=/t true\nFROM fedora AS later\n",
            ["2: RUN --mount from=later: names a later stage; a stage can only use stages defined before it"],
        ),
        (
            "FROM later\nFROM fedora AS later\n",
            [
                "1: FROM later: names the stage defined later, at line 2: a stage can only build on an earlier one;"
                " BuildKit and the builder look for an image of that name"
            ],
        ),
        (
            "FROM a AS tools\n" + BASE + "RUN --mount=from=0,target=/t true\n",
            [
                "3: RUN --mount from=0: BuildKit finds a mount's stage by name only, so it would pull an image of that"
                " name; name the stage with AS and use the name"
            ],
        ),
        ("FROM a AS Base\nFROM Base\n", ["2: FROM Base: the stage is named 'Base': BuildKit and the builder"]),
    ],
)
def test_stage_references(tmp_path: Path, text: str, expected: list[str]) -> None:
    errors = strip(tmp_path, check(tmp_path, text).errors)
    assert len(errors) == len(expected) and all(e.startswith(x) for e, x in zip(errors, expected, strict=True)), errors


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ('ARG FOO=${FOO:?"custom error"}\n' + BASE, "1: ARG: FOO: custom error"),
        ("ARG TAG\nFROM localhost/arkes:${TAG:?no-tag}\n", "2: FROM: TAG: no-tag"),
        ("FROM scratch\nLABEL a=${UNDECLARED:?}\n", "2: LABEL: UNDECLARED: is not allowed to be unset"),
        ('FROM ""\n', "1: FROM image '\"\"' is empty once ARGs are substituted"),
        ("FROM ${REGISTRY-x}/arkes:base\n", "1: FROM: ${REGISTRY-...} without ':' (write ${NAME:-...})"),
        ("# check=skip=all;foo=bar\n" + BASE, "1: invalid check option 'foo' in # check="),
        ("# check=error=maybe\n" + BASE, "1: # check=error= takes true or false, not 'maybe'"),
        (BASE + "LABEL a=" + "x" * 70000 + "\n", "2: line longer than 65535 bytes: BuildKit stops reading here"),
    ],
)
def test_whole_file_errors(tmp_path: Path, text: str, expected: str) -> None:
    errors = strip(tmp_path, check(tmp_path, text).errors)
    assert [e for e in errors if e.startswith(expected)], errors


def test_every_problem_of_a_broken_file_in_line_order(tmp_path: Path) -> None:
    text = (
        BASE  # 1
        + "COPY --form=x a b\n"  # 2
        + "RUN --mount=type=tmp,target=/t true\n"  # 3
        + "HEALTHCHECK --retries=-1 CMD true\n"  # 4
        + "RUN <<EOF\n"  # 5
        + "echo\n"  # 6
        + "EOF\n"  # 7
        + "COPY --link=maybe a b\n"  # 8
        + "RUNN x\n"  # 9
    )
    lines = [int(e.split(":")[0]) for e in strip(tmp_path, check(tmp_path, text, ("a",)).errors)]
    assert lines == sorted(lines) and set(lines) == {2, 3, 4, 8, 9}


def test_run_heredoc_model(tmp_path: Path) -> None:
    report = check(tmp_path, BASE + "RUN --network=none python3 <<'PY'\nprint('$HOME')\nPY\n")
    run = report.systemfile.instructions[1]
    assert (run.cmd, run.value, run.flags, run.start_line, run.end_line) == (
        "RUN",
        ("python3 <<'PY'",),
        ("--network=none",),
        2,
        4,
    )
    assert run.heredocs == (systemfile.Heredoc("PY", "print('$HOME')\n", False, False, 0),)
    assert run.original == "RUN --network=none python3 <<'PY'\nprint('$HOME')\nPY"


def test_base_image_variables_decide_required_substitutions(tmp_path: Path) -> None:
    # BuildKit substitutes with what the base image sets, and knows that anything else is unset.
    path = tmp_path / "Systemfile"
    path.write_text(BASE + "WORKDIR /${HOME:?x}\nWORKDIR /${DATA:?set DATA with ENV or ARG}\nRUN echo ${DATA:?x}\n")
    seen: list[str] = []

    def image_env(ref: str) -> dict[str, str] | None:
        seen.append(ref)
        return {"HOME": "/root", "PATH": "/usr/bin"}

    found = strip(tmp_path, systemfile.check(path, image_env=image_env).errors)
    assert found == ["3: WORKDIR: DATA: set DATA with ENV or ARG"] and seen == ["localhost/arkes:base"]
    # Without the image at hand, the image may set DATA: the builder decides.
    assert not systemfile.check(path, image_env=lambda ref: None).errors
    assert not systemfile.check(path).errors
