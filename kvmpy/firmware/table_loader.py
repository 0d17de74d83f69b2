"""The ACPI table-loader: kvmpy's ACPI tables as fw_cfg files plus the script that places them.

SeaBIOS (1.16) builds no ACPI tables of its own; it runs QEMU's "linker/loader"
script from the fw_cfg file ``etc/table-loader``. Each command is 128 bytes
(facts from QEMU's hw/acpi/bios-linker-loader.c):

* ALLOCATE (1): file name[56], u32 alignment, u8 zone (1 high memory, 2 F-segment);
* ADD_POINTER (2): destination file[56], source file[56], u32 offset, u8 size -
  the little-endian value at ``offset`` in the destination gets the source
  file's address added;
* ADD_CHECKSUM (3): file[56], u32 offset, u32 start, u32 length - the byte at
  ``offset`` is adjusted so that ``[start, start+length)`` sums to zero.

The tables are built by kvmpy.loader.acpi at base 0, so every pointer in them
is an offset into ``etc/acpi/tables``; the script turns offsets into addresses
once SeaBIOS has placed the files. The pointers and checksummed ranges are
found by walking the tables from the RSDP (RSDT/XSDT entries, the FADT's FACS
and DSDT), so a table added to the RSDT is covered without a change here.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass

from kvmpy.loader.acpi import AcpiTables

TABLES_FILE = "etc/acpi/tables"
RSDP_FILE = "etc/acpi/rsdp"
LOADER_FILE = "etc/table-loader"

CMD_ALLOCATE, CMD_ADD_POINTER, CMD_ADD_CHECKSUM = 1, 2, 3
ZONE_HIGH, ZONE_FSEG = 1, 2
COMMAND_SIZE = 128
NAME_SIZE = 56
TABLES_ALIGN = 64  # the FACS needs 64-byte alignment
RSDP_ALIGN = 16


def _name(file: str) -> bytes:
    return struct.pack(f"{NAME_SIZE}s", file.encode())


def allocate(file: str, align: int, zone: int) -> bytes:
    return struct.pack("<I", CMD_ALLOCATE) + (_name(file) + struct.pack("<IB", align, zone)).ljust(124, b"\0")


def add_pointer(dest: str, src: str, offset: int, size: int) -> bytes:
    return struct.pack("<I", CMD_ADD_POINTER) + (_name(dest) + _name(src) + struct.pack("<IB", offset, size)).ljust(124, b"\0")


def add_checksum(file: str, offset: int, start: int, length: int) -> bytes:
    return struct.pack("<I", CMD_ADD_CHECKSUM) + (_name(file) + struct.pack("<III", offset, start, length)).ljust(124, b"\0")


@dataclass(frozen=True)
class LoaderFiles:
    tables: bytes  # etc/acpi/tables
    rsdp: bytes  # etc/acpi/rsdp
    loader: bytes  # etc/table-loader


def _length(blob: bytes, off: int) -> int:
    if off < 0 or off + 36 > len(blob):
        raise ValueError(f"ACPI table at offset {off:#x} lies outside the table blob")
    length = struct.unpack_from("<I", blob, off + 4)[0]
    if length < 36 or off + length > len(blob):
        raise ValueError(f"ACPI table at offset {off:#x} has a bad length {length}")
    return length


def build(tables: AcpiTables) -> LoaderFiles:
    """The three fw_cfg files for ``tables`` (which must have been built at base 0)."""
    if tables.base != 0:
        raise ValueError("the table-loader needs tables built at base 0 (pointers are offsets)")
    blob, rsdp = tables.blob, tables.rsdp
    pointers: list[bytes] = []
    checksums: list[bytes] = []
    rsdt, xsdt = struct.unpack_from("<I", rsdp, 16)[0], struct.unpack_from("<Q", rsdp, 24)[0]
    pointers.append(add_pointer(RSDP_FILE, TABLES_FILE, 16, 4))
    pointers.append(add_pointer(RSDP_FILE, TABLES_FILE, 24, 8))
    seen: set[int] = set()

    def table(off: int) -> None:
        if off in seen:
            return
        seen.add(off)
        length = _length(blob, off)
        checksums.append(add_checksum(TABLES_FILE, off + 9, off, length))
        if blob[off:off + 4] == b"FACP":
            for field, size in ((36, 4), (40, 4), (132, 8), (140, 8)):  # FACS, DSDT, X_FACS, X_DSDT
                if field + size <= length:  # every field is set: kvmpy.loader.acpi fills them all
                    target = int.from_bytes(blob[off + field:off + field + size], "little")
                    pointers.append(add_pointer(TABLES_FILE, TABLES_FILE, off + field, size))
                    if field in (40, 140):
                        table(target)  # the DSDT (the FACS has no checksum)

    for root, size in ((rsdt, 4), (xsdt, 8)):
        table(root)
        length = _length(blob, root)
        for pos in range(root + 36, root + length, size):
            pointers.append(add_pointer(TABLES_FILE, TABLES_FILE, pos, size))
            table(int.from_bytes(blob[pos:pos + size], "little"))
    # The RSDP's own checksums come last, after its pointers are patched: the first 20 bytes, then all 36.
    checksums.append(add_checksum(RSDP_FILE, 8, 0, 20))
    checksums.append(add_checksum(RSDP_FILE, 32, 0, len(rsdp)))
    script = (allocate(RSDP_FILE, RSDP_ALIGN, ZONE_FSEG) + allocate(TABLES_FILE, TABLES_ALIGN, ZONE_HIGH)
              + b"".join(pointers) + b"".join(checksums))
    return LoaderFiles(blob, rsdp, script)
