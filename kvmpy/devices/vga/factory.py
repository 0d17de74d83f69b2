"""``-device VGA`` / ``-vga std`` and ``-device bochs-display``: properties, and the legacy windows on a PC.

The factories read QEMU 7.2's properties (``vgamem_mb``, clamped to 1..512 MiB and
rounded up to a power of two as QEMU does; the EDID ones ``edid``, ``xres``,
``yres``, ``xmax``, ``ymax``, ``refresh_rate``), refuse unknown ones with QEMU's
message, and for the std VGA claim the legacy ISA side on the board: ports
0x3B0-0x3DF and 0x1CE-0x1CF, and the 0xA0000-0xBFFFF window over low RAM.
Only one std VGA may exist (QEMU: "Only one global VGA device").

The adapter's option ROM (``romfile``, QEMU's default vgabios-stdvga.bin or
vgabios-bochs-display.bin from Debian's seabios package) reaches SeaBIOS through
fw_cfg as ``pci1234,1111.rom``: SeaBIOS looks a PCI device's ROM up by that name
before trying its ROM BAR, and then runs it with the device's own bus address,
so the VGA BIOS finds its framebuffer and DISPI registers as under QEMU.
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING, Any, Iterable, Protocol

from kvmpy.devices.vga import core as c
from kvmpy.devices.vga import dispi as vbe
from kvmpy.devices.vga.edid import EdidInfo
from kvmpy.devices.vga.pci_vga import DEFAULT_VGAMEM_MB, DEVICE_QEMU_VGA, VENDOR_QEMU, FramebufferLog, VgaPci
from kvmpy.devices.fw_cfg import FwCfg
from kvmpy.errors import ConfigError
from kvmpy.firmware.bios import BiosError, find_bios
from kvmpy.memory.region import MemoryRegion

if TYPE_CHECKING:
    from kvmpy.config_devices import DeviceSpec

log = logging.getLogger(__name__)

COMMON_PROPS = frozenset({"addr", "vgamem_mb", "edid", "xres", "yres", "xmax", "ymax", "refresh_rate", "romfile"})
MAX_ROM = 1 << 20
VGA_PROPS = COMMON_PROPS | {"mmio", "qemu-extended-regs"}
LEGACY_WINDOW_PRIORITY = 1  # over the RAM below 1 MiB, as the board's other MMIO windows


class VgaBoard(Protocol):
    """What the factories use of the PC board: its port bus, memory tree and KVM slots."""

    pio: Any
    root: MemoryRegion
    address_space: Any
    slots: FramebufferLog
    devices: dict[str, Any]
    config: Any


def _option_rom(board: VgaBoard, spec: "DeviceSpec", where: str, default: str) -> None:
    """Hand the adapter's VGA BIOS to SeaBIOS (firmware boots only: fw_cfg exists then)."""
    fw = board.devices.get("fw_cfg")
    name = spec.get("romfile", default)
    if not isinstance(fw, FwCfg) or not name:
        return
    try:
        path = find_bios(name, tuple(getattr(board.config, "data_dirs", ())))
        data = path.read_bytes()[:MAX_ROM + 1]
    except (BiosError, OSError) as exc:
        if spec.get("romfile") is not None:
            raise ConfigError(f'{where}: failed to find romfile "{name}"') from None
        log.warning("%s: no VGA BIOS (%s): the screen stays blank until the guest sets a mode", where, exc)
        return
    if len(data) > MAX_ROM:
        raise ConfigError(f'{where}: romfile "{name}" is larger than 1 MiB')
    fw.add_file(f"pci{VENDOR_QEMU:04x},{DEVICE_QEMU_VGA:04x}.rom", data)


def _vgamem_mb(spec: "DeviceSpec") -> int:
    mb = spec.get_number("vgamem_mb", DEFAULT_VGAMEM_MB, hi=0xFFFFFFFF)
    assert mb is not None
    mb = min(max(mb, 1), 512)
    return 1 << (mb - 1).bit_length()


def _edid(spec: "DeviceSpec") -> EdidInfo | None:
    if not spec.get_bool("edid", True):
        return None
    num = {k: spec.get_number(k, 0, hi=0xFFFFFFFF) or 0 for k in ("xres", "yres", "xmax", "ymax", "refresh_rate")}
    return EdidInfo(prefx=num["xres"], prefy=num["yres"], maxx=num["xmax"], maxy=num["ymax"],
                    refresh_rate=num["refresh_rate"])


def _check(spec: "DeviceSpec", allowed: frozenset[str]) -> str:
    where = spec.source or f"-device {spec.driver}"
    for key, _ in spec.props:
        if key not in allowed:
            raise ConfigError(f"{where}: Property '{spec.driver}.{key}' not found")
    return where


def vga_pci(board: VgaBoard, spec: "DeviceSpec") -> VgaPci:
    """``-device VGA``: the std VGA with its legacy ports and memory window."""
    where = _check(spec, VGA_PROPS)
    if not spec.get_bool("mmio", True):
        raise ConfigError(f"{where}: VGA without its MMIO BAR (mmio=off) is not supported by kvmpy")
    spec.get_bool("qemu-extended-regs", True)  # only checked: the registers are always there
    if any(isinstance(d, VgaPci) and d.legacy for d in board.devices.values()):
        raise ConfigError(f"{where}: Only one global VGA device can be used at a time")
    dev = VgaPci(spec.id or "vga", _vgamem_mb(spec), legacy=True, edid=_edid(spec), dirty_log=board.slots)
    board.pio.map(c.PORT_BASE, c.PORT_END - c.PORT_BASE, dev.legacy_ports, "vga")
    board.pio.map(vbe.IOPORT_INDEX, 2, dev.dispi_ports, "vbe")
    board.root.add_subregion(c.LEGACY_BASE, MemoryRegion.io("vga-lowmem", c.LEGACY_SIZE, dev.legacy_window),
                             priority=LEGACY_WINDOW_PRIORITY)
    board.address_space.commit()
    _option_rom(board, spec, where, "vgabios-stdvga.bin")
    return dev


def bochs_display_pci(board: VgaBoard, spec: "DeviceSpec") -> VgaPci:
    """``-device bochs-display``: the same BARs, no legacy VGA (class 0x0380)."""
    where = _check(spec, COMMON_PROPS)
    dev = VgaPci(spec.id or "bochs-display", _vgamem_mb(spec), legacy=False, edid=_edid(spec),
                 dirty_log=board.slots)
    _option_rom(board, spec, where, "vgabios-bochs-display.bin")
    return dev


def find_display(devices: Iterable[Any]) -> VgaPci | None:
    """The first display adapter among a board's devices (the console's DisplaySource), if any."""
    return next((d for d in devices if isinstance(d, VgaPci)), None)
