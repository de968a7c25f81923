"""Entry point: logging, dispatch, and the one place where errors become messages and exit codes."""

from __future__ import annotations

import sys
from collections.abc import Sequence

from arkes import cli, log
from arkes.errors import ArkesError, ValidationError


def main(argv: Sequence[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    args = cli.parser(argv).parse_args(argv)
    log.setup(args.debug)
    try:
        code: int = args.func(args)
        return code
    except BrokenPipeError:
        # The reader of our output went away (`os status --json | head`): nothing left to say.
        sys.stderr.close()
        return 1
    except KeyboardInterrupt:
        log.error("interrupted")
        return 130
    except ValidationError as e:
        if args.debug:
            _traceback()
        for problem in e.problems:
            log.error(f"error: {problem}")
        if e.hint:
            log.error(f"hint: {e.hint}")
        return e.exit_code
    except ArkesError as e:
        if args.debug:
            _traceback()
        log.error(f"error: {e.message}")
        if e.hint:
            log.error(f"hint: {e.hint}")
        return e.exit_code
    except OSError as e:
        if args.debug:
            _traceback()
        log.error(f"error: {e.strerror or e}{f': {e.filename}' if e.filename else ''}")
        if e.errno == 28:
            log.error("hint: free some space (`os prune`) and try again")
        return 1
    except Exception as e:
        if not _is_glib_error(e):
            raise
        # libostree, GLib and Gio report through GLib.Error; whatever no caller wrapped still becomes one message.
        if args.debug:
            _traceback()
        log.error(f"error: {getattr(e, 'message', None) or e}")
        log.error("hint: run the command again with --debug to see where it failed")
        return 1


def _traceback() -> None:
    import traceback  # for --debug alone: a command that succeeds never needs it

    traceback.print_exc()


def _is_glib_error(e: BaseException) -> bool:
    """A GLib.Error, recognized without importing PyGObject (verbs like `os check` never load it)."""
    return any(c.__module__.startswith("gi.") and c.__name__ in ("GError", "Error") for c in type(e).__mro__)


if __name__ == "__main__":
    sys.exit(main())
