"""Boot a disk image in QEMU: the serial console for people, or a command run in the guest with a verdict.

`--exec` talks to the QEMU guest agent (in every Arkēs image) over a virtio channel: it waits until the agent
answers and systemd reports the boot finished, runs the command with a shell, collects its output and exit status,
and powers the guest off. The console is read all along, to answer the boot menu when an entry is chosen and to
stop at once, with the last console lines, when the kernel panics. QEMU never outlives the command.
"""

from __future__ import annotations

import base64
import collections
import json
import os
import shutil
import socket
import tempfile
import threading
import time
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager, suppress
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from arkes import log, run
from arkes.errors import ArkesError

if TYPE_CHECKING:
    import subprocess

OVMF_CODE = Path("/usr/share/OVMF/OVMF_CODE_4M.fd")
OVMF_VARS = Path("/usr/share/OVMF/OVMF_VARS_4M.fd")
CONSOLE_TAIL = 40
# Lines after which a boot cannot succeed: a kernel panic, a failed initramfs, GRUB dropped to its shell.
PANIC_MARKERS = (
    "Kernel panic",
    "dracut: FATAL",
    "Entering emergency mode",
    # systemd's initrd (and root) emergency shell waits for a person forever: no boot comes after it.
    "Press Enter for maintenance",
    "Cannot open access to console, the root account is locked",
    "Minimal BASH-like line editing is supported",
    "grub rescue>",
)
# GRUB's help line under the menu (ASCII, whatever the terminal makes of the titles).
MENU_MARKER = "keys to select"
# The kernel's first line: a boot got past the menu.
KERNEL_MARKER = "Linux version"
DOWN = b"\x1b[B"


@dataclass(frozen=True)
class Config:
    disk: Path
    uefi: bool = False
    memory: int = 2048
    cpus: int = 2
    timeout: float = 300.0
    boot_entry: int | None = None
    console_log: Path | None = None
    # Boots that end by themselves before the one that runs the command: a kernel that panics (and reboots, with
    # panic=N), a boot check that goes back to the previous deployment. Their panics are expected.
    reboots: int = 0
    cdrom: Path | None = None  # an ISO image attached as a CD, booted first
    offline: bool = False  # the guest reaches nothing through QEMU's user network (restrict=on)


def kvm_usable() -> bool:
    """KVM only where a hardware module is loaded: a paravirtual /dev/kvm alone makes a stock kernel crawl."""
    loaded = any(Path(f"/sys/module/{m}").exists() for m in ("kvm_intel", "kvm_amd"))
    return loaded and os.access("/dev/kvm", os.R_OK | os.W_OK)


def qemu_argv(config: Config, work: Path, *, kvm: bool, interactive: bool) -> list[str]:
    """The QEMU command line; pure, so it is tested without starting anything."""
    argv = [
        "qemu-system-x86_64",
        "-name",
        "arkes",
        "-machine",
        "q35",
        "-m",
        str(config.memory),
        "-smp",
        str(config.cpus),
        "-drive",
        f"file={config.disk},format=raw,if=virtio,cache=writeback,discard=unmap",
        "-nic",
        "user,model=virtio-net-pci" + (",restrict=on" if config.offline else ""),
        "-device",
        "virtio-rng-pci",
        "-nographic",
    ]
    # Under TCG every CPU feature is emulated: with `max`, glibc and the kernel take AVX paths that cost more to
    # emulate than they save; a Debian 13 guest reached multi-user in 170 s with `max` and in 115 s with the
    # baseline x86-64 model, which is all Debian needs. ARKES_TCG_CPU picks another model.
    tcg_cpu = os.environ.get("ARKES_TCG_CPU", "qemu64")
    argv += ["-accel", "kvm", "-cpu", "host"] if kvm else ["-accel", "tcg,thread=multi", "-cpu", tcg_cpu]
    if config.cdrom is not None:
        # On the q35 machine's own SATA controller, as a CD drive of a PC is; the firmware starts it first.
        argv += ["-drive", f"file={config.cdrom},format=raw,if=none,id=cd0,media=cdrom,readonly=on"]
        argv += ["-device", "ide-cd,drive=cd0,bootindex=0"]
    if config.uefi:
        argv += [
            "-drive",
            f"if=pflash,format=raw,unit=0,readonly=on,file={OVMF_CODE}",
            "-drive",
            f"if=pflash,format=raw,unit=1,file={work / 'OVMF_VARS.fd'}",
        ]
    if interactive:
        argv += ["-serial", "mon:stdio"]
    else:
        argv += [
            "-monitor",
            "none",
            "-chardev",
            f"socket,id=console,path={work / 'console.sock'},server=on,wait=on",
            "-serial",
            "chardev:console",
            "-chardev",
            f"socket,id=qga,path={work / 'qga.sock'},server=on,wait=off",
            "-device",
            "virtio-serial",
            "-device",
            "virtserialport,chardev=qga,name=org.qemu.guest_agent.0",
            "-pidfile",
            str(work / "qemu.pid"),
        ]
    return argv


def _check_disk(config: Config) -> None:
    if not config.disk.is_file() and not config.disk.is_block_device():
        hint = "make one with `os install --disk PATH`"
        if config.cdrom is not None:
            hint = "make a blank one to install to: `truncate -s 10G PATH`"
        raise ArkesError(f"{config.disk}: no such disk image", hint=hint)
    if config.cdrom is not None and not config.cdrom.is_file():
        raise ArkesError(f"{config.cdrom}: no such ISO image", hint="make one with `os iso PATH`")
    if config.uefi and not OVMF_CODE.is_file():
        raise ArkesError("UEFI firmware (OVMF) is not installed", hint="apt-get install ovmf")


def _prepare(config: Config, work: Path) -> None:
    if config.uefi:
        shutil.copy(OVMF_VARS, work / "OVMF_VARS.fd")


def attach(config: Config) -> int:
    """Boot with the serial console on this terminal; Ctrl-A X leaves (and stops the guest)."""
    _check_disk(config)
    with tempfile.TemporaryDirectory(prefix="arkes-vm-") as tmp:
        work = Path(tmp)
        _prepare(config, work)
        log.info("booting on this terminal; log in as root; leave with Ctrl-A then X")
        return run.interactive(qemu_argv(config, work, kvm=kvm_usable(), interactive=True))


class Console:
    """Reads the serial console in a thread: keeps the last lines, notices panics, answers the boot menu."""

    def __init__(self, sock: socket.socket, log_path: Path, boot_entry: int | None, reboots: int = 0) -> None:
        self.sock = sock
        self.lines: collections.deque[str] = collections.deque(maxlen=CONSOLE_TAIL)
        self.panic: str | None = None
        self.boots = 0  # how many times the boot menu came up: one per boot
        self.reboots = reboots
        self.expected_panics: list[str] = []
        self._pending = b""  # the start of a line not complete yet
        self._kernel_started = False
        self.closed = threading.Event()
        self._boot_entry = boot_entry
        self._menu_answered = boot_entry is None
        self._log = open(log_path, "wb")  # noqa: SIM115 (closed by the reader thread)
        self._thread = threading.Thread(target=self._read, daemon=True)
        self._thread.start()

    def _read(self) -> None:
        marker = MENU_MARKER.encode()
        tail = b""  # the end of what came before, where a menu marker may have begun
        try:
            while True:
                data = self.sock.recv(4096)
                if not data:
                    break
                self._log.write(data)
                self._log.flush()
                # In order: what each boot printed is judged with that boot's number.
                while (found := (tail + data).find(marker)) != -1:
                    end = found + len(marker) - len(tail)
                    self._lines(data[:end])
                    self._new_boot()
                    tail, data = b"", data[end:]
                self._lines(data)
                tail = (tail + data)[-(len(marker) - 1) :]
        except OSError:
            pass
        finally:
            self._log.close()
            self.closed.set()

    def _new_boot(self) -> None:
        # GRUB draws its menu more than once (for each terminal it writes to): it is a new boot when a kernel
        # started since the menu last counted.
        if self.boots and not self._kernel_started:
            return
        self._kernel_started = False
        self.boots += 1
        if self.boots > 1:
            log.info(f"the guest booted again (boot {self.boots})")
        if not self._menu_answered:
            self._answer_menu()

    def _lines(self, data: bytes) -> None:
        self._pending += data
        *complete, self._pending = self._pending.split(b"\n")
        for raw in complete:
            line = raw.decode("utf-8", "replace").replace("\r", "").rstrip()
            self.lines.append(line)
            log.debug(f"console: {line}")
            if KERNEL_MARKER in line:
                self._kernel_started = True
            if self.panic is None and any(m in line for m in PANIC_MARKERS):
                if self.boots <= self.reboots:
                    self.expected_panics.append(line)  # this boot is to end by itself
                else:
                    self.panic = line

    def _answer_menu(self) -> None:
        """Choose entry N as a person would: N times the down arrow, then Enter."""
        self._menu_answered = True
        assert self._boot_entry is not None
        log.info(f"choosing boot menu entry {self._boot_entry}")
        for _ in range(self._boot_entry):
            self.sock.sendall(DOWN)
            time.sleep(0.2)
        self.sock.sendall(b"\r")

    def tail(self) -> str:
        return "\n".join(self.lines)


class Agent:
    """A minimal client of the QEMU guest agent protocol (JSON over the virtio serial channel)."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.sock: socket.socket | None = None
        self._buffer = b""
        self._sync_id = int(time.time()) % 100000

    def connect(self) -> None:
        self.close()
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.sock.connect(os.fspath(self.path))
        self._buffer = b""

    def close(self) -> None:
        if self.sock is not None:
            self.sock.close()
            self.sock = None

    def sync(self, timeout: float) -> bool:
        """True once the agent in the guest answers; stale replies of earlier attempts are skipped."""
        assert self.sock is not None
        self._sync_id += 1
        # 0xFF makes an agent that got half a message drop it (the protocol's resynchronisation).
        self.sock.sendall(
            b"\xff"
            + json.dumps({"execute": "guest-sync-delimited", "arguments": {"id": self._sync_id}}).encode()
            + b"\n"
        )
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            reply = self._receive(deadline - time.monotonic())
            if reply is not None and reply.get("return") == self._sync_id:
                return True
        return False

    def _receive(self, timeout: float) -> dict[str, Any] | None:
        assert self.sock is not None
        self.sock.settimeout(max(timeout, 0.05))
        while b"\n" not in self._buffer:
            try:
                data = self.sock.recv(65536)
            except TimeoutError:
                return None
            if not data:
                raise ConnectionError("the guest agent channel closed")
            self._buffer += data
        line, _, self._buffer = self._buffer.partition(b"\n")
        line = line.lstrip(b"\xff").strip()
        if not line:
            return None
        try:
            reply: dict[str, Any] = json.loads(line)
        except json.JSONDecodeError:
            return None
        return reply

    def call(self, command: str, arguments: dict[str, Any] | None = None, timeout: float = 30) -> Any:
        assert self.sock is not None
        message: dict[str, Any] = {"execute": command}
        if arguments:
            message["arguments"] = arguments
        self.sock.sendall(json.dumps(message).encode() + b"\n")
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            reply = self._receive(deadline - time.monotonic())
            if reply is None:
                continue
            if "error" in reply:
                raise ArkesError(f"guest agent: {command}: {reply['error'].get('desc', reply['error'])}")
            if "return" in reply:
                return reply["return"]
        raise ArkesError(f"guest agent: no answer to {command} within {timeout:.0f}s")

    def shutdown(self) -> None:
        assert self.sock is not None
        # The agent does not answer a shutdown: the guest is going away.
        self.sock.sendall(
            json.dumps({"execute": "guest-shutdown", "arguments": {"mode": "powerdown"}}).encode() + b"\n"
        )


@dataclass(frozen=True)
class ExecResult:
    exitcode: int
    stdout: bytes
    stderr: bytes


class Guest:
    """A running QEMU guest with its console and agent; stopped (never left behind) when the context ends."""

    def __init__(self, config: Config, work: Path) -> None:
        self.config = config
        self.work = work
        self.process: subprocess.Popen[bytes] | None = None
        self._running = ExitStack()  # QEMU, stopped and reaped when it closes
        self.console: Console | None = None
        self.agent = Agent(work / "qga.sock")

    def start(self) -> None:
        _prepare(self.config, self.work)
        argv = qemu_argv(self.config, self.work, kvm=kvm_usable(), interactive=False)
        self.process = self._running.enter_context(run.spawned(argv, log_path=self.work / "qemu.log"))
        console_sock = self.work / "console.sock"
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        deadline = time.monotonic() + 30
        while True:
            try:
                sock.connect(os.fspath(console_sock))
                break
            except (FileNotFoundError, ConnectionRefusedError):
                if self.process.poll() is not None or time.monotonic() > deadline:
                    raise ArkesError(f"QEMU did not start:\n{run.tail((self.work / 'qemu.log').read_text())}") from None
                time.sleep(0.1)
        log_path = self.config.console_log or self.work / "console.log"
        self.console = Console(sock, log_path, self.config.boot_entry, self.config.reboots)

    def _failure(self, message: str) -> ArkesError:
        tail = self.console.tail() if self.console else ""
        return ArkesError(f"{message}; the last console lines:\n{tail}")

    def _check_alive(self) -> None:
        assert self.process is not None and self.console is not None
        if self.console.panic:
            raise self._failure(f"the guest failed to boot ({self.console.panic.strip()})")
        if self.process.poll() is not None:
            raise self._failure(f"QEMU exited (status {self.process.returncode}) before the guest was ready")

    def wait_ready(self) -> float:
        """Wait until the agent answers and systemd has finished booting; return the seconds it took."""
        start = time.monotonic()
        deadline = start + self.config.timeout
        assert self.console is not None
        while self.config.reboots and self.console.boots <= self.config.reboots:
            # The boots before the last end by themselves; the agent of one of them is no use. (A single boot is
            # not counted: the agent's answer is the verdict, whatever boot loader the disk has.)
            self._check_alive()
            if time.monotonic() > deadline:
                raise self._failure(
                    f"the guest booted {self.console.boots} time(s) within {self.config.timeout:.0f}s, not the "
                    f"{self.config.reboots + 1} expected"
                )
            time.sleep(0.5)
        while True:
            self._check_alive()
            if time.monotonic() > deadline:
                raise self._failure(f"the guest did not reach multi-user within {self.config.timeout:.0f}s")
            try:
                if self.agent.sock is None:
                    self.agent.connect()
                if self.agent.sync(timeout=3):
                    break
            except (ConnectionError, OSError):
                self.agent.close()
                time.sleep(1)
        remaining = max(deadline - time.monotonic(), 10)
        result = self.exec("systemctl is-system-running --wait", timeout=remaining)
        state = result.stdout.decode().strip()
        if state not in ("running", "degraded"):
            raise self._failure(f"the guest's boot ended in state {state!r}")
        if state == "degraded":
            failed = self.exec("systemctl --failed --no-legend --plain").stdout.decode().strip()
            log.warn(f"the guest booted degraded; failed units:\n{failed}")
        return time.monotonic() - start

    def exec(self, command: str, timeout: float = 3600) -> ExecResult:
        started = self.agent.call(
            "guest-exec",
            {"path": "/bin/sh", "arg": ["-c", command], "capture-output": True},
        )
        pid = started["pid"]
        deadline = time.monotonic() + timeout
        delay = 0.1
        while True:
            self._check_alive()
            status = self.agent.call("guest-exec-status", {"pid": pid})
            if status.get("exited"):
                return ExecResult(
                    int(status.get("exitcode", 128 + int(status.get("signal", 0)))),
                    base64.b64decode(status.get("out-data", "")),
                    base64.b64decode(status.get("err-data", "")),
                )
            if time.monotonic() > deadline:
                raise self._failure(f"the command did not finish within {timeout:.0f}s")
            time.sleep(delay)
            delay = min(delay * 2, 1.0)

    def poweroff(self, timeout: float = 600) -> None:
        # Generous: at shutdown OSTree may finalize a staged deployment, which takes minutes under TCG.

        assert self.process is not None
        if self.process.poll() is not None:
            return
        with suppress(OSError):
            self.agent.shutdown()
        if not run.wait(self.process, timeout):
            log.warn("the guest did not power off in time; stopping QEMU")

    def stop(self) -> None:
        self.agent.close()
        self._running.close()
        if self.console is not None:
            self.console.sock.close()
            self.console.closed.wait(timeout=5)


@contextmanager
def guest(config: Config) -> Iterator[Guest]:
    _check_disk(config)
    with tempfile.TemporaryDirectory(prefix="arkes-vm-") as tmp:
        g = Guest(config, Path(tmp))
        try:
            g.start()
            yield g
        finally:
            g.stop()


def execute(config: Config, command: str) -> ExecResult:
    """Boot, wait for multi-user, run `command` as root with a shell, power off; return its result."""
    with guest(config) as g, log.step("boot") as progress:
        progress.update(None, f"{'UEFI' if config.uefi else 'BIOS'}, {'KVM' if kvm_usable() else 'TCG'}")
        seconds = g.wait_ready()
        assert g.console is not None
        boots = f" after {g.console.boots} boots" if g.console.boots > 1 else ""
        log.info(f"the guest reached multi-user in {seconds:.1f}s{boots}")
        for line in g.console.expected_panics:
            log.info(f"an earlier boot ended as expected: {line.strip()}")
        result = g.exec(command)
        if g.console.boots > config.reboots + 1:
            raise g._failure(f"the guest booted {g.console.boots} times, not the {config.reboots + 1} expected")
        g.poweroff()
        return result


def until_poweroff(config: Config) -> float:
    """Boot headless and wait for the guest to power off by itself (an unattended installer); return the seconds.
    The console saying that the installation failed, a panic, or the timeout is a failure."""
    from arkes.installer import FAILED

    with guest(config) as g, log.step("wait for the guest to power off") as progress:
        progress.update(None, f"{'UEFI' if config.uefi else 'BIOS'}, {'KVM' if kvm_usable() else 'TCG'}")
        assert g.process is not None and g.console is not None
        start = time.monotonic()
        while not run.wait(g.process, 1):
            failed = [line for line in g.console.lines if FAILED in line]
            if failed:
                raise g._failure(failed[-1].strip())
            if g.console.panic:
                raise g._failure(f"the guest failed ({g.console.panic.strip()})")
            if time.monotonic() - start > config.timeout:
                raise g._failure(f"the guest did not power off within {config.timeout:.0f}s")
        if g.process.returncode != 0:
            raise g._failure(f"QEMU exited with status {g.process.returncode}")
        return time.monotonic() - start
