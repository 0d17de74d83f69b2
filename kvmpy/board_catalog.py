"""The pc board's catalogue: the -device drivers, -drive interfaces, -netdev types, -chardev backends and
-object types it builds, each named once.

``kvmpy.config`` checks a configuration against these names (``BOARDS["pc"]``)
without importing a board or a device, and the board builds from the same
entries: ``kvmpy.boards.pc_pci`` imports each PCI function's factory from the
``"module:function"`` named here, so a new PCI driver is one line in
``PC_PCI_DRIVERS``. The -netdev types are those ``kvmpy.net.netdev`` has a
builder for (its table is their one list; the module imports no backend).
"""

from __future__ import annotations

from types import MappingProxyType
from typing import Mapping

from kvmpy.net.netdev import netdev_types

# -device driver -> its factory ``(board, spec) -> PciDevice``, as "module:function" (imported by the board only).
PC_PCI_DRIVERS: Mapping[str, str] = MappingProxyType({
    "virtio-rng-pci": "kvmpy.devices.virtio.rng:virtio_rng_pci",
    "virtio-blk-pci": "kvmpy.devices.virtio.blk:virtio_blk_pci",
    "virtio-net-pci": "kvmpy.devices.virtio.net:virtio_net_pci",
    "virtio-serial-pci": "kvmpy.devices.virtio.console:virtio_serial_pci",
})

# -device drivers that are not PCI functions of their own.
PC_OTHER_DRIVERS = (
    "virtconsole",  # ports of a virtio-serial-pci (kvmpy.devices.virtio.console)
    "virtserialport",
    "pc-dimm",  # memory hotplug (kvmpy.boards.pc_memhp)
)

PC_DEVICE_DRIVERS = frozenset(PC_PCI_DRIVERS) | frozenset(PC_OTHER_DRIVERS)
PC_DRIVE_INTERFACES = frozenset({"virtio", "none"})  # -drive if=; "none" also admits -blockdev
PC_NETDEV_TYPES = frozenset(netdev_types())
PC_CHARDEV_BACKENDS = frozenset({"null", "socket", "stdio", "file", "pty"})
PC_OBJECT_TYPES = frozenset({"memory-backend-ram", "memory-backend-file"})
