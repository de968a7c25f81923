"""A static HTTP server for the tests: Python's http.server over a directory, on 127.0.0.1 only, with the
requests it answered kept; and GPG keys made for a test, in a home of their own."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path


@dataclass
class Served:
    directory: Path
    port: int
    log: Path

    def requested(self) -> list[str]:
        """The paths asked for, in order, with the answer's status: `GET /repo/config 200`."""
        found = []
        for line in self.log.read_text(errors="replace").splitlines():
            if '"GET ' in line:
                request = line.split('"')[1]
                status = line.split('"')[2].split()[0]
                found.append(f"GET {request.split()[1]} {status}")
        return found


@contextmanager
def serving(directory: Path) -> Iterator[Served]:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    served = Served(directory, port, directory.parent / f"http-{port}.log")
    argv = [sys.executable, "-m", "http.server", "--bind", "127.0.0.1", "--directory", str(directory), str(port)]
    with open(served.log, "wb") as log:
        server = subprocess.Popen(argv, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 30
        while True:
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{port}/", timeout=2):
                    break
            except (urllib.error.URLError, OSError):
                if server.poll() is not None or time.monotonic() > deadline:
                    raise RuntimeError(f"http.server did not start:\n{served.log.read_text()}") from None
                time.sleep(0.1)
        yield served
    finally:
        server.terminate()
        server.wait(timeout=10)


def gpg_key(home: Path, email: str) -> bytes:
    """A new signing key for `email` in the GnuPG home `home` (made when missing); its public key, armored."""
    home.mkdir(mode=0o700, parents=True, exist_ok=True)
    env = {**os.environ, "GNUPGHOME": str(home)}
    base = ["gpg", "--batch", "--no-tty", "--pinentry-mode", "loopback", "--passphrase", ""]
    subprocess.run(
        [*base, "--quick-gen-key", f"Arkes test <{email}>", "rsa2048", "sign", "never"],
        env=env,
        check=True,
        capture_output=True,
    )
    exported = subprocess.run([*base, "--armor", "--export", email], env=env, check=True, capture_output=True)
    return exported.stdout


def stop_agent(home: Path) -> None:
    subprocess.run(
        ["gpgconf", "--kill", "gpg-agent"], env={**os.environ, "GNUPGHOME": str(home)}, capture_output=True, check=False
    )
