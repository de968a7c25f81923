"""Arkēs: an immutable, atomic Linux distribution declared in one Systemfile, and its `os` tool."""

__version__ = "0.1.0"
