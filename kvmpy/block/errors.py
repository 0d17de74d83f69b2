"""The exceptions the block layer raises; every one names the image file it concerns."""

from __future__ import annotations


class BlockError(Exception):
    """A block-layer failure that a user can act on (bad image, bad option, I/O error)."""

    exit_code = 1


class UnsupportedImageError(BlockError):
    """The image uses a feature kvmpy does not implement (for example encryption)."""


class CorruptImageError(BlockError):
    """The image's metadata is inconsistent; it is not safe to use without repair."""


def describe(path: object, problem: str) -> str:
    """The one-line message format used throughout: "<file>: <problem>"."""
    return f"{path}: {problem}"
