"""Errors shared by every front end: ConfigError is a user mistake, shown as one line with exit status 2.

``shown`` quotes a user's value inside such a line (escaped, shortened). Both live in this leaf module (imported by config, the monitor's endpoints and
migration alike) so that no two of those modules need to import each other.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any


class ConfigError(ValueError):
    """A user mistake in the machine description."""


def shown(value: Any, limit: int = 60) -> str:
    """``value`` as it may appear in a one-line message: escaped (no raw newlines) and shortened.

    Integers print as digits (a huge one by its bit length: ``str()`` refuses over 4300
    digits); strings and paths as a shortened repr; containers only by their type name,
    because ``str()`` on an alias bomb never returns.
    """
    if isinstance(value, bool):
        return str(value)
    if isinstance(value, int):
        return str(value) if value.bit_length() <= 192 else f"<a {value.bit_length()}-bit integer>"
    if not isinstance(value, (str, Path)):
        return f"<{type(value).__name__}>"
    text = str(value)
    if len(text) > limit:
        return repr(text[:limit]) + f"... ({len(text)} characters)"
    return repr(text)
