"""The exceptions the block layer raises; every one names the image file it concerns."""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import Any, TypeVar

F = TypeVar("F", bound=Callable[..., Any])


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


def io_errors(fn: F) -> F:
    """Turn OSError from a method of an image object into a BlockError naming its file."""
    @functools.wraps(fn)
    def wrapper(self: Any, *args: Any, **kwargs: Any) -> Any:
        try:
            return fn(self, *args, **kwargs)
        except OSError as e:
            path = getattr(self, "path", None) or getattr(getattr(self, "img", None), "path", "?")
            raise BlockError(f"{path}: I/O error: {e.strerror or e}") from e
    return wrapper  # type: ignore[return-value]
