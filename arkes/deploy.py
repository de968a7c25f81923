"""Changing the set of deployments: install, build, upgrade, revert, rollback, prune, pin.

Every verb here holds the sysroot lock for its whole run. Nothing outside the new deployment is written until it is
complete; libostree swaps the boot configuration atomically, so a failure or a kill at any point leaves the
previous deployment bootable and default.
"""

from __future__ import annotations

import shutil
from collections.abc import Callable, Collection, Mapping
from pathlib import Path
from typing import TYPE_CHECKING

from arkes import (
    bootloader,
    boots,
    build,
    builder,
    du,
    etc,
    identity,
    images,
    layers,
    log,
    packages,
    podman,
    preflight,
    run,
)
from arkes.errors import UsageError
from arkes.names import BUILD_REF
from arkes.records import Metadata
from arkes.results import Outcome, Pinned, Pruned, Reverted, RolledBack
from arkes.target import SYSTEM_DIR, Target, machine_kargs

if TYPE_CHECKING:
    from arkes.ostree import Sysroot

ORIGIN_INSTALL_KARGS = "install-kargs"
ORIGIN_INPUT_HASH = "input-hash"


def package_state(
    base_image: str, recorded: dict[str, str], *, updates: bool = True, cache: Path | None = None
) -> packages.State:
    """The package state to build against: the repositories' current releases, or with `updates` off the recorded
    ones. A repository that cannot be reached counts as unchanged (its recorded release), and is named. Without a
    recorded state, the repositories are those `base_image` uses."""
    if not updates:
        return packages.State(dict(recorded))
    urls = list(recorded) or (build.image_release_urls(base_image) if base_image else [])
    state = packages.fetch_state(urls, cache=cache)
    for problem in state.unreachable:
        log.warn(f"cannot reach a package repository, its packages count as unchanged: {problem}")
    if not state.unreachable:
        return state
    kept = {url: sha for url, sha in recorded.items() if url not in state.indexes}
    return packages.State(state.indexes | kept, state.unreachable)


def install_kargs(sysroot: Sysroot) -> list[str]:
    default = sysroot.default()
    if default is None:
        return []
    return default.origin_value(ORIGIN_INSTALL_KARGS).split()


def _copy_system_dir(context: Path, systemfile: Path, deployment_dir: Path) -> None:
    """Make the deployment's /etc/system hold the Systemfile and its context, so later upgrades rebuild from it."""
    target = deployment_dir / SYSTEM_DIR
    kargs = target / "kargs"
    kept = kargs.read_bytes() if kargs.is_file() else None
    if target.exists():
        shutil.rmtree(target)
    shutil.copytree(context, target, symlinks=True)
    if systemfile.name != "Systemfile":
        shutil.copy2(systemfile, target / "Systemfile")
    if kept is not None and not (target / "kargs").exists():
        (target / "kargs").write_bytes(kept)


def _deploy(
    sysroot: Sysroot,
    result: build.Result,
    install_kargs: list[str],
    *,
    copy: bool,
    customize: Callable[[Path], None] | None = None,
) -> None:
    """Deploy a built commit as the new default. With copy, the Systemfile and its context become its /etc/system."""
    origin = {ORIGIN_INPUT_HASH: result.plan.input_hash}
    system = (result.plan.context, result.plan.systemfile.path) if copy else None
    deploy_commit(
        sysroot,
        result.checksum,
        [*result.image_kargs, *result.plan.kargs],
        install_kargs,
        origin,
        system=system,
        customize=customize,
    )


def deploy_commit(
    sysroot: Sysroot,
    checksum: str,
    kargs: list[str],
    install_kargs: list[str],
    origin: Mapping[str, str],
    *,
    system: tuple[Path, Path] | None = None,
    customize: Callable[[Path], None] | None = None,
) -> None:
    """Deploy a commit as the new default, with the image's and the machine's `kargs` after `install_kargs`.
    `system` (context, Systemfile): they become its /etc/system."""
    origin = dict(origin)
    if install_kargs:
        origin[ORIGIN_INSTALL_KARGS] = " ".join(install_kargs)

    staged = sysroot.booted is not None

    def prepare(deployment_dir: Path) -> None:
        if system is not None:
            _copy_system_dir(*system, deployment_dir)
        if customize is not None:
            customize(deployment_dir)
        if staged:
            return  # OSTree merges a staged deployment's /etc at shutdown: arkes-etc-merge.service finishes it
        etc.finish(deployment_dir / "etc", deployment_dir / "usr/etc")

    with log.step("deploy"):
        sysroot.deploy(checksum, origin=origin, kargs=_dedupe([*install_kargs, *kargs]), prepare=prepare)
        if staged:
            etc.mark_pending(Path("/etc"), checksum)
        bootloader.write_menu(sysroot)


def _dedupe(kargs: list[str]) -> list[str]:
    seen: dict[str, None] = {}
    for karg in kargs:
        seen.setdefault(karg, None)
    return list(seen)


def install(
    path: Path,
    systemfile: Path | None,
    install_kargs: list[str] | None = None,
    *,
    mountpoints: tuple[str, ...] = (),
    customize: Callable[[Path], None] | None = None,
    secrets: Mapping[str, Path] | None = None,
    allow_secrets: Collection[str] = (),
) -> Outcome:
    """Initialize an empty directory as a sysroot and deploy the Systemfile's system into it.

    `mountpoints` name entries that may already exist (the mounted /boot of a disk, lost+found); `customize`
    changes the new deployment (its /etc) before it becomes bootable.
    """
    from arkes.ostree import Sysroot

    if Sysroot.is_initialized(path):
        raise UsageError(f"{path} already holds a system", hint="use `os upgrade` to update it")
    allowed = {*mountpoints, "lost+found"} if mountpoints else set()
    if path.exists() and (not path.is_dir() or any(c.name not in allowed for c in path.iterdir())):
        raise UsageError(f"{path} is not empty", hint="install into an empty or absent directory")
    source = (systemfile or images.default_systemfile()).resolve()
    created = not path.exists()
    # Everything that can be refused is checked before the sysroot is made.
    # Base images from a registry are pulled as the installing machine's policy says.
    p = build.plan(source, machine_kargs(source.parent), registry_etc=Path("/etc"))
    p = p.with_packages(package_state(p.base_image, {}))
    try:
        sysroot = Sysroot.initialize(path)
        with sysroot.lock():
            result = build.build(sysroot, p, secrets=secrets, allow_secrets=allow_secrets)
            _deploy(sysroot, result, install_kargs or [], copy=True, customize=customize)
    except BaseException:
        # An install that did not finish leaves nothing behind: the directory was empty or absent.
        remove_sysroot(path, keep_dir=not created, keep=allowed)
        raise
    return Outcome(result.checksum, result.version, deployed=True, up_to_date=False)


def remove_sysroot(path: Path, *, keep_dir: bool = False, keep: set[str] | None = None) -> None:
    """Delete a sysroot's contents. OSTree makes deployment roots immutable, so that flag is lifted first."""
    if not path.exists():
        return
    deployments = list(path.glob("ostree/deploy/*/deploy/*"))
    if deployments:
        run.run(["chattr", "-i", *deployments], check=False)
    for child in list(path.iterdir()):
        if keep and child.name in keep:
            if child.is_dir() and not child.is_symlink():
                remove_sysroot(child, keep_dir=True)
            continue
        if child.is_dir() and not child.is_symlink():
            shutil.rmtree(child, ignore_errors=True)
        else:
            child.unlink()
    if not keep_dir:
        path.rmdir()


def upgrade(
    target: Target,
    *,
    deploy: bool,
    reuse: bool = True,
    package_updates: bool = True,
    secrets: Mapping[str, Path] | None = None,
    allow_secrets: Collection[str] = (),
    local: bool = False,
    ignore_rollout: bool = False,
) -> Outcome:
    """Build the system's Systemfile; with deploy, make it the new default unless nothing changed.

    With reuse, inputs equal to the default deployment's mean "up to date", and a commit already built from the
    same inputs (`--download-only`) is deployed without building again. Without package_updates, the package
    state stays the default deployment's (see arkes.packages). A machine that follows a published system takes
    it from its registry instead (arkes.follow), when its rollout admits this machine or `ignore_rollout`,
    unless `local` or a Systemfile given on the command line says to build.
    """
    from arkes import follow

    sysroot = target.sysroot
    with sysroot.lock():
        sysroot.reload()
        followed = follow.source(sysroot.default())
        if followed and not local and target.given_systemfile is None:
            return follow.upgrade(
                target, followed, deploy_it=deploy, allow_secrets=allow_secrets, ignore_rollout=ignore_rollout
            )
        machine_etc = target.system_etc
        path = target.systemfile()
        if not builder.is_arkes_system():
            builder.host_storage()  # asked beside the plan and the repositories, not after them
        default = sysroot.default()
        current = sysroot.commit(default.checksum) if default is not None else None
        recorded = dict(current.metadata.package_indexes) if current else {}
        # The repositories the system uses are known: they are asked while the Systemfile is read.
        cache = target.package_cache
        asked = (
            run.in_background(package_state, "", recorded, updates=package_updates, cache=cache) if recorded else None
        )
        built_on = {current.metadata.base_image: current.metadata.base_digest} if current is not None else {}
        p = build.plan(path, target.kargs, registry_etc=machine_etc, built_on=built_on)
        state = asked.result() if asked else package_state(p.base_image, {}, updates=package_updates, cache=cache)
        moved = state.changed(recorded) if recorded else []
        for url in moved:
            log.info(f"package repository {url} published a new release")
        p = p.with_packages(state)
        if reuse and current is not None and not followed and current.metadata.input_hash == p.input_hash:
            log.info(f"the system is up to date (version {current.version}, input hash {p.input_hash[:12]})")
            return Outcome(current.checksum, current.version, deployed=False, up_to_date=True)
        if current is not None:
            p = build.current_packages(sysroot, current, p)
        result = _downloaded(sysroot, p) if reuse else None
        if result is None:
            result = build.build(sysroot, p, secrets=secrets, allow_secrets=allow_secrets)
        elif deploy:
            log.info(f"deploying version {result.version}, built earlier by `os upgrade --download-only`")
        else:
            log.info(f"version {result.version} is already built from these inputs")
        if current is not None:
            name_package_changes(current.metadata, sysroot.commit(result.checksum).metadata)
        if not deploy:
            return Outcome(result.checksum, result.version, deployed=False, up_to_date=False)
        # The Systemfile moves into the new /etc only when it came from elsewhere; otherwise /etc's merge carries it.
        outside = path.parent != target.system_dir.resolve() and path.parent != target.system_dir
        before_deploy(target, result.checksum)
        staged = sysroot.booted is not None
        _deploy(sysroot, result, install_kargs(sysroot), copy=outside and not staged)
        if outside and staged:
            # A staged deployment takes the running /etc at shutdown: the Systemfile goes there.
            _copy_system_dir(p.context, path, machine_etc.parent)
        log.info(f"deployed version {result.version} ({result.checksum[:12]}); it becomes active on the next boot")
        return Outcome(result.checksum, result.version, deployed=True, up_to_date=False)


def before_deploy(target: Target, checksum: str) -> None:
    """What is checked and said before the commit `checksum` is deployed on `target`: room and /etc (pre-flight),
    the machine's identity and users kept, the files under /var the new system seeds but finds there."""
    sysroot = target.sysroot
    failed = boots.failed_before(target.state_dir, checksum, sysroot.commit(checksum).metadata.input_hash)
    if failed is not None and not target.redeploy_failed:
        raise UsageError(
            f"this system ({checksum[:12]}) failed a boot on this machine on {failed.at}: {failed.reason}",
            hint="change what failed and upgrade again, or deploy it once more with `os upgrade --force`",
        )
    machine_etc = target.system_etc
    merge = sysroot.merge_deployment()
    if merge is not None:
        with log.step("pre-flight"):
            preflight.check(sysroot, checksum, machine_etc, sysroot.deployment_dir(merge) / "usr/etc")
        identity.adopt(machine_etc, sysroot.deployment_dir(merge) / "usr/etc", target.state_dir)
    etc.check_users(sysroot, checksum, machine_etc)
    default = sysroot.default()
    if default is not None:
        _name_kept_var(target, default.checksum, checksum)


def name_package_changes(old: Metadata, new: Metadata) -> None:
    """Say which packages the new system changes (name, old → new, from two commits' metadata), before anything
    is deployed."""
    from arkes import diff

    changes = diff.package_changes(old, new)
    if changes and changes[0].kind == "kernel":
        log.info(f"kernel: {changes[0].old or '(none)'} -> {changes[0].new or '(none)'}")
        changes = changes[1:]
    if not changes:
        log.info("packages: none change")
        return
    log.info(f"packages: {len(changes)} change")
    for c in changes:
        log.info(f"  {c.name} {c.old or '(new)'} -> {c.new or '(removed)'}")


def _name_kept_var(target: Target, old: str, new: str, shown: int = 10) -> None:
    """Name each /var path where the new image brings content the machine does not take (its own copy stays)."""
    from arkes import diff

    sysroot = target.sysroot
    kept = diff.var_kept(target.var, diff.commit_reader(sysroot, new), diff.commit_reader(sysroot, old))
    if not kept:
        return
    log.info(f"/var is the machine's: the new image changes {len(kept)} path(s) there that keep the machine's copy:")
    for change in kept[:shown]:
        log.info(f"  {change.name}")
    if len(kept) > shown:
        log.info(f"  ... and {len(kept) - shown} more; `os diff --var` lists them all")


def _downloaded(sysroot: Sysroot, p: build.Plan) -> build.Result | None:
    """The commit of an earlier `os upgrade --download-only` (or `os build`) of exactly these inputs, if any."""
    checksum = sysroot.resolve(BUILD_REF)
    if checksum is None:
        return None
    commit = sysroot.commit(checksum)
    if commit.metadata.input_hash != p.input_hash:
        return None
    return build.Result(checksum, commit.version, p, commit.metadata.kargs)


def _index(sysroot: Sysroot, index: int) -> int:
    count = len(sysroot.deployments())
    if not 0 <= index < count:
        raise UsageError(f"there is no deployment {index} (indexes 0 to {count - 1}; see `os status`)")
    return index


def revert(sysroot: Sysroot) -> Reverted:
    """Remove the newest deployment (index 0), after booting the previous one from the boot menu."""
    with sysroot.lock():
        sysroot.reload()
        deployments = sysroot.deployments()
        if len(deployments) < 2:
            raise UsageError("there is only one deployment; nothing to revert to")
        newest = deployments[0]
        booted = sysroot.booted
        if newest.same(booted):
            raise UsageError(
                "deployment 0 is the running system and cannot be removed",
                hint="reboot and choose the previous deployment in the boot menu first, or use `os rollback` "
                "to make the previous deployment the default for the next boot",
            )
        if newest.pinned:
            raise UsageError("deployment 0 is pinned", hint="unpin it first with `os pin --unpin 0`")
        version = sysroot.commit(newest.checksum).version
        others = [d for d in sysroot.all_deployments() if not d.same(newest)]
        with log.step("revert"):
            sysroot.write_deployments(others)
            bootloader.write_menu(sysroot)
        return Reverted(newest.checksum, version)


def rollback(sysroot: Sysroot, *, wait: float = 0) -> RolledBack:
    """Make the previous deployment (index 1) the default for the next boot, keeping both. `wait`: seconds to wait
    for the sysroot lock (see Sysroot.lock)."""
    with sysroot.lock(wait):
        sysroot.reload()
        deployments = sysroot.deployments()
        if len(deployments) < 2:
            raise UsageError("there is only one deployment; nothing to roll back to")
        first, second = deployments[0], deployments[1]
        rest = [d for d in sysroot.all_deployments() if not d.same(first) and not d.same(second)]
        booted = sysroot.booted
        machine = Path("/etc") if first.same(booted) else first.root / "etc"
        with log.step("rollback"):
            # The users and groups the machine has now go back with it (OSTree keeps each deployment's /etc apart).
            said = etc.carry_users(sysroot.deployment_dir(second), machine)
            said += identity.carry(sysroot.deployment_dir(second) / "etc", machine)
            sysroot.write_deployments([second, first, *rest])
            bootloader.write_menu(sysroot)
        return RolledBack(second.checksum, sysroot.commit(second.checksum).version, tuple(said))


def prune(sysroot: Sysroot, keep: int) -> Pruned:
    """Remove deployments beyond the newest `keep` (never booted or pinned ones), then unreferenced objects and
    build images no deployment came from."""
    if keep < 1:
        raise UsageError("--keep must be at least 1")
    with sysroot.lock():
        sysroot.reload()
        deployments = sysroot.deployments()
        booted = sysroot.booted
        removed = [d for d in deployments[keep:] if not d.pinned and not d.same(booted)]
        if removed:
            kept = [d for d in sysroot.all_deployments() if not any(d.same(r) for r in removed)]
            with log.step(f"remove {len(removed)} deployment(s)"):
                sysroot.write_deployments(kept)
                bootloader.write_menu(sysroot)
        # Image layers stay committed while a kept deployment or the last build was made of them.
        needed = {digest for d in sysroot.all_deployments() for digest in sysroot.commit(d.checksum).metadata.layers}
        built = sysroot.resolve(BUILD_REF)
        if built:
            needed |= set(sysroot.commit(built).metadata.layers)
        unused = sorted(set(sysroot.layers()) - needed)
        if unused:
            log.info(f"removing {len(unused)} image layer(s) no kept deployment is made of")
            sysroot.remove_layers(unused)
        with log.step("prune the repository"):
            layers.remove_stale(sysroot)
            objects, freed = sysroot.cleanup()
        live = {sysroot.commit(d.checksum).metadata.input_hash for d in sysroot.deployments()}
        stale, _ = du.stale_build_images(sysroot, live)
        image_bytes = 0
        if stale:
            before = podman.storage_bytes()
            with log.step(f"remove {len(stale)} stale build image(s)"):
                podman.untag(stale)
                podman.prune_dangling()
            image_bytes = max(before - podman.storage_bytes(), 0)
        return Pruned(tuple(d.checksum for d in removed), objects, freed, tuple(stale), image_bytes, len(unused))


def pin(sysroot: Sysroot, index: int, pinned: bool) -> Pinned:
    with sysroot.lock():
        sysroot.reload()
        deployment = sysroot.deployments()[_index(sysroot, index)]
        sysroot.set_pinned(deployment, pinned)
        return Pinned(index, deployment.checksum, pinned)


def unlock(target: Target, *, hotfix: bool) -> None:
    """A writable overlay on /usr of the running system: until reboot, or (hotfix) for this deployment."""
    sysroot = target.sysroot
    booted = sysroot.booted
    if not target.booted or booted is None:
        raise UsageError(
            f"{sysroot.path} is not the running system; only a booted system can be unlocked",
            hint="run `os unlock` on the booted Arkēs system (e.g. `os vm IMG --exec 'os unlock'`)",
        )
    # The caller opened the sysroot without a private mount namespace: the overlay must be seen by every process.
    if booted.unlocked != "none":
        raise UsageError(f"the running deployment is already unlocked ({booted.unlocked})")
    with sysroot.lock():
        sysroot.unlock(booted, hotfix)
    if hotfix:
        log.info("/usr is writable; changes persist for this deployment (a new deployment starts clean)")
    else:
        log.info("/usr is writable until the next reboot")


def boot_menu(sysroot: Sysroot) -> None:
    """Regenerate the boot menu (also run at shutdown, after OSTree finalizes a staged deployment)."""
    sysroot.reload()
    if bootloader.write_menu(sysroot):
        log.info(f"wrote {sysroot.path / 'boot' / bootloader.MENU}")
    else:
        log.info("this system has no boot loader menu to write")
