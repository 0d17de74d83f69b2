"""The PC board's IDE line: the PIIX3 IDE function at 00:01.1 with the configuration's IDE units.

QEMU's ``pc`` always has the controller; kvmpy builds it when the configuration names
at least one IDE unit (``-hda``..``-hdd``, ``-cdrom``, a positional image, ``-drive
if=ide``, ``-device ide-hd|ide-cd``), so machines without one keep the PCI bus they had.
Where each unit sits is ``kvmpy.devices.ide.units``' business; a CD unit is an ATAPI
CD-ROM, empty when it has no image. The function owns the opened drives and closes them.
"""

from __future__ import annotations

from typing import Any, Protocol, cast

from kvmpy.block.drive_spec import drive_from_blockdev, drive_from_spec
from kvmpy.block.errors import BlockError
from kvmpy.config_devices import IDE_UNITS
from kvmpy.devices.ide.piix import PiixIde
from kvmpy.devices.ide.units import ide_units
from kvmpy.devices.kvm_irq import KvmIrqLine
from kvmpy.devices.pci.bus import PciHost
from kvmpy.errors import ConfigError

SLOT, FUNCTION = 1, 1


class IdeBoard(Protocol):
    """What the factory uses of the PC board."""

    vm: Any
    memory: Any
    pio: Any
    config: Any
    devices: dict[str, Any]


def piix_ide(board: IdeBoard) -> PiixIde | None:
    units = ide_units(board.config)
    if not units:
        return None
    ide = PiixIde(board.memory, lambda irq: KvmIrqLine(board.vm, irq))
    inactive = getattr(board.config, "incoming", None) is not None
    blockdevs = {b.node_name: b for b in getattr(board.config, "blockdevs", ())}
    try:
        for u in units:
            spec = u.drive
            try:
                if u.node:
                    drive = drive_from_blockdev(blockdevs, u.node, inactive=inactive)
                elif spec is not None and (spec.file is not None or spec.get("file.filename") is not None):
                    drive = drive_from_spec(spec, inactive=inactive)
                else:
                    drive = None
            except BlockError as exc:
                raise ConfigError(f"{u.where}: {exc}") from None
            # the device's serial=, else the drive's, else QEMU's QM00001..QM00004 counted across both buses
            serial = (u.device.get("serial", "") if u.device is not None else "") or \
                (spec.get("serial", "") if spec is not None else "") or f"QM{u.bus * IDE_UNITS + u.unit + 1:05d}"
            model = u.device.get("model", "") if u.device is not None else ""
            channel = ide.channels[u.bus]
            if u.kind == "cd":
                channel.attach_cd(u.unit, drive, (spec.id or "") if spec is not None else "", serial, model)
            else:
                assert drive is not None  # ide_units refuses a disk without media
                channel.attach_disk(u.unit, drive, serial, model)
            if u.device is not None:
                channel.units[u.unit].qdev_id, channel.units[u.unit].qdev = u.device.id or "", u.qdev
        cast(PciHost, board.devices["pci-host"]).bus.plug(ide, SLOT, FUNCTION)
        for base, size, dev, name in ide.legacy_windows():
            board.pio.map(base, size, dev, name)
    except BaseException:
        ide.close()
        raise
    return ide
