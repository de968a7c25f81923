"""Typed errors. Library code raises these; `arkes.__main__.main` turns them into messages and exit codes."""

from __future__ import annotations


class ArkesError(Exception):
    """A failure the user can understand: a message and, where one helps, a hint."""

    exit_code = 1

    def __init__(self, message: str, hint: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.hint = hint


class UsageError(ArkesError):
    """Wrong invocation or invalid input (exit 2)."""

    exit_code = 2


class ValidationError(UsageError):
    """A Systemfile or other input with problems; `problems` holds every `PATH:LINE: message`."""

    def __init__(self, problems: list[str], hint: str | None = None) -> None:
        super().__init__("\n".join(problems), hint)
        self.problems = problems


class ToolMissingError(ArkesError):
    """An external program is not installed."""


class CommandError(ArkesError):
    """An external program failed; the message carries the tail of its output."""


class LockedError(ArkesError):
    """Another `os` process holds the sysroot lock."""


class BuildError(CommandError):
    """`podman build` failed."""


class LintError(ArkesError):
    """The bootability gate refused a tree; `failures` lists every failed check."""

    def __init__(self, failures: list[str], hint: str = "") -> None:
        super().__init__(
            "the image is not bootable:\n" + "\n".join(f"  - {f}" for f in failures),
            hint=hint or "build FROM localhost/arkes:base (or an image built on it) and end with `RUN post_build`",
        )
        self.failures = failures


class SecretError(LintError):
    """The gate found private keys in a tree: no image may carry one unless the person allowed it by path."""

    def __init__(self, failures: list[str], hint: str) -> None:
        listed = "\n".join(f"  - {f}" for f in failures)
        ArkesError.__init__(self, "the image holds private keys:\n" + listed, hint=hint)
        self.failures = failures
