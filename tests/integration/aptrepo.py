"""A real signed apt repository on loopback: packages built with dpkg-deb, indexes as apt reads them, the release
signed with gpg, served by Python's http.server in its own process (on 127.0.0.1 only)."""

from __future__ import annotations

import datetime
import gzip
import hashlib
import os
import shutil
import socket
import subprocess
import sys
import textwrap
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

SUITE = "stable"
COMPONENT = "main"


@dataclass
class AptRepository:
    root: Path
    port: int = 0
    packages: dict[str, Path] = field(default_factory=dict)
    server: subprocess.Popen[bytes] | None = None
    releases: int = 0

    @property
    def home(self) -> Path:
        return self.root.parent / "gnupg"

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}/"

    def _gpg(self, *args: str, stdin: bytes | None = None) -> bytes:
        env = dict(os.environ, GNUPGHOME=str(self.home))
        done = subprocess.run(
            ["gpg", "--batch", "--no-tty", "--pinentry-mode", "loopback", "--passphrase", "", *args],
            input=stdin,
            capture_output=True,
            env=env,
            check=False,
        )
        assert done.returncode == 0, done.stderr.decode()
        return done.stdout

    def make_key(self) -> bytes:
        """A signing key of the repository's own; returns the armored public key."""
        self.home.mkdir(mode=0o700, parents=True, exist_ok=True)
        self._gpg("--quick-gen-key", "Arkes test repository <repo@arkes.invalid>", "rsa2048", "sign", "never")
        return self._gpg("--armor", "--export", "repo@arkes.invalid")

    def add(self, name: str, version: str, *, depends: str = "", files: dict[str, str] | None = None) -> None:
        """Build a package (architecture all) holding `files` (absolute path → content) and put it in the pool."""
        staging = self.root.parent / "staging" / f"{name}_{version}"
        if staging.exists():
            shutil.rmtree(staging)
        (staging / "DEBIAN").mkdir(parents=True)
        control = f"Package: {name}\nVersion: {version}\nArchitecture: all\nMaintainer: Arkes tests <t@arkes.invalid>\n"
        control += f"Depends: {depends}\n" if depends else ""
        control += f"Description: test package {name}\n"
        (staging / "DEBIAN/control").write_text(control)
        for path, content in (files or {}).items():
            target = staging / path.lstrip("/")
            target.parent.mkdir(parents=True, exist_ok=True)
            target.write_text(content)
        pool = self.root / "pool" / COMPONENT
        pool.mkdir(parents=True, exist_ok=True)
        deb = pool / f"{name}_{version}_all.deb"
        subprocess.run(
            ["dpkg-deb", "--root-owner-group", "-Zgzip", "--build", str(staging), str(deb)],
            check=True,
            capture_output=True,
        )
        self.packages[name] = deb

    def publish(self) -> None:
        """Write the indexes for the newest package of each name, and sign the release (InRelease)."""
        stanzas = []
        for _, deb in sorted(self.packages.items()):
            control = subprocess.run(["dpkg-deb", "-f", str(deb)], capture_output=True, text=True, check=True).stdout
            data = deb.read_bytes()
            stanzas.append(
                control.rstrip("\n")
                + f"\nFilename: {deb.relative_to(self.root).as_posix()}\nSize: {len(data)}\n"
                + f"SHA256: {hashlib.sha256(data).hexdigest()}\n"
            )
        text = "\n".join(stanzas).encode()
        dists = self.root / "dists" / SUITE
        indexes: dict[str, bytes] = {}
        for arch in ("amd64", "all"):
            indexes[f"{COMPONENT}/binary-{arch}/Packages"] = text
            indexes[f"{COMPONENT}/binary-{arch}/Packages.gz"] = gzip.compress(text, mtime=0)
        for relative, data in indexes.items():
            (dists / relative).parent.mkdir(parents=True, exist_ok=True)
            (dists / relative).write_bytes(data)
        now = datetime.datetime.now(datetime.UTC).strftime("%a, %d %b %Y %H:%M:%S UTC")
        release = textwrap.dedent(f"""\
            Origin: Arkes tests
            Label: Arkes tests
            Suite: {SUITE}
            Codename: {SUITE}
            Date: {now}
            Architectures: amd64 all
            Components: {COMPONENT}
            SHA256:
            """)
        for relative, data in sorted(indexes.items()):
            release += f" {hashlib.sha256(data).hexdigest()} {len(data)} {relative}\n"
        (dists / "Release").write_text(release)
        (dists / "InRelease").write_bytes(self._gpg("--clearsign", "--digest-algo", "SHA256", stdin=release.encode()))
        # Each release a later time than the last, as a client asking with If-Modified-Since (1 s resolution) sees.
        self.releases += 1
        stamp = time.time() + 10 * self.releases
        os.utime(dists / "InRelease", (stamp, stamp))

    def serve(self) -> None:
        with socket.socket() as probe:
            probe.bind(("127.0.0.1", 0))
            self.port = probe.getsockname()[1]
        self.serve_again()

    def serve_again(self) -> None:
        """Start serving (again) on the same port."""
        self.server = subprocess.Popen(
            [sys.executable, "-m", "http.server", "--bind", "127.0.0.1", "--directory", str(self.root), str(self.port)],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            try:
                with socket.create_connection(("127.0.0.1", self.port), timeout=1):
                    return
            except OSError:
                if self.server.poll() is not None:
                    raise AssertionError("the repository's HTTP server exited") from None
                time.sleep(0.1)
        raise AssertionError("the repository's HTTP server did not start listening")

    def stop(self) -> None:
        if self.server is not None:
            self.server.terminate()
            self.server.wait(timeout=10)
            self.server = None
        if self.home.is_dir():
            # gpg started an agent for the key's home: it goes with the repository.
            env = dict(os.environ, GNUPGHOME=str(self.home))
            subprocess.run(["gpgconf", "--kill", "gpg-agent"], env=env, capture_output=True, check=False)


@contextmanager
def hello_repository(root: Path) -> Iterator[tuple[AptRepository, str]]:
    """A repository of its own key with arkes-hello 1.0 (its version in /usr/share/arkes-hello/version), served
    while the block runs; gives the repository and its armored public key."""
    repo = AptRepository(root)
    key = repo.make_key().decode()
    repo.add("arkes-hello", "1.0", files={"/usr/share/arkes-hello/version": "1.0\n"})
    repo.publish()
    repo.serve()
    try:
        yield repo, key
    finally:
        repo.stop()
