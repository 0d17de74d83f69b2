"""The qcow2 on-disk format: header, header extensions and snapshot-table entries (parse, validate, pack).

Facts from QEMU's docs/interop/qcow2.txt. Everything here is pure: bytes in, dataclasses out,
so hostile headers are rejected before any table is read.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass, field

from kvmpy.block.errors import CorruptImageError, UnsupportedImageError

MAGIC = b"QFI\xfb"
V2_HEADER_LEN = 72
V3_HEADER_LEN = 104
V3_HEADER_LEN_WITH_COMPRESSION = 112
MIN_CLUSTER_BITS = 9
MAX_CLUSTER_BITS = 21
MAX_BACKING_NAME = 1023
MAX_L1_BYTES = 32 << 20          # QEMU's QCOW_MAX_L1_SIZE
MAX_REFTABLE_BYTES = 8 << 20     # QEMU's QCOW_MAX_REFTABLE_SIZE
MAX_SNAPSHOTS = 65536
MAX_SNAPSHOT_TABLE_BYTES = 64 << 20
MAX_SNAPSHOT_EXTRA = 1024
MAX_VIRTUAL_SIZE = 1 << 61       # what 55-bit offsets + 2 MiB clusters can address, and then some

INCOMPAT_DIRTY = 1 << 0
INCOMPAT_CORRUPT = 1 << 1
INCOMPAT_DATA_FILE = 1 << 2
INCOMPAT_COMPRESSION = 1 << 3
INCOMPAT_EXTL2 = 1 << 4
INCOMPAT_KNOWN = INCOMPAT_DIRTY | INCOMPAT_CORRUPT | INCOMPAT_COMPRESSION
COMPAT_LAZY_REFCOUNTS = 1 << 0
AUTOCLEAR_KNOWN = 1 << 0  # bitmaps: kept consistent (see qcow2_bitmaps); others are cleared on write

COMPRESSION_ZLIB = 0
COMPRESSION_ZSTD = 1
COMPRESSION_NAMES = {COMPRESSION_ZLIB: "zlib", COMPRESSION_ZSTD: "zstd"}

EXT_END = 0x00000000
EXT_BACKING_FORMAT = 0xE2792ACA
EXT_FEATURE_TABLE = 0x6803F857
EXT_BITMAPS = 0x23852875
EXT_CRYPTO = 0x0537BE77
EXT_DATA_FILE = 0x44415441

OFFSET_MASK = 0x00FFFFFFFFFFFE00  # bits 9-55 of L1/L2/refcount-table entries
L1E_OFFSET_MASK = OFFSET_MASK
L2E_OFFSET_MASK = OFFSET_MASK
QCOW_OFLAG_COPIED = 1 << 63
QCOW_OFLAG_COMPRESSED = 1 << 62
QCOW_OFLAG_ZERO = 1 << 0
REFT_OFFSET_MASK = 0xFFFFFFFFFFFFFE00

_V2 = struct.Struct(">4sIQIIQIIQQIIQ")
_V3_EXTRA = struct.Struct(">QQQII")
_EXT_HDR = struct.Struct(">II")
_SNAP = struct.Struct(">QIHHIIQII")

# The feature-name table QEMU writes, so `qemu-img` can name bits it reports.
FEATURE_NAMES = [
    (0, 0, "dirty bit"), (0, 1, "corrupt bit"), (0, 2, "external data file"),
    (0, 3, "compression type"), (0, 4, "extended L2 entries"),
    (1, 0, "lazy refcounts"), (2, 0, "bitmaps"), (2, 1, "raw external data"),
]


@dataclass
class HeaderExtension:
    type: int
    data: bytes


@dataclass
class Header:
    version: int = 3
    backing_file_offset: int = 0
    backing_file_size: int = 0
    cluster_bits: int = 16
    size: int = 0
    crypt_method: int = 0
    l1_size: int = 0
    l1_table_offset: int = 0
    refcount_table_offset: int = 0
    refcount_table_clusters: int = 0
    nb_snapshots: int = 0
    snapshots_offset: int = 0
    incompatible_features: int = 0
    compatible_features: int = 0
    autoclear_features: int = 0
    refcount_order: int = 4
    header_length: int = V3_HEADER_LEN_WITH_COMPRESSION
    compression_type: int = COMPRESSION_ZLIB
    backing_file: str | None = None
    backing_format: str | None = None
    extensions: list[HeaderExtension] = field(default_factory=list)  # unknown ones, kept verbatim

    @property
    def cluster_size(self) -> int:
        return 1 << self.cluster_bits

    @property
    def refcount_bits(self) -> int:
        return 1 << self.refcount_order

    @property
    def l2_entries(self) -> int:
        return self.cluster_size // 8

    def pack(self) -> bytes:
        """The header cluster's meaningful bytes: header, extensions, backing file name."""
        cs = self.cluster_size
        if self.version == 2:
            hlen = V2_HEADER_LEN
        else:
            hlen = max(self.header_length, V3_HEADER_LEN_WITH_COMPRESSION)
        exts = bytearray()

        def add(t: int, d: bytes) -> None:
            exts.extend(_EXT_HDR.pack(t, len(d)))
            exts.extend(d)
            exts.extend(bytes(-len(d) % 8))

        if self.backing_file and self.backing_format:
            add(EXT_BACKING_FORMAT, self.backing_format.encode())
        for e in self.extensions:
            add(e.type, e.data)
        if self.version >= 3:
            add(EXT_FEATURE_TABLE, b"".join(struct.pack(">BB46s", t, b, n.encode())
                                            for t, b, n in FEATURE_NAMES))
        add(EXT_END, b"")
        name = (self.backing_file or "").encode()
        bfo = hlen + len(exts) if name else 0
        if bfo + len(name) > cs:
            raise UnsupportedImageError("header, extensions and backing file name do not fit "
                                        "in the first cluster")
        self.backing_file_offset, self.backing_file_size = bfo, len(name)
        self.header_length = hlen
        out = bytearray(_V2.pack(MAGIC, self.version, bfo, len(name), self.cluster_bits, self.size,
                                 self.crypt_method, self.l1_size, self.l1_table_offset,
                                 self.refcount_table_offset, self.refcount_table_clusters,
                                 self.nb_snapshots, self.snapshots_offset))
        if self.version >= 3:
            out += _V3_EXTRA.pack(self.incompatible_features, self.compatible_features,
                                  self.autoclear_features, self.refcount_order, hlen)
            out += bytes([self.compression_type]) + bytes(hlen - V3_HEADER_LEN - 1)
        out += exts + name
        return bytes(out)


def _need(cond: bool, problem: str) -> None:
    if not cond:
        raise CorruptImageError(problem)


def parse_header(buf: bytes, file_size: int) -> Header:
    """Parse and sanity-check a qcow2 header from the image's first bytes (at least 512 of them)."""
    if len(buf) < V2_HEADER_LEN or buf[:4] != MAGIC:
        raise CorruptImageError("not a qcow2 image (bad magic)")
    (_, version, bfo, bfs, cbits, size, crypt, l1_size, l1_off, rt_off, rt_clusters, nb_snap,
     snap_off) = _V2.unpack_from(buf)
    if version not in (2, 3):
        raise UnsupportedImageError(f"unsupported qcow2 version {version}")
    if not MIN_CLUSTER_BITS <= cbits <= MAX_CLUSTER_BITS:
        raise CorruptImageError(f"unsupported cluster size: 2^{cbits}")
    h = Header(version=version, cluster_bits=cbits, size=size, crypt_method=crypt,
               l1_size=l1_size, l1_table_offset=l1_off, refcount_table_offset=rt_off,
               refcount_table_clusters=rt_clusters, nb_snapshots=nb_snap, snapshots_offset=snap_off,
               backing_file_offset=bfo, backing_file_size=bfs)
    cs = h.cluster_size
    if version == 2:
        h.header_length = V2_HEADER_LEN
    else:
        _need(len(buf) >= V3_HEADER_LEN, "header is truncated")
        (h.incompatible_features, h.compatible_features, h.autoclear_features, h.refcount_order,
         h.header_length) = _V3_EXTRA.unpack_from(buf, V2_HEADER_LEN)
        _need(h.header_length >= V3_HEADER_LEN, f"qcow2 header too short ({h.header_length})")
        _need(h.header_length <= cs, "qcow2 header exceeds cluster size")
        _need(h.header_length <= len(buf), "header is truncated")
        if h.header_length > V3_HEADER_LEN:
            h.compression_type = buf[V3_HEADER_LEN]
    unknown = h.incompatible_features & ~(INCOMPAT_KNOWN)
    if unknown & INCOMPAT_DATA_FILE:
        raise UnsupportedImageError("external data files are not supported")
    if unknown & INCOMPAT_EXTL2:
        raise UnsupportedImageError("extended L2 entries (subclusters) are not supported")
    if unknown:
        raise UnsupportedImageError(f"unsupported incompatible features 0x{unknown:x}")
    if h.compression_type not in COMPRESSION_NAMES:
        raise UnsupportedImageError(f"unknown compression type {h.compression_type}")
    _need(bool(h.incompatible_features & INCOMPAT_COMPRESSION) == (h.compression_type != 0),
          "compression type does not match the compression-type feature bit")
    if crypt:
        raise UnsupportedImageError("encrypted images are not supported")
    if version == 2:
        _need(h.refcount_order == 4, "bad refcount order")
    else:
        _need(h.refcount_order <= 6, f"refcount width 2^{h.refcount_order} bits is invalid")
    _need(size <= MAX_VIRTUAL_SIZE, f"image size {size} is too large")
    _need(l1_size * 8 <= MAX_L1_BYTES, "active L1 table too large")
    entries_per_l2 = cs // 8
    need_l1 = -(-size // (cs * entries_per_l2))
    _need(l1_size >= need_l1, "L1 table is too small for the image size")
    for name, off in (("L1 table", l1_off), ("refcount table", rt_off),
                      ("snapshot table", snap_off)):
        _need(off % cs == 0, f"{name} offset {off:#x} is not cluster aligned")
        _need(off < (1 << 56), f"{name} offset {off:#x} is invalid")
    _need(l1_size == 0 or l1_off > 0, "L1 table overlaps the image header")
    _need(rt_off > 0, "refcount table overlaps the image header")
    _need(0 < rt_clusters and rt_clusters * cs <= MAX_REFTABLE_BYTES,
          "reference count table too large" if rt_clusters else "refcount table is empty")
    _need(nb_snap <= MAX_SNAPSHOTS, "too many snapshots")
    _need(nb_snap == 0 or snap_off > 0, "snapshot table overlaps the image header")
    if bfo:
        _need(bfs <= MAX_BACKING_NAME, "backing file name too long")
        _need(bfo + bfs <= cs and bfo + bfs <= len(buf), "backing file name outside the header cluster")
        try:
            h.backing_file = buf[bfo:bfo + bfs].decode()
        except UnicodeDecodeError:
            raise CorruptImageError("backing file name is not valid UTF-8") from None
        _need("\0" not in h.backing_file, "backing file name contains NUL")
        if not h.backing_file:
            h.backing_file = None
    _parse_extensions(h, buf)
    return h


def _parse_extensions(h: Header, buf: bytes) -> None:
    pos = h.header_length
    end = min(len(buf), h.cluster_size)
    if h.backing_file_offset and h.backing_file_offset > pos:
        end = min(end, h.backing_file_offset)
    while pos + 8 <= end:
        t, ln = _EXT_HDR.unpack_from(buf, pos)
        pos += 8
        if t == EXT_END:
            return
        _need(ln <= end - pos, "header extension runs past the header cluster")
        data = bytes(buf[pos:pos + ln])
        pos += (ln + 7) & ~7
        if t == EXT_BACKING_FORMAT:
            try:
                h.backing_format = data.decode() or None
            except UnicodeDecodeError:
                raise CorruptImageError("backing format name is not valid UTF-8") from None
        elif t == EXT_FEATURE_TABLE:
            continue  # regenerated on write
        elif t == EXT_CRYPTO:
            raise UnsupportedImageError("encrypted images are not supported")
        elif t == EXT_DATA_FILE:
            raise UnsupportedImageError("external data files are not supported")
        else:
            h.extensions.append(HeaderExtension(t, data))


@dataclass
class SnapshotEntry:
    l1_table_offset: int
    l1_size: int
    id: str
    name: str
    date_sec: int = 0
    date_nsec: int = 0
    vm_clock_nsec: int = 0
    vm_state_size: int = 0
    disk_size: int | None = None
    icount: int | None = None
    extra: bytes = b""  # extra data beyond the fields kvmpy understands, kept verbatim

    def pack(self, version: int) -> bytes:
        extra = bytearray()
        extra += struct.pack(">QQ", self.vm_state_size,
                             self.disk_size if self.disk_size is not None else 0)
        if self.icount is not None or self.extra:
            extra += struct.pack(">Q", self.icount if self.icount is not None else 2**64 - 1)
        extra += self.extra
        ids, names = self.id.encode(), self.name.encode()
        out = bytearray(_SNAP.pack(self.l1_table_offset, self.l1_size, len(ids), len(names),
                                   self.date_sec, self.date_nsec, self.vm_clock_nsec,
                                   min(self.vm_state_size, 0xFFFFFFFF), len(extra)))
        out += extra + ids + names
        out += bytes(-len(out) % 8)
        return bytes(out)


def parse_snapshot_table(buf: bytes, count: int, cluster_size: int) -> list[SnapshotEntry]:
    """Parse ``count`` snapshot entries from the table's bytes."""
    snaps: list[SnapshotEntry] = []
    pos = 0
    for i in range(count):
        _need(pos + _SNAP.size <= len(buf), f"snapshot table entry {i} is truncated")
        (l1_off, l1_size, id_len, name_len, dsec, dnsec, clock, vmsz, extra_len) = _SNAP.unpack_from(
            buf, pos)
        pos += _SNAP.size
        _need(extra_len <= MAX_SNAPSHOT_EXTRA, f"snapshot {i}: too much extra metadata")
        _need(pos + extra_len + id_len + name_len <= len(buf), f"snapshot {i} is truncated")
        extra = buf[pos:pos + extra_len]
        pos += extra_len
        try:
            sid = buf[pos:pos + id_len].decode()
            pos += id_len
            name = buf[pos:pos + name_len].decode()
            pos += name_len
        except UnicodeDecodeError:
            raise CorruptImageError(f"snapshot {i}: name is not valid UTF-8") from None
        pos = (pos + 7) & ~7
        _need(l1_off % cluster_size == 0, f"snapshot {i}: L1 table offset is not aligned")
        _need(l1_off < (1 << 56), f"snapshot {i}: L1 table offset {l1_off:#x} is invalid")
        _need(l1_size * 8 <= MAX_L1_BYTES, f"snapshot {i}: L1 table too large")
        _need(l1_off > 0 or l1_size == 0, f"snapshot {i}: L1 table overlaps the header")
        s = SnapshotEntry(l1_off, l1_size, sid, name, dsec, dnsec, clock, vmsz)
        if len(extra) >= 8:
            s.vm_state_size = struct.unpack_from(">Q", extra, 0)[0]
        if len(extra) >= 16:
            s.disk_size = struct.unpack_from(">Q", extra, 8)[0]
        if len(extra) >= 24:
            s.icount = struct.unpack_from(">Q", extra, 16)[0]
            s.extra = bytes(extra[24:])
        snaps.append(s)
    return snaps


def snapshot_table_bytes(snaps: list[SnapshotEntry], version: int) -> bytes:
    return b"".join(s.pack(version) for s in snaps)
