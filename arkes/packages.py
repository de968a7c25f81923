"""The package state: which release of each package repository an image was built against.

A repository publishes a new package version by publishing a new index, signed in its `InRelease` (or `Release`)
file. The digest of those files, one per suite of every repository the image's apt is configured with, names the
state of all packages an `apt-get update` would see; it is an input of the build like the Systemfile. When it moves,
the next build runs one step more than its cached layers, `update_packages`, which brings every installed package to
the repositories' versions (see docs/updates.md). The digests only detect a change: apt verifies the signatures.

Fetches are conditional (`If-None-Match` / `If-Modified-Since`, remembered in a small cache under /var), so asking
an unchanged mirror costs one round trip and no download.
"""

from __future__ import annotations

import hashlib
import json
import os
import urllib.error
import urllib.request
from collections.abc import Iterable, Mapping
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

from arkes import log

TIMEOUT = 10.0
INDEX_FILES = ("InRelease", "Release")


def _deb822(text: str) -> list[dict[str, str]]:
    stanzas: list[dict[str, str]] = []
    current: dict[str, str] = {}
    key = ""
    for raw in text.splitlines():
        line = raw.rstrip()
        if line.startswith("#"):
            continue
        if not line:
            if current:
                stanzas.append(current)
            current, key = {}, ""
            continue
        if line[0].isspace() and key:
            current[key] += " " + line.strip()
            continue
        name, _, value = line.partition(":")
        key = name.strip().lower()
        current[key] = value.strip()
    if current:
        stanzas.append(current)
    return stanzas


def _release_base(uri: str, suite: str) -> str:
    uri = uri.rstrip("/")
    if suite.endswith("/"):  # a flat repository: the index sits in the named directory
        path = suite.strip("/")
        return f"{uri}/{path}/" if path and path != "." else f"{uri}/"
    return f"{uri}/dists/{suite}/"


def release_urls(apt_dir: Path) -> list[str]:
    """Where each suite of the configured binary repositories publishes its release file (without the file name).

    Reads `sources.list`, `sources.list.d/*.list` and `sources.list.d/*.sources` under `apt_dir` (an image's
    `etc/apt` or `usr/etc/apt`). Only http and https repositories count: a `file:` or `cdrom:` one has no state the
    machine could be behind on.
    """
    pairs: list[tuple[str, str]] = []
    lists = [apt_dir / "sources.list", *sorted((apt_dir / "sources.list.d").glob("*.list"))]
    for path in lists:
        if not path.is_file():
            continue
        for raw in path.read_text(errors="replace").splitlines():
            words = raw.split("#", 1)[0].split()
            if not words or words[0] != "deb":
                continue
            words = words[1:]
            if words and words[0].startswith("["):
                while words and not words[0].endswith("]"):
                    words = words[1:]
                words = words[1:]
            if len(words) >= 2:
                pairs.append((words[0], words[1]))
    for path in sorted((apt_dir / "sources.list.d").glob("*.sources")):
        for stanza in _deb822(path.read_text(errors="replace")):
            if stanza.get("enabled", "yes").lower() == "no" or "deb" not in stanza.get("types", "").split():
                continue
            for uri in stanza.get("uris", "").split():
                for suite in stanza.get("suites", "").split():
                    pairs.append((uri, suite))
    urls = {_release_base(uri, suite) for uri, suite in pairs if uri.startswith(("http://", "https://"))}
    return sorted(urls)


@dataclass(frozen=True)
class State:
    """The digest of each repository's release file (url → sha256), and what could not be asked."""

    indexes: dict[str, str]
    unreachable: tuple[str, ...] = field(default=())

    @property
    def digest(self) -> str:
        """One name for the whole state; empty when the image has no repositories."""
        if not self.indexes:
            return ""
        text = "".join(f"{url} {sha}\n" for url, sha in sorted(self.indexes.items()))
        return hashlib.sha256(text.encode()).hexdigest()

    def changed(self, recorded: Mapping[str, str]) -> list[str]:
        """The repositories whose release moved since `recorded` (or that are new)."""
        return sorted(url for url, sha in self.indexes.items() if recorded.get(url) != sha)


class _Cache:
    """Validators of the last fetch of each release file, so that asking again costs no download."""

    def __init__(self, path: Path | None) -> None:
        self.path = path
        self.entries: dict[str, dict[str, str]] = {}
        if path is not None:
            try:
                loaded = json.loads(path.read_text())
                self.entries = {str(k): dict(v) for k, v in loaded.items() if isinstance(v, dict)}
            except (OSError, ValueError, AttributeError):
                self.entries = {}

    def save(self) -> None:
        if self.path is None:
            return
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            tmp = self.path.with_suffix(".tmp")
            tmp.write_text(json.dumps(self.entries, indent=1, sort_keys=True) + "\n")
            os.replace(tmp, self.path)
        except OSError as e:
            log.debug(f"the package index cache is not kept: {e}")


def _fetch(base: str, cached: dict[str, str] | None, timeout: float) -> dict[str, str]:
    """Ask for the release file under `base`: {"sha256", "etag", "modified", "file"}; raises OSError."""
    last: Exception | None = None
    names = [cached["file"]] if cached and cached.get("file") in INDEX_FILES else []
    names += [n for n in INDEX_FILES if n not in names]
    for name in names:
        request = urllib.request.Request(base + name, headers={"User-Agent": "arkes-os"})
        if cached and cached.get("file") == name:
            if cached.get("etag"):
                request.add_header("If-None-Match", cached["etag"])
            if cached.get("modified"):
                request.add_header("If-Modified-Since", cached["modified"])
        try:
            with urllib.request.urlopen(request, timeout=timeout) as response:
                body = response.read()
                return {
                    "file": name,
                    "sha256": hashlib.sha256(body).hexdigest(),
                    "etag": response.headers.get("ETag", ""),
                    "modified": response.headers.get("Last-Modified", ""),
                }
        except urllib.error.HTTPError as e:
            if e.code == 304 and cached:
                return dict(cached)
            last = e
            if e.code != 404:
                break
        except (urllib.error.URLError, OSError, ValueError) as e:
            last = e
            break
    reason = getattr(last, "reason", None) or last
    raise OSError(f"{base}: {reason}")


def fetch_state(urls: Iterable[str], *, cache: Path | None = None, timeout: float = TIMEOUT) -> State:
    """Ask every repository for its current release, in parallel."""
    wanted = sorted(set(urls))
    store = _Cache(cache)
    indexes: dict[str, str] = {}
    unreachable: list[str] = []

    def one(url: str) -> tuple[str, dict[str, str] | str]:
        try:
            return url, _fetch(url, store.entries.get(url), timeout)
        except OSError as e:
            return url, str(e)

    if wanted:
        with ThreadPoolExecutor(max_workers=min(8, len(wanted))) as pool:
            for url, outcome in pool.map(one, wanted):
                if isinstance(outcome, str):
                    unreachable.append(outcome)
                else:
                    store.entries[url] = outcome
                    indexes[url] = outcome["sha256"]
        store.save()
    return State(indexes, tuple(unreachable))


def recorded(value: object) -> dict[str, str]:
    """A state as commit metadata stores it: a list of [url, sha256] pairs."""
    result: dict[str, str] = {}
    if isinstance(value, (list, tuple)):
        for item in value:
            if isinstance(item, (list, tuple)) and len(item) == 2:
                result[str(item[0])] = str(item[1])
    return result


def fingerprint(root: Path) -> str | None:
    """What the package step (update_packages) records as the fingerprint of an image root's packages: the
    package database and apt's configuration, hashed as its `fingerprint` does it with sha256sum. None where a
    file cannot be read as the step would (then the step itself decides)."""

    def line(path: str) -> str | None:
        resolved = _inside(root, path)
        if resolved is None or not resolved.is_file():
            return None
        if "\\" in path or "\n" in path:
            return None  # sha256sum escapes such names: let the step itself say
        return f"{hashlib.sha256(resolved.read_bytes()).hexdigest()}  {path}\n"

    apt = root / "etc/apt"
    names = []
    for directory, dirs, files in os.walk(apt):
        for name in files + [d for d in dirs if os.path.islink(os.path.join(directory, d))]:
            names.append("/" + os.path.relpath(os.path.join(directory, name), root))
    lines = [line("/var/lib/dpkg/status")]
    for name in sorted(names, key=os.fsencode):
        lines.append(line(name))
    if any(each is None for each in lines):
        return None
    outer = "".join(each for each in lines if each is not None)
    return hashlib.sha256(outer.encode()).hexdigest()


def _inside(root: Path, path: str, depth: int = 40) -> Path | None:
    """`path` (absolute, in the image) resolved as it would be inside the image, links included; None when it
    leads nowhere."""
    current = root
    parts = [p for p in path.split("/") if p]
    while parts:
        if depth == 0:
            return None
        part = parts.pop(0)
        if part == "..":
            current = current.parent if current != root else root
            continue
        candidate = current / part
        if candidate.is_symlink():
            depth -= 1
            target = os.readlink(candidate)
            parts = [p for p in target.split("/") if p] + parts
            current = root if target.startswith("/") else current
            continue
        current = candidate
    return current if current.exists() else None
