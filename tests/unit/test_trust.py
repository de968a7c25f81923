"""The machine's trust policy: which scope of policy.json applies to a reference, what `--require-signed` writes
into /etc (and puts back when the deploy after it fails), and the policy a copy gets on a sysroot's /etc."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from arkes import trust
from arkes.errors import UsageError

KEY = "-----BEGIN PUBLIC KEY-----\nMFkwEwYHKoZIzj0CAQYIKoZIzj0DAQcDQgAEzVG3i1iFIjAargKC2c\n-----END PUBLIC KEY-----\n"
REF = "registry.example.com:5000/fleet/system:stable"


def test_the_most_specific_scope_comes_first() -> None:
    assert trust.repository(REF) == "registry.example.com:5000/fleet/system"
    assert trust.repository("localhost:5000/system@sha256:" + "a" * 64) == "localhost:5000/system"
    assert trust.scopes(REF) == [
        REF,
        "registry.example.com:5000/fleet/system",
        "registry.example.com:5000/fleet",
        "registry.example.com:5000",
        "*.example.com",
        "*.com",
    ]
    assert trust.scopes("127.0.0.1:5000/system:1")[-1] == "127.0.0.1:5000", "no wildcards of an address"


def test_what_a_policy_requires_of_a_reference() -> None:
    policy = {
        "default": [{"type": "reject"}],
        "transports": {
            "docker": {
                "registry.example.com:5000/fleet": [{"type": "sigstoreSigned", "keyPath": "/etc/pki/containers/a.pub"}],
                "": [{"type": "insecureAcceptAnything"}],
            }
        },
    }
    signed = trust.verification(policy, REF)
    assert signed.scope == "registry.example.com:5000/fleet" and signed.signed
    assert signed.describe() == (
        "a sigstore signature by /etc/pki/containers/a.pub (policy.json: registry.example.com:5000/fleet)"
    )
    elsewhere = trust.verification(policy, "other.example.org/x:1")
    assert (elsewhere.scope, elsewhere.signed) == ("docker default", False)
    assert elsewhere.describe() == "no signature (policy.json: docker default)"
    assert trust.verification({"default": [{"type": "reject"}]}, REF).scope == "default"


def test_require_signed_writes_key_policy_and_attachments_and_keeps_the_rest(tmp_path: Path) -> None:
    etc = tmp_path / "etc"
    (etc / "containers").mkdir(parents=True)
    (etc / "containers/policy.json").write_text(json.dumps({"default": [{"type": "insecureAcceptAnything"}]}))
    with trust.installed(etc, REF, KEY) as required:
        assert required.signed
    key = etc / "pki/containers/registry.example.com-5000-fleet-system.pub"
    assert key.read_text() == KEY and key.stat().st_mode & 0o777 == 0o644
    policy = json.loads((etc / "containers/policy.json").read_text())
    assert policy["default"] == [{"type": "insecureAcceptAnything"}]
    (requirement,) = policy["transports"]["docker"]["registry.example.com:5000/fleet/system"]
    assert requirement["keyPath"] == "/etc/pki/containers/registry.example.com-5000-fleet-system.pub"
    attachments = (etc / "containers/registries.d/arkes-registry.example.com-5000-fleet-system.yaml").read_text()
    assert "registry.example.com:5000/fleet/system:\n    use-sigstore-attachments: true" in attachments
    assert trust.of_machine(etc, REF).signed


def test_a_failure_after_require_signed_puts_everything_back(tmp_path: Path) -> None:
    etc = tmp_path / "etc"
    (etc / "containers").mkdir(parents=True)
    original = '{"default": [{"type": "insecureAcceptAnything"}]}\n'
    (etc / "containers/policy.json").write_text(original)
    with pytest.raises(RuntimeError), trust.installed(etc, REF, KEY):
        raise RuntimeError("the deploy failed")
    assert (etc / "containers/policy.json").read_text() == original
    assert list((etc / "pki/containers").iterdir()) == []
    assert list((etc / "containers/registries.d").iterdir()) == []


def test_a_copy_finds_the_keys_in_the_machines_etc_and_the_signatures_next_to_the_image(tmp_path: Path) -> None:
    etc = tmp_path / "sysroot/etc"
    with trust.installed(etc, REF, KEY):
        pass
    with trust.for_copy(etc, REF) as copy:
        policy = json.loads(copy.policy.read_text())
        (requirement,) = policy["transports"]["docker"]["registry.example.com:5000/fleet/system"]
        assert requirement["keyPath"] == str(etc / "pki/containers/registry.example.com-5000-fleet-system.pub")
        assert [p.name for p in copy.registries_d.iterdir()] == ["arkes-registry.example.com-5000-fleet-system.yaml"]
    with trust.for_copy(tmp_path / "empty", "other.example.org/x:1", KEY) as copy:
        policy = json.loads(copy.policy.read_text())
        (requirement,) = policy["transports"]["docker"]["other.example.org/x"]
        assert Path(requirement["keyPath"]).read_text() == KEY, "the key given, before it is in /etc"
        assert "other.example.org/x:" in (copy.registries_d / "zz-arkes-follow.yaml").read_text()


def test_keys_that_are_no_sigstore_public_keys_are_refused(tmp_path: Path) -> None:
    gpg = tmp_path / "gpg.asc"
    gpg.write_text("-----BEGIN PGP PUBLIC KEY BLOCK-----\n\nmQ==\n-----END PGP PUBLIC KEY BLOCK-----\n")
    with pytest.raises(UsageError, match="is a GPG key"):
        trust.read_public_key(gpg)
    private = tmp_path / "fleet.private"
    private.write_text(
        "-----BEGIN ENCRYPTED SIGSTORE PRIVATE KEY-----\nabc\n-----END ENCRYPTED SIGSTORE PRIVATE KEY-----\n"
    )
    with pytest.raises(UsageError, match="is not a public key"):
        trust.read_public_key(private)
    with pytest.raises(UsageError, match="cannot read the public key"):
        trust.read_public_key(tmp_path / "missing.pub")
    good = tmp_path / "fleet.pub"
    good.write_text(KEY)
    assert trust.read_public_key(good) == KEY


def test_a_damaged_policy_is_named(tmp_path: Path) -> None:
    (tmp_path / "containers").mkdir()
    (tmp_path / "containers/policy.json").write_text("{not json")
    with pytest.raises(UsageError, match=r"policy\.json: not a policy this machine can use"):
        trust.load(tmp_path)
