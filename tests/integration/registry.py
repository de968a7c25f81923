"""An OCI registry for the tests: Debian's docker-registry (distribution 2.8) on 127.0.0.1, with its access log
kept, and a registries.conf that declares it insecure (plain HTTP), as a person would for a registry of their own."""

from __future__ import annotations

import re
import socket
import subprocess
import textwrap
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

# A request in the access log: method, path, status, bytes sent.
_REQUEST = re.compile(r'"(?P<method>[A-Z]+) (?P<path>\S+) HTTP/[0-9.]+" (?P<status>\d{3}) (?P<bytes>\d+|-)')
# A blob upload as the access log shows it: the request that completes an upload names the blob's digest.
_UPLOADED = re.compile(
    r'"PUT /v2/(?P<name>[^ ]+)/blobs/uploads/[^ ?]+\?[^ ]*digest=(?P<digest>sha256(?::|%3A)[0-9a-f]{64})'
)


@dataclass
class Registry:
    root: Path
    port: int
    log: Path

    @property
    def host(self) -> str:
        return f"127.0.0.1:{self.port}"

    @property
    def registries_conf(self) -> Path:
        return self.root / "registries.conf"

    def mark(self) -> int:
        """Where the access log ends now: what `sent` counts from."""
        return self.log.stat().st_size

    def sent(self, start: int) -> dict[str, int]:
        """Bytes the registry sent since offset `start` of its access log, by what they were: layers and
        configurations (blobs), manifests, and other answers; and how many requests it answered."""
        found = {"blobs": 0, "manifests": 0, "other": 0, "requests": 0}
        for method, path, sent in self.requests(start):
            found["requests"] += 1
            kind = "blobs" if "/blobs/" in path else "manifests" if "/manifests/" in path else "other"
            found[kind] += sent if method == "GET" else 0
        return found

    def fetched_blobs(self, start: int) -> set[str]:
        """The digests of the blobs (layers, configurations) sent since offset `start` of the access log."""
        return {
            path.rpartition("/")[2]
            for method, path, _ in self.requests(start)
            if method == "GET" and "/blobs/sha256:" in path
        }

    def requests(self, start: int) -> list[tuple[str, str, int]]:
        """(method, path, bytes sent) of each request answered since offset `start` of the access log."""
        with open(self.log, "rb") as f:
            f.seek(start)
            text = f.read().decode(errors="replace")
        return [
            (m.group("method"), m.group("path"), int(m.group("bytes")) if m.group("bytes") != "-" else 0)
            for m in _REQUEST.finditer(text)
        ]

    def uploaded(self) -> list[str]:
        """The digests of every blob pushed so far, in order."""
        text = self.log.read_text(errors="replace")
        return [m.group("digest").replace("%3A", ":") for m in _UPLOADED.finditer(text)]


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port: int = probe.getsockname()[1]
        return port


@contextmanager
def running_registry(root: Path) -> Iterator[Registry]:
    """docker-registry serving `root`/storage on a free port of 127.0.0.1, until the context ends."""
    root.mkdir(parents=True, exist_ok=True)
    registry = Registry(root, _free_port(), root / "access.log")
    config = root / "config.yml"
    config.write_text(
        textwrap.dedent(
            f"""\
            version: 0.1
            log:
              level: info
              accesslog:
                disabled: false
            storage:
              filesystem:
                rootdirectory: {root / "storage"}
              delete:
                enabled: true
            http:
              addr: 127.0.0.1:{registry.port}
            """
        )
    )
    registry.registries_conf.write_text(
        f'unqualified-search-registries = []\n\n[[registry]]\nlocation = "{registry.host}"\ninsecure = true\n'
    )
    with open(registry.log, "wb") as log:
        server = subprocess.Popen(
            ["docker-registry", "serve", str(config)], stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL
        )
    try:
        deadline = time.monotonic() + 30
        while True:
            try:
                with urllib.request.urlopen(f"http://{registry.host}/v2/", timeout=2) as answer:
                    if answer.status == 200:
                        break
            except (urllib.error.URLError, OSError):
                pass
            if server.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"docker-registry did not start:\n{registry.log.read_text(errors='replace')}")
            time.sleep(0.2)
        yield registry
    finally:
        server.terminate()
        try:
            server.wait(timeout=10)
        except subprocess.TimeoutExpired:
            server.kill()
            server.wait()
