"""PCI: the configuration-space device model, the bus with config mechanism #1, and the PC's bridges.

``device`` owns one function's 256-byte config space and its BARs, ``bus`` the
0xCF8/0xCFC config mechanism, the slots and INTx routing, ``i440fx`` and
``piix3`` the host and ISA bridges of QEMU's pc machine.
"""
