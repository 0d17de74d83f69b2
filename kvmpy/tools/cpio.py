"""Writing "newc" cpio archives, the format the Linux kernel unpacks as an initramfs.

Only writing is needed: the kernel is the reader. Entries are kept in memory and
emitted in a deterministic order (parents before children) so that the same inputs
give the same bytes, which lets callers cache the result by content.
"""

from __future__ import annotations

import gzip
import stat
from dataclasses import dataclass
from pathlib import Path, PurePosixPath

_MAGIC = b"070701"
_TRAILER = "TRAILER!!!"


@dataclass(frozen=True)
class CpioEntry:
    """One archive member; ``name`` is relative (no leading slash)."""

    name: str
    mode: int
    data: bytes = b""
    rdev_major: int = 0
    rdev_minor: int = 0


def _pad4(n: int) -> bytes:
    return b"\0" * (-n % 4)


def _clean_name(name: str) -> str:
    if "\0" in name:
        raise ValueError(f"cpio member name contains NUL: {name!r}")
    path = PurePosixPath("/" + name.lstrip("/"))
    rel = path.relative_to("/").as_posix()
    if rel in ("", ".") or ".." in PurePosixPath(rel).parts:
        raise ValueError(f"bad cpio member name: {name!r}")
    return rel


class CpioArchive:
    """An in-memory newc archive; add members, then :meth:`to_bytes`."""

    def __init__(self) -> None:
        self._entries: dict[str, CpioEntry] = {}

    def _add(self, entry: CpioEntry) -> None:
        parent = PurePosixPath(entry.name).parent.as_posix()
        if parent != "." and parent not in self._entries:
            self.add_dir(parent)
        existing = self._entries.get(entry.name)
        if existing is not None and not (stat.S_ISDIR(existing.mode) and stat.S_ISDIR(entry.mode)):
            raise ValueError(f"duplicate cpio member: {entry.name}")
        self._entries[entry.name] = entry

    def add_dir(self, name: str, perm: int = 0o755) -> None:
        self._add(CpioEntry(_clean_name(name), stat.S_IFDIR | perm))

    def add_file(self, name: str, data: bytes, perm: int = 0o644) -> None:
        self._add(CpioEntry(_clean_name(name), stat.S_IFREG | perm, bytes(data)))

    def add_symlink(self, name: str, target: str) -> None:
        self._add(CpioEntry(_clean_name(name), stat.S_IFLNK | 0o777, target.encode()))

    def add_chardev(self, name: str, major: int, minor: int, perm: int = 0o600) -> None:
        self._add(CpioEntry(_clean_name(name), stat.S_IFCHR | perm, b"", major, minor))

    def names(self) -> list[str]:
        return sorted(self._entries)

    def to_bytes(self) -> bytes:
        out = bytearray()
        # Sorting puts every directory before its contents ("a" < "a/b").
        for ino, name in enumerate(sorted(self._entries), start=1):
            e = self._entries[name]
            nlink = 2 if stat.S_ISDIR(e.mode) else 1
            self._emit(out, ino, e.name, e.mode, nlink, e.data, e.rdev_major, e.rdev_minor)
        self._emit(out, 0, _TRAILER, 0, 1, b"", 0, 0)
        return bytes(out)

    @staticmethod
    def _emit(out: bytearray, ino: int, name: str, mode: int, nlink: int, data: bytes,
              rmaj: int, rmin: int) -> None:
        bname = name.encode() + b"\0"
        # ino mode uid gid nlink mtime filesize devmaj devmin rdevmaj rdevmin namesize check
        fields = (ino, mode, 0, 0, nlink, 0, len(data), 0, 0, rmaj, rmin, len(bname), 0)
        header = _MAGIC + b"".join(b"%08X" % f for f in fields)
        out += header + bname + _pad4(len(header) + len(bname))
        out += data + _pad4(len(data))

    def write_gzip(self, path: Path, level: int = 6) -> None:
        """Write the gzip-compressed archive (mtime 0, so the bytes are reproducible)."""
        path.write_bytes(gzip.compress(self.to_bytes(), compresslevel=level, mtime=0))
