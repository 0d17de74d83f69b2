"""The exceptions of live migration and snapshots: one base class, and what the stream got wrong."""

from __future__ import annotations


class MigrationError(RuntimeError):
    """A migration could not be carried out (the message says why, for a user)."""


class StreamError(MigrationError):
    """The incoming stream is malformed, truncated, corrupted or from an incompatible version."""


class ConfigMismatchError(StreamError):
    """The stream was saved from a machine configured differently from this one."""


class CancelledError(MigrationError):
    """migrate_cancel was issued."""
