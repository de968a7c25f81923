"""The names `os` gives its things inside OSTree: its stateroot, its refs, its group in origin files. Apart from
arkes.records, whose classes take milliseconds to create, so that `os status` finds a sysroot's paths without them.
"""

from __future__ import annotations

STATEROOT = "arkes"
# The newest commit `os build` made; keeps it alive for a later deploy even when nothing deploys it yet.
BUILD_REF = "arkes/build"
ORIGIN_GROUP = "arkes"

LAYER_REFS = "arkes/layers/"  # each image layer's commit, by digest (see arkes.layers)


def layer_ref(digest: str) -> str:
    """The ref of an image layer's commit: arkes/layers/HEX."""
    return LAYER_REFS + digest.removeprefix("sha256:")


# A deployment that came from a published system (arkes.follow) names it in its origin: the registry reference
# the machine follows, and the digest of the image deployed.
ORIGIN_SOURCE = "source"
ORIGIN_DIGEST = "digest"
