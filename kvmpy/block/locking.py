"""Image locking compatible with QEMU's file-posix driver: OFD byte locks that say who uses an image.

QEMU marks each permission a user of an image holds, and each permission it
refuses to share with others, by taking a shared (read) open-file-description
lock on one byte of the image file:

- byte ``100 + bit`` while the permission is held,
- byte ``200 + bit`` while the permission is *not* shared with other users,

with the permission bits consistent read (0), write (1), write unchanged (2)
and resize (3) (QEMU's BLK_PERM_*; byte 4 belonged to a permission QEMU 6.2
removed and is left alone). Before using an image a process checks, with
F_OFD_GETLK, that nobody else holds a conflicting byte: for each permission
it wants, nobody refuses to share it; for each permission it refuses to
share, nobody holds it. Locks of one open file description never conflict
with themselves, so a process re-checking its own image is fine.

These are the sets QEMU 7.2 was measured to take (``/proc/locks``) and that
kvmpy takes the same way, so each refuses an image the other uses:

=====================  =====================  ==============================
user                   permissions held       not shared
=====================  =====================  ==============================
raw disk, read-write   read, write            write
raw disk, read-only    read                   write
qcow2 disk, read-write read, write, resize    write, resize
qcow2 disk, read-only  read                   write, resize
backing file           read                   write, resize
=====================  =====================  ==============================
"""

from __future__ import annotations

import errno
import fcntl
import os
import struct
from dataclasses import dataclass
from enum import IntFlag
from pathlib import Path

from kvmpy.block.errors import BlockError

PERM_BASE = 100
SHARED_BASE = 200
# struct flock on Linux x86-64/arm64: l_type, l_whence (short), pad, l_start, l_len (off_t), l_pid, pad
_FLOCK = struct.Struct("hh4xqqi4x")


class Perm(IntFlag):
    """QEMU's block node permissions (BLK_PERM_*), as numbered in the lock bytes."""

    CONSISTENT_READ = 0x01
    WRITE = 0x02
    WRITE_UNCHANGED = 0x04
    RESIZE = 0x08


ALL_PERMS = Perm.CONSISTENT_READ | Perm.WRITE | Perm.WRITE_UNCHANGED | Perm.RESIZE
PERM_NAMES = {Perm.CONSISTENT_READ: "consistent read", Perm.WRITE: "write",
              Perm.WRITE_UNCHANGED: "write unchanged", Perm.RESIZE: "resize"}


class ImageLockError(BlockError):
    """Another process holds the image in a way that conflicts with what this one wants."""


@dataclass(frozen=True)
class LockRequest:
    """What a user of an image holds (``perm``) and refuses to share (``unshared``)."""

    perm: Perm
    unshared: Perm

    @classmethod
    def for_image(cls, fmt: str, readonly: bool, *, backing: bool = False) -> "LockRequest":
        """The request QEMU 7.2 makes for a disk image (top of a chain, or a backing file)."""
        if backing:
            return cls(Perm.CONSISTENT_READ, Perm.WRITE | Perm.RESIZE)
        unshared = Perm.WRITE if fmt == "raw" else Perm.WRITE | Perm.RESIZE
        if readonly:
            return cls(Perm.CONSISTENT_READ, unshared)
        perm = Perm.CONSISTENT_READ | Perm.WRITE
        return cls(perm if fmt == "raw" else perm | Perm.RESIZE, unshared)


def _bits(perms: Perm) -> list[Perm]:
    return [p for p in Perm if p & perms]


def _setlk(fd: int, byte: int, lock_type: int) -> None:
    fcntl.fcntl(fd, fcntl.F_OFD_SETLK, _FLOCK.pack(lock_type, os.SEEK_SET, byte, 1, 0))


def held_by_other(fd: int, byte: int) -> bool:
    """True when another open file description holds a lock on ``byte`` of the file."""
    out = fcntl.fcntl(fd, fcntl.F_OFD_GETLK, _FLOCK.pack(fcntl.F_WRLCK, os.SEEK_SET, byte, 1, 0))
    return _FLOCK.unpack(out)[0] != fcntl.F_UNLCK


def lock_image(fd: int, path: Path | str, request: LockRequest) -> None:
    """Take ``request``'s lock bytes on ``fd`` and check nobody else conflicts (QEMU's order:
    apply, then check, then drop everything again on a conflict).

    Raises ImageLockError with QEMU's wording, or BlockError when the file system refuses
    OFD locks altogether.
    """
    try:
        apply_lock_bytes(fd, request)
        problem = conflict(fd, request)
    except OSError as e:
        unlock_image(fd)
        if e.errno in (errno.ENOLCK, errno.EOPNOTSUPP, errno.ENOSYS, errno.EINVAL):
            raise BlockError(f"{path}: the file system does not support OFD locks "
                             f"(use locking=off): {e.strerror}") from e
        raise BlockError(f"{path}: could not lock the image: {e.strerror}") from e
    if problem is not None:
        unlock_image(fd)
        raise ImageLockError(f"{problem}\nIs another process using the image [{path}]?")


def apply_lock_bytes(fd: int, request: LockRequest) -> None:
    for p in Perm:
        _setlk(fd, PERM_BASE + p.bit_length() - 1, fcntl.F_RDLCK if p & request.perm else fcntl.F_UNLCK)
        _setlk(fd, SHARED_BASE + p.bit_length() - 1,
               fcntl.F_RDLCK if p & request.unshared else fcntl.F_UNLCK)


def conflict(fd: int, request: LockRequest) -> str | None:
    """QEMU's message for the first conflicting byte, or None when the image is free for us."""
    for p in _bits(request.perm):
        if held_by_other(fd, SHARED_BASE + p.bit_length() - 1):
            return f'Failed to get "{PERM_NAMES[p]}" lock'
    for p in _bits(request.unshared):
        if held_by_other(fd, PERM_BASE + p.bit_length() - 1):
            return f'Failed to get shared "{PERM_NAMES[p]}" lock'
    return None


def unlock_image(fd: int) -> None:
    """Drop every lock byte this open file description holds (closing the fd does it too)."""
    try:
        fcntl.fcntl(fd, fcntl.F_OFD_SETLK, _FLOCK.pack(fcntl.F_UNLCK, os.SEEK_SET, 0, 0, 0))
    except OSError:
        pass


def held_bytes(fd: int) -> list[int]:
    """The lock bytes (100.., 200..) anyone else holds on the file: for tests and diagnostics."""
    return [b for base in (PERM_BASE, SHARED_BASE) for b in range(base, base + len(Perm))
            if held_by_other(fd, b)]
