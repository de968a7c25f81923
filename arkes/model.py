"""The base of every result model: a kind, a JSON document with camelCase keys (`document`), and what people are
shown (`render`, `said`). Apart from arkes.results, so that a command such as `os status` builds only its own
model (each model class costs a fraction of a millisecond to create, and there are dozens).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from typing import ClassVar

API_VERSION = "arkes/v1"

JSON = dict[str, object]


def camel(name: str) -> str:
    head, *rest = name.split("_")
    return head + "".join(part[:1].upper() + part[1:] for part in rest)


def plain(value: object) -> object:
    """A model as JSON values: dataclasses and mappings become objects with camelCase keys, tuples lists."""
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return {camel(f.name): plain(getattr(value, f.name)) for f in dataclasses.fields(value)}
    if isinstance(value, Mapping):
        return {camel(str(k)): plain(v) for k, v in value.items()}
    if isinstance(value, tuple | list):
        return [plain(v) for v in value]
    return value


def fields(value: object) -> JSON:
    """A dataclass or mapping as a JSON object."""
    found = plain(value)
    assert isinstance(found, dict)
    return found


def document(kind: str, body: object) -> JSON:
    return {"apiVersion": API_VERSION, "kind": kind, **fields(body)}


def size(n: int) -> str:
    """Bytes for people: 512 B, 3.4 MiB."""
    value = float(n)
    for unit in ("B", "KiB", "MiB", "GiB"):
        if value < 1024 or unit == "GiB":
            return f"{value:.0f} {unit}" if unit == "B" else f"{value:.1f} {unit}"
        value /= 1024
    return f"{n} B"


class Result:
    """What every model has: a kind, a document, and what people see (nothing unless a model says more)."""

    KIND: ClassVar[str]

    def to_json(self) -> JSON:
        return document(self.KIND, self)

    def render(self) -> str:
        return ""

    def said(self) -> list[str]:
        return []
