"""Thin typed wrappers around the Podman CLI. They build argument lists; `arkes.run` executes them."""

from __future__ import annotations

import json
import os
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path

from arkes import log, run
from arkes.errors import ArkesError, CommandError

# Build images are named after their input hash so that a rebuild of known inputs is found again.
BUILD_REPO = "localhost/arkes-build"


def detected_isolation() -> str:
    """`chroot` where OCI isolation cannot work (hybrid cgroup v1 hosts), `oci` elsewhere; ARKES_ISOLATION overrides."""
    configured = os.environ.get("ARKES_ISOLATION")
    if configured:
        return configured
    try:
        unified = os.statvfs("/sys/fs/cgroup") and Path("/sys/fs/cgroup/cgroup.controllers").exists()
    except OSError:
        unified = False
    return "oci" if unified else "chroot"


def _podman(*args: str | os.PathLike[str]) -> list[str | os.PathLike[str]]:
    return ["podman", *args]


PRIVILEGES_HINT = "os needs root with full privileges (not in a user namespace or an unprivileged container)"


def image_exists(ref: str) -> bool:
    """Whether the storage holds `ref`; a storage Podman cannot even open is an error, not a missing image."""
    result = run.run(_podman("image", "exists", ref), check=False)
    if result.returncode in (0, 1):
        return result.returncode == 0
    raise _storage_error(result.stderr)


def _storage_error(stderr: str) -> CommandError:
    detail = run.tail(stderr, 3)
    hint = PRIVILEGES_HINT if "not permitted" in detail or "permission denied" in detail.lower() else None
    return CommandError(f"the container storage cannot be used:\n{detail}", hint=hint)


def image_info(ref: str) -> dict[str, object] | None:
    """What `podman image inspect` says of `ref`, or None when the storage does not hold it: one command where
    asking whether it exists and then inspecting it would be two (each costs about 60 ms)."""
    result = run.run(_podman("image", "inspect", ref), check=False)
    if result.returncode != 0:
        if "image not known" in result.stderr:
            return None
        raise _storage_error(result.stderr)
    data = json.loads(result.stdout)
    image: dict[str, object] | None = data[0] if data else None
    return image


def images_info(refs: Sequence[str]) -> dict[str, dict[str, object] | None]:
    """image_info of each of `refs`, in one command when the storage holds them all."""
    result = run.run(_podman("image", "inspect", *refs), check=False)
    if result.returncode == 0:
        data = json.loads(result.stdout)
        if isinstance(data, list) and len(data) == len(refs):
            return dict(zip(refs, data, strict=True))
    return {ref: image_info(ref) for ref in refs}


def inspect_image(ref: str) -> dict[str, object]:
    """What `podman image inspect` says of `ref`; an error when the storage does not hold it."""
    image = image_info(ref)
    if image is None:
        raise CommandError(f"podman knows no image {ref}", hint="`podman images` lists the images there are")
    return image


def image_digest(ref: str, image: dict[str, object] | None = None) -> str:
    """The image's digest (of `image`, its inspection, when given); for images that were never pushed, podman
    still records the manifest's digest."""
    image = image or inspect_image(ref)
    digest = image.get("Digest")
    if isinstance(digest, str) and digest:
        return digest
    return f"sha256:{image['Id']}"


def known_digests(ref: str, image: dict[str, object]) -> list[str]:
    """Every digest under which the storage knows the image `ref` names: its own, and those of its repository's
    manifests it was pulled or pushed as (an image can be one of several manifests of the same configuration)."""
    repository = ref.partition("@")[0]
    if ":" in repository.rpartition("/")[2]:
        repository = repository.rpartition(":")[0]
    found = [image_digest(ref, image)]
    listed = image.get("RepoDigests")
    for repo_digest in listed if isinstance(listed, list) else []:
        name, _, digest = str(repo_digest).partition("@")
        if name == repository and digest not in found:
            found.append(digest)
    return found


def image_labels(ref: str, image: dict[str, object] | None = None) -> dict[str, str]:
    image = image or inspect_image(ref)
    config = image.get("Config")
    labels = config.get("Labels") if isinstance(config, dict) else None
    return {str(k): str(v) for k, v in (labels or {}).items()}


def image_env(image: dict[str, object]) -> dict[str, str]:
    """The variables an image's config sets (its Env, NAME=value each)."""
    config = image.get("Config")
    env = config.get("Env") if isinstance(config, dict) else None
    return dict(str(each).partition("=")[::2] for each in env or [])


def local_image_env(ref: str) -> dict[str, str] | None:
    """What an image in local storage sets (its Env); None when it is not there, or the storage cannot say."""
    try:
        image = image_info(ref)
    except ArkesError:
        return None
    return image_env(image) if image is not None else None


def import_tarball(tarball: Path, ref: str, changes: list[str]) -> None:
    argv: list[str | os.PathLike[str]] = _podman("import")
    for change in changes:
        argv += ["--change", change]
    argv += [tarball, ref]
    run.run(argv, what="podman import")


def tag(ref: str, new: str) -> None:
    run.run(_podman("tag", ref, new))


def build_tag(input_hash: str, system_id: str) -> str:
    """The name of a system's build image: its inputs and the system it belongs to (see du.stale_build_images).
    Sysroots on one container storage that build the same inputs share the image, each with its own tag."""
    return f"{BUILD_REPO}:{input_hash[:16]}-{system_id[:12]}"


def untag(names: list[str]) -> None:
    """Remove these names; an image keeps existing while another name (another system's) still refers to it."""
    for name in names:
        run.run(_podman("untag", name, name), check=False)


def list_images(reference: str) -> list[dict[str, object]]:
    result = run.run(_podman("images", "--format", "json", "--filter", f"reference={reference}"))
    images: list[dict[str, object]] = json.loads(result.stdout or "[]")
    return images


def prune_dangling() -> None:
    run.run(_podman("image", "prune", "--force"), check=False)


TREE_PREFIX = "arkes-tree-"


def _remove_stale_containers() -> None:
    """Containers of `os` processes that were killed before they could remove them."""
    result = run.run(_podman("ps", "--all", "--format", "{{.Names}}", "--filter", f"name={TREE_PREFIX}"), check=False)
    for name in result.stdout.split():
        pid = name.removeprefix(TREE_PREFIX)
        if pid.isdigit() and not Path(f"/proc/{pid}").exists():
            run.run(_podman("umount", name), check=False)
            run.run(_podman("rm", "--force", name), check=False)
            log.debug(f"removed the container {name} of a killed run")


@contextmanager
def mounted_container(ref: str) -> Iterator[Path]:
    """A writable container root of `ref`, mounted without copying; removed (with its changes) afterwards."""
    _remove_stale_containers()
    name = f"{TREE_PREFIX}{os.getpid()}"
    run.run(_podman("rm", "--force", name), check=False)
    created = run.run(_podman("create", "--pull=never", "--name", name, ref, "/bin/true"), what=f"podman create {ref}")
    container = created.stdout.strip()
    try:
        mounted = run.run(_podman("mount", container), what="podman mount")
        yield Path(mounted.stdout.strip())
    finally:
        run.run(_podman("umount", container), check=False)
        run.run(_podman("rm", "--force", container), check=False)
        log.debug(f"removed container {container[:12]}")


def parents(ref: str, *, until: str) -> list[str]:
    """The image ids from `ref` up its chain of parents (the images of its build steps), stopping before the
    image `until` (or at the end of the chain)."""
    stop = str(inspect_image(until).get("Id", ""))
    chain: list[str] = []
    current = str(inspect_image(ref).get("Id", ""))
    while current and current != stop and len(chain) < 1000:
        chain.append(current)
        current = str(inspect_image(current).get("Parent", "") or "")
    return chain


def storage_bytes() -> int:
    """Bytes container storage takes on disk (images, layers, build cache), as `du` counts them."""
    result = run.run(_podman("info", "--format", "{{.Store.GraphRoot}}"), check=False)
    root = result.stdout.strip()
    if result.returncode != 0 or not root or not Path(root).is_dir():
        return 0
    measured = run.run(["du", "-sxB1", root], check=False)
    fields = measured.stdout.split()
    return int(fields[0]) if fields and fields[0].isdigit() else 0


def layer_dirs(ref: str) -> set[str]:
    """The directories of every storage layer an image is made of."""
    image = inspect_image(ref)
    driver = image.get("GraphDriver")
    data = driver.get("Data") if isinstance(driver, dict) else None
    if not isinstance(data, dict):
        return set()
    dirs = {str(d) for d in str(data.get("LowerDir", "")).split(":") if d}
    if data.get("UpperDir"):
        dirs.add(str(data["UpperDir"]))
    return {str(Path(d).parent) for d in dirs}


def exclusive_bytes(refs: list[str]) -> int:
    """Bytes that removing `refs` would free: their layers that no other image uses, as `du` counts them."""
    if not refs:
        return 0
    # Tagged images only: a build's cached intermediate images are parents of what they built and go with it.
    listed = run.run(_podman("images", "--quiet", "--no-trunc"), what="podman images").stdout.split()
    others = [i.removeprefix("sha256:") for i in listed]
    targets = {str(inspect_image(r).get("Id")).removeprefix("sha256:") for r in refs}
    theirs: set[str] = set().union(*(layer_dirs(r) for r in refs))
    kept: set[str] = set()
    for image_id in set(others) - targets:
        kept |= layer_dirs(image_id)
    exclusive = sorted(theirs - kept)
    if not exclusive:
        return 0
    measured = run.run(["du", "-scxB1", *exclusive], check=False).stdout.splitlines()
    last = measured[-1].split() if measured else []
    return int(last[0]) if last and last[0].isdigit() else 0


def run_in(
    image: str,
    argv: list[str],
    *,
    what: str,
    volumes: Sequence[tuple[Path, str]] = (),
    network: bool = True,
) -> str:
    """Run a command in a throwaway container of `image` (with `volumes`, host directory and where it appears);
    return its output."""
    options = ["--rm", f"--network={'host' if network else 'none'}", "--pull=never"]
    for source, target in volumes:
        options += ["-v", f"{os.fspath(source)}:{target}"]
    if detected_isolation() == "chroot":
        # Hybrid cgroup hosts: crun refuses them, runc needs explicit limits.
        options = ["--runtime=runc", "--ulimit", "nofile=20000:20000", "--ulimit", "nproc=4096:4096", *options]
    return run.run(_podman("run", *options, image, *argv), what=what).stdout


def registry_digest(ref: str) -> str:
    """The digest a registry serves for `ref`, read without pulling the image."""
    from arkes import skopeo

    argv = [*skopeo.on_host(), "inspect", "--no-tags", "--format", "{{.Digest}}", f"docker://{ref}"]
    try:
        result = run.run(argv, what=f"asking the registry for {ref}")
    except CommandError as e:
        raise skopeo.explained(e, f"asking the registry for {ref}") from None
    return result.stdout.strip()


def blob_progress(progress: log.Progress) -> Callable[[str], None]:
    """A reader of `podman push` or `podman pull` output that shows each blob it copies on `progress`."""
    blobs = [0]

    def on_line(line: str) -> None:
        if line.startswith("Copying blob "):
            blobs[0] += 1
            progress.update(0.0, f"{blobs[0]} blob(s): {line.removeprefix('Copying blob ')[:60]}")

    return on_line
