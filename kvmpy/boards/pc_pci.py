"""The PC's -device PCI functions: the driver registry, slot allocation, and the board's table lines.

``PCI_DRIVERS`` maps a -device driver name to its factory ``(board, spec) ->
PciDevice``; a device module owns its factory; the driver's name is also one line of
``kvmpy.board_catalog.PC_PCI_DRIVERS``, which the configuration checks. The
configuration's ``-device`` specs for these drivers get PCI addresses as QEMU
gives them, in command-line order: ``addr=SLOT[.FN]`` (hex, as QEMU parses it)
is honoured and must be free, otherwise the first free slot from 2 up
(function 0), slots 0 and 1 being the i440FX and the PIIX3. Each becomes a
line of the board's device table (``pci_device_lines``), named by its address,
so it is built, reset, saved, restored and migrated like every other device;
the line's factory plugs the function into the board's PCI bus.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from types import MappingProxyType
from typing import TYPE_CHECKING, Callable, Mapping, cast

from kvmpy.devices.pci.bus import PciHost
from kvmpy.devices.pci.device import PciDevice
from kvmpy.boards.lazy_factory import LazyFactory
from kvmpy.errors import ConfigError

if TYPE_CHECKING:
    from kvmpy.boards.pc import PcBoard
    from kvmpy.config import MachineConfig
    from kvmpy.config_devices import DeviceSpec

PciFactory = Callable[["PcBoard", "DeviceSpec"], PciDevice]


# The factory of each PCI driver kvmpy.board_catalog.PC_PCI_DRIVERS names; each lives in its device's
# module, which is imported only when a VM builds that device.
PCI_DRIVERS: Mapping[str, PciFactory] = MappingProxyType({
    "virtio-rng-pci": LazyFactory("kvmpy.devices.virtio.rng", "virtio_rng_pci"),
    "virtio-blk-pci": LazyFactory("kvmpy.devices.virtio.blk", "virtio_blk_pci"),
    "virtio-net-pci": LazyFactory("kvmpy.devices.virtio.net", "virtio_net_pci"),
    "virtio-serial-pci": LazyFactory("kvmpy.devices.virtio.console", "virtio_serial_pci"),
    "VGA": LazyFactory("kvmpy.devices.vga.factory", "vga_pci"),
    "bochs-display": LazyFactory("kvmpy.devices.vga.factory", "bochs_display_pci"),
})

FIRST_FREE_SLOT = 2
BOARD_FUNCTIONS = {(0, 0): "i440FX", (1, 0): "PIIX3"}  # what the PC's table plugs before any -device
SLOTS, FUNCTIONS = 32, 8
# QEMU's set_pci_devfn: strtoul(..., 16) for the slot, then optionally "." and the function.
_ADDR = re.compile(r"\s*\+?(?:0[xX])?([0-9a-fA-F]+)(?:\.\s*\+?(?:0[xX])?([0-9a-fA-F]+))?")


@dataclass(frozen=True)
class PciPlacement:
    """One -device PCI function and the address it gets."""

    spec: "DeviceSpec"
    slot: int
    function: int

    @property
    def name(self) -> str:
        """The board table's name for it (also its vmstate section): driver and address, stable per command line."""
        return f"{self.spec.driver}@{self.slot:02x}.{self.function}"


def parse_addr(spec: "DeviceSpec") -> tuple[int, int] | None:
    """``addr=SLOT[.FN]`` as QEMU reads it, or None when absent; ConfigError with QEMU's message."""
    text = spec.get("addr")
    if text is None:
        return None
    m = _ADDR.fullmatch(text)
    if m is not None:
        slot, fn = int(m.group(1), 16), int(m.group(2) or "0", 16)
        if slot < SLOTS and fn < FUNCTIONS:
            return slot, fn
    raise ConfigError(f"{spec.source or '-device ' + spec.driver}: "
                      f"Property '{spec.driver}.addr' doesn't take value '{text}'")


def _label(spec: "DeviceSpec") -> str:
    return f"{spec.driver},id={spec.id if spec.id is not None else '(null)'}"


def place(specs: tuple["DeviceSpec", ...]) -> list[PciPlacement]:
    """Addresses for the PCI -device specs, in order, as QEMU assigns them (ConfigError if impossible)."""
    taken: dict[tuple[int, int], str] = dict(BOARD_FUNCTIONS)
    out: list[PciPlacement] = []
    for spec in specs:
        if spec.driver not in PCI_DRIVERS:
            continue
        where = spec.source or f"-device {spec.driver}"
        addr = parse_addr(spec)
        if addr is None:
            free = [s for s in range(FIRST_FREE_SLOT, SLOTS) if (s, 0) not in taken]
            if not free:
                raise ConfigError(f"{where}: PCI: no slot/function available for {spec.driver}, "
                                  "all in use or reserved")
            addr = (free[0], 0)
        elif addr in taken:
            raise ConfigError(f"{where}: PCI: slot {addr[0]} function {addr[1]} not available for "
                              f"{spec.driver}, in use by {taken[addr]}")
        taken[addr] = _label(spec)
        out.append(PciPlacement(spec, *addr))
    return out


def _builder(p: PciPlacement) -> Callable[["PcBoard"], PciDevice]:
    factory = PCI_DRIVERS[p.spec.driver]

    def make(board: "PcBoard") -> PciDevice:
        fn = factory(board, p.spec)
        try:
            cast(PciHost, board.devices["pci-host"]).bus.plug(fn, p.slot, p.function)
        except Exception:
            fn.close()
            raise
        return fn
    return make


def pci_device_lines(config: "MachineConfig") -> tuple[tuple[str, Callable[["PcBoard"], PciDevice]], ...]:
    """(table name, factory) for every PCI -device of ``config``, to append to the board's device table."""
    specs = tuple(getattr(config, "devices", ()))
    return tuple((p.name, _builder(p)) for p in place(specs))
