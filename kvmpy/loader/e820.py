"""The PC memory map (e820) kvmpy presents, laid out the way QEMU's pc machine and SeaBIOS do.

Guests see the same map under kvmpy as under ``qemu-system-x86_64 -kernel``:
conventional memory up to the EBDA, the BIOS area, RAM from 1 MiB up to a
128 KiB firmware reservation, the KVM identity map and TSS pages, the boot ROM below 4 GiB, RAM above 4 GiB when
``-m`` is large, and on AMD CPUs the HyperTransport hole below 1 TiB.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass

E820_RAM = 1
E820_RESERVED = 2
E820_ACPI = 3
E820_NVS = 4

GiB = 1 << 30
FOUR_GIB = 4 * GiB
EBDA_START = 0x9FC00
BIOS_AREA = 0xF0000
HIGH_TABLES = 0x20000  # SeaBIOS keeps its tables in the last 128 KiB of low RAM
BOOT_ROM = 0xFFFC0000
KVM_RESERVED = 0xFEFFC000  # QEMU's KVM identity-map page and TSS, reserved in e820
KVM_RESERVED_SIZE = 0x4000
AMD_HT_START = 0xFD00000000
AMD_HT_SIZE = 0x300000000
LOWMEM_LIMIT = 0xE0000000  # i440fx: above this much RAM, low memory stops at 3 GiB
LOWMEM_SPLIT = 0xC0000000


@dataclass(frozen=True)
class E820Entry:
    addr: int
    size: int
    type: int

    def pack_multiboot(self) -> bytes:
        # Multiboot mmap entries carry their own size (20) in front.
        return struct.pack("<IQQI", 20, self.addr, self.size, self.type)

    def pack_boot_params(self) -> bytes:
        return struct.pack("<QQI", self.addr, self.size, self.type)


IOAPIC_BASE = 0xFEC00000  # the 32-bit PCI hole ends just below it
PCI_HOLE64_SIZE = 1 << 31  # i440fx's default pci-hole64-size


@dataclass(frozen=True)
class PciHoles:
    """The PCI memory windows of QEMU's pc (inclusive bounds): below 4 GiB, from the end of
    low RAM up to the IOAPIC; above, from the first GiB boundary past high RAM, 2 GiB long."""

    low: tuple[int, int]
    high: tuple[int, int]


def _round_up(n: int, a: int) -> int:
    return (n + a - 1) // a * a


def pci_holes(ram_size: int, device_memory_end: int | None = None) -> PciHoles:
    """With a memory-hotplug window (ending at ``device_memory_end``), the 64-bit hole starts past it."""
    below, above = split_ram(ram_size)
    high = _round_up(FOUR_GIB + above if device_memory_end is None else device_memory_end, GiB)
    return PciHoles((below, IOAPIC_BASE - 1), (high, _round_up(high + PCI_HOLE64_SIZE, GiB) - 1))


def split_ram(ram_size: int) -> tuple[int, int]:
    """Bytes of RAM below and above 4 GiB, as the i440fx pc machine splits them."""
    below = LOWMEM_SPLIT if ram_size >= LOWMEM_LIMIT else ram_size
    return below, ram_size - below


def pc_e820(ram_size: int, amd: bool) -> list[E820Entry]:
    below, above = split_ram(ram_size)
    if below < 2 << 20:
        raise ValueError(f"{ram_size} bytes of RAM is too little for a PC (at least 2 MiB)")
    entries = [
        E820Entry(0, EBDA_START, E820_RAM),
        E820Entry(EBDA_START, 0xA0000 - EBDA_START, E820_RESERVED),
        E820Entry(BIOS_AREA, 0x100000 - BIOS_AREA, E820_RESERVED),
        E820Entry(0x100000, below - 0x100000 - HIGH_TABLES, E820_RAM),
        E820Entry(below - HIGH_TABLES, HIGH_TABLES, E820_RESERVED),
        E820Entry(KVM_RESERVED, KVM_RESERVED_SIZE, E820_RESERVED),
        E820Entry(BOOT_ROM, FOUR_GIB - BOOT_ROM, E820_RESERVED),
    ]
    if above:
        entries.append(E820Entry(FOUR_GIB, above, E820_RAM))
    if amd:
        entries.append(E820Entry(AMD_HT_START, AMD_HT_SIZE, E820_RESERVED))
    return sorted(entries, key=lambda e: e.addr)
