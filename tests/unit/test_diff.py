"""Package changes between two commits' metadata: a kernel update is named as such, before the packages."""

from __future__ import annotations

from arkes.diff import package_changes
from arkes.records import Metadata
from arkes.results import Change

OLD = Metadata(
    kernel="6.12.117+deb13-amd64",
    packages=(("linux-image-6.12.117+deb13-amd64", "6.12.117-1"), ("linux-image-amd64", "6.12.117-1")),
)
NEW = Metadata(
    kernel="6.12.118+deb13-amd64",
    packages=(("linux-image-6.12.118+deb13-amd64", "6.12.118-1"), ("linux-image-amd64", "6.12.118-1")),
)


def test_a_kernel_update_comes_first_named_as_the_kernel() -> None:
    assert package_changes(OLD, NEW) == [
        Change("kernel", "kernel", "6.12.117+deb13-amd64", "6.12.118+deb13-amd64"),
        Change("removed", "linux-image-6.12.117+deb13-amd64", "6.12.117-1", ""),
        Change("added", "linux-image-6.12.118+deb13-amd64", "", "6.12.118-1"),
        Change("changed", "linux-image-amd64", "6.12.117-1", "6.12.118-1"),
    ]


def test_the_same_kernel_is_no_change() -> None:
    assert package_changes(OLD, OLD) == []
