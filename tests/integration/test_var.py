"""/var is the machine's: an upgrade names each /var path where the new image brings content the machine keeps its
own copy of, `os diff --var` lists them later, and the build warns about Systemfiles that write there."""

from __future__ import annotations

import json

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
