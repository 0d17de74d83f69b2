"""Finding and checking the PC BIOS image: SeaBIOS from Debian's ``seabios`` package, ``-bios FILE``, ``-L DIR``.

As QEMU: the default image is ``bios-256k.bin``; a name without a slash is
looked up in the ``-L`` directories first, then in the system firmware
directories; an image must be a non-empty multiple of 64 KiB, at most 16 MiB.
The board maps it read-only just below 4 GiB and its last 128 KiB at
0xE0000-0xFFFFF.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

DEFAULT_BIOS = "bios-256k.bin"
SYSTEM_DIRS = (Path("/usr/share/qemu"), Path("/usr/share/seabios"))
BIOS_ALIGN = 64 << 10
BIOS_MAX = 16 << 20
ISA_BIOS_SIZE = 128 << 10
FOUR_GIB = 1 << 32


class BiosError(ValueError):
    """The BIOS image cannot be found or is not usable."""


@dataclass(frozen=True)
class BiosImage:
    path: Path
    data: bytes

    @property
    def base(self) -> int:
        """Where the whole image sits: it ends at 4 GiB."""
        return FOUR_GIB - len(self.data)

    @property
    def isa(self) -> bytes:
        """The last 128 KiB (or all of a smaller image), seen at 1 MiB - len below 1 MiB."""
        return self.data[-ISA_BIOS_SIZE:]


def find_bios(name: str | None, data_dirs: tuple[Path, ...] = ()) -> Path:
    name = DEFAULT_BIOS if name is None else name
    if "\0" in name:
        raise BiosError("BIOS image name contains a NUL byte")
    if "/" in name or not name:
        return Path(name)
    for d in (*data_dirs, *SYSTEM_DIRS):
        p = d / name
        try:
            if p.is_file():
                return p
        except (OSError, ValueError):  # a name too long, a directory we may not search, a NUL in -L
            continue
    where = ", ".join(str(d) for d in (*data_dirs, *SYSTEM_DIRS))[:400]
    raise BiosError(f"could not find BIOS image {name[:100]!r} in {where} (install Debian's seabios package, "
                    "or give -bios FILE / -L DIR)")


def check_size(path: Path) -> int:
    """The image's size if it is a usable one (BiosError otherwise)."""
    try:
        size = path.stat().st_size
    except (OSError, ValueError) as exc:
        raise BiosError(f"cannot read BIOS image {str(path)[:200]!r}: {getattr(exc, 'strerror', None) or exc}") from None
    if size <= 0 or size % BIOS_ALIGN or size > BIOS_MAX:
        raise BiosError(f"BIOS image {str(path)[:200]!r} must be a multiple of 64 KiB, at most 16 MiB "
                        f"({size} bytes)")
    return size


def load_bios(name: str | None, data_dirs: tuple[Path, ...] = ()) -> BiosImage:
    path = find_bios(name, data_dirs)
    size = check_size(path)
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise BiosError(f"cannot read BIOS image {str(path)!r}: {exc.strerror}") from None
    if len(data) != size:
        raise BiosError(f"BIOS image {str(path)!r} changed while it was read")
    return BiosImage(path, data)
