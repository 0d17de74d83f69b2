"""Opening and creating images by format: probing, backing-chain resolution and loop detection."""

from __future__ import annotations

import os
from pathlib import Path

from kvmpy.block.backend import BlockBackend, HostFileOptions
from kvmpy.block.cache import CacheMode
from kvmpy.block.errors import BlockError, CorruptImageError
from kvmpy.block.locking import LockRequest
from kvmpy.block.qcow2_format import MAGIC

FORMATS = ("raw", "qcow2")
MAX_CHAIN_DEPTH = 64


def probe_format(path: Path) -> str:
    """Guess an image's format from its first bytes, as qemu-img does (qcow2 magic, else raw)."""
    try:
        with open(path, "rb") as f:
            head = f.read(4)
    except OSError as e:
        raise BlockError(f"Could not open '{path}': {e.strerror}") from e
    return "qcow2" if head == MAGIC else "raw"


def resolve_backing(image: Path, backing: str) -> Path:
    """A backing file name is relative to the directory of the image that names it."""
    p = Path(backing)
    return p if p.is_absolute() else image.parent / p


def open_image(path: Path | str, fmt: str | None = None, *, readonly: bool = True,
               open_backing: bool = True, for_check: bool = False,
               cache: CacheMode | None = None, locking: bool = False, inactive: bool = False,
               _chain: tuple[str, ...] = ()) -> BlockBackend:
    """Open an image and (by default) its whole backing chain, read-only below the top.

    ``cache`` (a QEMU cache= mode) sets O_DIRECT and whether flushes reach the disk, for
    the whole chain; ``locking`` takes QEMU's image locks on every file of the chain (the
    top as a disk user, backing files shared-read), so kvmpy and QEMU refuse an image the
    other is writing. The image tools open without locks, as before. ``inactive`` opens the
    chain as QEMU's ``-incoming`` destination does: no lock bytes and no writes until the
    migration hands the image over (``BlockBackend.activate()``).
    """
    path = Path(path)
    if not path.exists():
        raise BlockError(f"Could not open '{path}': No such file or directory")
    fmt = fmt or probe_format(path)
    if fmt not in FORMATS:
        raise BlockError(f"Unknown file format '{fmt}'")
    real = os.path.realpath(path)
    if real in _chain:
        raise CorruptImageError(f"{_chain[0]}: backing chain loop detected at '{path}'")
    if len(_chain) >= MAX_CHAIN_DEPTH:
        raise CorruptImageError(f"{_chain[0]}: backing chain is deeper than {MAX_CHAIN_DEPTH}")
    chain = _chain + (real,)
    lock = LockRequest.for_image(fmt, readonly, backing=bool(_chain)) if locking else None
    host = HostFileOptions(direct=bool(cache and cache.direct), no_flush=bool(cache and cache.no_flush),
                           lock=lock, inactive=inactive)
    if fmt == "raw":
        from kvmpy.block.raw import RawBackend
        return RawBackend(path, readonly, host)
    from kvmpy.block.qcow2 import Qcow2Backend

    def backing_opener(name: str, bfmt: str | None) -> BlockBackend:
        bpath = resolve_backing(path, name)
        try:
            return open_image(bpath, bfmt, readonly=True, open_backing=True, cache=cache,
                              locking=locking, inactive=inactive, _chain=chain)
        except CorruptImageError:
            raise
        except BlockError as e:
            raise BlockError(f"Could not open backing file: {e}") from None
    return Qcow2Backend(path, readonly, backing_opener=backing_opener if open_backing else None,
                        for_check=for_check, host=host)


def chain_of(img: BlockBackend) -> list[BlockBackend]:
    out = [img]
    while out[-1].backing is not None:
        out.append(out[-1].backing)  # type: ignore[arg-type]
    return out
