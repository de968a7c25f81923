"""Unit tests for the /var contract in arkes.diff: what an upgrade names when the machine keeps its own copy."""

from __future__ import annotations

from pathlib import Path

from arkes import diff, tree


def image(files: dict[str, bytes]) -> diff.Reader:
    """A reader of an image that seeds `files` (/var path -> content) from its factory."""
    lines = [f"C {path} - - - - /{tree.FACTORY}{path}" for path in files]
    contents = {tree.TMPFILES: "\n".join(["# made by os", *lines]).encode() + b"\n"}
    contents |= {f"{tree.FACTORY}{path}": data for path, data in files.items()}
    return contents.get


def test_upgrade_names_only_what_the_new_image_changes_where_the_machine_has_its_own(tmp_path: Path) -> None:
    var = tmp_path / "var"
    (var / "lib/app").mkdir(parents=True)
    (var / "lib/app/config").write_text("machine\n")  # the machine changed it
    (var / "lib/app/same").write_text("v1\n")  # the machine left it as seeded
    (var / "lib/app/new").write_text("made on the machine\n")  # the machine made it; the new image adds it
    (var / "lib/app/untouched").write_text("v1\n")
    old = image({"/var/lib/app/config": b"v1\n", "/var/lib/app/same": b"v1\n", "/var/lib/app/untouched": b"v1\n"})
    new = image(
        {
            "/var/lib/app/config": b"v2\n",
            "/var/lib/app/same": b"v2\n",
            "/var/lib/app/new": b"image\n",
            "/var/lib/app/untouched": b"v1\n",
            "/var/lib/app/absent": b"seeded at boot\n",
        }
    )
    kept = diff.var_kept(var, new, old)
    assert [(c.kind, c.name) for c in kept] == [
        ("modified", "/var/lib/app/config"),
        ("modified", "/var/lib/app/same"),
        ("added", "/var/lib/app/new"),
    ]


def test_diff_var_lists_every_seeded_file_the_machine_has_otherwise(tmp_path: Path) -> None:
    var = tmp_path / "var"
    (var / "lib/db").mkdir(parents=True)
    (var / "lib/db/rows").write_text("many rows\n")
    (var / "lib/db/conf").write_text("seeded\n")
    kept = diff.var_kept(var, image({"/var/lib/db/rows": b"", "/var/lib/db/conf": b"seeded\n"}))
    assert [c.name for c in kept] == ["/var/lib/db/rows"]


def test_quoted_paths_are_read() -> None:
    read = {tree.TMPFILES: b'C "/var/lib/a b" - - - - /usr/share/factory/var/lib/a b\n'}.get
    assert diff.seeded_files(read) == [("/var/lib/a b", "usr/share/factory/var/lib/a b")]
