"""The distribution's own images: `localhost/arkes:rootfs` (bootstrapped from Debian packages) and
`localhost/arkes:base` (rootfs plus the overlay and the `os` tool).

Each carries the hash of its inputs in a label; an image is rebuilt only when it is missing or its inputs changed.
Downloaded packages are kept in a cache outside the checkout so a rebuild does not download them again.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import tempfile
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path

from arkes import __version__, builder, log, podman, run
from arkes.errors import ArkesError

ROOTFS = "localhost/arkes:rootfs"
BASE = "localhost/arkes:base"
OURS = (ROOTFS, BASE)
INPUTS_LABEL = "org.arkes.inputs"
SUITE = "trixie"
# The distribution's suites: the release, its point-release updates and its security fixes.
SUITES = (SUITE, f"{SUITE}-updates", f"{SUITE}-security")
MIRROR = "http://deb.debian.org/debian"
SECURITY_MIRROR = "http://deb.debian.org/debian-security"
# Debian's archive keyring: Debian 12 hosts have the Debian 13 keys in it too, so they can bootstrap trixie.
KEYRING = "/usr/share/keyrings/debian-archive-keyring.gpg"
# Bump when the bootstrap recipe below changes in a way the inputs do not show.
RECIPE = "5"


def image_dir() -> Path:
    """The distribution's image sources: the checkout's image/, or the copy shipped inside base."""
    configured = os.environ.get("ARKES_IMAGE_DIR")
    if configured:
        return Path(configured)
    checkout = Path(__file__).resolve().parent.parent / "image"
    if checkout.is_dir():
        return checkout
    return Path("/usr/share/arkes/image")


CACHE = Path("/var/cache/arkes")  # where an installed system keeps its cache (ARKES_CACHE moves it elsewhere)
CHECKS = "checks"  # below it: what the bootability gate read from files, by their content (see arkes.lint)


def cache_dir() -> Path:
    return Path(os.environ.get("ARKES_CACHE", os.fspath(CACHE)))


def checks_dir() -> Path:
    return cache_dir() / CHECKS


def default_systemfile() -> Path:
    return image_dir() / "base/overlay/etc/system/Systemfile"


def apt_sources_text() -> str:
    """The image's apt sources (deb822): ARKES_APT_SOURCES names a file to use instead, e.g. a local mirror.

    They do not come from the build host: a Debian 12 host bootstraps the Debian 13 image, and the image keeps
    these sources, so `install_packages` and package updates use the distribution's own suites.
    """
    configured = os.environ.get("ARKES_APT_SOURCES")
    if configured:
        return Path(configured).read_text()
    mirror = os.environ.get("ARKES_MIRROR", MIRROR)
    security = os.environ.get("ARKES_SECURITY_MIRROR", SECURITY_MIRROR)
    return (
        f"Types: deb\nURIs: {mirror}\nSuites: {SUITES[0]} {SUITES[1]}\nComponents: main\nSigned-By: {KEYRING}\n\n"
        f"Types: deb\nURIs: {security}\nSuites: {SUITES[2]}\nComponents: main\nSigned-By: {KEYRING}\n"
    )


def _hash_files(digest: hashlib._Hash, base: Path, paths: Iterable[Path]) -> None:
    for path in sorted(paths):
        relative = path.relative_to(base).as_posix()
        if path.is_symlink():
            digest.update(f"L {relative} {os.readlink(path)}\n".encode())
        elif path.is_file():
            mode = path.stat().st_mode & 0o7777
            digest.update(f"F {relative} {mode:o}\n".encode())
            digest.update(hashlib.sha256(path.read_bytes()).digest())


def _tree_files(base: Path) -> list[Path]:
    return [p for p in base.rglob("*") if (p.is_file() or p.is_symlink()) and "__pycache__" not in p.parts]


def packages() -> list[str]:
    text = (image_dir() / "rootfs/packages.txt").read_text()
    return [line.split("#", 1)[0].strip() for line in text.splitlines() if line.split("#", 1)[0].strip()]


def rootfs_inputs() -> str:
    digest = hashlib.sha256(f"rootfs {RECIPE} {SUITE}\n".encode())
    _hash_files(digest, image_dir(), _tree_files(image_dir() / "rootfs"))
    digest.update(apt_sources_text().encode())
    return digest.hexdigest()


def _tool_files() -> tuple[Path, list[Path]]:
    package = Path(__file__).resolve().parent
    return package.parent, sorted(p for p in package.rglob("*.py") if "__pycache__" not in p.parts)


def base_inputs(rootfs: dict[str, object] | None = None) -> str:
    """The inputs of base; `rootfs`: the inspection of the rootfs image, when the caller has it."""
    digest = hashlib.sha256(f"base {__version__}\n".encode())
    _hash_files(digest, image_dir(), _tree_files(image_dir() / "base"))
    root, files = _tool_files()
    _hash_files(digest, root, files)
    digest.update(podman.image_digest(ROOTFS, rootfs).encode())
    return digest.hexdigest()


def _current(ref: str, inputs: str, image: dict[str, object] | None) -> bool:
    return image is not None and podman.image_labels(ref, image).get(INPUTS_LABEL) == inputs


@dataclass(frozen=True)
class Built:
    ref: str
    rebuilt: bool
    # Its inspection when it was found up to date (each `podman image inspect` costs tens of milliseconds).
    image: dict[str, object] | None = None


def is_checkout() -> bool:
    """True where the image sources can rebuild the images (a development checkout), not on an installed system."""
    return image_dir() != Path("/usr/share/arkes/image") or os.environ.get("ARKES_IMAGE_DIR") is not None


def inspect(ref: str) -> dict[str, dict[str, object] | None]:
    """The inspections ensure(ref) reads (each of ours that `ref` is built from, and `ref`), asked at once."""
    return podman.images_info([ROOTFS, BASE] if ref == BASE and is_checkout() else [ref])


def ensure(ref: str, *, force: bool = False, known: Mapping[str, dict[str, object] | None] | None = None) -> Built:
    """Make sure `ref` (one of ours) exists and matches its inputs, building what is missing or stale. `known`:
    the inspections of ours (by ref, None where the storage does not hold it) the caller has already (inspect).

    On an installed system the images in local storage are the ones the system was installed with (it may have
    no network to bootstrap from); they are used as they are.
    """
    known = known or {}
    if not is_checkout() and not force:
        if known.get(ref) is not None or (ref not in known and podman.image_exists(ref)):
            return Built(ref, False, known.get(ref))
        raise ArkesError(
            f"{ref} is not in this system's container storage",
            hint="it is copied there by `os install --disk`; `podman load` an exported copy to restore it",
        )
    if ref == ROOTFS:
        inputs = rootfs_inputs()
        image = known[ROOTFS] if ROOTFS in known else podman.image_info(ROOTFS)
        if not force and _current(ROOTFS, inputs, image):
            return Built(ROOTFS, False, image)
        build_rootfs(inputs)
        return Built(ROOTFS, True)
    if ref == BASE:
        rootfs = ensure(ROOTFS, force=force, known=known)
        inputs = base_inputs(rootfs.image)
        image = known[BASE] if BASE in known else podman.image_info(BASE)
        if not force and not rootfs.rebuilt and _current(BASE, inputs, image):
            return Built(BASE, False, image)
        build_base(inputs)
        return Built(BASE, True)
    raise ArkesError(f"{ref} is not one of the distribution's images ({ROOTFS}, {BASE})")


def is_ours(ref: str) -> bool:
    return ref in OURS


def build_rootfs(inputs: str) -> None:
    """mmdebstrap the package list into a tarball (kept in the cache, keyed by inputs) and import it."""
    debs = cache_dir() / "debs" / SUITE
    debs.mkdir(parents=True, exist_ok=True)
    tarball = cache_dir() / f"rootfs-{inputs[:16]}.tar"
    if not tarball.is_file():
        for stale in [*cache_dir().glob("rootfs-*.tar"), *cache_dir().glob("rootfs-*.partial")]:
            stale.unlink()
        _bootstrap(tarball, debs)
    with log.step(f"import {ROOTFS}"):
        podman.import_tarball(
            tarball,
            ROOTFS,
            [f"LABEL {INPUTS_LABEL}={inputs}", 'CMD ["/bin/bash"]', "ENV container=oci"],
        )


def _bootstrap(tarball: Path, debs: Path) -> None:
    dracut_conf = image_dir() / "rootfs/dracut.conf"
    partial = tarball.with_suffix(".partial")
    # mmdebstrap takes a file of sources in place of a mirror, in deb822 form when its name ends in .sources, and
    # keeps it in the image as /etc/apt/sources.list.d/0000<its name>.
    sources = tarball.parent / "debian.sources"
    sources.write_text(apt_sources_text())
    # Hooks run in a shell with the target as $1; our paths reach them through the environment, not the text.
    setup = (
        'mkdir -p "$1/var/cache/apt/archives" "$1/usr/lib/dracut/dracut.conf.d" "$1/etc/kernel" && '
        'cp "$ARKES_DRACUT_CONF" "$1/usr/lib/dracut/dracut.conf.d/10-arkes.conf" && '
        'printf "do_symlinks = no\\n" > "$1/etc/kernel-img.conf" && '
        'find "$ARKES_DEBS" -name "*.deb" -exec cp {} "$1/var/cache/apt/archives/" ";"'
    )
    customize = (
        'for deb in "$1"/var/cache/apt/archives/*.deb; do '
        '[ -e "$ARKES_DEBS/${deb##*/}" ] || cp "$deb" "$ARKES_DEBS/"; done; '
        'rm -f "$1"/var/cache/apt/archives/*.deb "$1"/vmlinuz* "$1"/initrd.img*'
    )
    argv: list[str | os.PathLike[str]] = [
        "mmdebstrap",
        "--variant=apt",
        f"--include={','.join(packages())}",
        "--skip=download/empty",
        f"--setup-hook={setup}",
        f"--customize-hook={customize}",
        "--format=tar",
        SUITE,
        partial,
        sources,
    ]
    env = {"ARKES_DEBS": os.fspath(debs), "ARKES_DRACUT_CONF": os.fspath(dracut_conf)}
    phases = (
        "running apt-get update",
        "downloading packages",
        "extracting archives",
        "installing essential",
        "installing remaining",
        "running --customize-hook",
        "creating tarball",
        "success",
    )
    with log.step(f"bootstrap {ROOTFS} from Debian {SUITE} ({', '.join(SUITES)})") as progress:

        def on_line(line: str) -> None:
            for i, phase in enumerate(phases):
                if phase in line:
                    progress.update((i + 1) / len(phases), line.removeprefix("I: "))

        try:
            run.stream(argv, on_line, env=env, what="mmdebstrap")
        except BaseException:
            partial.unlink(missing_ok=True)
            raise
        finally:
            sources.unlink(missing_ok=True)
        partial.rename(tarball)


def build_base(inputs: str) -> None:
    """Build base from its Containerfile, with the tool in the build context (it needs nothing beyond the
    distribution's Python and PyGObject)."""
    with tempfile.TemporaryDirectory(prefix="arkes-base-") as tmp:
        context = Path(tmp)
        shutil.copytree(image_dir() / "base", context, dirs_exist_ok=True)
        shutil.copytree(image_dir(), context / "image", ignore=shutil.ignore_patterns("__pycache__"))
        tool = context / "tool"
        root, files = _tool_files()
        for path in files:
            target = tool / path.relative_to(root)
            target.parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(path, target)
        # The base is built by the Buildah of the rootfs it starts from: the distribution's own, on any host.
        with log.step(f"build {BASE}") as progress:
            builder.build(
                builder.resolve(ROOTFS, cache_dir()),
                context / "Containerfile",
                context,
                BASE,
                labels={INPUTS_LABEL: inputs},
                on_step=lambda fraction, label: progress.update(fraction, label[:80]),
            )
