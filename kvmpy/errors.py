"""Errors shared by every front end: ConfigError is a user mistake, shown as one line with exit status 2.

It lives in this leaf module (imported by config, the monitor's endpoints and
migration alike) so that no two of those modules need to import each other.
"""

from __future__ import annotations


class ConfigError(ValueError):
    """A user mistake in the machine description."""
