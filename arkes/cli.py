"""The command line: one argparse subcommand per verb, each a small cli_<verb>(args) -> int."""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import posixpath
import sys
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from arkes import __version__, log, model, status, statuscache
from arkes.errors import UsageError
from arkes.target import Target, given_path, is_booted_root

if TYPE_CHECKING:
    from arkes.answers import Answers
    from arkes.results import Outcome

DESCRIPTION = """\
Arkēs: the whole system is declared in one Containerfile, the Systemfile (/etc/system/Systemfile).
`os upgrade` builds it with Podman, commits the result into OSTree and deploys it beside the running
system; it becomes active on the next boot and the previous system stays in the boot menu.
"""

EPILOG = """\
The system to act on: the booted Arkēs system (when /run/ostree-booted exists), or a sysroot directory
given with --sysroot DIR (or ARKES_SYSROOT). Exit codes: 0 success, 1 failure, 2 usage or invalid input.
"""


def emit(data: Any) -> None:
    """Data for programs goes to stdout, as JSON."""
    json.dump(data, sys.stdout, indent=2, sort_keys=False)
    sys.stdout.write("\n")


def show(args: argparse.Namespace, result: model.Result) -> None:
    """A command's result: what people are told on stderr, then its document (--json) or its view on stdout."""
    for line in result.said():
        log.info(line)
    if getattr(args, "json", False):
        emit(result.to_json())
    else:
        sys.stdout.write(result.render())


def open_target(args: argparse.Namespace, *, writes: bool = False) -> Target:
    """The system the command acts on, resolved once (see arkes.target). `writes`: it changes deployments."""
    return Target.open(given_path(args.sysroot), writes=writes, systemfile=_systemfile_arg(args))


def _systemfile_arg(args: argparse.Namespace) -> Path | None:
    return Path(args.systemfile) if getattr(args, "systemfile", None) else None


def _secrets_arg(args: argparse.Namespace) -> dict[str, Path]:
    """`--secret ID=FILE` (or Podman's `id=ID,src=FILE`): files `RUN --mount=type=secret,id=ID` reads."""
    secrets: dict[str, Path] = {}
    for given in getattr(args, "secret", None) or []:
        fields = dict(f.partition("=")[::2] for f in given.split(",")) if given.startswith("id=") else {}
        name, path = (fields.get("id", ""), fields.get("src", "")) if fields else given.partition("=")[::2]
        if not name or not path:
            raise UsageError(f"--secret {given}: give ID=FILE (or id=ID,src=FILE)")
        if not Path(path).is_file():
            raise UsageError(f"--secret {given}: {path} is not a readable file")
        secrets[name] = Path(path).absolute()
    return secrets


def _allowed_secrets_arg(args: argparse.Namespace) -> frozenset[str]:
    """`--allow-secret PATH`: private keys the image may carry on purpose, by their path in the image."""
    allowed = set()
    for given in getattr(args, "allow_secret", None) or []:
        if not given.startswith("/"):
            raise UsageError(f"--allow-secret {given}: give the key's path in the image, e.g. /etc/ssl/private/x.key")
        allowed.add(posixpath.normpath(given))
    return frozenset(allowed)


# --- verbs ----------------------------------------------------------------------------------------------------


def cli_check(args: argparse.Namespace) -> int:
    from arkes import podman, results, systemfile

    if args.path:
        path = Path(args.path)
    elif args.sysroot or os.environ.get("ARKES_SYSROOT") or Path("/run/ostree-booted").exists():
        path = open_target(args).systemfile()
    else:
        path = Path("Systemfile")  # a Systemfile being written in the current directory
    if not path.is_file():
        raise UsageError(f"{path}: no such file")
    report = systemfile.check(path, image_env=podman.local_image_env)
    show(args, results.Check(str(path), not report.errors, report.errors, report.warnings))
    return 2 if report.errors else 0


def _ask_password(what: str) -> str:
    import getpass

    first = getpass.getpass(f"{what}: ")
    if not first:
        raise UsageError(f"{what}: an empty password is not taken")
    if first != getpass.getpass("again: "):
        raise UsageError("the two passwords differ")
    return first


def _ask(question: str) -> str:
    sys.stderr.write(question)
    sys.stderr.flush()
    answer = sys.stdin.readline()
    if not answer:
        raise UsageError("no answer (end of input)")
    return answer.strip()


def _root_password(args: argparse.Namespace, given: Answers) -> tuple[str | None, str | None]:
    """Root's password, or its hash: from the command line, the answer file, or asked at a terminal."""
    if args.no_root_password:
        log.warn("root has no password: anyone at the console can log in as root (meant for test images)")
        return None, None
    if args.root_password is not None:
        return str(args.root_password), None
    if given.root_password or given.root_password_hash:
        return given.root_password, given.root_password_hash
    if sys.stdin.isatty():
        return _ask_password("root password for the new system"), None
    raise UsageError(
        "the new system needs a root password",
        hint="give --root-password PW, an answer file (--answers), or --no-root-password for a test image",
    )


def _disk_answers(args: argparse.Namespace) -> dict[str, Any]:
    """What `os install --disk` installs with: the disk, the wipe, the host name, root's password and the first
    person, from the command line first, then the answer file, then (guided, `--disk` without a path, at a
    terminal) asked."""
    from arkes import answers, diskimage, disks

    # What the command line gives need not be in the file.
    flags = {
        "disk": args.disk,
        "hostname": args.hostname,
        "root_password": args.root_password is not None or args.no_root_password,
        "user": args.user,
        "user_password": args.user_password,
    }
    taken = tuple(key for key, value in flags.items() if value)
    given = answers.load(Path(args.answers), given=taken) if args.answers else answers.Answers()
    guided = args.disk == "" and not args.answers
    if guided and not sys.stdin.isatty():
        raise UsageError("`os install --disk` without a path asks which disk, at a terminal", hint="name the disk")
    wipe = bool(args.wipe or given.wipe)
    disk = args.disk or given.disk
    if not disk:
        offered = disks.candidates(disks.listing())
        if not offered:
            raise UsageError("there is no disk to install to (whole, writable, not the running system's)")
        for i, candidate in enumerate(offered, 1):
            sys.stderr.write(f"  {i}) {candidate.describe()}\n")
        picked = _ask(f"install to which disk (1-{len(offered)}, or its path)? ")
        disk = offered[int(picked) - 1].path if picked.isdigit() and 0 < int(picked) <= len(offered) else picked
        chosen = disks.choose(offered, disk, wipe=True)
        if chosen.partitions and not wipe:
            if _ask(f"{chosen.path} holds {len(chosen.partitions)} partition(s); erase them all (yes/no)? ") != "yes":
                raise UsageError("nothing was installed; the disk is untouched")
            wipe = True
    path = Path(disk).absolute()
    hostname = args.hostname or given.hostname or (_ask("host name (empty: the Systemfile's): ") if guided else "")
    if hostname and (why := answers.hostname_problem(hostname)):
        raise UsageError(why)
    root_password, root_hash = _root_password(args, given)
    name = args.user or given.user or (_ask("the first person's login (empty: none): ") if guided else "")
    person = None
    if name:
        if why := answers.user_problem(name):
            raise UsageError(why)
        hashed = given.user_password_hash if not args.user_password and given.user == name else None
        password = args.user_password or (given.user_password if given.user == name else None)
        if hashed is None:
            if password is None and sys.stdin.isatty():
                password = _ask_password(f"password of {name}")
            if password is None:
                raise UsageError(f"{name} needs a password", hint="give --user-password PW or an answer file")
            hashed = diskimage.password_hash(password)
        person = diskimage.Person(name, hashed, given.user_groups, given.ssh_authorized_keys)
    return {
        "disk": path,
        "wipe": wipe,
        "hostname": hostname or None,
        "root_password": root_password,
        "root_password_hash": root_hash,
        "person": person,
    }


def _unattended(args: argparse.Namespace) -> int:
    """The live installer's unattended install: from the answer file the kernel command line names, else the
    medium's; without either, nothing to do. What fails is said on the console, where the person is."""
    from arkes import answers, installer

    installer.require_payload()
    path = installer.answers_path(Path("/proc/cmdline").read_text())
    if path is None:
        log.info("no answer file: nothing to install unattended")
        return 0
    installer.console(f"Installing unattended, as {path} says. This takes a few minutes.")
    try:
        if not path.is_file():
            raise UsageError(f"{path}: no such answer file", hint=f"{installer.ANSWERS_KARG}= names it")
        args.answers = os.fspath(path)
        given = answers.load(path)
        code = cli_install(args)
    except BaseException as e:
        installer.console(f"{installer.FAILED}: {e}")
        installer.console("The live system stays up: log in on the console to see more (journalctl -b).")
        raise
    installer.console(f"{installer.DONE}; the machine will {given.after}.")
    installer.finish(given.after)
    return code


def cli_install(args: argparse.Namespace) -> int:
    from arkes import deploy, installer, results

    if args.unattended:
        args.unattended = False
        return _unattended(args)
    payload = installer.payload()
    if payload is not None and _systemfile_arg(args) is not None:
        raise UsageError(
            "the installer installs the system it carries; it builds no other",
            hint="make an installer of that Systemfile with `os iso OUTPUT --systemfile FILE`",
        )
    if args.disk is not None or args.answers:
        from arkes import diskimage

        settings = _disk_answers(args)
        outcome = diskimage.install_disk(
            size=args.size,
            systemfile=_systemfile_arg(args),
            secrets=_secrets_arg(args),
            allow_secrets=_allowed_secrets_arg(args),
            payload=payload,
            **settings,
        )
        show(args, results.Installed(**_outcome_fields(outcome), path=str(settings["disk"]), disk=True))
        return 0
    for flag in ("hostname", "user", "user_password"):
        if getattr(args, flag):
            raise UsageError(f"--{flag.replace('_', '-')} is for `os install --disk`")
    path = given_path(args.sysroot)
    if path == Path("/"):
        raise UsageError("`os install` needs a target", hint="give `os --sysroot DIR install`")
    outcome = deploy.install(
        path, _systemfile_arg(args), secrets=_secrets_arg(args), allow_secrets=_allowed_secrets_arg(args)
    )
    statuscache.refresh(path)
    show(args, results.Installed(**_outcome_fields(outcome), path=str(path)))
    return 0


def _outcome_fields(outcome: Outcome) -> dict[str, Any]:
    return {
        "checksum": outcome.checksum,
        "version": outcome.version,
        "deployed": outcome.deployed,
        "up_to_date": outcome.up_to_date,
        "held": outcome.held,
    }


def cli_build(args: argparse.Namespace) -> int:
    from arkes import deploy, results

    outcome = deploy.upgrade(
        open_target(args, writes=True),
        deploy=False,
        reuse=False,
        secrets=_secrets_arg(args),
        allow_secrets=_allowed_secrets_arg(args),
    )
    show(args, results.Built(**_outcome_fields(outcome)))
    return 0


def cli_upgrade(args: argparse.Namespace) -> int:
    from arkes import deploy, inhibit, results

    if args.check:
        return cli_checkupdates(args)
    if args.automatic:
        from arkes import updates

        policy = updates.automatic_policy(open_target(args).system_dir)
        log.info(f"automatic updates: {policy} ({updates.POLICIES[policy]})")
        if policy == "check":
            return cli_checkupdates(args)
    target = open_target(args, writes=True)
    if args.force:
        target = dataclasses.replace(target, redeploy_failed=True)
    with inhibit.holding("upgrading the system (os upgrade)"):
        outcome = deploy.upgrade(
            target,
            deploy=not args.download_only,
            package_updates=not args.no_package_updates,
            secrets=_secrets_arg(args),
            allow_secrets=_allowed_secrets_arg(args),
            ignore_rollout=args.ignore_rollout,
        )
    if outcome.deployed:
        statuscache.refresh(target.path)
    show(args, results.Upgraded(**_outcome_fields(outcome), download_only=args.download_only))
    if args.reboot and outcome.deployed:
        if not target.booted:
            raise UsageError("--reboot only applies to the booted system")
        log.info("rebooting into the new deployment")
        from arkes import run

        run.run(["systemctl", "reboot"], what="systemctl reboot")
    return 0


def cli_checkupdates(args: argparse.Namespace) -> int:
    from arkes import updates

    report = updates.check(open_target(args), packages=not getattr(args, "no_packages", False))
    for error in report.errors:
        log.error(f"error: {error}")
    show(args, report)
    if any(finding.takeable for finding in report.findings):
        return 0
    return 1 if report.errors else 2


def cli_diff(args: argparse.Namespace) -> int:
    from arkes import diff, results

    target = open_target(args)
    sysroot = target.sysroot
    if args.etc:
        changes = diff.etc(target, args.a)
        what = "etc"
    elif args.var:
        changes = diff.var(target, args.a)
        what = "var"
    else:
        if args.a is None:
            a, b = diff.default_pair(sysroot)
        else:
            a, b = args.a, args.b if args.b is not None else 0
        if args.files:
            changes, what = diff.files(sysroot, a, b), "files"
        else:
            changes, what = diff.packages(sysroot, a, b), "packages"
    show(args, results.Diff(what, tuple(changes)))
    return 0


def cli_du(args: argparse.Namespace) -> int:
    from arkes import du

    show(args, du.measure(open_target(args).sysroot))
    return 0


def cli_unlock(args: argparse.Namespace) -> int:
    from arkes import deploy

    target = open_target(args)
    deploy.unlock(target, hotfix=args.hotfix)
    statuscache.refresh(target.path)
    return 0


def cli_boot_menu(args: argparse.Namespace) -> int:
    from arkes import deploy

    deploy.boot_menu(open_target(args).sysroot)
    return 0


def cli_health(args: argparse.Namespace) -> int:
    from arkes import health

    target = _running(args, "os health")
    assert target.sysroot.booted is not None and target.etc is not None
    config = health.settings(target.etc)
    result = health.run_checks(target.etc, target.sysroot.booted.checksum, config)
    health.keep_last(target.state_dir, result)
    show(args, result)
    return 0 if result.good else 1


def cli_boot_check(args: argparse.Namespace) -> int:
    from arkes import health

    result = health.boot_check(_running(args, "os boot-check", writes=True), reboot=not args.no_reboot)
    statuscache.refresh(Path("/"))
    show(args, result)
    return 0 if result.health.good else 1


def _running(args: argparse.Namespace, command: str, *, writes: bool = False) -> Target:
    """The running system, for a command that checks it (and nothing else)."""
    if not is_booted_root(Path("/")) or (args.sysroot or os.environ.get("ARKES_SYSROOT")):
        raise UsageError(f"`{command}` checks the running system: boot it first")
    return Target.open(Path("/"), writes=writes)


def cli_etc_merge(args: argparse.Namespace) -> int:
    from arkes import etc

    if not is_booted_root(Path("/")) or (args.sysroot or os.environ.get("ARKES_SYSROOT")):
        raise UsageError("`os etc-merge` finishes the running system's /etc", hint="it runs at boot by itself")
    etc.finish(Path("/etc"), Path("/usr/etc"))
    return 0


def cli_edit(args: argparse.Namespace) -> int:
    from arkes import edit

    return edit.edit(open_target(args, writes=True), _upgrade)


def _upgrade(target: Target) -> None:
    from arkes import deploy

    if deploy.upgrade(target, deploy=True).deployed:
        statuscache.refresh(target.path)


def cli_status(args: argparse.Namespace) -> int:
    path = given_path(args.sysroot)
    show(args, statuscache.collect(path, lambda: status.listing(open_target(args).sysroot)))
    return 0


def cli_revert(args: argparse.Namespace) -> int:
    from arkes import deploy

    target = open_target(args, writes=True)
    result = deploy.revert(target.sysroot)
    statuscache.refresh(target.path)
    show(args, result)
    return 0


def cli_rotate_host_keys(args: argparse.Namespace) -> int:
    from arkes import identity, results

    target = open_target(args)
    keys = identity.rotate(target.system_etc, booted=target.booted)
    show(args, results.HostKeys(tuple(keys)))
    return 0


def cli_rollback(args: argparse.Namespace) -> int:
    from arkes import deploy

    target = open_target(args, writes=True)
    result = deploy.rollback(target.sysroot)
    statuscache.refresh(target.path)
    show(args, result)
    return 0


def cli_prune(args: argparse.Namespace) -> int:
    from arkes import deploy

    target = open_target(args, writes=True)
    result = deploy.prune(target.sysroot, args.keep)
    statuscache.refresh(target.path)
    show(args, result)
    return 0


def cli_pin(args: argparse.Namespace) -> int:
    from arkes import deploy

    target = open_target(args, writes=True)
    result = deploy.pin(target.sysroot, args.index, not args.unpin)
    statuscache.refresh(target.path)
    show(args, result)
    return 0


def cli_publish(args: argparse.Namespace) -> int:
    from arkes import publish, skopeo

    target = open_target(args)
    if args.ostree is not None:
        from arkes import archive

        if args.reference or args.rollout is not None:
            raise UsageError("--ostree DIR publishes to a directory: give no REFERENCE and no --rollout with it")
        directory = Path(args.ostree).absolute()
        homedir = archive.homedir()
        show(
            args,
            archive.publish(
                target.sysroot, directory, branch=args.branch, index=args.index, key=args.sign_by, homedir=homedir
            ),
        )
        return 0
    if not args.reference:
        raise UsageError("give the REFERENCE to push to (REGISTRY/NAME[:TAG]), or --ostree DIR")
    if args.rollout is not None and not 0 <= args.rollout <= 100:
        raise UsageError(f"--rollout is a percentage of the fleet, 0 to 100, not {args.rollout}")
    if args.sign_by is None:
        show(args, publish.publish(target.sysroot, args.reference, index=args.index, rollout=args.rollout))
        return 0
    with skopeo.passphrase_file(args.sign_passphrase_file, confirm=False) as passphrase:
        signing = skopeo.Signing(Path(args.sign_by).absolute(), passphrase)
        published = publish.publish(
            target.sysroot, args.reference, index=args.index, signing=signing, rollout=args.rollout
        )
        show(args, published)
    return 0


def cli_rollout(args: argparse.Namespace) -> int:
    from arkes import follow, publish, results, rollout

    ref = publish.reference(args.reference)
    named = follow.remote(ref)
    if not named.commit:
        raise UsageError(f"{ref} is not a published Arkēs system (it has no org.arkes.commit label)")
    if args.percent is None:
        found = rollout.governing(ref, named.commit)
        percent, set_at = (found.percent, found.set_at) if found is not None else (100, "")
        show(args, results.RolloutSet(ref, named.digest, named.commit, percent, set_at))
        return 0
    written = rollout.write(ref, named.commit, args.percent)
    show(args, results.RolloutSet(ref, named.digest, named.commit, written.percent, written.set_at))
    return 0


def cli_keygen(args: argparse.Namespace) -> int:
    from arkes import results, skopeo

    with skopeo.passphrase_file(args.passphrase_file, confirm=True) as passphrase:
        private, public = skopeo.generate_key(Path(args.prefix).absolute(), passphrase)
    show(args, results.KeyPair(str(private), str(public)))
    return 0


def cli_switch(args: argparse.Namespace) -> int:
    from arkes import deploy, follow, inhibit, results

    if not args.local and not args.reference:
        raise UsageError("give the REFERENCE to follow, or --local for this machine's Systemfile")
    if args.local and args.require_signed:
        raise UsageError("--require-signed goes with a REFERENCE to follow, not with --local")
    target = open_target(args, writes=True)
    if args.local:
        with inhibit.holding("switching the system (os switch)"):
            outcome = deploy.upgrade(target, deploy=True, local=True, allow_secrets=_allowed_secrets_arg(args))
    else:
        with target.sysroot.lock(), inhibit.holding("switching the system (os switch)"):
            target.sysroot.reload()
            outcome = follow.upgrade(
                target,
                args.reference,
                allow_secrets=_allowed_secrets_arg(args),
                require_key=Path(args.require_signed).absolute() if args.require_signed else None,
                ignore_rollout=True,  # a person's choice of what to follow is no wave of an update
            )
    if outcome.deployed:
        statuscache.refresh(target.path)
    show(args, results.Upgraded(**_outcome_fields(outcome)))
    return 0


def cli_images(args: argparse.Namespace) -> int:
    from arkes import images, results

    wanted = [images.ROOTFS, images.BASE] if args.which == "all" else [f"localhost/arkes:{args.which}"]
    from arkes import podman

    rows = []
    for ref in wanted:
        built = images.ensure(ref, force=args.rebuild and ref == wanted[-1])
        rows.append(results.Image(ref, podman.image_digest(ref), built.rebuilt))
    show(args, results.Images(tuple(rows)))
    return 0


def cli_iso(args: argparse.Namespace) -> int:
    from arkes import iso

    answers_file = Path(args.answers) if args.answers else None
    show(args, iso.make(Path(args.output), _systemfile_arg(args), answers_file))
    return 0


def cli_vm(args: argparse.Namespace) -> int:
    from arkes import vm

    config = vm.Config(
        disk=Path(args.path).absolute(),
        uefi=args.uefi,
        memory=args.memory,
        cpus=args.cpus,
        timeout=args.timeout,
        boot_entry=args.boot_entry,
        console_log=Path(args.console_log).absolute() if args.console_log else None,
        reboots=args.reboots,
        cdrom=Path(args.cdrom).absolute() if args.cdrom else None,
        offline=args.offline,
    )
    if args.until_poweroff:
        if args.exec is not None:
            raise UsageError("--until-poweroff and --exec exclude each other")
        seconds = vm.until_poweroff(config)
        log.info(f"the guest powered off by itself after {seconds:.0f}s")
        return 0
    if args.exec is None:
        if args.boot_entry is not None:
            log.info(f"choose entry {args.boot_entry} in the boot menu yourself")
        return vm.attach(config)
    result = vm.execute(config, args.exec)
    sys.stdout.buffer.write(result.stdout)
    sys.stdout.flush()
    sys.stderr.buffer.write(result.stderr)
    sys.stderr.flush()
    return result.exitcode


# --- the verbs, as data ------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Option:
    """One argument of a verb, as argparse's add_argument takes it; options sharing a `group` exclude each other."""

    flags: tuple[str, ...]
    settings: Mapping[str, Any]
    group: str = ""


def opt(*flags: str, group: str = "", **settings: Any) -> Option:
    return Option(flags, settings, group)


@dataclass(frozen=True)
class Verb:
    name: str
    run: Callable[[argparse.Namespace], int]
    help: str
    description: str = ""  # --help's text; the one-line help when empty
    options: tuple[Option, ...] = ()


JSON_OPTION = opt("--json", action="store_true", help="print the result as JSON on stdout")
BUILD_OPTIONS = (
    opt(
        "--systemfile",
        metavar="FILE",
        help="the Systemfile to build (its directory is the build context); "
        "default: the system's /etc/system/Systemfile",
    ),
    opt(
        "--secret",
        action="append",
        metavar="ID=FILE",
        help="a file for `RUN --mount=type=secret,id=ID` (repeatable); it is never part of the image "
        "and not an input of the build: a changed secret alone does not rebuild",
    ),
    opt(
        "--allow-secret",
        action="append",
        metavar="PATH",
        help="let the image carry this private key on purpose, named by its path in the image (repeatable); "
        "a build whose tree holds any other private key is refused",
    ),
)

VERBS: tuple[Verb, ...] = (
    Verb(
        "check",
        cli_check,
        "validate a Systemfile without building",
        "Validate a Systemfile without building it. Every problem is printed as PATH:LINE: message;\n"
        "the exit status is 2 when there is one, 0 when the file is valid.",
        (
            opt(
                "path",
                nargs="?",
                help="the Systemfile (default: the system's /etc/system/Systemfile, else ./Systemfile)",
            ),
            JSON_OPTION,
        ),
    ),
    Verb(
        "install",
        cli_install,
        "install a system into an empty sysroot directory",
        "Initialize an OSTree sysroot in the empty or absent --sysroot DIR, build the Systemfile\n"
        "(default: the distribution's own) and deploy it. The Systemfile and its context become the\n"
        "deployment's /etc/system, from where later upgrades rebuild.\n\n"
        "With --disk PATH, install to a disk image (created sparse) or a block device instead: GPT with\n"
        "a BIOS boot partition, an EFI system partition, /boot and the root filesystem; GRUB boots it\n"
        "with BIOS and UEFI firmware; the base image and the build cache are copied in so the system\n"
        "rebuilds itself offline. A block device is taken only when it is a whole, writable disk that is\n"
        "not the running system's; one that holds partitions needs --wipe.\n\n"
        "--disk without a path, at a terminal, is the guided installation: it lists the disks (size,\n"
        "model) and asks which one, then the host name, root's password and a first person. An answer\n"
        "file (--answers FILE, TOML: disk, hostname, root_password, user, user_password, ...; see\n"
        "docs/install.md) answers everything; options on the command line win over it.",
        (
            *BUILD_OPTIONS,
            opt(
                "--disk",
                metavar="PATH",
                nargs="?",
                const="",
                help="install to this disk image or block device (without PATH: ask, listing the disks)",
            ),
            opt("--answers", metavar="FILE", help="the installation's answers, TOML (see docs/install.md)"),
            opt("--size", default="10G", help="size of a new disk image (default: 10G)"),
            opt("--wipe", action="store_true", help="erase an existing disk image or a disk that holds partitions"),
            opt("--hostname", metavar="NAME", help="the machine's host name (default: the Systemfile's)"),
            opt("--user", metavar="NAME", help="a first person to make, in the sudo group, home in /var/home"),
            opt("--user-password", metavar="PW", help="the first person's password (asked at a terminal)"),
            opt("--root-password", group="password", metavar="PW", help="root's password on the installed system"),
            opt(
                "--no-root-password",
                group="password",
                action="store_true",
                help="leave root without a password (test images only)",
            ),
            opt(
                "--unattended",
                action="store_true",
                help="on the live installer: install from its answer file (kernel command line arkes.answers=PATH, "
                "else arkes/answers.toml on the medium), then power off or reboot as it says",
            ),
            JSON_OPTION,
        ),
    ),
    Verb(
        "iso",
        cli_iso,
        "make a live installer image (BIOS and UEFI, CD or USB stick)",
        "Build the Systemfile (default: the distribution's own) and write OUTPUT, a hybrid ISO image that\n"
        "boots with BIOS and UEFI firmware from a CD or, written to a USB stick byte for byte (dd), from\n"
        "the stick. It boots a live system (a read-only compressed root, writes kept in memory) that\n"
        "carries the built system, its base image and build cache: `os install --disk` there installs\n"
        "exactly what `os install --disk` installs anywhere, with no network, and the installed system\n"
        "upgrades itself offline.\n\n"
        "With --answers FILE (TOML, see `os install --help` and docs/install.md; checked before anything is\n"
        "built) the file goes onto the image and the live system installs with no one at the keyboard,\n"
        "then powers off (or reboots, ejecting the medium). The kernel command line can name another file\n"
        "(arkes.answers=PATH) or none (arkes.answers=none; the boot menu's second entry). The file is\n"
        "readable by anyone who has the image: prefer root_password_hash and user_password_hash.\n\n"
        "Needs xorriso, squashfs-tools, mtools, grub-pc-bin and grub-efi-amd64-bin on this machine.",
        (
            opt("output", metavar="OUTPUT", help="the image to write (replaced when it exists)"),
            opt(
                "--systemfile",
                metavar="FILE",
                help="the Systemfile to build (its directory is the build context); default: the distribution's",
            ),
            opt("--answers", metavar="FILE", help="an answer file for an unattended install (TOML)"),
            JSON_OPTION,
        ),
    ),
    Verb(
        "build",
        cli_build,
        "build and commit the system without deploying it",
        "Build the Systemfile, rewrite and check the tree, and commit it into the system's repository.\n"
        "Deploys nothing; prints the commit checksum.",
        (*BUILD_OPTIONS, JSON_OPTION),
    ),
    Verb(
        "upgrade",
        cli_upgrade,
        "build the Systemfile and deploy it as the next boot's default",
        "Build the Systemfile and deploy the result beside the current system as the new default.\n"
        "When nothing it reads changed (same input hash as the default deployment), says so and does\n"
        "nothing. What it reads includes the package state: the release of every package repository\n"
        "the image uses. When a repository publishes new versions, the build brings every installed\n"
        "package up to date and the upgrade names each package that changes before it deploys.\n"
        "Local changes in /etc are carried into the new deployment.",
        (
            *BUILD_OPTIONS,
            JSON_OPTION,
            opt(
                "--no-package-updates",
                action="store_true",
                help="keep the package state of the default deployment: rebuild only what the Systemfile changed",
            ),
            opt(
                "--automatic",
                action="store_true",
                help="what the daily timer runs: check only, or build and stage, as /etc/system/updates.conf says",
            ),
            opt("--check", action="store_true", help="only report available updates (as `os checkupdates`)"),
            opt(
                "--download-only",
                action="store_true",
                help="build and commit now, deploy nothing; a later upgrade deploys it",
            ),
            opt("--reboot", action="store_true", help="reboot into the new deployment when it is ready"),
            opt(
                "--force",
                action="store_true",
                help="deploy the new system even when its commit already failed a boot on this machine",
            ),
            opt(
                "--ignore-rollout",
                action="store_true",
                help="on a machine that follows a published system: take it even when its rollout has not "
                "reached this machine's wave",
            ),
        ),
    ),
    Verb(
        "checkupdates",
        cli_checkupdates,
        "report what an upgrade would change, changing nothing",
        "Report, one line each: changes of the Systemfile, its context, the kernel arguments or the tool\n"
        "since the default deployment was built; a changed base image (local digest, and the registry's\n"
        "digest for images from a registry); package updates for the deployed image, asked of its own\n"
        "package manager in a container. On a machine that follows a published system: whether the\n"
        "registry names a new image, and, where it rolls out in waves, whether this machine's wave is in\n"
        "it yet. Exit 0 when updates are available to take, 2 when there are none (or only ones whose\n"
        "rollout has not reached this machine), 1 on error. The result is kept and shown by `os status`.",
        (JSON_OPTION, opt("--no-packages", action="store_true", help="skip the package check (it needs the mirror)")),
    ),
    Verb(
        "diff",
        cli_diff,
        "compare two deployments, or show the local changes in /etc",
        "Compare deployments A and B (indexes of `os status`; default: the booted one against the default,\n"
        "or on a sysroot 1 against 0): --packages (the default) lists added, removed and changed packages\n"
        "with both versions; --files the added, removed and modified paths. --etc lists what this machine\n"
        "changed in /etc (A's, default: the running or default deployment) against the image's /usr/etc.",
        (
            opt("a", nargs="?", type=int, help="the older deployment's index"),
            opt("b", nargs="?", type=int, help="the newer deployment's index"),
            opt("--packages", group="what", action="store_true", help="package changes (the default)"),
            opt("--files", group="what", action="store_true", help="file changes between the two commits"),
            opt("--etc", group="what", action="store_true", help="local changes in /etc against the image's defaults"),
            opt(
                "--var",
                group="what",
                action="store_true",
                help="files the image seeds into /var that the machine has its own copy of (the machine's is kept)",
            ),
            JSON_OPTION,
        ),
    ),
    Verb("du", cli_du, "show where the disk space goes, and what `os prune` would free", options=(JSON_OPTION,)),
    Verb(
        "unlock",
        cli_unlock,
        "make /usr writable until the next reboot (or, with --hotfix, for this deployment)",
        "Mount a writable overlay on /usr of the running system. It vanishes at the next reboot; with\n"
        "--hotfix it persists for this deployment only (a new deployment starts clean). Booted systems only.",
        (opt("--hotfix", action="store_true", help="keep the changes across reboots of this deployment"),),
    ),
    Verb(
        "edit",
        cli_edit,
        "edit the Systemfile, check it, and offer to upgrade",
        "Open $EDITOR on /etc/system/Systemfile. After saving, the checks of `os check` run; on errors\n"
        "they are shown and you may edit again. When the file is valid and changed, `os upgrade` is\n"
        "offered. Nothing is written if you leave without saving.",
    ),
    Verb(
        "boot-menu",
        cli_boot_menu,
        "regenerate the boot menu from the deployments",
        "Write /boot/grub/grub.cfg again from the deployments (atomically). Every change of the\n"
        "deployments does this itself; the system also runs it at shutdown after a staged upgrade.",
    ),
    Verb(
        "health",
        cli_health,
        "run the health checks of the running system now",
        "Run what decides whether a boot is good: no unit named in /etc/system/boot.conf's\n"
        "required-units has failed, and every executable in /usr/lib/arkes/health.d and\n"
        "/etc/system/health.d exits 0 within check-timeout seconds (one of /etc replaces the image's of\n"
        "the same name). Shows each check and the last lines of a failed one; keeps the result for\n"
        "`os status`. Exit 0 when healthy, 1 when not. Changes no deployment.",
        (JSON_OPTION,),
    ),
    Verb(
        "boot-check",
        cli_boot_check,
        "prove this boot good, or go back to the previous deployment",
        "What runs after every boot (arkes-boot-check.service): when the boot loader started the\n"
        "previous deployment because the newest used up its tries, that one is marked failed and the\n"
        "running one becomes the default again. Then the health checks run (as `os health`): a good\n"
        "result ends the running deployment's trial; a bad one, on a deployment on trial, marks it failed,\n"
        "makes the previous deployment the default and reboots into it (once: that one is on no trial).",
        (JSON_OPTION, opt("--no-reboot", action="store_true", help="make the previous the default, but do not reboot")),
    ),
    Verb(
        "etc-merge",
        cli_etc_merge,
        "finish a new deployment's /etc: users and groups merged, dangling unit links removed",
        "Merge the users and groups of the running image (/usr/etc) into this machine's (/etc), as\n"
        "docs/users.md describes, and remove links to units the image no longer ships. `os upgrade`\n"
        "does this itself on a sysroot; on a running system the upgrade is staged, and the first boot\n"
        "of the new deployment runs this (arkes-etc-merge.service). Changes nothing when done already.",
    ),
    Verb("status", cli_status, "show the deployments, in boot order", options=(JSON_OPTION,)),
    Verb(
        "revert",
        cli_revert,
        "remove the newest deployment (index 0)",
        "Remove the newest deployment. Boot the previous deployment from the boot menu first:\n"
        "the running system is never removed.",
        (JSON_OPTION,),
    ),
    Verb(
        "rotate-host-keys",
        cli_rotate_host_keys,
        "replace this machine's SSH host keys with new ones made here",
        "Remove /etc/ssh/ssh_host_*_key* and make every default key type again with ssh-keygen -A (on a\n"
        "booted system the SSH server reloads them). For machines whose keys came with their image:\n"
        "`os status` names them. Every later upgrade and rollback keeps the new keys.",
        (JSON_OPTION,),
    ),
    Verb(
        "rollback",
        cli_rollback,
        "make the previous deployment the default for the next boot, keeping both",
        options=(JSON_OPTION,),
    ),
    Verb(
        "prune",
        cli_prune,
        "remove old deployments, unreferenced objects and stale build images",
        "Remove deployments beyond the newest N (never the booted or a pinned one), then repository\n"
        "objects nothing references and build images no remaining deployment came from.",
        (opt("--keep", type=int, default=2, metavar="N", help="deployments to keep (default: 2)"), JSON_OPTION),
    ),
    Verb(
        "pin",
        cli_pin,
        "keep a deployment from being pruned (or --unpin it)",
        options=(
            opt("index", type=int, help="the deployment's index in `os status`"),
            opt("--unpin", action="store_true", help="remove the pin"),
            JSON_OPTION,
        ),
    ),
    Verb(
        "publish",
        cli_publish,
        "push the system to an OCI registry, for other machines to follow",
        "Push the image the default deployment (or deployment N) was built from to an OCI registry as an\n"
        "ordinary image: REGISTRY/NAME[:TAG] (the tag defaults to latest). It carries its provenance as\n"
        "labels (org.arkes.version, .commit, .input-hash, .base-digest, .packages, ...); `skopeo inspect`\n"
        "shows them and `podman run` runs it. Only the layers the registry lacks are sent. Registries that\n"
        "registries.conf declares insecure are reached as Podman reaches them, with `podman login`'s\n"
        "credentials. Prints REFERENCE@DIGEST, which names exactly this system.\n\n"
        "With --sign-by KEY (a private key file from `os keygen`), the image is signed with a sigstore\n"
        "signature that the registry keeps next to it; machines that `os switch --require-signed` its\n"
        "public key take nothing else. The key's passphrase is asked at the terminal, or read from\n"
        "--sign-passphrase-file.\n\n"
        "With --ostree DIR instead of REFERENCE, the commit goes into DIR, an OSTree archive repository\n"
        "(made when missing) that any static HTTP server serves, under --branch (arkes/stable), with a\n"
        "static delta from the branch's previous commit and a new summary; --sign-by KEYID then signs the\n"
        "commit and the summary with a GPG key of the publisher's keyring (GNUPGHOME). Machines follow it\n"
        "with `os switch ostree+http://HOST/PATH#BRANCH`.",
        (
            opt("reference", metavar="REFERENCE", nargs="?", help="where to push: REGISTRY/NAME[:TAG]"),
            opt("--index", type=int, default=0, metavar="N", help="the deployment to publish (default: 0)"),
            opt("--sign-by", metavar="KEY", help="sign with this private key file (see `os keygen`)"),
            opt("--sign-passphrase-file", metavar="FILE", help="the signing key's passphrase: FILE's first line"),
            opt("--rollout", type=int, metavar="PERCENT", help="let only this share of the fleet take it, for now"),
            opt("--ostree", metavar="DIR", help="publish into this OSTree archive repository instead"),
            opt("--branch", default="arkes/stable", metavar="NAME", help="with --ostree: the branch (arkes/stable)"),
            JSON_OPTION,
        ),
    ),
    Verb(
        "rollout",
        cli_rollout,
        "show, widen or halt the rollout of a published system",
        "A published system can reach a share of the fleet first: each machine has a wave, 0 to 99, from its\n"
        "machine-id, and takes the update when its wave is below the rollout's percentage. `os publish\n"
        "--rollout PERCENT` starts one; `os rollout REFERENCE PERCENT` widens it (100: every machine) or\n"
        "halts it (0), with no rebuild; without PERCENT it shows the rollout of what REFERENCE names now.\n"
        "The record is kept in the registry next to the image, as the tag TAG.rollout. An image published\n"
        "without --rollout goes to every machine. `os checkupdates` on a machine says where it stands.",
        (
            opt("reference", metavar="REFERENCE", help="the published system: REGISTRY/NAME[:TAG]"),
            opt("percent", metavar="PERCENT", type=int, nargs="?", help="the share of the fleet, 0 to 100"),
            JSON_OPTION,
        ),
    ),
    Verb(
        "keygen",
        cli_keygen,
        "make a key pair for signing published systems",
        "Make a sigstore key pair: PREFIX.private, encrypted with a passphrase (asked twice at the\n"
        "terminal, or read from --passphrase-file), for `os publish --sign-by`; and PREFIX.pub, for the\n"
        "machines: `os switch REFERENCE --require-signed PREFIX.pub`. Keep the private key off the machines\n"
        "that follow; an existing file is never overwritten.",
        (
            opt("prefix", metavar="PREFIX", help="where to write the keys: PREFIX.private and PREFIX.pub"),
            opt("--passphrase-file", metavar="FILE", help="the passphrase: FILE's first line"),
            JSON_OPTION,
        ),
    ),
    Verb(
        "switch",
        cli_switch,
        "follow a published system (or --local: this machine's Systemfile again)",
        "Make this machine follow a system that `os publish` pushed to a registry: pull REFERENCE (only\n"
        "the layers this machine lacks), commit it as a build would (the same rewrite and checks) and deploy\n"
        "it as the next default, the previous deployment kept. From then on `os upgrade` takes REFERENCE's\n"
        "newest image and `os checkupdates` asks its registry. With --local, build /etc/system/Systemfile\n"
        "again and deploy that.\n\n"
        "Images are verified as /etc/containers/policy.json requires. --require-signed KEY (the publisher's\n"
        "public key file) takes only an image that KEY signed, and from then on requires that signature of\n"
        "every image of REFERENCE's repository: the key goes to /etc/pki/containers, the requirement to\n"
        "policy.json and registries.d, where the /etc merge keeps them. `os status` shows the requirement.",
        (
            opt(
                "reference",
                metavar="REFERENCE",
                nargs="?",
                help="REGISTRY/NAME[:TAG], or ostree+http://HOST/PATH[#BRANCH], to follow",
                group="source",
            ),
            opt("--local", action="store_true", help="build this machine's own Systemfile again", group="source"),
            opt(
                "--require-signed",
                metavar="KEY",
                help="take only what this public key signed (a sigstore key; a GPG key for ostree+http://)",
            ),
            opt("--allow-secret", action="append", metavar="PATH", help="a private key the image may carry"),
            JSON_OPTION,
        ),
    ),
    Verb(
        "vm",
        cli_vm,
        "boot a disk image in QEMU: the console, or a command run in the guest",
        "Boot a disk image made by `os install --disk` in QEMU (KVM where a hardware module is loaded,\n"
        "TCG otherwise). Without --exec, the serial console is attached to this terminal: log in as root,\n"
        "leave with Ctrl-A then X. With --exec, wait until the guest reaches multi-user, run CMD as root\n"
        "with a shell, print its output, power the guest off and exit with CMD's exit status.",
        (
            opt("path", help="the disk image"),
            opt("--exec", metavar="CMD", help="run CMD in the guest, then power it off"),
            opt("--cdrom", metavar="ISO", help="also attach ISO as a CD and boot from it (an installer of `os iso`)"),
            opt(
                "--until-poweroff",
                action="store_true",
                help="without a console: wait (--timeout) for the guest to power off by itself, as an unattended "
                "installer does; fail when the console says the installation failed",
            ),
            opt("--offline", action="store_true", help="the guest reaches no network (QEMU's restrict=on)"),
            opt("--boot-entry", type=int, metavar="N", help="boot menu entry N, once, as chosen in the menu"),
            opt("--uefi", action="store_true", help="boot with UEFI firmware (OVMF) instead of BIOS"),
            opt("--memory", type=int, default=2048, metavar="MB", help="guest memory (default: 2048)"),
            opt("--cpus", type=int, default=2, metavar="N", help="guest CPUs (default: 2)"),
            opt("--timeout", type=float, default=300, metavar="S", help="seconds to reach multi-user (default: 300)"),
            opt("--console-log", metavar="FILE", help="with --exec: also write all the serial console shows to FILE"),
            opt(
                "--reboots",
                type=int,
                default=0,
                metavar="N",
                help="with --exec: the guest is to reboot by itself N times first (a panic with panic=, a boot check "
                "that goes back to the previous deployment); their panics are expected, the last boot's are not, and "
                "--timeout covers them all",
            ),
        ),
    ),
    Verb(
        "images",
        cli_images,
        "build the distribution's images (rootfs, base) when missing or stale",
        "Build localhost/arkes:rootfs (from Debian packages) and localhost/arkes:base when they are\n"
        "missing or their inputs changed. Downloaded packages are cached in $ARKES_CACHE/debs.",
        (
            opt("which", nargs="?", choices=("all", "rootfs", "base"), default="all"),
            opt("--rebuild", action="store_true", help="rebuild even when the inputs did not change"),
            JSON_OPTION,
        ),
    ),
)


def _chosen_verb(argv: Sequence[str]) -> str | None:
    """The verb a command line names, if it names one (global options come before it)."""
    names = {verb.name for verb in VERBS}
    words = iter(argv)
    for word in words:
        if word == "--sysroot":
            next(words, None)
        elif not word.startswith("-"):
            return word if word in names else None
    return None


def parser(argv: Sequence[str] | None = None) -> argparse.ArgumentParser:
    """The command line of `os`. Given the arguments, only the verb they name is set up (a parser per verb costs
    about a millisecond, which `os status` need not pay); every verb is there for `os --help` and for docs."""
    chosen = _chosen_verb(argv) if argv is not None else None
    p = argparse.ArgumentParser(
        prog="os", description=DESCRIPTION, epilog=EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument("--sysroot", metavar="DIR", help="act on the OSTree sysroot in DIR (default: $ARKES_SYSROOT)")
    p.add_argument("--debug", action="store_true", help="show every external command and tracebacks")
    p.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    subparsers = p.add_subparsers(dest="verb", metavar="VERB", required=True)
    for verb in VERBS:
        if chosen is not None and verb.name != chosen:
            continue
        sub = subparsers.add_parser(
            verb.name,
            help=verb.help,
            description=verb.description or verb.help,
            formatter_class=argparse.RawDescriptionHelpFormatter,
        )
        sub.set_defaults(func=verb.run)
        groups: dict[str, argparse._MutuallyExclusiveGroup] = {}
        for option in verb.options:
            where: argparse.ArgumentParser | argparse._MutuallyExclusiveGroup = sub
            if option.group:
                where = groups.get(option.group) or groups.setdefault(option.group, sub.add_mutually_exclusive_group())
            where.add_argument(*option.flags, **option.settings)
    return p
