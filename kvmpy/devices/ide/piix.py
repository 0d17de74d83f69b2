"""The PIIX3 IDE function (8086:7010 at 00:01.1): two legacy channels and the bus-master BAR4.

Class 0x0101 with programming interface 0x80 (both channels in fixed legacy mode, bus
mastering): channel 0 at ports 0x1F0-0x1F7 and 0x3F6 on ISA IRQ 14, channel 1 at 0x170-0x177
and 0x376 on IRQ 15, decoded whatever the PCI command register says, as on QEMU's pc. BAR4
is the 16-port bus-master window (channel 0 at +0, channel 1 at +8); DMA needs the command
register's bus-master bit. Power-on config values are QEMU's piix_ide_reset ones, with both
channels' IDETIM decode-enable bits set as the firmware sets them (see ``IDETIM``).
"""

from __future__ import annotations

from typing import Any, Callable

from kvmpy.devices.device import DeviceStateError, check_keys
from kvmpy.devices.ide.bmdma import BM_CMD, BM_PRD, BM_STATUS
from kvmpy.devices.ide.channel import ChannelMemory, IdeChannel
from kvmpy.devices.irq import IrqLine
from kvmpy.devices.pci.device import CMD_MASTER, COMMAND, STATUS, Bar, BarKind, PciDevice, PciIdentity

VENDOR_INTEL, DEVICE_PIIX3_IDE = 0x8086, 0x7010
CLASS_IDE, PROG_IF = 0x0101, 0x80
LEGACY = ((0x1F0, 0x3F6, 14), (0x170, 0x376, 15))  # (command block, control port, ISA IRQ) per channel
BM_BAR, BM_SIZE, BM_CHANNEL_SIZE = 4, 16, 8
STATUS_POWER_ON = 0x0280  # DEVSEL medium, fast back-to-back
# IDETIM (0x40 primary, 0x42 secondary): bit 15 enables the channel's legacy decode. SeaBIOS writes
# 0x8000 to both before any OS runs (QEMU boots -kernel through SeaBIOS too); kvmpy's direct kernel
# boot has no firmware, so the function starts as SeaBIOS leaves it. Linux's ata_piix ignores a
# channel whose bit is clear ("port disabled").
IDETIM = (0x40, 0x42)
IDETIM_DECODE_ENABLE = 0x8000


class CommandBlock:
    """Ports base..base+7 of one channel."""

    def __init__(self, channel: IdeChannel) -> None:
        self.channel = channel

    def read(self, offset: int, size: int) -> int:
        return self.channel.read(offset, size)

    def read_string(self, offset: int, size: int, count: int) -> bytes:
        return self.channel.read_string(offset, size, count)

    def write(self, offset: int, size: int, value: int) -> None:
        self.channel.write(offset, size, value)


class ControlPort:
    """Alternate status (read) and device control (write)."""

    def __init__(self, channel: IdeChannel) -> None:
        self.channel = channel

    def read(self, offset: int, size: int) -> int:
        return self.channel.ctl_read() if offset == 0 else 0xFF

    def write(self, offset: int, size: int, value: int) -> None:
        if offset == 0:
            self.channel.ctl_write(value & 0xFF)


class BusMasterPorts:
    """BAR4: the two channels' bus-master registers."""

    def __init__(self, channels: list[IdeChannel]) -> None:
        self.channels = channels

    def read(self, offset: int, size: int) -> int:
        ch = self.channels[(offset // BM_CHANNEL_SIZE) & 1]
        with ch.lock:
            return ch.bm.read(offset % BM_CHANNEL_SIZE, min(size, BM_CHANNEL_SIZE - offset % BM_CHANNEL_SIZE))

    def write(self, offset: int, size: int, value: int) -> None:
        ch = self.channels[(offset // BM_CHANNEL_SIZE) & 1]
        off = offset % BM_CHANNEL_SIZE
        for i in range(min(size, BM_CHANNEL_SIZE - off)):
            reg, byte = off + i, (value >> (8 * i)) & 0xFF
            if reg == BM_CMD:
                ch.bm_command(byte)
            elif reg == BM_STATUS:
                with ch.lock:
                    ch.bm.write_status(byte)
            elif reg >= BM_PRD:
                with ch.lock:
                    ch.bm.write_prd(reg, 1, byte)


class PiixIde(PciDevice):
    """``channels[0]`` / ``channels[1]``; attach drives with ``IdeChannel.attach_disk``/``attach_cd``."""

    def __init__(self, memory: ChannelMemory, irq_line: Callable[[int], IrqLine], name: str = "piix3-ide") -> None:
        self.channels = [IdeChannel(f"{name}.{i}", irq_line(irq), memory, self.bus_master_enabled)
                         for i, (_, _, irq) in enumerate(LEGACY)]
        self.bm_ports = BusMasterPorts(self.channels)
        super().__init__(name, PciIdentity(VENDOR_INTEL, DEVICE_PIIX3_IDE, CLASS_IDE, prog_if=PROG_IF),
                         bars=(Bar(BM_BAR, BarKind.IO, BM_SIZE, self.bm_ports),))

    def init_config(self) -> None:
        self._put(self.config, STATUS, 2, STATUS_POWER_ON)
        for reg in IDETIM:
            self._put(self.config, reg, 2, IDETIM_DECODE_ENABLE)

    def bus_master_enabled(self) -> bool:
        return bool(self.config_read(COMMAND, 2) & CMD_MASTER)

    def legacy_windows(self) -> list[tuple[int, int, Any, str]]:
        """(base, size, device, name) of the ISA ports to map on the board's port bus."""
        out: list[tuple[int, int, Any, str]] = []
        for i, (ch, (cmd, ctl, _)) in enumerate(zip(self.channels, LEGACY)):
            out.append((cmd, 8, CommandBlock(ch), f"ide{i}"))
            out.append((ctl, 1, ControlPort(ch), f"ide{i}-ctl"))
        return out

    # ---- device protocol --------------------------------------------------------------------
    def reset(self) -> None:
        super().reset()
        for ch in self.channels:
            ch.reset()

    def save(self) -> dict[str, Any]:
        return {"pci": super().save(), "channels": [ch.save() for ch in self.channels]}

    def validate(self, state: dict[str, Any]) -> Any:  # type: ignore[override]
        check_keys(state, {"pci", "channels"})
        pci = super().validate(state["pci"])
        chans = state["channels"]
        if not isinstance(chans, list) or len(chans) != 2:
            raise DeviceStateError("channels must be a list of two")
        return pci, [ch.validate(s) for ch, s in zip(self.channels, chans)]

    def restore(self, state: dict[str, Any]) -> None:
        (config, intx), chans = self.validate(state)
        self.restore_config(config, intx)
        for ch, s in zip(self.channels, chans):
            ch.restore(s)

    def close(self) -> None:
        for ch in self.channels:
            for u in ch.units:
                if u.drive is not None and hasattr(u.drive, "close"):
                    u.drive.close()
        super().close()
