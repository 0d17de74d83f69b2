"""ACPI tables for a Linux guest: RSDP, RSDT/XSDT, FADT with FACS and DSDT, and MADT.

Just enough platform description for Linux to find every vCPU and the IOAPIC
(MADT), to route the SCI, and to power off and reset through fixed hardware:
the FADT points at the PM1 event/control and PM timer blocks of
kvmpy.devices.acpi_pm and at its reset register, and the DSDT defines ``\\_S5``
with the sleep type that device treats as soft-off. Layouts and constants are
facts from the ACPI specification. When the board has a PCI bus, the DSDT
also describes it as QEMU's pc does: ``\\_SB.PCI0`` (PNP0A03) with its bus,
I/O and memory windows in ``_CRS``, the PIIX3 at 01.0 with a PCI_Config region
over its PIRQ route registers, the link devices LNKA-LNKD that read and program
them (and LNKS for the SCI), and a ``_PRT`` sending INTx pin P of slot S to
link (S - 1 + P) mod 4. The i8042's keyboard (PNP0303) and mouse (PNP0F13) are described
as QEMU's pc describes them, under the ISA bridge (or ``\\_SB`` without PCI): SeaBIOS sets
up its PS/2 keyboard only when its DSDT parser finds PNP0303. The AML comes from kvmpy.loader.aml.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass

from kvmpy.devices.acpi_gpe import GPE0_BASE, GPE0_LEN
from kvmpy.loader import aml
from kvmpy.loader.memhp_aml import HotplugMemory, memhp_aml, srat_body
from kvmpy.loader.e820 import PciHoles

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


LINK_IRQS = [5, 10, 11]  # what QEMU's LNKA-LNKD offer in _PRS
LEVEL_IRQS = (5, SCI_IRQ, 10, 11)
PIRQ_DISABLED = 0x80
ISA_BRIDGE_ADR = 0x00010000  # PIIX3 at 01.0
PIRQ_REGS = 0x60


def prt_link(slot: int, pin: int) -> str:
    """The link device INTx ``pin`` (0=A) of ``slot`` goes through: PIRQ (slot-1+pin) mod 4, LNKS for 01.0 INTA."""
    if (slot, pin) == (1, 0):
        return "LNKS"
    return "LNK" + "ABCD"[(slot - 1 + pin) & 3]


def _link_device(link: str, uid: int, reg: str) -> bytes:
    return aml.device(
        link,
        aml.name("_HID", aml.eisaid("PNP0C0F")),
        aml.name("_UID", aml.integer(uid)),
        aml.name("_PRS", aml.resource_template(aml.interrupt(LINK_IRQS))),
        aml.method("_STA", 0, aml.ret(aml.call("IQST", aml.name_string(reg)))),
        aml.method("_DIS", 0, aml.or_(aml.name_string(reg), aml.integer(PIRQ_DISABLED), aml.name_string(reg))),
        aml.method("_CRS", 0, aml.ret(aml.call("IQCR", aml.name_string(reg)))),
        aml.method("_SRS", 1, aml.create_dword_field(aml.arg(0), aml.integer(5), "PRRI"),
                   aml.store(aml.name_string("PRRI"), aml.name_string(reg))),
    )


I8042_DATA, I8042_CMD, KBD_IRQ, AUX_IRQ = 0x60, 0x64, 1, 12
DEV_PRESENT = 0x0F  # _STA: present, enabled, shown in the UI, functioning


def i8042_aml() -> bytes:
    """The PS/2 keyboard (ports 0x60/0x64, IRQ 1) and mouse (IRQ 12) devices, as QEMU's i8042 declares them."""
    kbd = aml.device(
        "KBD",
        aml.name("_HID", aml.eisaid("PNP0303")),
        aml.name("_STA", aml.integer(DEV_PRESENT)),
        aml.name("_CRS", aml.resource_template(aml.io_port(I8042_DATA, 1), aml.io_port(I8042_CMD, 1),
                                               aml.irq_no_flags([KBD_IRQ]))),
    )
    mou = aml.device(
        "MOU",
        aml.name("_HID", aml.eisaid("PNP0F13")),
        aml.name("_STA", aml.integer(DEV_PRESENT)),
        aml.name("_CRS", aml.resource_template(aml.irq_no_flags([AUX_IRQ]))),
    )
    return kbd + mou


def pci_aml(holes: PciHoles) -> bytes:
    """``\\_SB``: PCI0 with _CRS, _PRT and the ISA bridge, the PIRQ fields and the interrupt link devices."""
    crs = aml.resource_template(
        aml.word_space(aml.RES_BUS, 0x00, 0xFF),
        aml.io_port(0xCF8, 8),
        aml.word_space(aml.RES_IO, 0x0000, 0x0CF7, aml.IO_ENTIRE_RANGE),
        aml.word_space(aml.RES_IO, 0x0D00, 0xFFFF, aml.IO_ENTIRE_RANGE),
        aml.dword_memory(0xA0000, 0xBFFFF, cacheable=True),  # legacy VGA window
        aml.dword_memory(*holes.low, cacheable=False),
        aml.qword_memory(*holes.high, cacheable=True),
    )
    prt = aml.package(*(aml.package(aml.integer((slot << 16) | 0xFFFF), aml.integer(pin),
                                     aml.name_string(prt_link(slot, pin)), aml.integer(0))
                        for slot in range(32) for pin in range(4)))
    pci0 = aml.device(
        "PCI0",
        aml.name("_HID", aml.eisaid("PNP0A03")),
        aml.name("_ADR", aml.integer(0)),
        aml.name("_UID", aml.integer(0)),
        aml.name("_CRS", crs),
        aml.name("_PRT", prt),
        aml.device("ISA", aml.name("_ADR", aml.integer(ISA_BRIDGE_ADR)),
                   aml.operation_region("P40C", aml.PCI_CONFIG, PIRQ_REGS, 4), i8042_aml()),
    )
    iqst = aml.method("IQST", 1,
                      aml.if_(aml.and_(aml.integer(PIRQ_DISABLED), aml.arg(0)), aml.ret(aml.integer(0x09))),
                      aml.ret(aml.integer(0x0B)))
    iqcr = aml.method("IQCR", 1,
                      aml.name("PRR0", aml.resource_template(aml.interrupt([0]))),
                      aml.create_dword_field(aml.name_string("PRR0"), aml.integer(5), "PRRI"),
                      aml.if_(aml.lless(aml.arg(0), aml.integer(PIRQ_DISABLED)),
                              aml.store(aml.arg(0), aml.name_string("PRRI"))),
                      aml.ret(aml.name_string("PRR0")), serialized=True)
    lnks = aml.device(
        "LNKS",
        aml.name("_HID", aml.eisaid("PNP0C0F")),
        aml.name("_UID", aml.integer(4)),
        aml.name("_PRS", aml.resource_template(aml.interrupt([SCI_IRQ]))),
        aml.method("_STA", 0, aml.ret(aml.integer(0x0B))),  # the SCI is always GSI 9 and always on
        aml.method("_DIS", 0),
        aml.method("_CRS", 0, aml.ret(aml.name_string("_PRS"))),
        aml.method("_SRS", 1),
    )
    return aml.scope(
        "\\_SB", pci0,
        aml.field("PCI0.ISA.P40C", [(f"PRQ{i}", 8) for i in range(4)]),
        iqst, iqcr,
        *(_link_device(f"LNK{c}", i, f"PRQ{i}") for i, c in enumerate("ABCD")),
        lnks,
    )


def build_dsdt(pci: PciHoles | None = None, memory_slots: int = 0) -> bytes:
    """\\_S5 (the soft-off sleep type), the GPE block device, the PCI description when the board has
    PCI (the i8042's devices under its ISA bridge, else in ``\\_SB``), and the memory-hotplug devices (kvmpy.loader.memhp_aml) when it has DIMM slots."""
    s5 = aml.name("_S5_", aml.package(aml.integer(SLP_TYP_S5), aml.integer(SLP_TYP_S5), aml.integer(0),
                                      aml.integer(0)))
    gpe = aml.scope("_GPE", aml.name("_HID", aml.string("ACPI0006")))
    body = s5 + gpe + (pci_aml(pci) if pci is not None else aml.scope("\\_SB", i8042_aml()))
    if memory_slots:
        body += memhp_aml(memory_slots, "\\_SB.PCI0" if pci is not None else "\\_SB")
    return _table(b"DSDT", 2, body)


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
    put("<III", 72, 0, PM_TMR_BLK, GPE0_BASE)
    put("<BBBB", 88, PM1_EVT_LEN, PM1_CNT_LEN, 0, PM_TMR_LEN)
    put("<B", 92, GPE0_LEN)
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
    body[220 - 36:232 - 36] = _gas(GAS_SYSTEM_IO, 8 * GPE0_LEN, GPE0_BASE)
    return _table(b"FACP", FADT_REVISION, bytes(body))


def build_madt(nr_cpus: int) -> bytes:
    body = bytearray(struct.pack("<II", LAPIC_ADDR, 1))  # PCAT_COMPAT: dual 8259s present
    for i in range(nr_cpus):
        body += struct.pack("<BBBBI", MADT_LAPIC, 8, i, i, 1)
    body += struct.pack("<BBBBII", MADT_IOAPIC, 12, IOAPIC_ID, 0, IOAPIC_ADDR, 0)
    # KVM's default routing sends ISA IRQ n to IOAPIC pin n; the SCI and the IRQs the PCI
    # link devices offer are level-triggered, active high (flags: polarity 01, trigger 11),
    # which is what QEMU's pc overrides too (IRQs 5, 9, 10, 11).
    for irq in LEVEL_IRQS:
        body += struct.pack("<BBBBIH", MADT_ISO, 10, 0, irq, irq, 0x000D)
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


def build_tables(base: int, nr_cpus: int, pci: PciHoles | None = None, hotplug: HotplugMemory | None = None,
                 ram: tuple[int, int] = (0, 0)) -> AcpiTables:
    """The tables at ``base``; with ``hotplug`` also the memory-hotplug DSDT part and an SRAT, which
    needs ``ram`` (bytes below and above 4 GiB)."""
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
    dsdt = place("DSDT", build_dsdt(pci, hotplug.slots if hotplug is not None else 0))
    fadt = place("FACP", build_fadt(facs, dsdt))
    madt = place("APIC", build_madt(nr_cpus))
    entries = [fadt, madt]
    if hotplug is not None:
        entries.append(place("SRAT", _table(b"SRAT", 1, srat_body(nr_cpus, ram[0], ram[1], hotplug))))
    rsdt = place("RSDT", _table(b"RSDT", 1, b"".join(struct.pack("<I", a) for a in entries)))
    xsdt = place("XSDT", _table(b"XSDT", 1, b"".join(struct.pack("<Q", a) for a in entries)))
    return AcpiTables(base, bytes(blob), build_rsdp(rsdt, xsdt), addrs)
