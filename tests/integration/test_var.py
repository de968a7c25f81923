"""/var is the machine's: an upgrade names each /var path where the new image brings content the machine keeps its
own copy of, `os diff --var` lists them later, and the build warns about Systemfiles that write there."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import pytest

from tests.integration.conftest import installed

pytestmark = pytest.mark.integration

V1 = """
    FROM localhost/arkes:base
    RUN mkdir -p /var/lib/app && echo v1 > /var/lib/app/config && echo v1 > /var/lib/app/fixed
    RUN post_build
"""


def test_upgrade_names_var_paths_the_machine_keeps(tmp_path_factory: pytest.TempPathFactory) -> None:
    system = installed(tmp_path_factory, "var", V1)
    var = system.path / "ostree/deploy/arkes/var"
    # What the first boot seeded, and then the machine's own change to one of the files.
    (var / "lib/app").mkdir(parents=True)
    (var / "lib/app/config").write_text("changed on the machine\n")
    (var / "lib/app/fixed").write_text("v1\n")
    system.systemfile.write_text(
        system.systemfile.read_text().replace("echo v1 > /var/lib/app/config", "echo v2 > /var/lib/app/config")
        + "COPY Systemfile /var/lib/app/copied\n"
    )
    result = system.os("upgrade")
    assert "COPY to /var/lib/app/copied: /var belongs to the machine" in result.stderr, "the build warns"
    assert "changes 1 path(s) there that keep the machine's copy" in result.stderr
    assert "  /var/lib/app/config" in result.stderr
    assert "/var/lib/app/fixed" not in result.stderr, "a file the new image did not change is not named"
    assert (var / "lib/app/config").read_text() == "changed on the machine\n", "the machine's copy stays"
    listed = json.loads(system.os("diff", "--var", "--json").stdout)
    assert [c["name"] for c in listed["changes"]] == ["/var/lib/app/config"]
    check = system.os("check", "--json")
    assert any("/var belongs to the machine" in w for w in json.loads(check.stdout)["warnings"])


OWNED = """
    FROM localhost/arkes:base
    RUN useradd --system --user-group svc \\
     && mkdir -p /var/lib/svc/data && echo state > /var/lib/svc/data/state && echo root > /var/lib/svc/by-root \\
     && chown -R svc:svc /var/lib/svc && chown root:root /var/lib/svc/by-root \\
     && chmod 0700 /var/lib/svc && chmod 0600 /var/lib/svc/data/state
    RUN post_build
"""


def test_the_images_own_tmpfiles_seeds_var_with_owners_and_modes(
    tmp_path_factory: pytest.TempPathFactory, tmp_path: Path
) -> None:
    """What the first boot does, done by the image's systemd-tmpfiles over the deployment: every seeded file and
    directory under a service's own directory belongs to the service (a database's cluster, say)."""
    system = installed(tmp_path_factory, "var-owned", OWNED)
    deployment = system.deployment_dir()
    var = tmp_path / "var"
    var.mkdir()

    def seed() -> subprocess.CompletedProcess[str]:
        argv = ["podman", "run", "--rm", "--runtime=runc", "--pull=never", "--network=none"]
        argv += ["--ulimit", "nofile=20000:20000", "--ulimit", "nproc=4096:4096"]
        argv += ["-v", f"{deployment / 'usr'}:/target/usr:ro", "-v", f"{deployment / 'etc'}:/target/etc:ro"]
        argv += ["-v", f"{var}:/target/var", "localhost/arkes:base"]
        argv += ["systemd-tmpfiles", "--root=/target", "--create", "--prefix=/var/lib/svc"]
        return subprocess.run(argv, capture_output=True, text=True, timeout=300, check=False)

    result = seed()
    assert result.returncode == 0 and "unsafe" not in result.stderr, result.stderr
    svc = next(line for line in (deployment / "etc/passwd").read_text().splitlines() if line.startswith("svc:"))
    uid, gid = int(svc.split(":")[2]), int(svc.split(":")[3])
    found = {p.relative_to(var).as_posix(): p.lstat() for p in sorted((var / "lib").rglob("*"))}
    owners = {path: (st.st_uid, st.st_gid, oct(st.st_mode & 0o7777)) for path, st in found.items()}
    assert owners == {
        "lib/svc": (uid, gid, "0o700"),
        "lib/svc/by-root": (0, 0, "0o644"),
        "lib/svc/data": (uid, gid, "0o755"),
        "lib/svc/data/state": (uid, gid, "0o600"),
    }
    assert (var / "lib/svc/data/state").read_text() == "state\n"
    # Later the directory is the machine's: its mode, changed by the person, stays at the next boot.
    (var / "lib/svc/data").chmod(0o750)
    (var / "lib/svc/data/state").write_text("the machine's\n")
    assert seed().returncode == 0
    assert oct((var / "lib/svc/data").stat().st_mode & 0o7777) == "0o750"
    assert (var / "lib/svc/data/state").read_text() == "the machine's\n"
