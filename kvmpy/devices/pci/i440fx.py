"""I440fx: the i440FX-compatible host bridge function (8086:1237, rev 2, class 0600) at 00.0.

Its config space holds QEMU's pc values at power-on (DRAM control 0x57 and
SMRAM 0x72 set, the PAM registers 0x59-0x5F clear: firmware programs those).
kvmpy has no SMM and does not switch 0xC0000-0xFFFFF between ROM and RAM, so
PAM writes are stored and read back with no further effect: the pc board keeps
RAM there and copies the BIOS into it at reset instead (see kvmpy.boards.pc),
which SeaBIOS accepts.
"""

from __future__ import annotations

from kvmpy.devices.pci.device import PciDevice, PciIdentity

VENDOR_INTEL, DEVICE_I440FX = 0x8086, 0x1237
CLASS_HOST_BRIDGE = 0x0600
DRAMC, SMRAM = 0x57, 0x72
POWER_ON = {DRAMC: 0x10, SMRAM: 0x02}


class I440fx(PciDevice):
    def __init__(self) -> None:
        super().__init__("i440FX", PciIdentity(VENDOR_INTEL, DEVICE_I440FX, CLASS_HOST_BRIDGE, revision=0x02))

    def init_config(self) -> None:
        for reg, value in POWER_ON.items():
            self.config[reg] = value
