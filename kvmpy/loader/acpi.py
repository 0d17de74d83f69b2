"""ACPI tables for a Linux guest: RSDP, RSDT/XSDT, FADT with FACS and DSDT, and MADT.

Just enough platform description for Linux to find every vCPU and the IOAPIC
(MADT), to route the SCI, and to power off and reset through fixed hardware:
the FADT points at the PM1 event/control and PM timer blocks of
kvmpy.devices.acpi_pm and at its reset register, and the DSDT defines ``\\_S5``
with the sleep type that device treats as soft-off. Layouts and constants are
facts from the ACPI specification; the AML is a handful of bytes written by
hand (NameOp, PackageOp, small integers).
"""

from __future__ import annotations

import struct
from dataclasses import dataclass

OEM_ID = b"KVMPY "
OEM_TABLE_ID = b"KVMPYTBL"
CREATOR_ID = b"KVMP"

LAPIC_ADDR = 0xFEE00000
IOAPIC_ADDR = 0xFEC00000
IOAPIC_ID = 0
SCI_IRQ = 9

# The fixed-hardware register blocks (QEMU's PIIX4 PM places them at 0x600 too).
PM_BASE = 0x600
PM1_EVT_BLK = PM_BASE
PM1_CNT_BLK = PM_BASE + 4
PM_TMR_BLK = PM_BASE + 8
PM1_EVT_LEN, PM1_CNT_LEN, PM_TMR_LEN = 4, 2, 4
RESET_PORT = 0xCF9
RESET_VALUE = 0x06
SLP_TYP_S5 = 0  # PIIX4's "soft off" encoding, the value \_S5 hands to PM1_CNT.SLP_TYP

# FADT flags.
FADT_WBINVD = 1 << 0
FADT_PROC_C1 = 1 << 2
FADT_PWR_BUTTON = 1 << 4  # no fixed-feature power button (ours has one: system_powerdown presses it)
FADT_SLP_BUTTON = 1 << 5  # no fixed-feature sleep button
FADT_RESET_REG_SUP = 1 << 10
# IA-PC boot architecture flags.
BOOT_LEGACY_DEVICES = 1 << 0
BOOT_8042 = 1 << 1
BOOT_VGA_NOT_PRESENT = 1 << 2

GAS_SYSTEM_IO = 1
FADT_REVISION, FADT_LENGTH = 3, 244
MADT_LAPIC, MADT_IOAPIC, MADT_ISO, MADT_LAPIC_NMI = 0, 1, 2, 4


def checksum(data: bytes | bytearray) -> int:
    """The byte that makes ``data`` sum to zero modulo 256."""
    return (-sum(data)) & 0xFF


def _table(signature: bytes, revision: int, body: bytes) -> bytes:
    length = 36 + len(body)
    hdr = struct.pack("<4sIBB6s8sI4sI", signature, length, revision, 0, OEM_ID, OEM_TABLE_ID, 1,
                      CREATOR_ID, 1)
    t = bytearray(hdr + body)
    t[9] = checksum(t)
    return bytes(t)


def _gas(space: int, bit_width: int, address: int, access_size: int = 0) -> bytes:
    return struct.pack("<BBBBQ", space, bit_width, 0, access_size, address)


def build_dsdt() -> bytes:
    # Name (\_S5, Package (0x04) { SLP_TYP_S5, SLP_TYP_S5, Zero, Zero })
    def small(n: int) -> bytes:
        return b"\x00" if n == 0 else b"\x01" if n == 1 else b"\x0a" + bytes((n,))
    elements = small(SLP_TYP_S5) + small(SLP_TYP_S5) + b"\x00\x00"
    package = b"\x12" + bytes((2 + len(elements),)) + b"\x04" + elements
    aml = b"\x08_S5_" + package
    return _table(b"DSDT", 2, aml)


def build_facs() -> bytes:
    # No checksum; hardware signature, waking vectors and global lock all zero.
    return struct.pack("<4sIIIIIQB3sI24s", b"FACS", 64, 0, 0, 0, 0, 0, 2, b"\0" * 3, 0, b"\0" * 24)


def build_fadt(facs_addr: int, dsdt_addr: int) -> bytes:
    body = bytearray(FADT_LENGTH - 36)

    def put(fmt: str, offset: int, *values: int) -> None:
        struct.pack_into(fmt, body, offset - 36, *values)

    put("<II", 36, facs_addr, dsdt_addr)
    put("<H", 46, SCI_IRQ)
    put("<I", 48, 0)  # SMI_CMD 0: the platform is always in ACPI mode
    put("<IIII", 56, PM1_EVT_BLK, 0, PM1_CNT_BLK, 0)
    put("<II", 72, 0, PM_TMR_BLK)
    put("<BBBB", 88, PM1_EVT_LEN, PM1_CNT_LEN, 0, PM_TMR_LEN)
    put("<HH", 96, 0x0FFF, 0x0FFF)  # C2 and C3 not supported
    put("<B", 108, 0x32)  # RTC century register, as in QEMU
    put("<H", 109, BOOT_LEGACY_DEVICES | BOOT_8042 | BOOT_VGA_NOT_PRESENT)
    put("<I", 112, FADT_WBINVD | FADT_PROC_C1 | FADT_SLP_BUTTON | FADT_RESET_REG_SUP)
    body[116 - 36:128 - 36] = _gas(GAS_SYSTEM_IO, 8, RESET_PORT, access_size=1)
    put("<B", 128, RESET_VALUE)
    put("<QQ", 132, facs_addr, dsdt_addr)
    body[148 - 36:160 - 36] = _gas(GAS_SYSTEM_IO, 8 * PM1_EVT_LEN, PM1_EVT_BLK)
    body[172 - 36:184 - 36] = _gas(GAS_SYSTEM_IO, 8 * PM1_CNT_LEN, PM1_CNT_BLK)
    body[208 - 36:220 - 36] = _gas(GAS_SYSTEM_IO, 8 * PM_TMR_LEN, PM_TMR_BLK)
    return _table(b"FACP", FADT_REVISION, bytes(body))


def build_madt(nr_cpus: int) -> bytes:
    body = bytearray(struct.pack("<II", LAPIC_ADDR, 1))  # PCAT_COMPAT: dual 8259s present
    for i in range(nr_cpus):
        body += struct.pack("<BBBBI", MADT_LAPIC, 8, i, i, 1)
    body += struct.pack("<BBBBII", MADT_IOAPIC, 12, IOAPIC_ID, 0, IOAPIC_ADDR, 0)
    # KVM's default routing sends ISA IRQ n to IOAPIC pin n, so only the SCI needs an
    # override: level-triggered, active high (flags: polarity 01, trigger 11).
    body += struct.pack("<BBBBIH", MADT_ISO, 10, 0, SCI_IRQ, SCI_IRQ, 0x000D)
    body += struct.pack("<BBBHB", MADT_LAPIC_NMI, 6, 0xFF, 0, 1)  # LINT1 is NMI on every CPU
    return _table(b"APIC", 1, bytes(body))


def build_rsdp(rsdt_addr: int, xsdt_addr: int) -> bytes:
    r = bytearray(struct.pack("<8sB6sBIIQB3s", b"RSD PTR ", 0, OEM_ID, 2, rsdt_addr, 36, xsdt_addr, 0, b"\0" * 3))
    r[8] = checksum(r[:20])
    r[32] = checksum(r)
    return bytes(r)


@dataclass(frozen=True)
class AcpiTables:
    """The tables laid out from ``base``; ``blob`` goes at ``base``, ``rsdp`` wherever the caller likes."""

    base: int
    blob: bytes
    rsdp: bytes
    tables: dict[str, int]  # signature -> address


def _align(n: int, a: int) -> int:
    return (n + a - 1) & ~(a - 1)


def build_tables(base: int, nr_cpus: int) -> AcpiTables:
    if base % 64:
        raise ValueError("ACPI table base must be 64-byte aligned (the FACS needs it)")
    blob = bytearray()
    addrs: dict[str, int] = {}

    def place(sig: str, data: bytes, align: int = 16) -> int:
        blob.extend(b"\0" * (_align(len(blob), align) - len(blob)))
        addrs[sig] = base + len(blob)
        blob.extend(data)
        return addrs[sig]

    facs = place("FACS", build_facs(), 64)
    dsdt = place("DSDT", build_dsdt())
    fadt = place("FACP", build_fadt(facs, dsdt))
    madt = place("APIC", build_madt(nr_cpus))
    entries = [fadt, madt]
    rsdt = place("RSDT", _table(b"RSDT", 1, b"".join(struct.pack("<I", a) for a in entries)))
    xsdt = place("XSDT", _table(b"XSDT", 1, b"".join(struct.pack("<Q", a) for a in entries)))
    return AcpiTables(base, bytes(blob), build_rsdp(rsdt, xsdt), addrs)
