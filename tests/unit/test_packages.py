"""Unit tests for arkes.packages: which repositories an image uses, and the state they are in, asked over HTTP."""

from __future__ import annotations

import hashlib
import http.server
import os
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import ClassVar

import pytest

from arkes import build, builderfile, packages, systemfile, updates
from arkes.errors import UsageError


def test_release_urls_from_deb822_and_one_line_sources(tmp_path: Path) -> None:
    apt = tmp_path / "apt"
    (apt / "sources.list.d").mkdir(parents=True)
    (apt / "sources.list.d/debian.sources").write_text(
        "Types: deb\nURIs: http://deb.debian.org/debian\nSuites: trixie trixie-updates\nComponents: main\n"
        "Signed-By: /usr/share/keyrings/debian-archive-keyring.gpg\n\n"
        "# a comment between stanzas\n"
        "Types: deb-src\nURIs: http://deb.debian.org/debian\nSuites: trixie\nComponents: main\n\n"
        "Types: deb\nURIs: https://off.example/debian\nSuites: trixie\nComponents: main\nEnabled: no\n"
    )
    (apt / "sources.list.d/extra.list").write_text(
        "deb [signed-by=/etc/apt/keyrings/x.gpg arch=amd64] http://127.0.0.1:8000/repo/ stable main # tail\n"
        "deb-src http://src.example/ stable main\n"
        "deb http://flat.example/repo ./\n"
        "deb file:/srv/local ./\n"
    )
    (apt / "sources.list").write_text("deb http://deb.debian.org/debian-security trixie-security main\n")
    assert packages.release_urls(apt) == [
        "http://127.0.0.1:8000/repo/dists/stable/",
        "http://deb.debian.org/debian-security/dists/trixie-security/",
        "http://deb.debian.org/debian/dists/trixie-updates/",
        "http://deb.debian.org/debian/dists/trixie/",
        "http://flat.example/repo/",
    ]


def test_an_image_without_apt_has_no_state(tmp_path: Path) -> None:
    assert packages.release_urls(tmp_path / "absent") == []
    assert packages.State({}).digest == ""


def test_the_digest_names_every_repository_and_release() -> None:
    one = packages.State({"http://a/dists/x/": "1", "http://b/dists/y/": "2"})
    same = packages.State({"http://b/dists/y/": "2", "http://a/dists/x/": "1"})
    moved = packages.State({"http://a/dists/x/": "1", "http://b/dists/y/": "3"})
    assert one.digest == same.digest != moved.digest
    assert moved.changed(one.indexes) == ["http://b/dists/y/"]
    assert packages.recorded([("http://a/dists/x/", "1")]) == {"http://a/dists/x/": "1"}
    assert packages.recorded(None) == {}


class _Repository(http.server.SimpleHTTPRequestHandler):
    requests: ClassVar[list[tuple[str, int]]] = []

    def log_message(self, format: str, *args: object) -> None:
        pass

    def send_response(self, code: int, message: str | None = None) -> None:
        self.requests.append((self.path, code))
        super().send_response(code, message)


@pytest.fixture
def served(tmp_path: Path) -> Iterator[tuple[Path, str]]:
    root = tmp_path / "www"
    root.mkdir()
    handler = lambda *a: _Repository(*a, directory=str(root))  # noqa: E731
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    _Repository.requests = []
    try:
        yield root, f"http://127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()


def test_fetch_asks_again_without_downloading_and_sees_a_new_release(served: tuple[Path, str], tmp_path: Path) -> None:
    root, url = served
    (root / "dists/stable").mkdir(parents=True)
    (root / "dists/stable/InRelease").write_text("release 1\n")
    base = f"{url}/dists/stable/"
    cache = tmp_path / "cache.json"
    first = packages.fetch_state([base], cache=cache)
    assert first.unreachable == () and list(first.indexes) == [base]
    again = packages.fetch_state([base], cache=cache)
    assert again.digest == first.digest
    assert _Repository.requests[-1] == ("/dists/stable/InRelease", 304)
    (root / "dists/stable/InRelease").write_text("release 2, a new version of a package\n")
    os.utime(root / "dists/stable/InRelease", (2e9, 2e9))
    moved = packages.fetch_state([base], cache=cache)
    assert moved.digest != first.digest and moved.changed(first.indexes) == [base]


def test_a_repository_without_inrelease_is_read_by_its_release(served: tuple[Path, str]) -> None:
    root, url = served
    (root / "dists/old").mkdir(parents=True)
    (root / "dists/old/Release").write_text("old style\n")
    state = packages.fetch_state([f"{url}/dists/old/"])
    assert state.unreachable == () and state.digest


def test_an_unreachable_repository_is_named(served: tuple[Path, str]) -> None:
    _, url = served
    state = packages.fetch_state([f"{url}/dists/missing/", "http://127.0.0.1:9/dists/x/"], timeout=2)
    assert state.indexes == {}
    assert len(state.unreachable) == 2 and any("127.0.0.1:9" in p for p in state.unreachable)


def test_the_package_state_is_an_input(tmp_path: Path) -> None:
    def of(state: str) -> str:
        return build.input_hash(b"FROM x\n", [("Systemfile", "F 644 ab")], {"x": "sha256:1"}, [], state)

    assert of("aa") != of("bb") != of("")


def test_updates_conf_is_no_input_of_the_build(tmp_path: Path) -> None:
    (tmp_path / "Systemfile").write_text("FROM x\n")
    before = build.context_manifest(tmp_path)
    (tmp_path / "updates.conf").write_text("policy = stage\n")
    assert build.context_manifest(tmp_path) == before


def test_the_builder_runs_update_packages_last_with_the_state(tmp_path: Path) -> None:
    (tmp_path / "Systemfile").write_text("FROM localhost/arkes:base\nRUN post_build\n")
    sf = systemfile.load(tmp_path / "Systemfile")
    plain = builderfile.translate(sf, tmp_path, tmp_path / "staging")
    assert "update_packages" not in plain.text
    text = builderfile.translate(sf, tmp_path, tmp_path / "staging", package_state="cafe").text
    lines = text.split("\n")
    assert lines[:2] == ["FROM localhost/arkes:base", "RUN post_build"]
    assert lines[-1].startswith('RUN ["/bin/sh", "-c", ') and lines[-1].endswith('"cafe", ""]')
    assert builderfile.UPDATE_HELPER in lines[-1]


def test_update_policy(tmp_path: Path) -> None:
    assert updates.automatic_policy(tmp_path) == "check"
    (tmp_path / "updates.conf").write_text("# what the timer does\npolicy = stage  # build and stage\n")
    assert updates.automatic_policy(tmp_path) == "stage"
    (tmp_path / "updates.conf").write_text("\npolicy = always\n")
    with pytest.raises(UsageError, match=r"updates.conf:2: unknown policy 'always'"):
        updates.automatic_policy(tmp_path)
    (tmp_path / "updates.conf").write_text("mode: stage\n")
    with pytest.raises(UsageError, match=r"updates.conf:1: expected `policy = check`"):
        updates.automatic_policy(tmp_path)


def test_the_fingerprint_reads_the_image_as_the_package_step_does(tmp_path: Path) -> None:
    root = tmp_path / "root"
    (root / "var/lib/dpkg").mkdir(parents=True)
    (root / "var/lib/dpkg/status").write_text("Package: a\n")
    (root / "etc/apt/sources.list.d").mkdir(parents=True)
    (root / "etc/apt/sources.list.d/z.sources").write_text("Types: deb\n")
    (root / "usr/share/keyrings").mkdir(parents=True)
    (root / "usr/share/keyrings/k.gpg").write_bytes(b"key inside the image")
    (root / "etc/apt/trusted.gpg.d").mkdir()
    (root / "etc/apt/trusted.gpg.d/k.gpg").symlink_to("/usr/share/keyrings/k.gpg")  # the image's, not the host's

    def line(content: bytes, name: str) -> str:
        return f"{hashlib.sha256(content).hexdigest()}  {name}\n"

    # sha256sum's lines, names sorted bytewise as `sort -z` in the C locale sorts them.
    expected = line(b"Package: a\n", "/var/lib/dpkg/status")
    expected += line(b"Types: deb\n", "/etc/apt/sources.list.d/z.sources")
    expected += line(b"key inside the image", "/etc/apt/trusted.gpg.d/k.gpg")
    assert packages.fingerprint(root) == hashlib.sha256(expected.encode()).hexdigest()

    (root / "etc/apt/trusted.gpg.d/gone.gpg").symlink_to("../nowhere.gpg")
    assert packages.fingerprint(root) is None, "what the step cannot read, the step itself decides"
