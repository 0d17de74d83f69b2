"""Creating qcow2 images: option parsing (qemu-img's -o names) and the initial on-disk layout."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from kvmpy.block import qcow2_format as fmt
from kvmpy.block.errors import BlockError
from kvmpy.block.qcow2_refcount import encode_refblock


@dataclass
class Qcow2Options:
    size: int
    cluster_size: int = 65536
    version: int = 3
    lazy_refcounts: bool = False
    refcount_bits: int = 16
    compression_type: int = fmt.COMPRESSION_ZLIB
    backing_file: str | None = None
    backing_format: str | None = None


def parse_bool(path: object, name: str, value: str) -> bool:
    v = value.lower()
    if v in ("on", "yes", "true", "1"):
        return True
    if v in ("off", "no", "false", "0"):
        return False
    raise BlockError(f"{path}: parameter '{name}' expects 'on' or 'off'")


def validate(path: object, o: Qcow2Options) -> None:
    cs = o.cluster_size
    if cs & (cs - 1) or not (1 << fmt.MIN_CLUSTER_BITS) <= cs <= (1 << fmt.MAX_CLUSTER_BITS):
        raise BlockError(f"{path}: Cluster size must be a power of two between 512 and 2048k")
    if o.refcount_bits not in (1, 2, 4, 8, 16, 32, 64):
        raise BlockError(f"{path}: Refcount width must be a power of two and may not exceed 64 bits")
    if o.version == 2:
        if o.refcount_bits != 16:
            raise BlockError(f"{path}: Different refcount widths than 16 bits require "
                             "compatibility level 1.1 or above (use compat=1.1 or greater)")
        if o.lazy_refcounts:
            raise BlockError(f"{path}: Lazy refcounts only supported with compatibility level 1.1 "
                             "and above (use compat=1.1 or greater)")
        if o.compression_type != fmt.COMPRESSION_ZLIB:
            raise BlockError(f"{path}: Compression type selection is only supported with "
                             "compatibility level 1.1 and above (use compat=1.1 or greater)")
    if o.size < 0 or o.size > fmt.MAX_VIRTUAL_SIZE:
        raise BlockError(f"{path}: Invalid image size specified")
    if o.size % 512:
        raise BlockError(f"{path}: The image size must be specified in multiples of 512 bytes")
    if o.backing_format and not o.backing_file:
        raise BlockError(f"{path}: Backing format cannot be used without backing file")


def create_qcow2(path: Path, o: Qcow2Options) -> None:
    """Write a fresh, empty qcow2 image laid out as QEMU does: header, refcount table, refcount
    block, L1 table."""
    from kvmpy.block.qcow2 import Qcow2Backend

    validate(path, o)
    cbits = o.cluster_size.bit_length() - 1
    cs = o.cluster_size
    h = fmt.Header(version=o.version, cluster_bits=cbits, size=0,
                   refcount_table_offset=cs, refcount_table_clusters=1,
                   refcount_order=o.refcount_bits.bit_length() - 1,
                   compression_type=o.compression_type,
                   backing_file=o.backing_file, backing_format=o.backing_format)
    if o.lazy_refcounts:
        h.compatible_features |= fmt.COMPAT_LAZY_REFCOUNTS
    if o.compression_type != fmt.COMPRESSION_ZLIB:
        h.incompatible_features |= fmt.INCOMPAT_COMPRESSION
    if o.version == 2:
        h.header_length = fmt.V2_HEADER_LEN
    epb = cs * 8 // o.refcount_bits
    blk = np.zeros(epb, dtype=np.uint64)
    blk[:3] = 1  # header, refcount table, this block (epb >= 64 for every valid geometry)
    try:
        with open(path, "wb") as f:
            f.write(h.pack().ljust(cs, b"\0"))
            f.write((2 * cs).to_bytes(8, "big").ljust(cs, b"\0"))
            f.write(encode_refblock(blk, o.refcount_bits))
    except OSError as e:
        raise BlockError(f"{path}: could not create image: {e.strerror}") from e
    with Qcow2Backend(path, readonly=False) as img:  # the L1 table is allocated like any cluster
        img.resize(o.size)
