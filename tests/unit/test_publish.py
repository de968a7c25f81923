"""Registry references as `os publish` takes them."""

from __future__ import annotations

import pytest

from arkes import publish
from arkes.errors import UsageError


@pytest.mark.parametrize(
    ("given", "expected"),
    [
        ("registry.example.com/fleet/system:stable", "registry.example.com/fleet/system:stable"),
        ("127.0.0.1:5000/system", "127.0.0.1:5000/system:latest"),
        ("docker://localhost:5000/a/b:1.2", "localhost:5000/a/b:1.2"),
        ("localhost/system:v1", "localhost/system:v1"),
        ("[::1]:5000/system:1", "[::1]:5000/system:1"),
    ],
)
def test_references(given: str, expected: str) -> None:
    assert publish.reference(given) == expected


@pytest.mark.parametrize(
    "given", ["system:1", "fleet/system", "registry.example.com/Fleet/system", "", "a.b/c:bad tag"]
)
def test_what_is_no_reference_is_refused_with_the_form(given: str) -> None:
    with pytest.raises(UsageError) as refused:
        publish.reference(given)
    assert "REGISTRY/NAME[:TAG]" in (refused.value.hint or "")
