"""Where each IDE unit of the PC sits: the legacy ``if=ide`` drives, then ``-device ide-hd``/``ide-cd``.

This module owns QEMU's placement rules for the PIIX3 function's two buses (``ide.0``,
``ide.1``, two units each), and the messages QEMU 7.2 gives when they are broken:

- the machine creates the legacy drives (``-hda``..``-hdd``, ``-cdrom``, a positional
  image, ``-drive if=ide``) first, drive index N on bus N // 2, unit N % 2, wherever
  they stand on the command line;
- then each ``-device ide-hd|ide-cd`` in order: without ``bus=`` it goes on ``ide.1``
  (QEMU's bus search meets the last IDE bus first: a PIIX bus never counts as full);
  without ``unit=`` it takes unit 0 if that bus has no master yet, else unit 1;
- a disk needs a drive with media, writable; a CD may be empty (no ``drive=``, or a
  drive without a file) and may hold any image.

It is plain data over the configuration's specs: the IDE factory builds from it, and
the firmware's ``bootorder`` takes the units' ``bootindex=`` from it.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Iterable

from kvmpy import qemu_opts
from kvmpy.config_devices import IDE_UNITS, DeviceSpec, DriveSpec
from kvmpy.errors import ConfigError, shown

BUSES = 2
DEVICE_DRIVERS = ("ide-hd", "ide-cd")
# The properties kvmpy honours on ide-hd/ide-cd (QEMU has more: wwn, ver, geometry, ...; those are refused).
DEVICE_PROPS = frozenset({"drive", "bus", "unit", "bootindex", "serial", "model"})
# The rest of QEMU 7.2's properties of these drivers (-device ide-hd,help): refused as not supported.
QEMU_PROPS = frozenset({"account-failed", "account-invalid", "backend_defaults", "bios-chs-trans", "cyls",
                        "discard_granularity", "heads", "lcyls", "lheads", "logical_block_size", "lsecs",
                        "min_io_size", "opt_io_size", "physical_block_size", "rerror", "rotation_rate", "secs",
                        "share-rw", "ver", "werror", "write-cache", "wwn"})
MAX_UNIT = (1 << 32) - 1  # unit= is a uint32_t property


@dataclass(frozen=True)
class IdeUnit:
    """One occupied unit: its bus and position, what it is, its drive (None: an empty CD) and -device spec."""

    bus: int
    unit: int
    kind: str  # "hd" or "cd"
    drive: DriveSpec | None
    device: DeviceSpec | None = None  # None: made by a legacy if=ide drive
    qdev: str = ""  # what QEMU's query-block says for a -device unit: its id, else its peripheral-anon path
    node: str = ""  # drive= named a -blockdev node (``drive`` is then None)

    @property
    def where(self) -> str:
        if self.device is not None:
            return self.device.source or f"-device {self.device.driver}"
        return (self.drive.source if self.drive is not None else "") or "-drive"


def legacy_drives(config: Any) -> list[DriveSpec]:
    """The configuration's if=ide drives, in index order."""
    return sorted((d for d in getattr(config, "drives", ()) if d.interface == "ide"), key=lambda d: d.index or 0)


def _fail(device: DeviceSpec, message: str) -> ConfigError:
    return ConfigError(f"{device.source or '-device ' + device.driver}: {message}")


def _bus(device: DeviceSpec) -> int:
    name = device.get("bus")
    if name is None:
        return BUSES - 1
    if name in [f"ide.{n}" for n in range(BUSES)]:
        return int(name[len("ide."):])
    if name == "pci.0":
        raise _fail(device, f"Device '{device.driver}' can't go on PCI bus")
    raise _fail(device, f"Bus {shown(name, 40)} not found")


def _unit(device: DeviceSpec, taken: dict[tuple[int, int], IdeUnit], bus: int) -> int:
    text = device.get("unit")
    if text is None:
        return 1 if (bus, 0) in taken else 0
    try:
        unit = qemu_opts.parse_number(text.lstrip("-"), "unit")
    except ConfigError:
        raise _fail(device, "Parameter 'unit' expects integer") from None
    if text.lstrip().startswith("-") and unit != 0 or unit > MAX_UNIT:
        raise _fail(device, "Parameter 'unit' expects uint32_t")
    if unit >= IDE_UNITS:
        raise _fail(device, f"Can't create IDE unit {unit}, bus supports only {IDE_UNITS} units")
    return unit


def _device_unit(device: DeviceSpec, drives: dict[str, DriveSpec], taken: dict[tuple[int, int], IdeUnit],
                 qdev: str, blockdevs: dict[str, Any]) -> IdeUnit:
    for key, _ in device.props:
        if key not in DEVICE_PROPS:
            if key in QEMU_PROPS:
                raise _fail(device, f"Property '{device.driver}.{key}' is not supported by kvmpy (it takes "
                            f"{', '.join(sorted(DEVICE_PROPS))})")
            raise _fail(device, f"Property '{device.driver}.{shown(key, 40)[1:-1]}' not found")
    bus = _bus(device)
    unit = _unit(device, taken, bus)
    if (bus, unit) in taken:
        raise _fail(device, f"IDE unit {unit} is in use")
    name = device.get("drive") or None  # drive= (empty) is no drive, as in QEMU
    drive = drives.get(name) if name is not None else None  # config_devices.check_devices vouches for the name
    if drive is not None and drive.interface != "none":
        raise _fail(device, f"Drive {shown(name, 40)} is already in use because it has been automatically "
                    "connected to another device (did you need 'if=none' in the drive options?)")
    kind = "cd" if device.driver == "ide-cd" else "hd"
    if name is not None and name in blockdevs:  # a -blockdev node: always has media
        if kind == "hd" and blockdevs[name].readonly:
            raise _fail(device, "Block node is read-only")
        return IdeUnit(bus, unit, kind, None, device, qdev, name)
    if kind == "hd":
        if drive is None:
            raise _fail(device, "No drive specified")
        if drive.file is None and drive.get("file.filename") is None:
            raise _fail(device, "Device needs media, but drive is empty")
        if drive.readonly:
            raise _fail(device, "Block node is read-only")
    return IdeUnit(bus, unit, kind, drive, device, qdev)


def ide_units(config: Any) -> list[IdeUnit]:
    """Every IDE unit of the configuration, legacy drives first, with QEMU's errors as ConfigError."""
    taken: dict[tuple[int, int], IdeUnit] = {}
    for spec in legacy_drives(config):
        bus, unit = divmod(spec.index or 0, IDE_UNITS)
        if bus >= BUSES:
            raise ConfigError(f"{spec.source or '-drive'}: IDE index {spec.index} is beyond the two channels")
        if spec.media != "cdrom" and spec.file is None:
            raise ConfigError(f"{spec.source or '-drive'}: Device needs media, but drive is empty")
        taken[(bus, unit)] = IdeUnit(bus, unit, "cd" if spec.media == "cdrom" else "hd", spec)
    drives = {d.id: d for d in getattr(config, "drives", ()) if d.id is not None}
    blockdevs = {b.node_name: b for b in getattr(config, "blockdevs", ())}
    anonymous = 0  # QEMU numbers the -device lines without an id, of every driver, in creation order
    for device in getattr(config, "devices", ()):
        qdev = device.id if device.id is not None else f"/machine/peripheral-anon/device[{anonymous}]"
        anonymous += device.id is None
        if device.driver in DEVICE_DRIVERS:
            u = _device_unit(device, drives, taken, qdev, blockdevs)
            taken[(u.bus, u.unit)] = u
    return [taken[k] for k in sorted(taken)]


def device_units(units: Iterable[IdeUnit]) -> list[IdeUnit]:
    """The units made by -device lines (the ones that may carry bootindex=)."""
    return [u for u in units if u.device is not None]
