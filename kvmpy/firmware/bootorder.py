"""fw_cfg ``bootorder``: the firmware device paths of the devices given ``bootindex=``, lowest index first.

SeaBIOS matches these Open Firmware-style paths against the devices it finds (src/boot.c):
a virtio-blk function at slot S is ``/pci@i0cf8/scsi@S/disk@0,0``, a virtio-net one
``/pci@i0cf8/ethernet@S/ethernet-phy@0`` (``S,F`` for a function other than 0, hex), as
QEMU's qdev firmware paths give them. Paths are joined by newlines and end with a NUL, as
QEMU writes the file; no bootindex anywhere leaves it empty (SeaBIOS then follows the CMOS
boot order from ``-boot order=``).
"""

from __future__ import annotations

from typing import Any, Iterable

from kvmpy.errors import ConfigError

PCI_ROOT = "/pci@i0cf8"
# driver -> (node name, child path) of its firmware path
FW_NODES = {"virtio-blk-pci": ("scsi", "disk@0,0"), "virtio-net-pci": ("ethernet", "ethernet-phy@0")}


def _node(slot: int, function: int, name: str) -> str:
    return f"{name}@{slot:x}" + (f",{function:x}" if function else "")


def bootorder(placements: Iterable[Any]) -> bytes:
    """The file for PCI placements (``spec``, ``slot``, ``function``), ConfigError on a repeated bootindex."""
    entries: list[tuple[int, str]] = []
    seen: dict[int, str] = {}
    for p in placements:
        text = p.spec.get("bootindex")
        if text is None or p.spec.driver not in FW_NODES:
            continue
        where = p.spec.source or f"-device {p.spec.driver}"
        try:
            index = int(text, 0)
        except ValueError:
            raise ConfigError(f"{where}: Parameter 'bootindex' expects an integer") from None
        if index < 0:
            continue  # QEMU: a negative bootindex is "no boot index"
        if index in seen:
            raise ConfigError(f"{where}: The bootindex {index} has already been used")
        seen[index] = where
        name, child = FW_NODES[p.spec.driver]
        entries.append((index, f"{PCI_ROOT}/{_node(p.slot, p.function, name)}/{child}"))
    if not entries:
        return b""
    return "\n".join(path for _, path in sorted(entries)).encode() + b"\0"
