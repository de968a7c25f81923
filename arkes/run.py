"""The one place that starts external programs.

argv is always a list, stdin is closed, the locale is fixed, the command is logged at debug level, a missing
program becomes ToolMissingError naming the package to install, and a failure becomes CommandError carrying the
tail of the program's output.
"""

from __future__ import annotations

import contextlib
import os
import shlex
import shutil
import signal
import subprocess
import threading
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, TypeVar

from arkes import log
from arkes.errors import CommandError, ToolMissingError

if TYPE_CHECKING:
    from concurrent.futures import Future

_T = TypeVar("_T")

# Which Debian package brings each program we call, for the hint of ToolMissingError.
PACKAGES = {
    "buildah": "buildah",
    "chattr": "e2fsprogs",
    "cp": "coreutils",
    "dracut": "dracut",
    "du": "coreutils",
    "eject": "eject",
    "findmnt": "util-linux",
    "grub-mkimage": "grub-common",
    "grub-mkrescue": "grub-common",
    "ionice": "util-linux",
    "journalctl": "systemd",
    "losetup": "mount",
    "lsblk": "util-linux",
    "mcopy": "mtools",
    "mkfs.ext4": "e2fsprogs",
    "mkfs.vfat": "dosfstools",
    "mksquashfs": "squashfs-tools",
    "mmd": "mtools",
    "mmdebstrap": "mmdebstrap",
    "mount": "mount",
    "nice": "coreutils",
    "openssl": "openssl",
    "ostree": "ostree",
    "partx": "util-linux",
    "podman": "podman",
    "qemu-system-x86_64": "qemu-system-x86",
    "rm": "coreutils",
    "runc": "runc",
    "sfdisk": "fdisk",
    "skopeo": "skopeo",
    "ssh-keygen": "openssh-client",
    "systemctl": "systemd",
    "umount": "mount",
    "unshare": "util-linux",
    "useradd": "passwd",
    "xorriso": "xorriso",
    "zstd": "zstd",
}

TAIL_LINES = 25
# How long a tied program may take to clean up after Ctrl-C.
TIED_GRACE = 120


@dataclass(frozen=True)
class Result:
    returncode: int
    stdout: str
    stderr: str


def _env(extra: Mapping[str, str] | None) -> dict[str, str]:
    env = dict(os.environ)
    env["LANG"] = "C.UTF-8"
    env.pop("LC_ALL", None)
    if extra:
        env.update(extra)
    return env


def which(program: str) -> str:
    path = shutil.which(program)
    if path is None:
        package = PACKAGES.get(program, program)
        raise ToolMissingError(f"{program} is not installed", hint=f"apt-get install {package}")
    return path


def tail(text: str, lines: int = TAIL_LINES) -> str:
    return "\n".join(text.rstrip().splitlines()[-lines:])


def run(
    argv: Sequence[str | os.PathLike[str]],
    *,
    check: bool = True,
    env: Mapping[str, str] | None = None,
    cwd: Path | None = None,
    input: bytes | None = None,
    what: str | None = None,
) -> Result:
    """Run a program to completion and capture its output."""
    args = [os.fspath(a) for a in argv]
    which(args[0])
    log.debug(f"+ {shlex.join(args)}")
    proc = subprocess.run(
        args,
        input=input,
        stdin=None if input is not None else subprocess.DEVNULL,
        capture_output=True,
        env=_env(env),
        cwd=cwd,
        check=False,
    )
    result = Result(
        proc.returncode,
        proc.stdout.decode("utf-8", "replace"),
        proc.stderr.decode("utf-8", "replace"),
    )
    if check and proc.returncode != 0:
        output = tail(result.stderr or result.stdout)
        raise CommandError(f"{what or args[0]} failed (exit {proc.returncode}):\n{output}")
    return result


def output_bytes(
    argv: Sequence[str | os.PathLike[str]], *, input: bytes | None = None, what: str | None = None
) -> bytes:
    """Run a filter program and return its binary output."""
    args = [os.fspath(a) for a in argv]
    which(args[0])
    log.debug(f"+ {shlex.join(args)}")
    proc = subprocess.run(
        args, input=input, stdin=None if input is not None else subprocess.DEVNULL, capture_output=True, env=_env(None)
    )
    if proc.returncode != 0:
        stderr = proc.stderr.decode("utf-8", "replace")
        raise CommandError(f"{what or args[0]} failed (exit {proc.returncode}):\n{tail(stderr)}")
    return proc.stdout


def stream(
    argv: Sequence[str | os.PathLike[str]],
    on_line: Callable[[str], None],
    *,
    env: Mapping[str, str] | None = None,
    cwd: Path | None = None,
    what: str | None = None,
    error: type[CommandError] = CommandError,
    nice: bool = False,
    tied: bool = False,
    on_interrupt: Callable[[], None] | None = None,
) -> str:
    """Run a long program, handing each output line (stdout and stderr merged) to on_line; return all output.

    nice: at lower CPU and I/O priority. tied: the program gets SIGINT when this process dies (even by kill -9),
    and on Ctrl-C we wait for it to clean up before giving up, so that it never runs on (or leaves work behind)
    unattended. on_interrupt: how to pass Ctrl-C on to it, where a SIGINT to the program itself does not.
    """
    args = [os.fspath(a) for a in argv]
    which(args[0])
    log.debug(f"+ {shlex.join(args)}")
    lines: list[str] = []

    def prepare() -> None:
        if tied:
            _die_with_parent()
        if nice:
            _lower_priority()

    with subprocess.Popen(
        args,
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        env=_env(env),
        cwd=cwd,
        preexec_fn=prepare if nice or tied else None,
    ) as proc:
        assert proc.stdout is not None
        try:
            for raw in proc.stdout:
                line = raw.decode("utf-8", "replace").rstrip("\n")
                lines.append(line)
                log.debug(line)
                on_line(line)
        except KeyboardInterrupt:
            if tied:
                # The program got the same SIGINT from the terminal; let it finish cleaning up. A SIGINT can go
                # unheard while a program is busy setting something up, so it is repeated until the program ends.
                deadline = time.monotonic() + TIED_GRACE
                while proc.poll() is None and time.monotonic() < deadline:
                    proc.send_signal(signal.SIGINT)
                    if on_interrupt is not None:
                        on_interrupt()
                    with contextlib.suppress(subprocess.TimeoutExpired):
                        proc.wait(timeout=2)
                if proc.poll() is None:
                    proc.kill()
            raise
        returncode = proc.wait()
    output = "\n".join(lines)
    if returncode != 0:
        raise error(f"{what or args[0]} failed (exit {returncode}):\n{tail(output)}")
    return output


@contextlib.contextmanager
def spawned(
    argv: Sequence[str | os.PathLike[str]], *, log_path: Path, grace: float = 10
) -> Iterator[subprocess.Popen[bytes]]:
    """Start a long-lived program (a VM) in its own session, its output going to log_path, for the length of the
    block: when the block ends, by return or by an exception, a program still running gets SIGTERM, then after
    `grace` seconds SIGKILL, and is reaped."""
    args = [os.fspath(a) for a in argv]
    which(args[0])
    log.debug(f"+ {shlex.join(args)}")
    with open(log_path, "wb") as out:
        proc = subprocess.Popen(
            args, stdin=subprocess.DEVNULL, stdout=out, stderr=subprocess.STDOUT, env=_env(None), start_new_session=True
        )
    try:
        yield proc
    finally:
        if proc.poll() is None:
            proc.terminate()
            try:
                proc.wait(timeout=grace)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()


def wait(proc: subprocess.Popen[bytes], timeout: float) -> bool:
    """Wait up to `timeout` seconds for a spawned program to end; whether it did."""
    try:
        proc.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        return False
    return True


def interactive(argv: Sequence[str | os.PathLike[str]]) -> int:
    """Run a program on this terminal (the VM console) and return its exit status."""
    args = [os.fspath(a) for a in argv]
    which(args[0])
    log.debug(f"+ {shlex.join(args)}")
    return subprocess.call(args, env=_env(None))


def _die_with_parent() -> None:
    # prctl(PR_SET_PDEATHSIG, SIGINT): the kernel signals the child when its parent exits, however it exits.
    import ctypes

    libc = ctypes.CDLL(None, use_errno=True)
    libc.prctl(1, signal.SIGINT, 0, 0, 0)


def _lower_priority() -> None:
    # Builds run beside a working system: yield the CPU and disk to it.
    os.nice(10)
    try:
        # ioprio_set(IOPRIO_WHO_PROCESS, self, class idle) via the raw syscall: no Python binding exists.
        import ctypes

        libc = ctypes.CDLL(None, use_errno=True)
        libc.syscall(251, 1, 0, (3 << 13) | 0)
    except OSError:
        pass


def in_background(func: Callable[..., _T], *args: object, **kwargs: object) -> Future[_T]:
    """Call `func` in a daemon thread: its answer (or exception) in the Future. Unlike an executor's thread, a
    daemon thread never holds the process back at its exit (an error elsewhere is reported at once)."""
    from concurrent.futures import Future  # for the verbs that work in the background alone

    answer: Future[_T] = Future()

    def call() -> None:
        try:
            answer.set_result(func(*args, **kwargs))
        except BaseException as e:
            answer.set_exception(e)

    threading.Thread(target=call, daemon=True).start()
    return answer
