"""Reading boot files (kernels, initrds, multiboot modules) from disk, bounded, with loader errors."""

from __future__ import annotations

from pathlib import Path

from kvmpy.loader.errors import LoaderError

MAX_BOOT_FILE = 1 << 30  # no boot file is this big; a bigger one is a mistake or hostile


def read_boot_file(path: Path, what: str) -> bytes:
    """The whole of ``path``; ``what`` ("kernel", "initrd", ...) names it in the error."""
    try:
        size = path.stat().st_size
        if size > MAX_BOOT_FILE:
            raise LoaderError(f"{path}: {size} bytes is too large for a {what}")
        return path.read_bytes()
    except OSError as exc:
        raise LoaderError(f"cannot read {what} {path}: {exc.strerror or exc}") from None
    except ValueError as exc:  # a NUL byte in the path
        raise LoaderError(f"cannot read {what} {str(path)[:80]!r}: {exc}") from None
