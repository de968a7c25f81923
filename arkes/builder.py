"""The distribution's own builder: every image is built by the Buildah of the distribution's images.

So that a Systemfile means the same everywhere, `os` never builds with whatever Podman the host happens to have.
On an Arkēs system the builder is the system's own Buildah. Anywhere else (a development host, CI) it is the
Buildah inside one of the distribution's images, run in a privileged container over the host's container storage:
the images it builds land where the host's Podman finds them, and its layer cache is the host's.

A build is tied to the `os` process that started it: Ctrl-C, or `os` dying by any signal, interrupts Buildah,
which then removes its working containers itself. What a builder killed outright leaves in the storage (working
containers that only the builder's newer storage library lists, not an older host Podman) is swept before the
next build.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
import threading
from collections.abc import Callable, Mapping
from concurrent.futures import Future
from dataclasses import dataclass
from pathlib import Path

from arkes import bootloader, log, podman, run
from arkes.errors import BuildError, CommandError

# The host's limits are not passed on without CAP_SYS_RESOURCE; these are what builds need (dpkg, dracut).
ULIMITS = ("nofile=20000:20000", "nproc=4096:4096")
CONTAINER_PREFIX = "arkes-builder-"
# Where Buildah keeps `RUN --mount=type=cache` directories (its temporary directory, per user id).
CACHE_MOUNTS = "/var/tmp/buildah-cache-0"
CONTEXT = "/run/arkes/context"
CONTAINERFILE = "/run/arkes/Containerfile"
# What runc says when it cannot seal the copy of itself it runs a step with (a busy file, rarely): transient.
_TRANSIENT = "sealing memfd copy: Device or resource busy"
# A builder that cannot even start: what its error output says, and what a person can do about it.
_START_FAILURES = (
    ("operation not permitted", podman.PRIVILEGES_HINT),
    ("permission denied", podman.PRIVILEGES_HINT),
    ("is being used by another process", "another process holds the container storage; wait for it to finish"),
    ("database is locked", "another process holds the container storage; wait for it to finish"),
    ("no space left", "free space where the container storage lives (podman info --format {{.Store.GraphRoot}})"),
)


@dataclass(frozen=True)
class Builder:
    """Where Buildah runs: this system's own (`image` is None), or inside a container of `image`."""

    image: str | None
    graphroot: Path
    runroot: Path
    driver: str
    # Builds in progress (see _running), and on a host the directories of `RUN --mount=type=cache`.
    state: Path

    @property
    def native(self) -> bool:
        return self.image is None

    def describe(self) -> str:
        return "this system's Buildah" if self.native else f"the Buildah of {self.image}"


def is_arkes_system() -> bool:
    """A booted Arkēs system: its own Buildah is the distribution's (ARKES_BUILDER=native|container overrides)."""
    configured = os.environ.get("ARKES_BUILDER")
    if configured in ("native", "container"):
        return configured == "native"
    if not Path("/run/ostree-booted").exists():
        return False
    try:
        release = Path("/usr/lib/os-release").read_text()
    except OSError:
        return False
    return "ID=arkes" in release.split()


_host_storage: Future[list[str]] | None = None
_host_storage_lock = threading.Lock()


# Where the host's answer is kept until the next boot, named after everything it depends on (see _storage_key).
HOST_STORAGE_CACHE = Path("/run/arkes/host-storage")


def _storage_key() -> str:
    """What `podman info`'s answer on the storage depends on: the user, Podman itself and its storage.conf files,
    as they are now (each file's identity and modification time)."""
    config = os.environ.get("XDG_CONFIG_HOME") or os.path.expanduser("~/.config")
    paths = [
        shutil.which("podman") or "podman",
        "/etc/containers/storage.conf",
        "/usr/share/containers/storage.conf",
        os.path.join(config, "containers/storage.conf"),
        os.environ.get("CONTAINERS_STORAGE_CONF", ""),
    ]
    key = [
        str(os.geteuid()),
        *(f"{name}={value}" for name, value in sorted(os.environ.items()) if "CONTAINERS" in name),
    ]
    for path in paths:
        try:
            info = os.stat(path)
            key.append(f"{path} {info.st_dev} {info.st_ino} {info.st_size} {info.st_mtime_ns}")
        except OSError:
            key.append(f"{path} -")
    return hashlib.sha256("\n".join(key).encode()).hexdigest()


def _ask_host_storage(answer: Future[list[str]], cache: Path) -> None:
    fields = "{{.Store.GraphRoot}}\n{{.Store.RunRoot}}\n{{.Store.GraphDriverName}}"
    try:
        result = run.run(["podman", "info", "--format", fields], what="podman info (the host's container storage)")
    except BaseException as e:
        answer.set_exception(e)
        return
    found = [*result.stdout.split("\n"), "", "", ""][:3]
    try:
        cache.parent.mkdir(parents=True, exist_ok=True)
        bootloader.atomic_write(cache, "\n".join(found) + "\n")
    except OSError:
        pass  # not kept: the next command asks Podman again
    answer.set_result(found)


def host_storage() -> Future[list[str]]:
    """Where the host's Podman keeps its images (graph root, run root, driver): asked once, in the background, as
    `podman info` takes a good part of a second; a caller can start it early and wait for it when it builds. The
    answer is kept until the next boot while Podman and its configuration stay as they are."""
    global _host_storage
    with _host_storage_lock:
        if _host_storage is None:
            _host_storage = Future()
            cache = HOST_STORAGE_CACHE.with_name(f"{HOST_STORAGE_CACHE.name}-{_storage_key()[:16]}")
            try:
                kept = cache.read_text().split("\n")[:3]
            except OSError:
                kept = []
            if len(kept) == 3 and kept[0] and Path(kept[0]).is_dir():
                _host_storage.set_result(kept)
            else:
                threading.Thread(target=_ask_host_storage, args=(_host_storage, cache), daemon=True).start()
        return _host_storage


def resolve(image: str, state: Path) -> Builder:
    """The builder for this machine; `image` is the distribution image whose Buildah a non-Arkēs host runs."""
    if is_arkes_system():
        return Builder(None, Path("/var/lib/containers/storage"), Path("/run/containers/storage"), "overlay", state)
    graphroot, runroot, driver = host_storage().result()
    return Builder(image, Path(graphroot), Path(runroot), driver or "overlay", state)


def _buildah_options(builder: Builder) -> list[str]:
    options = ["--storage-driver", builder.driver]
    if not builder.native:
        options += ["--root", os.fspath(builder.graphroot), "--runroot", os.fspath(builder.runroot)]
    return options


def container_run(builder: Builder, mounts: list[tuple[Path, str, str]]) -> list[str]:
    """`podman run` of the builder image, privileged, with the host's storage at the same paths."""
    # runc: crun refuses hybrid cgroup hosts, and runc is what the distribution itself runs.
    argv = ["podman", "run", "--rm", "--privileged", "--runtime=runc", "--network=host", "--pull=never"]
    argv += ["--security-opt", "label=disable"]
    for limit in ULIMITS:
        argv += ["--ulimit", limit]
    storage = [
        (builder.graphroot, os.fspath(builder.graphroot), "rw"),
        (builder.runroot, os.fspath(builder.runroot), "rw"),
    ]
    for source, target, mode in [*storage, *mounts]:
        argv += ["-v", f"{os.fspath(source)}:{target}:{mode}"]
    return argv


def _container(builder: Builder, mounts: list[tuple[Path, str, str]], *, nice: bool) -> list[str]:
    """The builder's container for one build; the arguments of `buildah` follow."""
    assert builder.image is not None
    argv = container_run(builder, [(builder.state / "cache-mounts", CACHE_MOUNTS, "rw"), *mounts])
    argv += ["--name", f"{CONTAINER_PREFIX}{os.getpid()}"]
    # In the host's PID namespace, so that the builder sees the `os` process it works for.
    argv += ["--pid=host", "--env", f"ARKES_PARENT={os.getpid()}", "--env", "BUILDAH_ISOLATION=chroot", builder.image]
    # This shell hands Ctrl-C (which `os` passes on with `podman kill`), a SIGTERM, or the end of the `os` it
    # works for (even by kill -9 of its whole process group, which podman's conmon survives) to Buildah as SIGINT,
    # on which Buildah stops the RUN in progress and removes its working containers; it passes on the status.
    # A SIGINT that reaches Buildah while it sets a step up can go unheard, so it is repeated until Buildah is gone.
    script = "stop() { while kill -0 $child 2>/dev/null; do kill -INT $child; sleep 2; done; }; "
    script += 'buildah "$@" & child=$!; trap stop INT TERM; '
    script += '(tail -f /dev/null --pid="$ARKES_PARENT" >/dev/null 2>&1; stop) & watch=$!; '
    script += "wait $child; status=$?; while kill -0 $child 2>/dev/null; do wait $child; status=$?; done; "
    script += "kill $watch 2>/dev/null; exit $status"
    prefix = ["nice", "-n", "10", "ionice", "-c", "3"] if nice else []
    return [*argv, *prefix, "sh", "-c", script, "buildah"]


def build(
    builder: Builder,
    containerfile: Path,
    context: Path,
    tag: str,
    *,
    labels: Mapping[str, str] | None = None,
    annotations: Mapping[str, str] | None = None,
    build_args: Mapping[str, str] | None = None,
    secrets: Mapping[str, Path] | None = None,
    contexts: Mapping[str, Path] | None = None,
    on_step: Callable[[float, str], None] | None = None,
    on_tagged: Callable[[], None] | None = None,
    nice: bool = False,
) -> None:
    """Build `containerfile` with `context` into `tag`, with cached layers; on_step(fraction, label) per STEP;
    on_tagged() as soon as `tag` names the image (while the builder is still finishing)."""
    (builder.state / "cache-mounts").mkdir(parents=True, exist_ok=True)
    _running(builder).mkdir(parents=True, exist_ok=True)
    if any(_gone(m.name) for m in _running(builder).iterdir()):
        sweep(builder)
    marker = _running(builder) / str(os.getpid())
    marker.touch()
    mounts: list[tuple[Path, str, str]] = []
    if builder.native:
        file_arg, context_arg = os.fspath(containerfile), os.fspath(context)
    else:
        # Read-write: Buildah refuses `RUN --mount=type=bind` of a context file from a read-only mount (it opens
        # the source to pin it against symlink races); it writes nothing there.
        mounts += [(context.resolve(), CONTEXT, "rw"), (containerfile.resolve(), CONTAINERFILE, "ro")]
        file_arg, context_arg = CONTAINERFILE, CONTEXT
    argv = ["build", *_buildah_options(builder), "--isolation=chroot", "--layers", "--force-rm", "--pull=never"]
    argv += ["--network=host"]
    for limit in ULIMITS:
        argv += ["--ulimit", limit]
    for key, value in (labels or {}).items():
        argv += ["--label", f"{key}={value}"]  # a step of its own (the builder adds a LABEL line)
    for key, value in (annotations or {}).items():
        argv += ["--annotation", f"{key}={value}"]  # set on the image it commits, no step
    for key, value in (build_args or {}).items():
        argv += ["--build-arg", f"{key}={value}"]

    def reach(path: Path, inside: str) -> str:
        """Where the builder finds a host file or directory: the path itself, or a read-only mount of it."""
        if builder.native:
            return os.fspath(path)
        mounts.append((path.resolve(), inside, "ro"))
        return inside

    for i, (name, path) in enumerate(sorted((secrets or {}).items())):
        argv += ["--secret", f"id={name},src={reach(path, f'/run/arkes/secrets/{i}')}"]
    for name, path in sorted((contexts or {}).items()):
        argv += ["--build-context", f"{name}={reach(path, f'/run/arkes/contexts/{name}')}"]
    argv += ["-f", file_arg, "-t", tag, context_arg]
    command = ["buildah", *argv] if builder.native else [*_container(builder, mounts, nice=nice), *argv]

    steps, cached = [0], [0]

    def on_line(line: str) -> None:
        step = _step(line)
        if step:
            steps[0] += 0 if " FROM " in line.upper() else 1  # a FROM is no step to run or to take from the cache
            if on_step:
                on_step(*step)
        elif line.startswith("--> Using cache "):
            cached[0] += 1
        elif line.startswith("update_packages: "):
            log.info(line)  # what the package step did: the changes it made, or why it made none
        elif line == f"Successfully tagged {tag}" and on_tagged:
            on_tagged()

    try:
        for attempt in (1, 2):
            try:
                run.stream(
                    command,
                    on_line,
                    what=f"the build ({builder.describe()})",
                    error=BuildError,
                    nice=nice,
                    tied=True,
                    on_interrupt=None if builder.native else _interrupt_container,
                )
                break
            except BuildError as exc:
                if attempt == 1 and _TRANSIENT in exc.message:
                    # runc could not seal its own copy for one step: nothing of the Systemfile failed, and the
                    # steps done so far are cached, so the build goes on from where it stopped.
                    log.warn(f"the runtime could not start a step ({_TRANSIENT}); building again from there")
                    steps[0], cached[0] = 0, 0
                    continue
                raise
    except BuildError as exc:
        raise _explained(exc, builder) from None
    except BaseException:
        sweep(builder)
        raise
    finally:
        marker.unlink(missing_ok=True)
    log.info(f"build: {cached[0]} of {steps[0]} steps from the cache, {steps[0] - cached[0]} run")


def _interrupt_container() -> None:
    """Ctrl-C for the builder's shell: the host's Podman does not pass a SIGINT of its client on to it."""
    name = f"{CONTAINER_PREFIX}{os.getpid()}"
    run.run(["podman", "kill", "--signal", "INT", name], check=False)


def _gone(pid: str) -> bool:
    """Whether the `os` process `pid` (a marker's or a builder container's name) no longer runs."""
    return pid.isdigit() and not Path(f"/proc/{pid}").exists()


def _running(builder: Builder) -> Path:
    """One file per build in progress, named for the pid of its `os`: a file whose process is gone means an
    interrupted build, whose leftovers the next build sweeps (so an uninterrupted machine never pays for it)."""
    return builder.state / "builds"


def _step(line: str) -> tuple[float, str] | None:
    """How far a build is at a `STEP n/total: ...` line (0 to 1) and a label for people. Multi-stage builds
    prefix the line with `[stage/stages] ` and count steps per stage."""
    stage, stages = 1, 1
    if line.startswith("[") and "] STEP " in line:
        prefix, _, line = line[1:].partition("] ")
        first, _, second = prefix.partition("/")
        if first.isdigit() and second.isdigit() and int(second) > 0:
            stage, stages = int(first), int(second)
    if not line.startswith("STEP "):
        return None
    counts, _, what = line[5:].partition(": ")
    n, _, total = counts.partition("/")
    if not (n.isdigit() and total.isdigit() and int(total) > 0):
        return None
    fraction = (stage - 1 + (int(n) - 1) / int(total)) / stages
    where = f"stage {stage}/{stages} " if stages > 1 else ""
    return fraction, f"{where}step {n}/{total}: {what}"


def _explained(exc: BuildError, builder: Builder) -> BuildError:
    """A builder that could not start gets one message and a hint; a failing build keeps its own output."""
    text = exc.message.lower()
    if "step " not in text:
        for needle, hint in _START_FAILURES:
            if needle in text:
                return BuildError(f"{builder.describe()} could not start: {exc.message}", hint=hint)
    return exc


def _buildah(builder: Builder, *args: str, what: str) -> run.Result:
    """A short buildah command (not a build) with the builder's view of the storage."""
    if builder.native:
        return run.run(["buildah", *_buildah_options(builder), *args], what=what)
    assert builder.image is not None
    argv = [*container_run(builder, []), builder.image, "buildah", *_buildah_options(builder), *args]
    return run.run(argv, what=what)


def _live_builders() -> list[str]:
    """Builder containers of `os` processes that still run; a builder whose `os` died is removed here."""
    listed = run.run(
        ["podman", "ps", "--all", "--format", "{{.Names}}", "--filter", f"name={CONTAINER_PREFIX}"], check=False
    )
    live = []
    for name in listed.stdout.split():
        pid = name.removeprefix(CONTAINER_PREFIX)
        if pid.isdigit() and not _gone(pid):
            live.append(name)
        else:
            run.run(["podman", "rm", "--force", "--time", "30", name], check=False)
            log.debug(f"stopped the builder {name} of an os process that is gone")
    return live


# Buildah names a build's container after its image, `<image>-working-container`, and appends `-N` when that name
# is taken (two builds from one base, or a leftover of an earlier one).
_WORKING_NAME = re.compile(r".+-working-container(-[0-9]+)?")


def is_working_container(name: str) -> bool:
    """Whether a container name is one Buildah gives the working container of a build."""
    return _WORKING_NAME.fullmatch(name) is not None


def leftovers(builder: Builder) -> list[dict[str, str]]:
    """Working containers that builds left in the storage: Buildah's own, named `*-working-container[-N]`."""
    try:
        listed = _buildah(builder, "containers", "--json", what="buildah containers")
    except CommandError:
        return []
    found = json.loads(listed.stdout or "[]") or []
    return [
        {"id": str(c["id"]), "name": str(c.get("containername", ""))}
        for c in found
        if c.get("builder") and is_working_container(str(c.get("containername", "")))
    ]


def sweep(builder: Builder) -> None:
    """Remove what interrupted builds left behind, unless another build is running (its containers are live)."""
    others = [name for name in _live_builders() if name != f"{CONTAINER_PREFIX}{os.getpid()}"]
    if others:
        return
    stale = leftovers(builder)
    for marker in _running(builder).glob("*"):
        if _gone(marker.name):
            marker.unlink(missing_ok=True)
    if stale:
        _buildah(builder, "rm", *(c["id"] for c in stale), what="buildah rm (leftovers of interrupted builds)")
        log.debug("removed leftovers of interrupted builds: " + ", ".join(c["name"] for c in stale))
