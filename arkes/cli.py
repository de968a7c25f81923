"""The command line: one argparse subcommand per verb, each a small cli_<verb>(args) -> int."""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path
from typing import Any

from arkes import __version__, deploy, images, log, status, systemfile
from arkes.errors import UsageError
from arkes.ostree import Sysroot

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


def target_path(args: argparse.Namespace) -> Path:
    given = args.sysroot or os.environ.get("ARKES_SYSROOT")
    if given:
        return Path(given).absolute()
    if Path("/run/ostree-booted").exists():
        return Path("/")
    raise UsageError(
        "this machine is not a booted Arkēs system; `os` will not touch its root filesystem",
        hint="act on a sysroot directory with `os --sysroot DIR ...` (or ARKES_SYSROOT=DIR), "
        "e.g. `os --sysroot /tmp/sys install`",
    )


def open_target(args: argparse.Namespace) -> Sysroot:
    path = target_path(args)
    if not Sysroot.is_initialized(path):
        raise UsageError(f"{path} holds no Arkēs system", hint=f"install one with `os --sysroot {path} install`")
    sysroot: Sysroot = Sysroot.open(path)
    return sysroot


def _systemfile_arg(args: argparse.Namespace) -> Path | None:
    return Path(args.systemfile) if getattr(args, "systemfile", None) else None


# --- verbs ----------------------------------------------------------------------------------------------------


def cli_check(args: argparse.Namespace) -> int:
    path = Path(args.path) if args.path else deploy.resolve_systemfile(open_target(args), None)
    if not path.is_file():
        raise UsageError(f"{path}: no such file")
    problems = systemfile.problems(path)
    if args.json:
        emit({"apiVersion": status.API_VERSION, "path": str(path), "valid": not problems, "problems": problems})
    else:
        for problem in problems:
            print(problem)
        if not problems:
            log.info(f"{path}: valid")
    return 2 if problems else 0


def cli_install(args: argparse.Namespace) -> int:
    path = target_path(args)
    if path == Path("/"):
        raise UsageError("`os install` needs a target", hint="give `os --sysroot DIR install`")
    outcome = deploy.install(path, _systemfile_arg(args))
    log.info(f"installed version {outcome.version} ({outcome.checksum[:12]}) into {path}")
    if args.json:
        emit({"apiVersion": status.API_VERSION, "checksum": outcome.checksum, "version": outcome.version})
    return 0


def _outcome(args: argparse.Namespace, outcome: deploy.Outcome) -> None:
    if args.json:
        emit(
            {
                "apiVersion": status.API_VERSION,
                "checksum": outcome.checksum,
                "version": outcome.version,
                "deployed": outcome.deployed,
                "upToDate": outcome.up_to_date,
            }
        )


def cli_build(args: argparse.Namespace) -> int:
    outcome = deploy.upgrade(open_target(args), _systemfile_arg(args), deploy=False)
    _outcome(args, outcome)
    if not args.json:
        print(outcome.checksum)
    return 0


def cli_upgrade(args: argparse.Namespace) -> int:
    outcome = deploy.upgrade(open_target(args), _systemfile_arg(args), deploy=True)
    _outcome(args, outcome)
    return 0


def cli_status(args: argparse.Namespace) -> int:
    model = status.collect(open_target(args))
    if args.json:
        emit(status.to_json(model))
    else:
        sys.stdout.write(status.render(model))
    return 0


def cli_revert(args: argparse.Namespace) -> int:
    deploy.revert(open_target(args))
    return 0


def cli_rollback(args: argparse.Namespace) -> int:
    deploy.rollback(open_target(args))
    return 0


def _size(n: int) -> str:
    value = float(n)
    for unit in ("B", "KiB", "MiB", "GiB"):
        if value < 1024 or unit == "GiB":
            return f"{value:.0f} {unit}" if unit == "B" else f"{value:.1f} {unit}"
        value /= 1024
    return f"{n} B"


def cli_prune(args: argparse.Namespace) -> int:
    pruned = deploy.prune(open_target(args), args.keep)
    if args.json:
        emit(
            {
                "apiVersion": status.API_VERSION,
                "removedDeployments": list(pruned.deployments),
                "prunedObjects": pruned.objects,
                "freedRepoBytes": pruned.repo_bytes,
                "removedImages": list(pruned.images),
                "freedImageBytes": pruned.image_bytes,
            }
        )
    else:
        log.info(
            f"removed {len(pruned.deployments)} deployment(s) and {pruned.objects} repository object(s), "
            f"freeing {_size(pruned.repo_bytes)}; removed {len(pruned.images)} stale build image(s) "
            f"({_size(pruned.image_bytes)})"
        )
    return 0


def cli_pin(args: argparse.Namespace) -> int:
    deploy.pin(open_target(args), args.index, not args.unpin)
    log.info(f"deployment {args.index} {'unpinned' if args.unpin else 'pinned'}")
    return 0


def cli_images(args: argparse.Namespace) -> int:
    wanted = [images.ROOTFS, images.BASE] if args.which == "all" else [f"localhost/arkes:{args.which}"]
    from arkes import podman

    rows: list[dict[str, Any]] = []
    for ref in wanted:
        built = images.ensure(ref, force=args.rebuild and ref == wanted[-1])
        rows.append({"ref": ref, "digest": podman.image_digest(ref), "rebuilt": built.rebuilt})
        if not args.json:
            log.info(f"{ref}: {'built' if built.rebuilt else 'up to date'} ({rows[-1]['digest'][:19]})")
    if args.json:
        emit({"apiVersion": status.API_VERSION, "images": rows})
    return 0


# --- the parser -------------------------------------------------------------------------------------------


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="os", description=DESCRIPTION, epilog=EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument("--sysroot", metavar="DIR", help="act on the OSTree sysroot in DIR (default: $ARKES_SYSROOT)")
    p.add_argument("--debug", action="store_true", help="show every external command and tracebacks")
    p.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    verbs = p.add_subparsers(dest="verb", metavar="VERB", required=True)

    def verb(name: str, func: Any, help: str, description: str | None = None) -> argparse.ArgumentParser:
        sub = verbs.add_parser(
            name,
            help=help,
            description=description or help,
            formatter_class=argparse.RawDescriptionHelpFormatter,
        )
        sub.set_defaults(func=func)
        return sub

    def json_flag(sub: argparse.ArgumentParser) -> None:
        sub.add_argument("--json", action="store_true", help="print the result as JSON on stdout")

    def systemfile_flag(sub: argparse.ArgumentParser) -> None:
        sub.add_argument(
            "--systemfile",
            metavar="FILE",
            help="the Systemfile to build (its directory is the build context); "
            "default: the system's /etc/system/Systemfile",
        )

    sub = verb(
        "check",
        cli_check,
        "validate a Systemfile without building",
        "Validate a Systemfile without building it. Every problem is printed as PATH:LINE: message;\n"
        "the exit status is 2 when there is one, 0 when the file is valid.",
    )
    sub.add_argument("path", nargs="?", help="the Systemfile (default: the system's /etc/system/Systemfile)")
    json_flag(sub)

    sub = verb(
        "install",
        cli_install,
        "install a system into an empty sysroot directory",
        "Initialize an OSTree sysroot in the empty or absent --sysroot DIR, build the Systemfile\n"
        "(default: the distribution's own) and deploy it. The Systemfile and its context become the\n"
        "deployment's /etc/system, from where later upgrades rebuild.",
    )
    systemfile_flag(sub)
    json_flag(sub)

    sub = verb(
        "build",
        cli_build,
        "build and commit the system without deploying it",
        "Build the Systemfile, rewrite and check the tree, and commit it into the system's repository.\n"
        "Deploys nothing; prints the commit checksum.",
    )
    systemfile_flag(sub)
    json_flag(sub)

    sub = verb(
        "upgrade",
        cli_upgrade,
        "build the Systemfile and deploy it as the next boot's default",
        "Build the Systemfile and deploy the result beside the current system as the new default.\n"
        "When nothing it reads changed (same input hash as the default deployment), says so and does\n"
        "nothing. Local changes in /etc are carried into the new deployment.",
    )
    systemfile_flag(sub)
    json_flag(sub)

    sub = verb("status", cli_status, "show the deployments, in boot order")
    json_flag(sub)

    verb(
        "revert",
        cli_revert,
        "remove the newest deployment (index 0)",
        "Remove the newest deployment. Boot the previous deployment from the boot menu first:\n"
        "the running system is never removed.",
    )
    verb("rollback", cli_rollback, "make the previous deployment the default for the next boot, keeping both")

    sub = verb(
        "prune",
        cli_prune,
        "remove old deployments, unreferenced objects and stale build images",
        "Remove deployments beyond the newest N (never the booted or a pinned one), then repository\n"
        "objects nothing references and build images no remaining deployment came from.",
    )
    sub.add_argument("--keep", type=int, default=2, metavar="N", help="deployments to keep (default: 2)")
    json_flag(sub)

    sub = verb("pin", cli_pin, "keep a deployment from being pruned (or --unpin it)")
    sub.add_argument("index", type=int, help="the deployment's index in `os status`")
    sub.add_argument("--unpin", action="store_true", help="remove the pin")

    sub = verb(
        "images",
        cli_images,
        "build the distribution's images (rootfs, base) when missing or stale",
        "Build localhost/arkes:rootfs (from Debian packages) and localhost/arkes:base when they are\n"
        "missing or their inputs changed. Downloaded packages are cached in $ARKES_CACHE/debs.",
    )
    sub.add_argument("which", nargs="?", choices=("all", "rootfs", "base"), default="all")
    sub.add_argument("--rebuild", action="store_true", help="rebuild even when the inputs did not change")
    json_flag(sub)
    return p
