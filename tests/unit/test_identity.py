"""Each machine's own identity: stripped from images, private keys refused by the gate unless allowed by path, and
the keys of machines installed from an image that carried them kept through the merge and named by `os status`."""

from __future__ import annotations

import gzip
import os
import stat
from pathlib import Path

import pytest

from arkes import identity, lint, tree
from arkes.errors import SecretError
from tests.unit.test_lint import OSTREE_INITRAMFS, bootable, cpio

# Generated for these tests only: no machine has ever used them.
RSA_BLOCK = (
    "-----BEGIN RSA PRIVATE KEY-----\nMIIBOgIBAAJBAKj34GkxFhD90vcNLYLInFEX6Ppy1tPf9Cnzj4p4WGeKLs1Pt8Qu\n"
    "-----END RSA PRIVATE KEY-----\n"
)
OPENSSH_BLOCK = (
    "-----BEGIN OPENSSH PRIVATE KEY-----\nb3BlbnNzaC1rZXktdjEAAAAABG5vbmUAAAAEbm9uZQAAAAAAAAABAAAAMwAAAAtzc2gtZW\n"
    "-----END OPENSSH PRIVATE KEY-----\n"
)
CERTIFICATE = (
    "-----BEGIN CERTIFICATE-----\nMIIBszCCAVmgAwIBAgIUQ0n2E3mS3Yp1Yv6i1Zc2ZQ9Zl1owCgYIKoZIzj0EAwIw\n"
    "-----END CERTIFICATE-----\n"
)


def write(path: Path, text: str, mode: int = 0o644) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
    path.chmod(mode)
    return path


def test_the_rewrite_strips_every_machines_identity(tmp_path: Path) -> None:
    root = tmp_path / "root"
    write(root / "etc/ssh/ssh_host_ed25519_key", OPENSSH_BLOCK, 0o600)
    write(root / "etc/ssh/ssh_host_ed25519_key.pub", "ssh-ed25519 AAAA root@build\n")
    write(root / "etc/ssh/sshd_config", "PermitRootLogin no\n")
    write(root / "etc/ssl/private/ssl-cert-snakeoil.key", RSA_BLOCK, 0o640)
    write(root / "etc/ssl/certs/ssl-cert-snakeoil.pem", CERTIFICATE)
    write(root / "etc/machine-id", "0123456789abcdef0123456789abcdef\n")
    write(root / "var/lib/systemd/random-seed", "seed", 0o600)
    (root / "var/lib/dbus").mkdir(parents=True)
    (root / "var/lib/dbus/machine-id").symlink_to("/etc/machine-id")
    removed = tree.strip_identity(root)
    assert removed == [
        "/etc/ssh/ssh_host_ed25519_key",
        "/etc/ssh/ssh_host_ed25519_key.pub",
        "/etc/ssl/private/ssl-cert-snakeoil.key",
        "/etc/ssl/certs/ssl-cert-snakeoil.pem",
        "/var/lib/systemd/random-seed",
        "/etc/machine-id",
    ]
    assert (root / "etc/ssh/sshd_config").is_file(), "configuration stays"
    assert (root / "etc/machine-id").read_text() == "", "an empty machine-id marks the first boot"
    assert (root / "var/lib/dbus/machine-id").is_symlink()
    assert tree.strip_identity(root) == [], "nothing left to strip"


@pytest.fixture
def rewritten(tmp_path: Path) -> Path:
    return bootable(tmp_path / "root", gzip.compress(cpio(OSTREE_INITRAMFS)))


def test_private_keys_are_named_by_their_image_path(rewritten: Path) -> None:
    write(rewritten / "usr/etc/ssl/private/site.key", RSA_BLOCK, 0o600)
    write(rewritten / "usr/share/factory/var/lib/app/deploy_key", OPENSSH_BLOCK, 0o600)
    write(rewritten / "usr/etc/ssl/certs/site.pem", CERTIFICATE)
    write(rewritten / "usr/share/doc/openssl/examples/key.pem", RSA_BLOCK)
    write(rewritten / "usr/lib/python3/dist-packages/tls/tests/key.pem", RSA_BLOCK)
    write(rewritten / "usr/etc/app/tests/key.pem", RSA_BLOCK)  # test data outside /usr is nobody's test data
    found = lint.private_keys(rewritten)
    assert [(k.path, k.kind) for k in found] == [
        ("/etc/app/tests/key.pem", "rsa private key"),
        ("/etc/ssl/private/site.key", "rsa private key"),
        ("/var/lib/app/deploy_key", "openssh private key"),
    ]


def test_the_gate_refuses_a_private_key_and_says_how_to_keep_one(rewritten: Path) -> None:
    write(rewritten / "usr/etc/ssl/private/site.key", "certificate chain first\n" + CERTIFICATE + RSA_BLOCK, 0o600)
    with pytest.raises(SecretError) as caught:
        lint.check(rewritten)
    assert "/etc/ssl/private/site.key (rsa private key)" in caught.value.message
    hint = caught.value.hint or ""
    assert "systemd credential" in hint
    assert "--allow-secret /etc/ssl/private/site.key" in hint
    assert lint.check(rewritten, {"/etc/ssl/private/site.key"}) == ["/etc/ssl/private/site.key"]


def test_a_tree_without_private_keys_passes(rewritten: Path) -> None:
    write(rewritten / "usr/etc/ssl/certs/site.pem", CERTIFICATE)
    assert lint.check(rewritten) == []


def test_a_layers_keys_are_read_once_and_kept_by_its_digest(tmp_path: Path) -> None:
    layer, cache, digest = tmp_path / "diff", tmp_path / "checks", "sha256:" + "ab" * 32
    write(layer / "usr/share/app/site.key", RSA_BLOCK, 0o600)
    write(layer / "usr/share/doc/app/examples/key.pem", RSA_BLOCK)
    expected = [lint.PrivateKey("/usr/share/app/site.key", "rsa private key")]
    assert lint.layer_keys(layer, digest, cache) == expected
    (layer / "usr/share/app/site.key").unlink()
    assert lint.layer_keys(layer, digest, cache) == expected, "a layer never changes: its record answers"
    assert lint.layer_keys(layer, "sha256:" + "cd" * 32, cache) == [], "another layer is read"
    (cache / f"keys-{'ab' * 32}").write_text("half a rec")
    assert lint.layer_keys(layer, digest, cache) == [], "a record that is not one is not believed"


def test_the_gate_adds_the_keys_found_where_the_tree_holds_no_files(rewritten: Path) -> None:
    elsewhere = lint.PrivateKey("/usr/share/app/site.key", "openssh private key")
    with pytest.raises(SecretError) as caught:
        lint.check(rewritten, keys=[elsewhere])
    assert "/usr/share/app/site.key (openssh private key)" in caught.value.message
    assert lint.check(rewritten, {"/usr/share/app/site.key"}, keys=[elsewhere]) == ["/usr/share/app/site.key"]


def machine(tmp_path: Path) -> tuple[Path, Path, Path]:
    """An /etc whose host key is the image's own copy (from /usr/etc), and its state directory."""
    defaults, etc, state = tmp_path / "usr/etc", tmp_path / "etc", tmp_path / "var/lib/arkes"
    for top in (defaults, etc):
        write(top / "ssh/ssh_host_ed25519_key", OPENSSH_BLOCK, 0o600)
        write(top / "ssh/ssh_host_ed25519_key.pub", "ssh-ed25519 AAAA root@build\n")
    os.utime(etc / "ssh/ssh_host_ed25519_key", (0, 0))
    return defaults, etc, state


def test_keys_from_an_image_become_the_machines_own_and_are_named(tmp_path: Path) -> None:
    defaults, etc, state = machine(tmp_path)
    assert identity.from_image(etc, state, [defaults]) == [
        "/etc/ssh/ssh_host_ed25519_key",
        "/etc/ssh/ssh_host_ed25519_key.pub",
    ]
    adopted = identity.adopt(etc, defaults, state)
    assert [p.name for p in adopted] == ["ssh_host_ed25519_key", "ssh_host_ed25519_key.pub"]
    assert stat.S_IMODE((etc / "ssh/ssh_host_ed25519_key").stat().st_mode) == 0o400, "no longer the image's copy"
    assert (etc / "ssh/ssh_host_ed25519_key").read_text() == OPENSSH_BLOCK
    assert identity.adopt(etc, defaults, state) == [], "adopted once"
    # After the old deployments are gone, the record still knows where the keys came from.
    assert len(identity.from_image(etc, state, [])) == 2


def test_keys_made_on_the_machine_are_not_named(tmp_path: Path) -> None:
    defaults, etc, state = machine(tmp_path)
    write(etc / "ssh/ssh_host_ed25519_key", OPENSSH_BLOCK.replace("b3Bl", "AAAA"), 0o600)
    write(etc / "ssh/ssh_host_ed25519_key.pub", "ssh-ed25519 BBBB root@here\n")
    assert identity.from_image(etc, state, [defaults]) == []
    assert identity.adopt(etc, defaults, state) == []


def test_a_rollback_carries_the_machines_keys(tmp_path: Path) -> None:
    _, etc, _ = machine(tmp_path)
    older = tmp_path / "older/etc"
    write(older / "ssh/ssh_host_ed25519_key", "an older key\n", 0o600)
    said = identity.carry(older, etc)
    assert said == [
        "carried this machine's identity along: /etc/ssh/ssh_host_ed25519_key, /etc/ssh/ssh_host_ed25519_key.pub"
    ]
    assert (older / "ssh/ssh_host_ed25519_key").read_text() == OPENSSH_BLOCK
    assert stat.S_IMODE((older / "ssh/ssh_host_ed25519_key").stat().st_mode) == 0o600
    assert identity.carry(older, etc) == []
