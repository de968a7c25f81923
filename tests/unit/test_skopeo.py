"""Which layers a pull may take from the container storage instead of the registry: the pairs of compressed blob
and uncompressed layer that the manifest pulled by digest binds, written to the pull's own cache file."""

from __future__ import annotations

import hashlib
import json
import sqlite3
from pathlib import Path

import pytest

from arkes import run, skopeo

GZIP = "application/vnd.oci.image.layer.v1.tar+gzip"


def sha(text: str) -> str:
    return "sha256:" + hashlib.sha256(text.encode()).hexdigest()


def image(layers: list[tuple[str, str, str]]) -> tuple[str, str, str]:
    """(manifest digest, manifest, config) of an image whose layers are (media type, blob digest, diff id)."""
    config = json.dumps({"rootfs": {"type": "layers", "diff_ids": [diff for _, _, diff in layers]}})
    manifest = json.dumps(
        {
            "schemaVersion": 2,
            "config": {"mediaType": "application/vnd.oci.image.config.v1+json", "digest": sha(config)},
            "layers": [{"mediaType": kind, "digest": blob, "size": 1} for kind, blob, _ in layers],
        }
    )
    return sha(manifest), manifest, config


def test_each_compressed_blob_is_paired_with_the_layer_it_unpacks_to() -> None:
    a, b, c = (f"sha256:{x * 64}" for x in "abc")
    d, e = (f"sha256:{x * 64}" for x in "de")
    digest, manifest, config = image([(GZIP, a, d), (GZIP.replace("gzip", "zstd"), b, e), (GZIP[:-5], c, c)])
    assert skopeo.declared_pairs(digest, manifest, config) == [(a, d), (b, e)], "an uncompressed layer needs none"


def test_nothing_is_paired_that_the_digest_does_not_bind() -> None:
    a, d = "sha256:" + "a" * 64, "sha256:" + "d" * 64
    digest, manifest, config = image([(GZIP, a, d)])
    assert skopeo.declared_pairs("sha256:" + "0" * 64, manifest, config) == [], "another manifest than the digest"
    assert skopeo.declared_pairs(digest, manifest, config + " ") == [], "another configuration than it names"
    index = json.dumps({"schemaVersion": 2, "manifests": []})
    assert skopeo.declared_pairs(sha(index), index, config) == [], "an index names no layers"
    _, short, _ = image([(GZIP, a, d), (GZIP, a, d)])
    assert skopeo.declared_pairs(sha(short), short, config) == [], "as many layers as the configuration lists"


def test_the_pairs_go_to_the_pull_s_own_cache_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    a, d = "sha256:" + "a" * 64, "sha256:" + "d" * 64
    digest, manifest, config = image([(GZIP, a, d)])
    asked: list[list[str]] = []

    def fake_run(argv: list[str], **_: object) -> run.Result:
        asked.append(list(argv))
        return run.Result(0, config if "--config" in argv else manifest, "")

    monkeypatch.setattr(run, "run", fake_run)
    cache = tmp_path / "blob-info-cache-v1.sqlite"
    assert skopeo.layer_pairs("registry.example.com/system:1", cache) == 0, "a tag can move: only a digest binds"
    assert asked == [] and not cache.exists()
    assert skopeo.layer_pairs(f"registry.example.com/system@{digest}", cache) == 1
    with sqlite3.connect(cache) as db:
        assert db.execute("SELECT anyDigest, uncompressedDigest FROM DigestUncompressedPairs").fetchall() == [(a, d)]
