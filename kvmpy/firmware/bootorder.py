"""fw_cfg ``bootorder``: the firmware device paths of the devices given ``bootindex=``, lowest index first.

SeaBIOS matches these Open Firmware-style paths against the devices it finds (src/boot.c):
a virtio-blk function at slot S is ``/pci@i0cf8/scsi@S/disk@0,0``, a virtio-net one
``/pci@i0cf8/ethernet@S/ethernet-phy@0`` (``S,F`` for a function other than 0, hex), and an
IDE unit (disk or CD alike) on the PIIX3 function ``/pci@i0cf8/ide@1,1/drive@BUS/disk@UNIT``,
as QEMU's qdev firmware paths give them (QEMU 7.2's list, read back through SeaBIOS's debug
console, is the test's oracle). Paths are joined by newlines and end with a NUL, as QEMU
writes the file; ``-boot strict=on`` appends ``HALT`` to a non-empty list (SeaBIOS then boots nothing outside the
list); no bootindex anywhere leaves it empty (SeaBIOS then follows the CMOS boot order from
``-boot order=``). A repeated bootindex is refused naming the later device in command-line
order, as QEMU refuses it when it sets the property.
"""

from __future__ import annotations

from typing import Any, Iterable, Sequence

from kvmpy.errors import ConfigError

PCI_ROOT = "/pci@i0cf8"
# driver -> (node name, child path) of its firmware path
FW_NODES = {"virtio-blk-pci": ("scsi", "disk@0,0"), "virtio-net-pci": ("ethernet", "ethernet-phy@0")}
IDE_FUNCTION = "ide@1,1"  # the PIIX3 IDE function, 00:01.1
STRICT_END = "HALT"
INT32_MIN, INT32_MAX = -(1 << 31), (1 << 31) - 1  # bootindex is an int32_t property


def _node(slot: int, function: int, name: str) -> str:
    return f"{name}@{slot:x}" + (f",{function:x}" if function else "")


def ide_path(bus: int, unit: int) -> str:
    """The firmware path of IDE unit ``unit`` on bus ``bus`` of the PIIX3 function."""
    return f"{PCI_ROOT}/{IDE_FUNCTION}/drive@{bus:x}/disk@{unit:x}"


def bootorder(placements: Iterable[Any], ide: Iterable[Any] = (), strict: bool = False,
              devices: Sequence[Any] = ()) -> bytes:
    """The file for PCI placements (``spec``, ``slot``, ``function``) and IDE units (``device``, ``bus``,
    ``unit``); ConfigError on a repeated or malformed bootindex. ``devices``, the configuration's -device
    specs, orders the checks as the command line does (default: PCI devices first)."""
    candidates: list[tuple[Any, str]] = []
    for p in placements:
        if p.spec.driver in FW_NODES:
            name, child = FW_NODES[p.spec.driver]
            candidates.append((p.spec, f"{PCI_ROOT}/{_node(p.slot, p.function, name)}/{child}"))
    for u in ide:
        if u.device is not None:
            candidates.append((u.device, ide_path(u.bus, u.unit)))
    position = {id(d): i for i, d in enumerate(devices)}
    candidates.sort(key=lambda c: position.get(id(c[0]), len(position)))
    entries: list[tuple[int, str]] = []
    seen: dict[int, str] = {}
    for spec, path in candidates:
        text = spec.get("bootindex")
        if text is None:
            continue
        where = spec.source or f"-device {spec.driver}"
        try:
            index = int(text, 0)
        except ValueError:
            raise ConfigError(f"{where}: Parameter 'bootindex' expects integer") from None
        if not INT32_MIN <= index <= INT32_MAX:
            raise ConfigError(f"{where}: Parameter 'bootindex' expects int32_t")
        if index < 0:
            continue  # QEMU: a negative bootindex is "no boot index"
        if index in seen:
            raise ConfigError(f"{where}: The bootindex {index} has already been used")
        seen[index] = where
        entries.append((index, path))
    if not entries:
        return b""  # QEMU writes no HALT either when no device has a bootindex
    paths = [path for _, path in sorted(entries)] + ([STRICT_END] if strict else [])
    return "\n".join(paths).encode() + b"\0"
