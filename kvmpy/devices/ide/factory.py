"""The PC board's IDE line: the PIIX3 IDE function at 00:01.1 with the configuration's ``if=ide`` drives.

QEMU's ``pc`` always has the controller; kvmpy builds it when the configuration names
at least one IDE drive (``-hda``..``-hdd``, ``-cdrom``, a positional image, ``-drive
if=ide``), so machines without one keep the PCI bus they had. Drive index N sits on
channel N // 2 as unit N % 2 (master, slave); a ``media=cdrom`` drive is an ATAPI CD-ROM,
empty when it names no file. The function owns the opened drives and closes them.
"""

from __future__ import annotations

from typing import Any, Protocol, cast

from kvmpy.block.drive_spec import drive_from_spec
from kvmpy.block.errors import BlockError
from kvmpy.config_devices import IDE_UNITS
from kvmpy.devices.ide.piix import PiixIde
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


def ide_drives(config: Any) -> list[Any]:
    """The configuration's if=ide drives, in index order."""
    return sorted((d for d in getattr(config, "drives", ()) if d.interface == "ide"), key=lambda d: d.index or 0)


def piix_ide(board: IdeBoard) -> PiixIde | None:
    specs = ide_drives(board.config)
    if not specs:
        return None
    ide = PiixIde(board.memory, lambda irq: KvmIrqLine(board.vm, irq))
    inactive = getattr(board.config, "incoming", None) is not None
    try:
        for spec in specs:
            channel, unit = divmod(spec.index or 0, IDE_UNITS)
            if channel >= len(ide.channels):
                raise ConfigError(f"{spec.source or '-drive'}: IDE index {spec.index} is beyond the two channels")
            try:
                drive = drive_from_spec(spec, inactive=inactive) if spec.file is not None else None
            except BlockError as exc:
                raise ConfigError(f"{spec.source or '-drive'}: {exc}") from None
            if spec.media == "cdrom":
                ide.channels[channel].attach_cd(unit, drive, spec.id or "")
            else:
                if drive is None:
                    raise ConfigError(f"{spec.source or '-drive'}: Device needs media, but drive is empty")
                ide.channels[channel].attach_disk(unit, drive)
        cast(PciHost, board.devices["pci-host"]).bus.plug(ide, SLOT, FUNCTION)
        for base, size, dev, name in ide.legacy_windows():
            board.pio.map(base, size, dev, name)
    except BaseException:
        ide.close()
        raise
    return ide
