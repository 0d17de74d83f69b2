"""The pc board's catalogue: the -device drivers, -drive interfaces, -netdev types, -chardev backends and
-object types it builds, each named once.

``kvmpy.config`` checks a configuration against these names (``BOARDS["pc"]``)
without importing a board or a device; the board builds the same entries
(``kvmpy.boards.pc_pci`` imports each PCI function's factory explicitly, so the
dependency stays visible, and a test holds its table equal to ``PC_PCI_DRIVERS``).
The -netdev types are those ``kvmpy.net.netdev`` has a
builder for (its table is their one list; the module imports no backend).
"""

from __future__ import annotations

from kvmpy.net.netdev import netdev_types

# -device drivers that are PCI functions; kvmpy.boards.pc_pci maps each to its factory (a test holds the two equal).
PC_PCI_DRIVERS = (
    "virtio-rng-pci",
    "virtio-blk-pci",
    "virtio-net-pci",
    "virtio-serial-pci",
    "VGA",  # display adapters (-vga std is a VGA too)
    "bochs-display",
)

# -device drivers that are not PCI functions of their own.
PC_OTHER_DRIVERS = (
    "virtconsole",  # ports of a virtio-serial-pci (kvmpy.devices.virtio.console)
    "virtserialport",
    "pc-dimm",  # memory hotplug (kvmpy.boards.pc_memhp)
    "ide-hd",  # units on the PIIX3 IDE function's buses (kvmpy.devices.ide.units)
    "ide-cd",
)

PC_DEVICE_DRIVERS = frozenset(PC_PCI_DRIVERS) | frozenset(PC_OTHER_DRIVERS)
PC_DRIVE_INTERFACES = frozenset({"ide", "virtio", "none"})  # -drive if=; "none" also admits -blockdev
PC_NETDEV_TYPES = frozenset(netdev_types())
PC_CHARDEV_BACKENDS = frozenset({"null", "socket", "stdio", "file", "pty"})
PC_OBJECT_TYPES = frozenset({"memory-backend-ram", "memory-backend-file"})

# The riscv64 virt board: -device drivers on its virtio-mmio transports (kvmpy.boards.riscv_virtio's
# FACTORIES, held equal by a test), and the -drive interfaces (if=virtio makes a virtio-blk-device).
VIRT_DEVICE_DRIVERS = frozenset({"virtio-blk-device", "virtio-net-device", "virtio-rng-device"})
VIRT_DRIVE_INTERFACES = frozenset({"virtio", "none"})
VIRT_NETDEV_TYPES = PC_NETDEV_TYPES
