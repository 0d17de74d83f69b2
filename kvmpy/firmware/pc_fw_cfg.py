"""What the PC's fw_cfg holds for SeaBIOS, built from the machine's configuration.

The items QEMU 7.2's pc machine gives SeaBIOS and that kvmpy has a meaning for:
RAM size, CPU count (present and maximum), the no-graphics flag, the boot menu
switch, IRQ0 override, ``etc/boot-fail-wait`` (-1: SeaBIOS does not retry
after "No bootable device."), ``etc/e820`` (RAM plus the KVM identity-map/TSS pages,
as QEMU reserves them), ``bootorder`` (empty: SeaBIOS's default order, from the
CMOS boot bytes), ``etc/sercon-port`` (COM1: kvmpy has no display, so firmware
text goes to the serial console as under QEMU's -nographic), and kvmpy's own ACPI
tables with the table-loader script.
"""

from __future__ import annotations

import struct

from kvmpy.devices.fw_cfg import (FW_CFG_BOOT_MENU, FW_CFG_IRQ0_OVERRIDE, FW_CFG_MAX_CPUS, FW_CFG_NB_CPUS,
                                  FW_CFG_NOGRAPHIC, FW_CFG_RAM_SIZE, FW_CFG_UUID, FwCfg, GuestRam)
from kvmpy.firmware import table_loader
from kvmpy.loader.acpi import AcpiTables
from kvmpy.loader.e820 import E820_RAM, E820_RESERVED, FOUR_GIB, KVM_RESERVED, KVM_RESERVED_SIZE, split_ram

COM1 = 0x3F8


def fw_e820(ram_size: int) -> bytes:
    """``etc/e820``: what QEMU's pc puts there (RAM below and above 4 GiB, KVM's reserved pages)."""
    below, above = split_ram(ram_size)
    entries = [(0, below, E820_RAM), (KVM_RESERVED, KVM_RESERVED_SIZE, E820_RESERVED)]
    if above:
        entries.append((FOUR_GIB, above, E820_RAM))
    return b"".join(struct.pack("<QQI", *e) for e in entries)


def pc_fw_cfg(memory: GuestRam, ram_size: int, cpus: int, tables: AcpiTables, serial_console: bool,
              boot_menu: bool = False, bootorder: bytes = b"") -> FwCfg:
    """``boot_menu``: -boot menu=on; ``bootorder``: the file kvmpy.firmware.bootorder builds."""
    fw = FwCfg(memory)
    fw.add_item(FW_CFG_UUID, bytes(16))
    fw.add_u64(FW_CFG_RAM_SIZE, ram_size)
    fw.add_u16(FW_CFG_NOGRAPHIC, 1)
    fw.add_u16(FW_CFG_NB_CPUS, cpus)
    fw.add_u16(FW_CFG_MAX_CPUS, cpus)
    fw.add_u16(FW_CFG_BOOT_MENU, int(boot_menu))
    fw.add_u32(FW_CFG_IRQ0_OVERRIDE, 1)
    fw.add_file("etc/e820", fw_e820(ram_size))
    fw.add_file("bootorder", bootorder)
    fw.add_file("etc/boot-fail-wait", struct.pack("<i", -1))  # QEMU's default: no -boot reboot-timeout
    if serial_console:
        fw.add_file("etc/sercon-port", struct.pack("<H", COM1))
    files = table_loader.build(tables)
    fw.add_file(table_loader.TABLES_FILE, files.tables)
    fw.add_file(table_loader.RSDP_FILE, files.rsdp)
    fw.add_file(table_loader.LOADER_FILE, files.loader)
    return fw
