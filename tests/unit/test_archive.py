"""Following an OSTree archive repository: the reference's forms, the key it takes, what a remote requires."""

from __future__ import annotations

from pathlib import Path

import pytest

from arkes import archive
from arkes.errors import UsageError


def test_a_reference_names_the_url_and_the_branch() -> None:
    plain = archive.source("ostree+http://updates.example.com/repo")
    assert (plain.url, plain.branch) == ("http://updates.example.com/repo", "arkes/stable")
    assert plain.reference == "ostree+http://updates.example.com/repo#arkes/stable"
    canary = archive.source("ostree+http://127.0.0.1:8000/repo/#arkes/canary")
    assert (canary.url, canary.branch) == ("http://127.0.0.1:8000/repo", "arkes/canary")
    assert canary.remote.startswith("arkes-") and canary.remote != plain.remote
    assert archive.source(canary.reference) == canary, "its own reference reads back the same"
    for bad in ("ostree+ftp://host/repo", "ostree+http://", "ostree+http://host/repo#bad branch"):
        with pytest.raises(UsageError):
            archive.source(bad)


def test_the_key_is_a_gpg_public_key(tmp_path: Path) -> None:
    armored = tmp_path / "fleet.asc"
    armored.write_text("-----BEGIN PGP PUBLIC KEY BLOCK-----\n\nmQ==\n-----END PGP PUBLIC KEY BLOCK-----\n")
    assert archive.gpg_public_key(armored) == armored
    binary = tmp_path / "fleet.gpg"
    binary.write_bytes(b"\x99\x01\x0d\x04")
    assert archive.gpg_public_key(binary) == binary
    sigstore = tmp_path / "fleet.pub"
    sigstore.write_text("-----BEGIN PUBLIC KEY-----\nabc\n-----END PUBLIC KEY-----\n")
    with pytest.raises(UsageError, match="is a sigstore key"):
        archive.gpg_public_key(sigstore)
    text = tmp_path / "notes.txt"
    text.write_text("hello\n")
    with pytest.raises(UsageError, match="is not a GPG public key"):
        archive.gpg_public_key(text)


def test_what_a_remote_requires_is_read_from_the_repository(tmp_path: Path) -> None:
    ref = "ostree+http://127.0.0.1:8000/repo#arkes/stable"
    name = archive.source(ref).remote
    (tmp_path / "config").write_text(
        f'[core]\nmode=bare\n\n[remote "{name}"]\nurl=http://127.0.0.1:8000/repo\ngpg-verify=true\n'
    )
    assert archive.verification(tmp_path, ref) == (name, True, str(tmp_path / f"{name}.trustedkeys.gpg"))
    (tmp_path / "config").write_text(f'[remote "{name}"]\ngpg-verify=false\n')
    assert archive.verification(tmp_path, ref)[1] is False
