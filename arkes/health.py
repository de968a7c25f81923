"""Never stranded: a new default deployment is on trial until one of its boots proves it good.

The boot loader counts the tries. When `os` writes the menu with a default deployment that has not been proven
good (and another to fall back to), it puts the deployment's id and the number of tries into GRUB's environment
block (/boot/grub/grubenv, read and written by GRUB itself), and the menu's preamble takes one try away on every
boot of it, before any kernel runs. When none are left, GRUB starts the previous deployment instead, with no one
at the menu.

Userspace decides what "good" is: after multi-user.target, arkes-boot-check.service runs `os boot-check`, which
checks that every unit the machine requires started and has not failed, and runs every health check (executables
in the image's /usr/lib/arkes/health.d and the machine's /etc/system/health.d, each with a timeout). A good boot
ends the trial.
A failed one (checks failed, or GRUB fell back because the tries ran out) makes the previous deployment the
default again, keeps the failed one on disk marked failed with the reason, and, when the failed deployment is the
one running, reboots into the previous one: once, since the previous one is on no trial. `os status` shows each
deployment's record; `os upgrade` does not deploy a commit that failed again unless told to.

Settings are in /etc/system/boot.conf (`key = value`): `tries` (1-9, default 3), `check-timeout` (seconds,
default 60) and `required-units` (names of units that must have started in this boot and not failed).
"""

from __future__ import annotations

import dataclasses
import json
import os
import subprocess
import time
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar

from arkes.boots import ENV, ENV_HEADER, ENV_SIZE, LAST, RECORDS, TRIAL, TRIES, Record, last, read_env, records
from arkes.errors import UsageError
from arkes.model import JSON, Result, document

if TYPE_CHECKING:
    from arkes.target import Target

CONFIG = Path("system/boot.conf")  # below /etc
CHECKS = (Path("/usr/lib/arkes/health.d"), Path("system/health.d"))  # the image's; the machine's, below /etc
MAX_TRIES = 9
OUTPUT_LINES = 10
LOCK_WAIT = 900.0  # seconds the boot check waits for an `os` command that holds the sysroot lock (an upgrade)


# --- GRUB's environment block -------------------------------------------------------------------------------


def render_env(values: dict[str, str]) -> str:
    """A GRUB environment block: the header, one `name=value` per line, padded with `#` to 1024 bytes."""
    body = ENV_HEADER + "".join(
        f"{k}={v.replace(chr(92), chr(92) * 2).replace(chr(10), chr(92) + 'n')}\n" for k, v in values.items()
    )
    if len(body.encode()) > ENV_SIZE:
        raise UsageError("GRUB's environment block cannot hold these variables (1024 bytes)")
    return body + "#" * (ENV_SIZE - len(body.encode()))


# --- settings -----------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Settings:
    tries: int = 3
    check_timeout: float = 60.0
    required_units: tuple[str, ...] = ()


def settings(etc: Path | None) -> Settings:
    """The machine's /etc/system/boot.conf; the defaults without one. A bad line is refused with file:line."""
    path = etc / CONFIG if etc is not None else None
    if path is None or not path.is_file():
        return Settings()
    tries, timeout, units = Settings.tries, Settings.check_timeout, Settings.required_units
    for number, raw in enumerate(path.read_text().splitlines(), start=1):
        line = raw.split("#", 1)[0].strip()
        if not line:
            continue
        key, sep, value = (part.strip() for part in line.partition("="))
        where = f"{path}:{number}"
        if not sep:
            raise UsageError(f"{where}: expected `key = value`, found {raw.strip()!r}")
        if key == "tries":
            if not value.isdigit() or not 1 <= int(value) <= MAX_TRIES:
                raise UsageError(f"{where}: tries must be a number from 1 to {MAX_TRIES}, not {value!r}")
            tries = int(value)
        elif key == "check-timeout":
            try:
                timeout = float(value)
            except ValueError:
                timeout = 0.0
            if timeout <= 0:
                raise UsageError(f"{where}: check-timeout must be a number of seconds, not {value!r}")
        elif key == "required-units":
            units = tuple(value.split())
        else:
            raise UsageError(f"{where}: unknown setting {key!r} (tries, check-timeout, required-units)")
    return Settings(tries, timeout, units)


# --- what each commit's boots showed ------------------------------------------------------------------------


def record(state: Path, checksum: str, found: Record) -> None:
    """Keep what a boot of the commit `checksum` showed (replacing what an earlier boot showed)."""
    kept = records(state)
    kept[checksum] = found
    _keep(state / RECORDS, {"commits": {k: v.to_json() for k, v in kept.items()}})


def _keep(path: Path, document: dict[str, Any]) -> None:
    """A JSON document written whole into the state directory, readable by everyone (it is what `os status` shows)."""
    from arkes.bootloader import atomic_write

    path.parent.mkdir(parents=True, exist_ok=True)
    atomic_write(path, json.dumps(document, indent=2) + "\n", mode=0o644)


def now() -> str:
    return datetime.now(UTC).isoformat(timespec="seconds")


# --- health checks ------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Check:
    """One health check that ran: its name, what it exited with (None: it was stopped at its timeout), how long
    it took, and the last lines it wrote."""

    name: str
    path: str
    exit: int | None
    seconds: float
    output: tuple[str, ...] = ()

    @property
    def passed(self) -> bool:
        return self.exit == 0

    def reason(self) -> str:
        if self.exit is None:
            return f"health check {self.name} did not finish within its timeout"
        return f"health check {self.name} failed (exit {self.exit})"


@dataclass(frozen=True)
class Health(Result):
    """The result of every check of one boot: the units that must not fail and had, and each check."""

    KIND: ClassVar[str] = "Health"
    checksum: str
    at: str
    failed_units: tuple[str, ...]
    checks: tuple[Check, ...]
    unit_output: tuple[str, ...] = ()
    unit_reasons: tuple[str, ...] = ()  # why each of failed_units fails the boot (see unit_failure)

    @property
    def good(self) -> bool:
        return not self.failed_units and all(c.passed for c in self.checks)

    @property
    def _whys(self) -> tuple[str, ...]:
        """Why each failed unit fails the boot ("failed" for a result that did not say)."""
        return self.unit_reasons or ("failed",) * len(self.failed_units)

    def failure(self) -> Record:
        """What a failed result is recorded as: every required unit and check that failed, and what each said."""
        reasons, output = [], list(self.unit_output)
        reasons += [f"required unit {unit} {why}" for unit, why in zip(self.failed_units, self._whys, strict=True)]
        for check in self.checks:
            if not check.passed:
                reasons.append(check.reason())
                output += check.output
        return Record("failed", self.at, "; ".join(reasons), tuple(output))

    def to_json(self) -> JSON:
        return {**document(self.KIND, self), "good": self.good}

    def render(self) -> str:
        lines = [f"deployment {self.checksum[:12]}: {'healthy' if self.good else 'UNHEALTHY'} ({self.at})"]
        lines += [f"  FAIL   {unit} {why}" for unit, why in zip(self.failed_units, self._whys, strict=True)]
        lines += [f"         {line}" for line in self.unit_output]
        for c in self.checks:
            verdict = "ok" if c.passed else "FAIL"
            if c.exit is None:
                how = f"stopped at its timeout, {c.seconds:.1f}s"
            else:
                how = f"{c.seconds:.1f}s" if c.passed else f"exit {c.exit}, {c.seconds:.1f}s"
            lines.append(f"  {verdict:<6} {c.name}  {how}")
            if not c.passed:
                lines += [f"         {line}" for line in c.output]
        if not self.checks and not self.failed_units:
            lines.append("  no health checks (/usr/lib/arkes/health.d, /etc/system/health.d) and no required units")
        return "\n".join(lines) + "\n"


def check_paths(etc: Path, image: Path = CHECKS[0]) -> list[Path]:
    """The health checks of this boot, in name order: the image's, and the machine's (/etc/system/health.d),
    where one of the machine's replaces the image's of the same name (and an empty one, or one that is not
    executable, switches it off)."""
    named: dict[str, Path] = {}
    for directory in (image, etc / CHECKS[1]):
        if directory.is_dir():
            for path in directory.iterdir():
                if not path.name.startswith("."):
                    named[path.name] = path
    return [named[name] for name in sorted(named) if _runnable(named[name])]


def _runnable(path: Path) -> bool:
    return path.is_file() and os.access(path, os.X_OK) and path.stat().st_size > 0


def run_check(path: Path, timeout: float) -> Check:
    """Run one check in its own process group; stop the whole group when its time is up."""
    start = time.monotonic()
    proc = subprocess.Popen(
        [os.fspath(path)],
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )
    try:
        out, _ = proc.communicate(timeout=timeout)
        code: int | None = proc.returncode
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, 9)
        out, _ = proc.communicate()
        code = None
    lines = out.decode("utf-8", "replace").splitlines()[-OUTPUT_LINES:]
    return Check(path.name, os.fspath(path), code, time.monotonic() - start, tuple(lines))


UNIT_PROPERTIES = ("LoadState", "ActiveState", "UnitFileState", "InactiveExitTimestampMonotonic")


def unit_failure(state: dict[str, str]) -> str | None:
    """Why a required unit, as `systemctl show` describes it, fails the boot; None when it does not: it is unknown,
    it failed, or it never started in this boot (disabled, say). A unit that ran and finished (a oneshot) or that
    someone stopped is not a failure."""
    if state.get("LoadState") == "not-found":
        return "is unknown to systemd"
    active = state.get("ActiveState", "")
    if active == "failed":
        return "failed"
    if active == "inactive" and state.get("InactiveExitTimestampMonotonic", "0") in ("", "0"):
        return f"never started in this boot (unit file {state.get('UnitFileState') or 'state unknown'})"
    return None


def failed_units(units: Sequence[str]) -> tuple[list[str], list[str], list[str]]:
    """The required units that fail the boot (see unit_failure), why each does, and the journal's last lines of
    each."""
    from arkes import run

    failed, whys, said = [], [], []
    for unit in units:
        argv = ["systemctl", "show", *(f"--property={name}" for name in UNIT_PROPERTIES), unit]
        shown = run.run(argv, check=False).stdout
        why = unit_failure(dict(line.partition("=")[::2] for line in shown.splitlines()))
        if why is not None:
            failed.append(unit)
            whys.append(why)
            journal = ["journalctl", "-b", "-u", unit, "-n", str(OUTPUT_LINES), "-o", "cat", "--no-pager"]
            said += run.run(journal, check=False).stdout.splitlines()[-OUTPUT_LINES:]
    return failed, whys, said


def run_checks(etc: Path, checksum: str, config: Settings, *, image: Path = CHECKS[0]) -> Health:
    """Every check of this boot, now."""
    units, whys, said = failed_units(config.required_units)
    checks = tuple(run_check(path, config.check_timeout) for path in check_paths(etc, image))
    return Health(checksum, now(), tuple(units), checks, tuple(said), tuple(whys))


def keep_last(state: Path, health: Health) -> None:
    _keep(state / LAST, health.to_json())


# --- the trial, as the menu writes it -----------------------------------------------------------------------


@dataclass(frozen=True)
class Trial:
    """The deployment on trial (its menu id, CHECKSUM.SERIAL) and the boots it has left."""

    id: str
    tries: int


def trial_for(
    entries: Sequence[tuple[str, str, bool]], env: dict[str, str], kept: dict[str, Record], tries: int
) -> Trial | None:
    """Whether the menu's default (the first of `entries`: id, checksum, booted) is on trial, and with how many
    tries: a default that a boot proved good, or with nothing to fall back to, is on none; a trial that is running
    keeps what GRUB left of it; the running deployment starts none (its own boot check judges it); any other
    default starts one."""
    if len(entries) < 2:
        return None
    first_id, checksum, booted = entries[0]
    record_of = kept.get(checksum)
    if record_of is not None and record_of.state == "good":
        return None
    if env.get(TRIAL) == first_id:
        left = env.get(TRIES, "0")
        return Trial(first_id, int(left) if left.isdigit() else 0)
    if booted:
        return None
    return Trial(first_id, tries)


def write_trial(boot: Path, trial: Trial | None) -> None:
    """Put the trial into GRUB's environment block beside the menu, keeping any other variable there."""
    from arkes.bootloader import atomic_write

    path = boot / ENV
    env = read_env(path)
    wanted = dict(env)
    wanted.pop(TRIAL, None)
    wanted.pop(TRIES, None)
    if trial is not None:
        wanted.update({TRIAL: trial.id, TRIES: str(trial.tries)})
    if wanted != env or not path.exists():
        atomic_write(path, render_env(wanted), mode=0o644)


def menu_preamble(trial: Trial | None) -> list[str]:
    """The lines of grub.cfg that take one try from the deployment on trial (the first entry) on each boot of it,
    and start the second entry when none are left. GRUB has no arithmetic: each count names the next."""
    if trial is None:
        return []
    lines = [
        "# Boot counting: the first entry is on trial until a boot of it is proven good (see `os status`).",
        "if [ -f $prefix/grubenv ]; then",
        f"    load_env --file $prefix/grubenv {TRIAL} {TRIES}",
        "fi",
        f'if [ "${TRIAL}" = "{trial.id}" ]; then',
    ]
    for n in range(MAX_TRIES, 0, -1):
        keyword = "if" if n == MAX_TRIES else "elif"
        lines += [
            f'    {keyword} [ "${TRIES}" = "{n}" ]; then',
            f"        set {TRIES}={n - 1}",
            f"        save_env --file $prefix/grubenv {TRIES}",
        ]
    return [
        *lines,
        "    else",
        "        set default=1",
        "        echo 'The newest deployment used up its boot tries: starting the previous one.'",
        "    fi",
        "fi",
        "",
    ]


# --- after a boot -------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class BootChecked(Result):
    """What `os boot-check` found and did: the health of the running deployment, the deployment that had used up
    its tries (GRUB started this one instead), and whether the previous deployment was made the default again
    and the machine reboots into it."""

    KIND: ClassVar[str] = "BootCheck"
    checksum: str
    health: Health
    exhausted: str = ""
    rolled_back: str = ""
    reboot: bool = False

    def to_json(self) -> JSON:
        return {**document(self.KIND, self), "health": self.health.to_json()}

    def render(self) -> str:
        return self.health.render()


def _tell_previous_failure(state: Path, booted: str) -> None:
    """Say again, in this boot's journal, why the boot before it failed its checks and rolled back: that boot's
    own journal is gone when the journal is kept in memory only."""
    from arkes import log

    previous = last(state)
    if not previous or previous.get("good", True) or previous.get("checksum") in (None, booted):
        return
    failed = records(state).get(str(previous["checksum"]))
    if failed is None or failed.state != "failed":
        return
    log.error(f"the previous boot, of deployment {str(previous['checksum'])[:12]}, failed: {failed.reason}")
    for line in failed.output:
        log.error(f"  {line}")


def boot_check(target: Target, *, reboot: bool = True) -> BootChecked:
    """Run on every boot after multi-user.target (arkes-boot-check.service): settle a trial that ran out of
    tries, prove the running deployment good or fail it, and fall back when it was the one on trial."""
    from arkes import bootloader, deploy, log

    sysroot = target.sysroot
    booted = sysroot.booted
    if booted is None or target.etc is None:
        raise UsageError("`os boot-check` checks the running system", hint="it runs after every boot by itself")
    env = read_env(sysroot.path / "boot" / ENV)
    on_trial, left = env.get(TRIAL, ""), env.get(TRIES, "")
    booted_id = f"{booted.checksum}.{booted.serial}"
    try:
        config = settings(target.etc)
    except UsageError as e:  # a typo there must not fail a good boot: the defaults judge it
        log.error(f"{e.message}; checking with the defaults")
        config = Settings()
    exhausted = rolled_back = ""
    listed = sysroot.deployments()
    if on_trial and on_trial != booted_id and left in ("0", ""):
        failed = next((d for d in listed if f"{d.checksum}.{d.serial}" == on_trial), None)
        if failed is not None:
            exhausted = failed.checksum
            reason = f"its boot tries were used up ({config.tries}): no boot of it was proven good"
            inputs = sysroot.commit(failed.checksum).metadata.input_hash
            record(target.state_dir, failed.checksum, Record("failed", now(), reason, input_hash=inputs))
            log.error(f"deployment {failed.checksum[:12]} failed: {reason}; the previous deployment runs instead")
            if len(listed) >= 2 and listed[0].same(failed) and listed[1].same(booted):
                rolled_back = deploy.rollback(sysroot, wait=LOCK_WAIT).default
    _tell_previous_failure(target.state_dir, booted.checksum)
    checked = run_checks(target.etc, booted.checksum, config)
    keep_last(target.state_dir, checked)
    if checked.good:
        record(target.state_dir, booted.checksum, Record("good", checked.at))
        log.info(f"deployment {booted.checksum[:12]} is good: {len(checked.checks)} health check(s) passed")
        with sysroot.lock(LOCK_WAIT):  # a trial of it ends
            sysroot.reload()
            bootloader.write_menu(sysroot)
        return BootChecked(booted.checksum, checked, exhausted, rolled_back)
    failure = checked.failure()
    for line in (failure.reason, *failure.output):
        log.error(line)
    if on_trial != booted_id:
        log.warn("this deployment is not on trial (it was proven good before): nothing is rolled back")
        return BootChecked(booted.checksum, checked, exhausted, rolled_back)
    inputs = sysroot.commit(booted.checksum).metadata.input_hash
    record(target.state_dir, booted.checksum, dataclasses.replace(failure, input_hash=inputs))
    sysroot.reload()
    listed = sysroot.deployments()
    if len(listed) >= 2 and listed[0].same(booted):
        rolled_back = deploy.rollback(sysroot, wait=LOCK_WAIT).default
        log.error(f"deployment {booted.checksum[:12]} failed its first boot: the previous one is the default again")
    else:
        with sysroot.lock(LOCK_WAIT):
            sysroot.reload()
            bootloader.write_menu(sysroot)
    if reboot and rolled_back:
        log.error("rebooting into the previous deployment")
        from arkes import run

        run.run(["systemctl", "reboot"], what="systemctl reboot")
    return BootChecked(booted.checksum, checked, exhausted, rolled_back, reboot=bool(reboot and rolled_back))
