"""`os publish` and `os switch` against a real OCI registry (Debian's docker-registry on 127.0.0.1, declared
insecure in a registries.conf as a person would): the system becomes an ordinary image that skopeo inspects and
Podman runs, with its provenance in its labels; a one-line change sends only the layers the registry lacks; another
machine follows it, learns of an update from the registry without pulling, takes it, and goes back to its own
Systemfile."""

from __future__ import annotations

import json
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from arkes import rollout
from arkes.skopeo import on_host as skopeo
from tests.integration.conftest import System, installed, own_copy
from tests.integration.registry import Registry, running_registry
from tests.integration.static import gpg_key, serving, stop_agent

pytestmark = pytest.mark.integration

# This host's Podman: runc, and limits the container cannot raise itself.
PODMAN_RUN = [
    "podman",
    "run",
    "--rm",
    "--network=none",
    "--runtime=runc",
    "--ulimit",
    "nofile=20000:20000",
    "--ulimit",
    "nproc=4096:4096",
]

SYSTEMFILE = """
    FROM localhost/arkes:base
    RUN echo published > /usr/share/arkes-published
    RUN post_build
"""

# Another machine, with a Systemfile of its own.
CLIENT = """
    FROM localhost/arkes:base
    RUN echo client > /usr/share/arkes-client
    RUN post_build
"""


@pytest.fixture(scope="module")
def publisher(tmp_path_factory: pytest.TempPathFactory, base_image: str) -> System:
    return installed(tmp_path_factory, "publisher", SYSTEMFILE)


@pytest.fixture
def system(publisher: System, tmp_path: Path) -> Iterator[System]:
    yield from own_copy(publisher, tmp_path)


@pytest.fixture(scope="module")
def client_template(tmp_path_factory: pytest.TempPathFactory, base_image: str) -> System:
    return installed(tmp_path_factory, "client", CLIENT)


@pytest.fixture
def client(client_template: System, tmp_path: Path) -> Iterator[System]:
    yield from own_copy(client_template, tmp_path / "client")


@pytest.fixture
def registry(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Registry]:
    with running_registry(tmp_path / "registry") as served:
        # Podman, skopeo and `os` read it: the registry is plain HTTP, as registries.conf says.
        monkeypatch.setenv("CONTAINERS_REGISTRIES_CONF", str(served.registries_conf))
        yield served


def skopeo_inspect(ref: str) -> dict[str, Any]:
    out = subprocess.run([*skopeo(), "inspect", f"docker://{ref}"], capture_output=True, text=True, check=True)
    found: dict[str, Any] = json.loads(out.stdout)
    return found


def test_a_published_system_is_an_ordinary_image_with_its_provenance(system: System, registry: Registry) -> None:
    ref = f"{registry.host}/fleet/system:stable"
    published = system.os("publish", ref, "--json")
    document = json.loads(published.stdout)
    deployed = system.status()[0]
    assert document["kind"] == "Publish" and document["reference"] == ref
    assert document["checksum"] == deployed["checksum"] and document["version"] == deployed["version"]
    assert f"published version {deployed['version']}" in published.stderr

    inspected = skopeo_inspect(ref)
    assert inspected["Digest"] == document["digest"]
    labels = inspected["Labels"]
    assert isinstance(labels, dict)
    assert labels["org.arkes.commit"] == deployed["checksum"]
    assert labels["org.arkes.version"] == deployed["version"]
    assert labels["org.arkes.input-hash"] == deployed["inputHash"]
    assert labels["org.arkes.base-image"] == "localhost/arkes:base"
    assert labels["org.arkes.base-digest"].startswith("sha256:")
    assert "bash=" in labels["org.arkes.packages"] and "systemd=" in labels["org.arkes.packages"]

    # Runnable as any image: pulled by digest from the registry and started by Podman.
    by_digest = f"{ref.rpartition(':')[0]}@{document['digest']}"
    ran = subprocess.run(
        [*PODMAN_RUN, by_digest, "cat", "/usr/share/arkes-published"],
        capture_output=True,
        text=True,
        check=False,
    )
    assert ran.returncode == 0 and ran.stdout == "published\n", ran.stderr

    # A one-line change: the registry receives the layers it lacks and the new configuration, nothing else.
    layers_before = set(inspected["Layers"])
    pushed_before = len(registry.uploaded())
    system.add_line("RUN echo one line > /usr/share/arkes-one-line")
    system.os("upgrade")
    again = json.loads(system.os("publish", ref, "--json").stdout)
    assert again["digest"] != document["digest"] and again["checksum"] == system.status()[0]["checksum"]
    after = skopeo_inspect(ref)
    new_layers = set(after["Layers"]) - layers_before
    pushed = registry.uploaded()[pushed_before:]
    assert 0 < len(new_layers) < len(after["Layers"]) // 2
    assert set(pushed) - new_layers == {after_config(ref)}, "the new layers and the new configuration"
    assert new_layers <= set(pushed)


def tree_listing(system: System) -> list[str]:
    """Every path of the default deployment's commit with its mode, owner and content checksum."""
    commit = system.status()[0]["checksum"]
    listed = subprocess.run(
        ["ostree", "ls", f"--repo={system.repo}", "-R", "-C", commit, "/"], capture_output=True, text=True, check=True
    )
    return listed.stdout.splitlines()


def after_config(ref: str) -> str:
    out = subprocess.run(
        [*skopeo(), "inspect", "--raw", f"docker://{ref}"], capture_output=True, text=True, check=True
    ).stdout
    digest: str = json.loads(out)["config"]["digest"]
    return digest


def test_what_cannot_be_published_is_refused_with_a_reason(system: System, registry: Registry) -> None:
    short = system.os("publish", "system:1", check=False)
    assert short.returncode == 2 and "system:1 is not a registry reference" in short.stderr
    assert "REGISTRY/NAME[:TAG]" in short.stderr

    gone = system.os("publish", "127.0.0.1:9/fleet/system:1", check=False)
    assert gone.returncode == 1 and "pushing to 127.0.0.1:9/fleet/system:1" in gone.stderr, gone.stderr

    missing = system.os("publish", f"{registry.host}/fleet/system:1", "--index", "3", check=False)
    assert missing.returncode == 2 and "there is no deployment 3" in missing.stderr
    assert registry.uploaded() == [], "nothing was pushed"


def test_a_machine_follows_a_published_system_and_goes_back_to_its_own(
    system: System, client: System, registry: Registry
) -> None:
    ref = f"{registry.host}/fleet/system:stable"
    repository = ref.rpartition(":")[0]
    first = json.loads(system.os("publish", ref, "--json").stdout)
    try:
        start = registry.mark()
        switched = client.os("switch", ref)
        assert f"from {ref}" in switched.stderr, switched.stderr
        # This host's container storage holds every layer already (the publisher built them): none is downloaded,
        # though the pull has only the image's configuration to tell which compressed blob is which layer.
        layers = set(skopeo_inspect(ref)["Layers"])
        assert registry.fetched_blobs(start) and not registry.fetched_blobs(start) & layers
        followed, own = client.status()[:2]
        assert followed["source"] == f"{repository}@{first['digest']}" and own["source"] == ""
        assert followed["version"] == first["version"], "the publisher's version"
        assert (client.deployment_dir() / "usr/share/arkes-published").is_file()
        assert not (client.deployment_dir() / "usr/share/arkes-client").exists()
        assert (client.deployment_dir(1) / "usr/share/arkes-client").is_file(), "the previous system is kept"
        assert "source      " + followed["source"] in client.os("status").stdout

        assert json.loads(client.os("upgrade", "--json").stdout)["upToDate"] is True
        assert client.os("checkupdates", check=False).returncode == 2

        # The publisher changes a line and publishes: the client learns of it from the registry, then takes it.
        system.add_line("RUN echo second > /usr/share/arkes-second")
        system.os("upgrade")
        second = json.loads(system.os("publish", ref, "--json").stdout)
        check = client.os("checkupdates", "--json", check=False)
        assert check.returncode == 0, check.stderr
        (finding,) = json.loads(check.stdout)["updates"]
        assert (finding["kind"], finding["subject"]) == ("published", ref)
        assert (finding["old"], finding["new"]) == (first["digest"], second["digest"])
        assert len(client.status()) == 2, "nothing was deployed by asking"

        upgraded = client.os("upgrade")
        assert f"deployed version {second['version']}" in upgraded.stderr, upgraded.stderr
        assert client.status()[0]["source"] == f"{repository}@{second['digest']}"
        assert (client.deployment_dir() / "usr/share/arkes-second").read_text() == "second\n"
        assert tree_listing(client) == tree_listing(system), "the publisher's tree, file for file"

        # Back to the machine's own Systemfile.
        client.os("switch", "--local")
        back = client.status()[0]
        assert back["source"] == "" and (client.deployment_dir() / "usr/share/arkes-client").is_file()
        # Its own inputs are checked again (what Debian's mirror publishes meanwhile may count), not the registry.
        local = json.loads(client.os("checkupdates", "--json", check=False).stdout)
        assert [f for f in local["updates"] if f["kind"] in ("published", "systemfile", "context")] == [], local
        client.fsck()
    finally:
        subprocess.run(["podman", "rmi", "-i", ref], capture_output=True, check=False)


def test_switch_refuses_what_is_no_published_system(client: System, registry: Registry) -> None:
    before = client.snapshot()
    nowhere = client.os("switch", f"{registry.host}/fleet/nothing:1", check=False)
    assert nowhere.returncode == 1 and f"pulling {registry.host}/fleet/nothing:1" in nowhere.stderr
    neither = client.os("switch", check=False)
    assert neither.returncode == 2 and "--local" in neither.stderr
    assert client.snapshot() == before


def registry_blob(registry: Registry, digest: str) -> Path:
    """Where docker-registry keeps a blob's bytes."""
    hex_digest = digest.removeprefix("sha256:")
    return registry.root / "storage/docker/registry/v2/blobs/sha256" / hex_digest[:2] / hex_digest / "data"


def test_a_machine_that_requires_signatures_takes_only_what_its_key_signed(
    system: System, client: System, registry: Registry, tmp_path: Path
) -> None:
    ref = f"{registry.host}/fleet/system:stable"
    repository = ref.rpartition(":")[0]
    passphrase = tmp_path / "passphrase"
    passphrase.write_text("correct horse\n")
    made = json.loads(
        system.os("keygen", str(tmp_path / "fleet"), "--passphrase-file", str(passphrase), "--json").stdout
    )
    assert (made["privateKey"], made["publicKey"]) == (str(tmp_path / "fleet.private"), str(tmp_path / "fleet.pub"))
    assert (tmp_path / "fleet.private").stat().st_mode & 0o077 == 0
    system.os("keygen", str(tmp_path / "other"), "--passphrase-file", str(passphrase))
    again = system.os("keygen", str(tmp_path / "fleet"), "--passphrase-file", str(passphrase), check=False)
    assert again.returncode == 2 and "never overwrites" in again.stderr
    sign = ["--sign-by", str(tmp_path / "fleet.private"), "--sign-passphrase-file", str(passphrase)]

    wrong = tmp_path / "wrong"
    wrong.write_text("wrong\n")
    refused = system.os(
        "publish", ref, "--sign-by", str(tmp_path / "fleet.private"), "--sign-passphrase-file", str(wrong), check=False
    )
    assert refused.returncode == 2 and "the passphrase does not open" in refused.stderr, refused.stderr
    assert registry.uploaded() == [], "nothing was pushed"

    signed = json.loads(system.os("publish", ref, *sign, "--json").stdout)
    assert signed["signedBy"] == str(tmp_path / "fleet.private")
    tags = json.loads(
        subprocess.run(
            ["curl", "-sf", f"http://{registry.host}/v2/fleet/system/tags/list"],
            capture_output=True,
            text=True,
            check=True,
        ).stdout
    )["tags"]
    assert f"{signed['digest'].replace(':', '-')}.sig" in tags, "the signature is in the registry, next to the image"

    try:
        # Signed, but by another key than the one the machine is given: refused, nothing pulled or deployed.
        before = client.snapshot()
        other = client.os("switch", ref, "--require-signed", str(tmp_path / "other.pub"), check=False)
        assert other.returncode == 1 and "not signed by the key" in other.stderr, other.stderr
        assert client.snapshot() == before
        key = f"/etc/pki/containers/{registry.host.replace(':', '-')}-fleet-system.pub"
        assert not (client.etc() / key.removeprefix("/etc/")).exists()
        assert "fleet/system" not in (client.etc() / "containers/policy.json").read_text()

        # The publisher's key: followed, and from then on required.
        client.os("switch", ref, "--require-signed", str(tmp_path / "fleet.pub"))
        followed = client.status()[0]
        assert followed["source"] == f"{repository}@{signed['digest']}"
        verification = followed["verification"]
        assert verification == {"scope": repository, "requirements": [{"type": "sigstoreSigned", "keys": [key]}]}
        assert f"requires    a sigstore signature by {key} (policy.json: {repository})" in client.os("status").stdout
        etc = client.etc()
        assert (etc / key.removeprefix("/etc/")).read_text() == (tmp_path / "fleet.pub").read_text()
        policy = json.loads((etc / "containers/policy.json").read_text())
        assert policy["transports"]["docker"][repository][0]["keyPath"] == key
        assert policy["default"] == [{"type": "insecureAcceptAnything"}], "the rest of the policy is kept"

        # The publisher pushes an unsigned system under the same name: the machine refuses it.
        system.add_line("RUN echo unsigned > /usr/share/arkes-unsigned")
        system.os("upgrade")
        unsigned = json.loads(system.os("publish", ref, "--json").stdout)
        before = client.snapshot()
        upgrade = client.os("upgrade", check=False)
        assert upgrade.returncode == 1 and "not signed, and this machine requires a signature" in upgrade.stderr, (
            upgrade.stderr
        )
        assert client.snapshot() == before

        # The unsigned image with the signed one's signature next to it: a signature of another image.
        copy_sig = [*skopeo(), "copy", "--src-tls-verify=false", "--dest-tls-verify=false"]
        copy_sig += [
            f"docker://{repository}:{signed['digest'].replace(':', '-')}.sig",
            f"docker://{repository}:{unsigned['digest'].replace(':', '-')}.sig",
        ]
        subprocess.run(copy_sig, capture_output=True, check=True)
        forged = client.os("upgrade", check=False)
        assert forged.returncode == 1 and "signature was made for another image" in forged.stderr, forged.stderr
        assert client.snapshot() == before

        # Signed again, then a byte of a blob changed in the registry's storage: the image's configuration, which
        # every pull reads (a layer could be one that this host's shared storage holds already).
        resigned = json.loads(system.os("publish", ref, *sign, "--json").stdout)
        blob = registry_blob(registry, after_config(ref))
        original = blob.read_bytes()
        tampered = bytearray(original)
        tampered[len(tampered) // 2] ^= 0xFF
        blob.write_bytes(bytes(tampered))
        altered = client.os("upgrade", check=False)
        assert altered.returncode == 1 and "altered after it was published" in altered.stderr, altered.stderr
        assert client.snapshot() == before
        blob.write_bytes(original)

        taken = client.os("upgrade")
        assert f"deployed version {resigned['version']}" in taken.stderr, taken.stderr
        assert client.status()[0]["source"] == f"{repository}@{resigned['digest']}"
        assert json.loads((client.etc() / "containers/policy.json").read_text()) == policy, "kept by the /etc merge"
        client.fsck()
    finally:
        subprocess.run(["podman", "rmi", "-i", ref], capture_output=True, check=False)


def test_an_update_rolls_out_in_waves_that_the_publisher_widens_or_halts(
    system: System, client: System, registry: Registry
) -> None:
    ref = f"{registry.host}/fleet/system:stable"
    system.os("publish", ref)
    try:
        client.os("switch", ref)
        # A booted machine has a machine-id (systemd writes it on the first boot); its wave comes from it.
        (client.etc() / "machine-id").write_text("4a8e1c0f3b2d4e6f8a9b0c1d2e3f4a5b\n")
        wave = rollout.wave(client.etc())
        deployed = client.status()[0]

        # Out to the waves below this machine's: it learns of the update, and waits.
        system.add_line("RUN echo wave one > /usr/share/arkes-wave")
        system.os("upgrade")
        first = json.loads(system.os("publish", ref, "--rollout", str(wave), "--json").stdout)
        assert first["rollout"] == wave
        shown = json.loads(system.os("rollout", ref, "--json").stdout)
        assert (shown["digest"], shown["percent"], shown["checksum"]) == (first["digest"], wave, first["checksum"])
        check = client.os("checkupdates", "--json", check=False)
        assert check.returncode == 2, "an update this machine may not take yet is none to take"
        (finding,) = json.loads(check.stdout)["updates"]
        assert finding["new"] == first["digest"]
        assert finding["rollout"] == {"percent": wave, "wave": wave, "admitted": False}
        assert f"this machine's wave is {wave}: this machine waits" in finding["line"]
        before = client.snapshot()
        held = client.os("upgrade", "--json")
        assert json.loads(held.stdout)["held"] is True and "--ignore-rollout" in held.stderr, held.stderr
        assert client.snapshot() == before, "nothing pulled or deployed"

        # Widened to this machine's wave, without a rebuild: the same image, now taken.
        widened = json.loads(system.os("rollout", ref, str(wave + 1), "--json").stdout)
        assert widened["digest"] == first["digest"] and widened["percent"] == wave + 1
        assert client.os("checkupdates", check=False).returncode == 0
        taken = client.os("upgrade")
        assert f"deployed version {first['version']}" in taken.stderr, taken.stderr
        assert (client.deployment_dir() / "usr/share/arkes-wave").read_text() == "wave one\n"

        # Halted: nobody takes the next one, unless a person says so on the machine.
        system.add_line("RUN echo wave two > /usr/share/arkes-wave-two")
        system.os("upgrade")
        second = json.loads(system.os("publish", ref, "--rollout", "0", "--json").stdout)
        assert json.loads(client.os("upgrade", "--json").stdout)["held"] is True
        forced = client.os("upgrade", "--ignore-rollout")
        assert f"deployed version {second['version']}" in forced.stderr, forced.stderr
        assert client.status()[0]["checksum"] != deployed["checksum"]

        bad = system.os("rollout", ref, "101", check=False)
        assert bad.returncode == 2 and "0 to 100" in bad.stderr
    finally:
        subprocess.run(["podman", "rmi", "-i", ref], capture_output=True, check=False)


def test_a_machine_builds_on_a_published_base_and_takes_a_newer_one(
    system: System, client: System, registry: Registry
) -> None:
    base = f"{registry.host}/fleet/base:1"
    first = json.loads(system.os("publish", base, "--json").stdout)
    try:
        client.systemfile.write_text(f"FROM {base}\nRUN echo derived > /usr/share/arkes-derived\nRUN post_build\n")
        built = client.os("upgrade")
        assert f"base image {base}: the registry names {first['digest']}, pulling it" in built.stderr, built.stderr
        deployed = client.status()[0]
        assert (deployed["baseImage"], deployed["baseDigest"]) == (base, first["digest"])
        assert (client.deployment_dir() / "usr/share/arkes-published").read_text() == "published\n", "the base's"
        assert (client.deployment_dir() / "usr/share/arkes-derived").read_text() == "derived\n"
        assert json.loads(client.os("upgrade", "--json").stdout)["upToDate"] is True

        # The base's publisher publishes a newer one: the machine learns of it from the registry, then builds on it.
        system.add_line("RUN echo newer base > /usr/share/arkes-newer-base")
        system.os("upgrade")
        second = json.loads(system.os("publish", base, "--json").stdout)
        check = client.os("checkupdates", "--no-packages", "--json", check=False)
        assert check.returncode == 0, check.stderr
        findings = json.loads(check.stdout)["updates"]
        assert {"kind": "registry", "subject": base, "old": first["digest"], "new": second["digest"]}.items() <= (
            next(f for f in findings if f["kind"] == "registry").items()
        ), findings
        upgraded = client.os("upgrade")
        assert f"the registry names {second['digest']}, pulling it" in upgraded.stderr, upgraded.stderr
        assert client.status()[0]["baseDigest"] == second["digest"]
        assert (client.deployment_dir() / "usr/share/arkes-newer-base").read_text() == "newer base\n"
        assert (client.deployment_dir() / "usr/share/arkes-derived").read_text() == "derived\n"
        client.fsck()
    finally:
        subprocess.run(["podman", "rmi", "-i", base], capture_output=True, check=False)


def test_a_machine_follows_an_ostree_archive_over_http_through_static_deltas(
    system: System, client: System, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    home = tmp_path / "gnupg"
    (tmp_path / "fleet.asc").write_bytes(gpg_key(home, "fleet@arkes.invalid"))
    monkeypatch.setenv("GNUPGHOME", str(home))
    repo = tmp_path / "www/repo"
    sign = ["--sign-by", "fleet@arkes.invalid"]
    try:
        first = json.loads(system.os("publish", "--ostree", str(repo), *sign, "--json").stdout)
        assert first["kind"] == "PublishTree" and first["checksum"] == system.status()[0]["checksum"]
        assert (first["branch"], first["previous"], first["deltaBytes"]) == ("arkes/stable", "", 0)
        with serving(tmp_path / "www") as server:
            url = f"ostree+http://127.0.0.1:{server.port}/repo"
            wrong = client.os("switch", url, "--require-signed", str(tmp_path / "fleet.asc.missing"), check=False)
            assert wrong.returncode == 2 and "cannot read the public key" in wrong.stderr

            client.os("switch", url, "--require-signed", str(tmp_path / "fleet.asc"))
            followed = client.status()[0]
            assert followed["checksum"] == first["checksum"], "the publisher's commit itself"
            assert followed["source"] == f"{url}#arkes/stable@{first['checksum']}"
            assert followed["verification"]["requirements"][0]["type"] == "gpgSigned"
            assert "requires    a GPG signature by" in client.os("status").stdout

            # A one-line change: published with a static delta from the previous commit, which the machine takes.
            system.add_line("RUN echo archived > /usr/share/arkes-archived")
            system.os("upgrade")
            second = json.loads(system.os("publish", "--ostree", str(repo), *sign, "--json").stdout)
            assert second["previous"] == first["checksum"] and 0 < second["deltaBytes"] < 64 * 2**20
            check = client.os("checkupdates", "--json", check=False)
            assert check.returncode == 0, check.stderr
            (finding,) = json.loads(check.stdout)["updates"]
            assert (finding["kind"], finding["old"], finding["new"]) == (
                "published",
                first["checksum"],
                second["checksum"],
            )
            asked = len(server.requested())
            taken = client.os("upgrade")
            assert f"deployed version {second['version']}" in taken.stderr, taken.stderr
            assert client.status()[0]["checksum"] == second["checksum"]
            assert (client.deployment_dir() / "usr/share/arkes-archived").read_text() == "archived\n"
            fetched = server.requested()[asked:]
            assert any("/repo/deltas/" in r and r.endswith(" 200") for r in fetched), fetched
            assert not any("/repo/objects/" in r and ".filez " in r for r in fetched), "files came in the delta"

            # Unsigned: refused before anything of it is pulled or deployed.
            system.add_line("RUN echo unsigned > /usr/share/arkes-archived-unsigned")
            system.os("upgrade")
            system.os("publish", "--ostree", str(repo))
            before = client.snapshot()
            refused = client.os("upgrade", check=False)
            assert refused.returncode == 1 and "not signed" in refused.stderr, refused.stderr
            assert client.snapshot() == before
            client.fsck()
    finally:
        stop_agent(home)
