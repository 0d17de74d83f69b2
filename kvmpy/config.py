"""MachineConfig: the one validated description of a VM, produced by both the CLI and YAML files.

Everything a user can get wrong is checked here and reported as a ConfigError
with one line that names the problem; front ends turn it into exit status 2.

One model serves every board: ``arch`` and ``machine`` say which board runs the
guest, and ``validate()`` checks the common rules and then the board's own
(``BOARDS``): its accelerator, memory range, vCPU count, CPU models and
firmware, the -d trace items it honours, and the optional features it has
(-initrd, -qmp, -S, ...). An option the board lacks is refused by name.

The device options (-device, -drive, -blockdev, -netdev, -chardev, -object) become
frozen specs from ``kvmpy.config_devices``; a board lists in its ``Board`` entry which
drivers, drive interfaces and backends it builds (the pc's from ``kvmpy.board_catalog``),
and refuses the others by name.
Booleans in a machine file are on/off, numbers are decimal, as in QEMU's option text.

YAML schema (all keys optional except ``kernel``; unknown keys are refused):

    name: demo                 # -name
    arch: x86_64               # x86_64 (KVM, machine "pc") or riscv64 (TCG fallback, machine "virt")
    machine: pc                # -machine: pc or virt (default: the arch's board; either key selects it)
    accel: kvm                 # kvm or tcg (default: the board's, kvm for pc and tcg for virt)
    memory: 64M                # -m; plain numbers are MiB, suffixes K M G T
    smp: 1                     # -smp
    kernel: path/to/kernel     # -kernel; relative paths are relative to the YAML file
    initrd: path/to/initrd     # -initrd
    append: "console=ttyS0"    # -append
    slots: 4                   # -m ...,slots=  (memory hotplug; refused until the board has it)
    maxmem: 4G                 # -m ...,maxmem=
    serial: stdio              # stdio | null | file:PATH | none (no COM1 device) | chardev:ID
    no_reboot: false           # -no-reboot
    start_paused: false        # -S
    devices:                   # -device: a mapping of its properties, or one string in QEMU's syntax
      - type: isa-debug-exit   # (type: or driver: names the driver)
        iobase: 0xf4
        iosize: 4
      - {driver: virtio-net-pci, netdev: n0, id: nic0}
      - "virtio-blk-pci,drive=d1"
    drives:                    # -drive (file: relative to this file); if: virtio adds its virtio-blk-pci
      - {file: disk.qcow2, if: virtio, format: qcow2, cache: none}
      - {file: data.raw, if: none, id: d1, readonly: true}
    blockdevs:                 # -blockdev, as nested mappings (filename: relative to this file)
      - {driver: qcow2, node-name: b0, file: {driver: file, filename: disk.qcow2}}
    netdevs:                   # -netdev
      - {type: user, id: n0}
    chardevs:                  # -chardev (backend: or type:)
      - {backend: socket, id: c0, path: /tmp/c0.sock, server: true, wait: false}
    objects:                   # -object (qom-type: or type:)
      - {qom-type: memory-backend-ram, id: m0, size: 1G}
    trace: [in_asm, exec]      # -d: QEMU's item names (TRACE_ITEMS); the board must honour each
    trace_file: trace.log      # -D
    qmp: unix:/tmp/q.sock,server,wait=off   # -qmp; a string or a list (tcp:HOST:PORT,server also)
    linux_boot: auto           # Linux bzImage entry: auto, bzimage, or pvh (decompressed on the host)
"""

from __future__ import annotations

import os
import re
import stat
from dataclasses import dataclass, field
from pathlib import Path
from types import MappingProxyType
from typing import Any, Mapping

from kvmpy import board_catalog as catalog
from kvmpy import units
from kvmpy.config_devices import (BlockdevSpec, ChardevSpec, DeviceSpec, DriveSpec, NetdevSpec, ObjectSpec,
                                  check_devices, check_spec_types, finish_devices, finish_drives, yaml_specs)
from kvmpy.display.options import parse_vnc
from kvmpy.display.options import parse_web
from kvmpy.errors import ConfigError, shown
from kvmpy.monitor.endpoint import parse_endpoint

__all__ = ["BOARDS", "Board", "BlockdevSpec", "ChardevSpec", "ConfigError", "DebugExitConfig", "DeviceSpec",
           "DriveSpec", "MachineConfig", "NetdevSpec", "ObjectSpec", "TRACE_ITEMS", "board_named", "debug_exit_of", "from_mapping",
           "load_yaml", "parse_int", "parse_size", "parse_trace", "shown"]

MiB = 1 << 20
GiB = 1 << 30
DEFAULT_MEMORY = 128 * MiB
MAX_MEMORY = 1 << 40  # the largest any board takes (pc); each board has its own range
MAX_SMP = 255
MAX_MACHINE_FILE = 1 << 20  # a machine description is a few hundred bytes; anything this big is a mistake
MAX_YAML_DEPTH = 32  # nesting levels in a machine file (the schema itself needs 3)
MAX_YAML_NODES = 10_000  # nodes after expanding every alias (a real file has under 200)
MAX_INT_DIGITS = 40  # longer integer text is refused before int() sees it

ARCHES = ("x86_64", "riscv64")
ACCELS = ("kvm", "tcg")
SERIAL_RE = re.compile(r"^(stdio|none|null|file:.+|chardev:.+)$")
MAX_MEMORY_SLOTS = 256  # QEMU's ACPI_MAX_RAM_SLOTS
MAX_TRACE_TEXT = 1000  # a -d list of every item is under 100 characters

# The -d vocabulary: QEMU's log item names (qemu -d help), one set for every board;
# each Board lists the ones it honours. tb_stats is kvmpy's own (TB cache statistics).
TRACE_ITEMS: Mapping[str, str] = MappingProxyType({
    "out_asm": "the host code each translated block became",
    "in_asm": "the guest instructions of each block, disassembled when it is translated",
    "op": "the IR of each block before optimization",
    "op_opt": "the IR of each block after optimization",
    "int": "one line per guest interrupt or exception taken",
    "exec": "one line per block executed (large)",
    "cpu": "the guest registers before each block (large)",
    "unimp": "guest use of features the emulation lacks",
    "guest_errors": "invalid guest behaviour (bad register accesses and the like)",
    "nochain": "no direct jumps between blocks, so exec and cpu see every block",
    "tb_stats": "translation cache statistics when the guest exits (kvmpy's own item)",
})
TRACE_FLAGS = frozenset(TRACE_ITEMS)
OPTIONAL_FEATURES = ("initrd", "debug_exit", "qmp", "incoming", "start_paused", "linux_boot", "memory_hotplug",
                     "loadvm")


@dataclass(frozen=True)
class Board:
    """What one machine type accepts; ``MachineConfig.validate`` checks a config against it.

    The table is data, not the board classes themselves, so that validating a
    config never imports a board (the riscv board pulls in the whole TCG).
    """

    machine: str
    arch: str
    accel: str  # the one accelerator this board runs on
    memory: tuple[int, int]  # inclusive byte range
    max_smp: int
    trace: frozenset[str]  # the -d items it honours (a subset of TRACE_ITEMS)
    features: frozenset[str]  # the OPTIONAL_FEATURES it has
    cpus: tuple[str, ...] | None = None  # accepted -cpu models; None: any (KVM's supported CPUID)
    bios: tuple[str, ...] = ()  # accepted -bios values ("none": no firmware)
    firmware: bool = False  # boots a BIOS image (-bios FILE, -L DIR) when there is no -kernel
    bios_files: bool = False  # -bios FILE/default also accepted: the board finds and loads it (riscv64 virt)
    aliases: tuple[str, ...] = ()  # other -machine names for the same board
    alias_prefixes: tuple[str, ...] = ()  # versioned names ("pc-i440fx-8.2") for the same board
    why_no_trace: str = ""  # said when a -d item is refused and the board honours none
    # What the board builds from the device options (names from kvmpy.config_devices); the rest is
    # refused by name. The pc board's sets come from kvmpy.board_catalog, which its factories use too.
    device_drivers: frozenset[str] = frozenset()  # -device drivers
    drive_interfaces: frozenset[str] = frozenset()  # -drive if= values; "none" also admits -blockdev
    netdev_types: frozenset[str] = frozenset()  # -netdev types
    chardev_backends: frozenset[str] = frozenset()  # -chardev backends
    object_types: frozenset[str] = frozenset()  # -object qom-types
    virtio_blk: str = "virtio-blk-pci"  # the device -drive if=virtio implies

    def accepts_name(self, name: str) -> bool:
        return name == self.machine or name in self.aliases or name.startswith(self.alias_prefixes)


BOARDS: Mapping[str, Board] = MappingProxyType({
    "pc": Board(machine="pc", arch="x86_64", accel="kvm", memory=(2 * MiB, MAX_MEMORY), max_smp=MAX_SMP,
                trace=frozenset(), features=frozenset(OPTIONAL_FEATURES), firmware=True,
                aliases=("q35", "microvm"), alias_prefixes=("pc-",),
                device_drivers=catalog.PC_DEVICE_DRIVERS, drive_interfaces=catalog.PC_DRIVE_INTERFACES,
                netdev_types=catalog.PC_NETDEV_TYPES, chardev_backends=catalog.PC_CHARDEV_BACKENDS,
                object_types=catalog.PC_OBJECT_TYPES,
                why_no_trace="the guest runs under KVM, not TCG; KVMPY_LOG=debug logs unhandled ports"),
    # max_smp: kvmpy.boards.riscv_virt.MAX_HARTS (each hart carries a whole TCG engine; QEMU allows 512)
    "virt": Board(machine="virt", arch="riscv64", accel="tcg", memory=(1 * MiB, 16 * GiB), max_smp=8,
                  trace=frozenset({"in_asm", "exec", "int", "cpu", "op", "out_asm", "tb_stats", "nochain"}),
                  features=frozenset(), cpus=("rv64", "any", "max"), bios=("none",), bios_files=True,
                  device_drivers=catalog.VIRT_DEVICE_DRIVERS, drive_interfaces=catalog.VIRT_DRIVE_INTERFACES,
                  netdev_types=catalog.VIRT_NETDEV_TYPES,
                  virtio_blk="virtio-blk-device"),
})
DEFAULT_BOARD: Mapping[str, str] = MappingProxyType({"x86_64": "pc", "riscv64": "virt"})

# How each optional feature is named in a message (the QEMU flag / YAML key a user typed).
_FEATURE_NAMES: Mapping[str, str] = MappingProxyType({"initrd": "-initrd", "debug_exit": "-device isa-debug-exit", "qmp": "-qmp",
                  "incoming": "-incoming", "start_paused": "-S", "linux_boot": "-machine linux-boot",
                  "memory_hotplug": "-m slots/maxmem", "loadvm": "-loadvm"})


def board_named(name: str) -> Board | None:
    """The board a -machine name (or one of its aliases) selects, or None."""
    if not isinstance(name, str):
        return None
    for board in BOARDS.values():
        if board.accepts_name(name):
            return board
    return None


def _size_text(n: int) -> str:
    for unit, letter in ((1 << 40, "T"), (GiB, "G"), (MiB, "M"), (1 << 10, "K")):
        if n % unit == 0:
            return f"{n // unit}{letter}"
    return str(n)


def parse_trace(text: str) -> frozenset[str]:
    """A -d list ("in_asm,exec") as a set of names; unknown names are refused here, board support later."""
    if not isinstance(text, str):
        raise ConfigError(f"invalid -d {shown(text)} (expected a comma-separated list)")
    if len(text) > MAX_TRACE_TEXT:
        raise ConfigError(f"-d list of {len(text)} characters is too long")
    items = frozenset(i.strip() for i in text.split(",") if i.strip())
    _check_trace_names(items)
    return items


def _check_trace_names(items: frozenset) -> None:
    unknown = sorted(shown(i, 20) for i in items if not isinstance(i, str) or i not in TRACE_ITEMS)
    if unknown:
        raise ConfigError(f"unknown -d item(s): {', '.join(unknown[:5])} (known: {', '.join(TRACE_ITEMS)})")


def parse_size(text: str | int, what: str = "size", default_unit: int = MiB) -> int:
    """QEMU-style sizes: ``512`` (MiB by default), ``512M``, ``1G``, ``1.5G``, ``65536K``; exact, never a float."""
    try:
        value = units.parse_size(text, default_unit=default_unit, maximum=units.MAX_SIZE, decorated=True)
    except units.SizeError as exc:
        if exc.too_large:
            raise ConfigError(f"invalid {what} {shown(text)}: too large") from None
        raise ConfigError(f"invalid {what} {shown(text)} (expected e.g. 512M or 2G)") from None
    if value <= 0:
        raise ConfigError(f"invalid {what} {shown(text)}: must be positive")
    return value


def parse_int(text: str | int, what: str, lo: int = 0, hi: int = (1 << 64) - 1) -> int:
    """An integer (decimal, 0x hex, 0o octal) within [lo, hi]; the text is bounded before int() sees it."""
    if isinstance(text, bool) or not isinstance(text, (str, int)):
        raise ConfigError(f"invalid {what}: {shown(text)} (expected an integer)")
    if isinstance(text, str):
        if len(text.strip()) > MAX_INT_DIGITS or not text.isascii():
            raise ConfigError(f"invalid {what} {shown(text)} (expected an integer)")
        try:
            value = int(text, 0)
        except ValueError:
            raise ConfigError(f"invalid {what} {shown(text)} (expected an integer)") from None
    else:
        value = text
    if not lo <= value <= hi:
        raise ConfigError(f"invalid {what} {shown(text)}: out of range ({lo:#x} to {hi:#x})")
    return value


def _check_path(path: Path, what: str) -> None:
    """``path`` names an existing regular file; every way it can fail is a one-line ConfigError."""
    text = str(path)
    if "\0" in text:
        raise ConfigError(f"{what} path {shown(text)} contains a NUL byte")
    try:
        ok = path.is_file()
    except (OSError, ValueError) as exc:  # ENAMETOOLONG, EACCES on a parent, ...
        reason = exc.strerror if isinstance(exc, OSError) and exc.strerror else str(exc)
        raise ConfigError(f"{what} {shown(text)}: {reason}") from None
    if not ok:
        raise ConfigError(f"{what} {shown(text)} does not exist or is not a file")


def _check_image(path: Path, source: str) -> None:
    """A drive's image exists (a file or a block device; opening it is the block layer's job), as QEMU checks."""
    text = str(path)
    if "\0" in text:
        raise ConfigError(f"{source}: the path {shown(text)} contains a NUL byte")
    try:
        mode = path.stat().st_mode
    except (OSError, ValueError) as exc:
        reason = exc.strerror if isinstance(exc, OSError) and exc.strerror else str(exc)
        raise ConfigError(f"{source}: Could not open {shown(text)}: {reason}") from None
    if stat.S_ISDIR(mode):
        raise ConfigError(f"{source}: Could not open {shown(text)}: Is a directory")


@dataclass(frozen=True)
class DebugExitConfig:
    iobase: int = 0x501
    iosize: int = 0x02


_NoneType = type(None)
MAX_ICOUNT_SHIFT = 10  # as QEMU's -icount shift=N
# The type every field must have once built; validate() refuses anything else by name (the
# Python API can put any object in any field, and a wrong type must not become a traceback).
_FIELD_TYPES: Mapping[str, tuple[type, ...]] = MappingProxyType({
    "kernel": (Path, _NoneType), "name": (str, _NoneType), "arch": (str,), "machine": (str,), "accel": (str,),
    "memory": (int,), "smp": (int,), "initrd": (Path, _NoneType), "append": (str,), "serial": (str,),
    "no_reboot": (bool,), "start_paused": (bool,), "debug_exit": (DebugExitConfig, _NoneType),
    "bios": (str, _NoneType), "cpu": (str, _NoneType), "trace": (frozenset,), "trace_file": (Path, _NoneType),
    "qmp": (tuple,), "linux_boot": (str,), "boot_order": (str,), "boot_menu": (bool,), "boot_once": (str,),
    "boot_strict": (bool,), "boot_splash_time": (int, _NoneType), "boot_reboot_timeout": (int, _NoneType), "incoming": (str, _NoneType),
    "loadvm": (str, _NoneType),
    "vnc": (str, _NoneType), "memory_slots": (int,), "web": (str, _NoneType),
    "max_memory": (int, _NoneType), "devices": (tuple,), "drives": (tuple,), "blockdevs": (tuple,),
    "netdevs": (tuple,), "chardevs": (tuple,), "objects": (tuple,), "data_dirs": (tuple,),
    "icount": (int, _NoneType), "tcg_tier": (str,),
})
# The spec type each device-option tuple holds, and the option it came from (for messages).
_SPEC_FIELDS: Mapping[str, tuple[type, str]] = MappingProxyType({
    "devices": (DeviceSpec, "-device"), "drives": (DriveSpec, "-drive"), "blockdevs": (BlockdevSpec, "-blockdev"),
    "netdevs": (NetdevSpec, "-netdev"), "chardevs": (ChardevSpec, "-chardev"), "objects": (ObjectSpec, "-object"),
})


@dataclass(frozen=True)
class MachineConfig:
    """Immutable once built: front ends collect the fields, build it once, then ``validate()`` it.

    ``arch`` and ``machine`` select the board (``BOARDS``); give either, the other follows
    (neither: x86_64 ``pc``). Every other field means the same on every board, and a
    board that lacks a feature refuses it in ``validate()``.
    """

    kernel: Path | None = None
    name: str | None = None
    arch: str = ""  # "" until built: then x86_64, riscv64, or what the machine implies
    accel: str = ""  # "" until built: then the board's own (kvm for pc, tcg for virt)
    memory: int = DEFAULT_MEMORY
    smp: int = 1
    initrd: Path | None = None
    append: str = ""
    serial: str = "stdio"
    no_reboot: bool = False
    start_paused: bool = False
    debug_exit: DebugExitConfig | None = None
    bios: str | None = None
    cpu: str | None = None
    trace: frozenset[str] = field(default_factory=frozenset)
    trace_file: Path | None = None
    qmp: tuple[str, ...] = ()  # -qmp specs: unix:PATH,server[,wait=off] or tcp:HOST:PORT,...
    linux_boot: str = "auto"  # Linux kernels: auto, bzimage (64-bit entry) or pvh (host-side decompression)
    boot_order: str = ""  # -boot order=: a/b floppy, c disk, d CD, n network ("" : the board's default)
    boot_menu: bool = False  # -boot menu=on: SeaBIOS offers its boot menu
    boot_once: str = ""  # -boot once=: the CMOS order of the first boot only (the first reset restores boot_order)
    boot_strict: bool = False  # -boot strict=on: SeaBIOS boots nothing outside the bootindex list
    boot_splash_time: int | None = None  # -boot splash-time=MS: fw_cfg etc/boot-menu-wait
    boot_reboot_timeout: int | None = None  # -boot reboot-timeout=MS: fw_cfg etc/boot-fail-wait (None: -1)
    incoming: str | None = None  # -incoming URI|defer: wait for a migration stream (kvmpy.migration)
    loadvm: str | None = None  # -loadvm TAG: start from a snapshot in the qcow2 disks (kvmpy.migration.savevm)
    machine: str = ""  # "" until built: then the board's canonical name (pc, virt)
    memory_slots: int = 0  # -m slots=: DIMM slots for memory hotplug (0: none)
    max_memory: int | None = None  # -m maxmem=: RAM plus every hotpluggable DIMM, in bytes
    devices: tuple[DeviceSpec, ...] = ()  # -device, then QEMU's implicit ones (-drive if=virtio), in order
    drives: tuple[DriveSpec, ...] = ()  # -drive, -hda..-hdd, -cdrom, a positional image (numbered, with ids)
    blockdevs: tuple[BlockdevSpec, ...] = ()  # -blockdev
    netdevs: tuple[NetdevSpec, ...] = ()  # -netdev
    chardevs: tuple[ChardevSpec, ...] = ()  # -chardev
    objects: tuple[ObjectSpec, ...] = ()  # -object
    data_dirs: tuple[Path, ...] = ()  # -L: where -bios names (and the default BIOS) are looked up first
    vnc: str | None = None  # -vnc [HOST]:N[,password=on] (or -display vnc=...): the VNC console
    web: str | None = None  # -display web[=HOST:PORT]: the browser console (noVNC through websockify)
    icount: int | None = None  # -icount shift=N (TCG): guest time from retired instructions, 2**N ns each; None: real time
    tcg_tier: str = ""  # -accel tcg,tier=py|native: the TCG backend; "" is the default tier (see riscv_virt.DEFAULT_TIER)

    def __post_init__(self) -> None:
        # Callers may pass any iterable; the frozen config holds immutable collections only.
        # A value of the wrong kind is kept as it is, for validate() to refuse by name.
        def put(name: str, value: Any) -> None:
            object.__setattr__(self, name, value)

        if isinstance(self.trace, str):
            put("trace", frozenset(i.strip() for i in self.trace.split(",") if i.strip()))
        elif isinstance(self.trace, (set, frozenset, list, tuple)):
            try:
                put("trace", frozenset(self.trace))
            except TypeError:  # unhashable items
                pass
        if isinstance(self.qmp, str):
            put("qmp", (self.qmp,))
        elif isinstance(self.qmp, list):
            put("qmp", tuple(self.qmp))
        for key in ("kernel", "initrd", "trace_file"):
            value = getattr(self, key)
            if isinstance(value, str):
                put(key, Path(value))
        for key in _SPEC_FIELDS:
            if isinstance(getattr(self, key), list):
                put(key, tuple(getattr(self, key)))
        arch, machine = self.arch, self.machine
        board = None
        if isinstance(machine, str) and isinstance(arch, str):
            board = board_named(machine) if machine else BOARDS.get(DEFAULT_BOARD.get(arch or "x86_64", ""))
        if isinstance(self.drives, tuple):
            put("drives", finish_drives(self.drives))  # QEMU's index and id for each drive
            if isinstance(self.devices, tuple):  # + the board's virtio-blk per if=virtio drive
                put("devices", finish_devices(self.devices, self.drives,
                                              board.virtio_blk if board is not None else "virtio-blk-pci"))
        if isinstance(machine, str) and isinstance(arch, str):
            if board is not None:
                put("machine", board.machine)
                put("arch", arch or board.arch)
                if self.accel == "":
                    put("accel", board.accel)

    def validate(self) -> "MachineConfig":
        """This config, if every field is right for its board; else one-line ConfigError naming the problem."""
        self._check_types()
        if self.arch and self.arch not in ARCHES:
            raise ConfigError(f"unknown architecture {shown(self.arch)} (supported: {', '.join(ARCHES)})")
        board = board_named(self.machine)
        if board is None:
            names = ", ".join(b.machine for b in BOARDS.values())
            raise ConfigError(f"unsupported machine type {shown(self.machine)} (supported: {names})")
        if board.arch != self.arch:
            raise ConfigError(f"machine {board.machine!r} is a {board.arch} board, not {shown(self.arch)}")
        if self.accel not in ACCELS:
            raise ConfigError(f"unknown accelerator {shown(self.accel)} (supported: {', '.join(ACCELS)})")
        if self.accel != board.accel:
            if board.arch == "x86_64":
                raise ConfigError("x86 guests need KVM for now: use -enable-kvm (the TCG fallback runs riscv64 guests)")
            raise ConfigError(f"{board.arch} guests run on the TCG fallback: KVM here is x86 only (drop -enable-kvm)")
        if self.kernel is not None:
            _check_path(self.kernel, "kernel")
        elif board.bios_files and self.bios not in (None, "none"):
            if self.initrd is not None or self.append:
                raise ConfigError(f"{'-initrd' if self.initrd is not None else '-append'} only allowed with -kernel option")
        elif not board.firmware:
            raise ConfigError("no kernel given (use -kernel FILE)")
        else:  # firmware boot, as QEMU's: -initrd and -append need -kernel
            for flag, given in (("-initrd", self.initrd is not None), ("-append", bool(self.append))):
                if given:
                    raise ConfigError(f"{flag} only allowed with -kernel option")
        self._check_features(board)
        if self.initrd is not None:
            for part in str(self.initrd).split(","):
                _check_path(Path(part.split(" ", 1)[0]), "initrd")
        if self.trace_file is not None and "\0" in str(self.trace_file):
            raise ConfigError(f"trace file {shown(str(self.trace_file))} contains a NUL byte")
        lo, hi = board.memory
        if not lo <= self.memory <= hi:
            raise ConfigError(f"memory size {shown(self.memory)} bytes is out of range for machine "
                              f"{board.machine!r} ({_size_text(lo)} to {_size_text(hi)})")
        if self.memory % 4096:
            raise ConfigError("memory size must be a multiple of 4 KiB")
        self._check_memory_hotplug(board)
        if not 1 <= self.smp <= board.max_smp:
            raise ConfigError(f"invalid -smp {shown(self.smp)} (1 to {board.max_smp})")
        if not SERIAL_RE.match(self.serial) or "\0" in self.serial:
            raise ConfigError(f"unsupported serial backend {shown(self.serial)} (use stdio, file:PATH, null, none "
                              "or chardev:ID)")
        serial_chardev = self.serial[len("chardev:"):] if self.serial.startswith("chardev:") else None
        stdio = [c.source or "-chardev stdio" for c in self.chardevs if c.backend == "stdio"]
        if len(stdio) + (self.serial == "stdio") > 1:  # one reader of stdin, as QEMU has
            raise ConfigError(f"{stdio[-1]}: cannot use stdio by multiple character devices")
        check_devices(self.devices, self.drives, self.blockdevs, self.netdevs, self.chardevs, self.objects,
                      serial_chardev)
        for drive in self.drives:
            if drive.file is not None:
                _check_image(drive.file, drive.source or "-drive")
        self._check_board_devices(board)
        if self.debug_exit is not None:
            if self.debug_exit.iosize not in (1, 2, 4):
                raise ConfigError(f"isa-debug-exit iosize {shown(self.debug_exit.iosize)} must be 1, 2 or 4")
            if not (0 <= self.debug_exit.iobase <= 0xFFFF - self.debug_exit.iosize + 1):
                raise ConfigError(f"isa-debug-exit iobase {shown(self.debug_exit.iobase)} is not a port")
        if self.linux_boot not in ("auto", "bzimage", "pvh"):
            raise ConfigError(f"invalid linux_boot {shown(self.linux_boot)} (auto, bzimage or pvh)")
        self._check_trace(board)
        if self.icount is not None:
            if board.accel != "tcg":
                raise ConfigError(f"-icount is a TCG option: machine {board.machine!r} runs on {board.accel.upper()}")
            if not 0 <= self.icount <= MAX_ICOUNT_SHIFT:
                raise ConfigError(f"-icount shift={shown(self.icount)}: the shift must be 0 to {MAX_ICOUNT_SHIFT}")
        if self.tcg_tier and board.accel != "tcg":
            raise ConfigError(f"tier= is a TCG option: machine {board.machine!r} runs on {board.accel.upper()}")
        if self.tcg_tier not in ("", "py", "native"):
            raise ConfigError(f"-accel tcg,tier={shown(self.tcg_tier)}: the tier must be py or native")
        if self.name is not None and ("\n" in self.name or len(self.name) > 256):
            raise ConfigError("invalid -name")
        if self.cpu is not None and board.cpus is not None and self.cpu not in board.cpus:
            raise ConfigError(f"-cpu {shown(self.cpu)} is not supported by machine {board.machine!r} "
                              f"(use {', '.join(board.cpus)})")
        if board.firmware:
            self._check_bios()
        elif self.bios is not None and self.bios not in board.bios and not board.bios_files:
            if board.bios:
                raise ConfigError(f"-bios {shown(self.bios)}: only '-bios {board.bios[0]}' is supported by machine "
                                  f"{board.machine!r} (no firmware is bundled)")
            raise ConfigError(f"machine {board.machine!r} does not support -bios (kvmpy loads the kernel itself)")
        for spec in self.qmp:
            parse_endpoint(spec)  # raises ConfigError naming the bad spec
        if self.vnc is not None:
            parse_vnc(self.vnc)  # raises ConfigError worded as QEMU's
        if self.web is not None:
            parse_web(self.web)
        return self

    def _check_bios(self) -> None:
        """The BIOS image a firmware boot (or -bios) names can be found; -L names directories."""
        from kvmpy.firmware.bios import BiosError, check_size, find_bios

        if not all(isinstance(d, Path) for d in self.data_dirs):
            raise ConfigError("config field 'data_dirs' must hold paths (-L DIR)")
        if self.kernel is not None and self.bios is None:
            return
        try:
            path = find_bios(self.bios, self.data_dirs)
            _check_path(path, "BIOS image")
            check_size(path)
        except BiosError as exc:
            raise ConfigError(str(exc)) from None

    def _check_types(self) -> None:
        for name, types in _FIELD_TYPES.items():
            value = getattr(self, name)
            if not isinstance(value, types) or (isinstance(value, bool) and bool not in types):
                names = " or ".join("None" if t is _NoneType else t.__name__ for t in types)
                raise ConfigError(f"config field {name!r} must be {names}, not {type(value).__name__}")
        if not all(isinstance(i, str) for i in self.trace):
            raise ConfigError("config field 'trace' must hold strings (-d item names)")
        if not all(isinstance(i, str) for i in self.qmp):
            raise ConfigError("config field 'qmp' must hold strings (-qmp specs)")
        d = self.debug_exit
        if d is not None and not all(isinstance(v, int) and not isinstance(v, bool) for v in (d.iobase, d.iosize)):
            raise ConfigError("isa-debug-exit iobase and iosize must be integers")
        for name, (spec_type, option) in _SPEC_FIELDS.items():
            for spec in getattr(self, name):
                if type(spec) is not spec_type:
                    raise ConfigError(f"config field {name!r} must hold {spec_type.__name__} ({option}), "
                                      f"not {type(spec).__name__}")
                check_spec_types(spec, spec_type.__name__)

    def _check_memory_hotplug(self, board: Board) -> None:
        """-m slots=,maxmem=: QEMU's rules first, then whether the board hotplugs memory at all."""
        slots, maxmem = self.memory_slots, self.max_memory
        if slots == 0 and maxmem is None:
            return
        if slots and maxmem is None:
            raise ConfigError("slots specified but no max-size")
        if maxmem is not None and maxmem < self.memory:
            raise ConfigError(f"invalid value of maxmem: maximum memory size ({maxmem:#x}) must be at least the "
                              f"initial memory size ({self.memory:#x})")
        if not 0 <= slots <= MAX_MEMORY_SLOTS:
            raise ConfigError(f"unsupported amount of memory slots: {shown(slots)}")
        if "memory_hotplug" not in board.features:
            raise ConfigError("-m slots/maxmem: memory hotplug options are not supported yet")

    def _check_board_devices(self, board: Board) -> None:
        """Refuse, by name, each device option the board cannot build (yet): they are never ignored."""
        m = board.machine
        for d in self.drives:
            if d.interface not in board.drive_interfaces:
                if d.interface == "ide":
                    what = "CD-ROM drives (IDE) are" if d.media == "cdrom" else "IDE is"
                    raise ConfigError(f"{d.source or '-drive'}: {what} not supported yet; use if=virtio")
                raise ConfigError(f"{d.source or '-drive'}: machine {m!r} cannot attach if={d.interface} drives yet")
        for b in self.blockdevs:
            if "none" not in board.drive_interfaces:
                raise ConfigError(f"{b.source or '-blockdev'}: machine {m!r} cannot attach -blockdev nodes yet")
        for specs, kind, attr, allowed in ((self.netdevs, "netdev type", "type", board.netdev_types),
                                           (self.chardevs, "chardev backend", "backend", board.chardev_backends),
                                           (self.objects, "object type", "qom_type", board.object_types)):
            for spec in specs:
                if getattr(spec, attr) not in allowed:
                    has = f" (it has: {', '.join(sorted(allowed))})" if allowed else ""
                    where = spec.source or "-" + kind.split()[0]
                    raise ConfigError(f"{where}: machine {m!r} has no {kind} {getattr(spec, attr)!r} yet{has}")
        connected = {self.serial[len("chardev:"):]} | {d.get("chardev") for d in self.devices}
        for c in self.chardevs:
            if c.id not in connected:  # QEMU would open it anyway; kvmpy opens a chardev for its user only
                raise ConfigError(f"{c.source or '-chardev'}: chardev {c.id!r} is not connected to anything "
                                  "(use it with -serial chardev:ID or a device's chardev=)")
        for d in self.devices:
            if d.driver == "isa-debug-exit":  # front ends turn it into the debug_exit field
                raise ConfigError(f"{d.source or '-device'}: give isa-debug-exit as debug_exit=DebugExitConfig(...)")
            if d.driver not in board.device_drivers:
                builds = f" (it builds: {', '.join(sorted(board.device_drivers))})" if board.device_drivers else ""
                raise ConfigError(f"{d.source or '-device'}: unsupported device {d.driver!r}: machine {m!r} does not "
                                  f"build it yet{builds}")
            if d.driver in ("virtconsole", "virtserialport") and \
                    not any(s.driver == "virtio-serial-pci" for s in self.devices):
                raise ConfigError(f"{d.source or '-device'}: No 'virtio-serial-bus' bus found for device "
                                  f"'{d.driver}'")

    def _check_features(self, board: Board) -> None:
        """Refuse, by the flag a user typed, every optional feature the board does not have."""
        used = {"initrd": self.initrd is not None, "debug_exit": self.debug_exit is not None, "qmp": bool(self.qmp),
                "incoming": self.incoming is not None, "start_paused": self.start_paused,
                "linux_boot": self.linux_boot != "auto", "loadvm": self.loadvm is not None}  # memory_hotplug: _check_memory_hotplug, after -m's own rules
        for feature, on in used.items():
            if on and feature not in board.features:
                raise ConfigError(f"machine {board.machine!r} ({board.arch}) does not support {_FEATURE_NAMES[feature]}")

    def _check_trace(self, board: Board) -> None:
        _check_trace_names(self.trace)
        if not board.trace and (self.trace or self.trace_file is not None):
            what = "-d " + ",".join(sorted(self.trace)) if self.trace else "-D"
            raise ConfigError(f"machine {board.machine!r} honours no -d items, so {what} is refused "
                              f"({board.why_no_trace})")
        ignored = sorted(self.trace - board.trace)
        if ignored:
            raise ConfigError(f"machine {board.machine!r} does not honour -d {','.join(ignored)} "
                              f"(it honours: {', '.join(sorted(board.trace))})")


YAML_KEYS = {"name", "arch", "machine", "accel", "memory", "smp", "kernel", "initrd", "append", "serial", "no_reboot",
             "start_paused", "devices", "bios", "cpu", "trace", "trace_file", "qmp", "linux_boot", "slots", "maxmem",
             "drives", "blockdevs", "netdevs", "chardevs", "objects", "vnc", "web"}


def _expect(value: Any, types: type | tuple[type, ...], key: str) -> Any:
    if not isinstance(value, types) or isinstance(value, bool) and bool not in (types if isinstance(types, tuple) else (types,)):
        names = " or ".join(t.__name__ for t in (types if isinstance(types, tuple) else (types,)))
        raise ConfigError(f"'{key}' must be {names}, not {type(value).__name__}")
    return value


def from_mapping(data: Any, base_dir: Path) -> MachineConfig:
    """Build a config from parsed YAML; relative paths are resolved against ``base_dir``.

    Every value's type is checked before it is converted, so no container reaches
    ``str()`` (an alias bomb would expand there) and no text reaches ``int()`` unbounded.
    """
    if not isinstance(data, dict):
        raise ConfigError("the machine file must be a YAML mapping of keys to values")
    bad_keys = [k for k in data if not isinstance(k, str)]
    if bad_keys:
        raise ConfigError(f"machine file keys must be strings, not {type(bad_keys[0]).__name__}")
    unknown = set(data) - YAML_KEYS
    if unknown:
        raise ConfigError(f"unknown key(s) in machine file: {', '.join(shown(k, 30) for k in sorted(unknown)[:5])}")

    def path(key: str) -> Path | None:
        v = data.get(key)
        if v is None:
            return None
        text = _expect(v, str, key)
        if "\0" in text:
            raise ConfigError(f"'{key}': the path {shown(text)} contains a NUL byte")
        try:
            p = Path(text).expanduser()
        except RuntimeError:  # "~nouser/...": no such user
            raise ConfigError(f"'{key}': cannot expand the home directory in {shown(text)}") from None
        return p if p.is_absolute() else base_dir / p

    kw: dict[str, Any] = {"kernel": path("kernel"), "initrd": path("initrd"), "trace_file": path("trace_file")}
    if "name" in data:
        name = _expect(data["name"], (str, int), "name")
        kw["name"] = name if isinstance(name, str) else shown(name)
    for key in ("arch", "machine", "accel", "serial", "bios", "cpu", "linux_boot", "append", "vnc", "web"):
        if key in data:
            kw[key] = _expect(data[key], str, key)
    if "memory" in data:
        kw["memory"] = parse_size(_expect(data["memory"], (str, int), "memory"), "memory size")
    if "smp" in data:
        kw["smp"] = _expect(data["smp"], int, "smp")
    for key in ("no_reboot", "start_paused"):
        if key in data:
            kw[key] = _expect(data[key], bool, key)
    if "trace" in data:
        items = _expect(data["trace"], (list, str), "trace")
        if isinstance(items, list):
            kw["trace"] = frozenset(_expect(i, str, "trace items") for i in items)
        else:
            kw["trace"] = parse_trace(items)
    if "qmp" in data:
        q = _expect(data["qmp"], (list, str), "qmp")
        kw["qmp"] = [q] if isinstance(q, str) else [_expect(i, str, "qmp") for i in q]
    if "slots" in data:
        kw["memory_slots"] = _expect(data["slots"], int, "slots")
    if "maxmem" in data:
        kw["max_memory"] = parse_size(_expect(data["maxmem"], (str, int), "maxmem"), "maxmem")
    devices = []
    for spec in yaml_specs(data.get("devices"), "devices", base_dir):
        if spec.driver == "isa-debug-exit":
            kw["debug_exit"] = debug_exit_of(spec)
        else:
            devices.append(spec)
    kw["devices"] = devices
    for key in ("drives", "blockdevs", "netdevs", "chardevs", "objects"):
        kw[key] = yaml_specs(data.get(key), key, base_dir)
    return MachineConfig(**kw)


def debug_exit_of(spec: DeviceSpec) -> DebugExitConfig:
    """``-device isa-debug-exit[,iobase=][,iosize=]`` (or its YAML entry): the board's exit port."""
    unknown = [k for k, _ in spec.props if k not in ("iobase", "iosize")]
    if unknown:
        raise ConfigError(f"{spec.source}: Property 'isa-debug-exit.{unknown[0]}' not found (it has iobase, iosize)")
    return DebugExitConfig(parse_int(spec.get("iobase", "0x501"), "iobase", hi=0xFFFF),
                           parse_int(spec.get("iosize", "0x02"), "iosize", hi=8))


def _yaml_loader(yaml: Any) -> type:
    """A SafeLoader that bounds nesting depth (PyYAML recurses per level) and node count while composing."""

    class BoundedLoader(yaml.SafeLoader):
        def __init__(self, stream: str) -> None:
            super().__init__(stream)
            self.kvmpy_depth = 0
            self.kvmpy_nodes = 0

        def compose_node(self, parent: Any, index: Any) -> Any:
            self.kvmpy_depth += 1
            self.kvmpy_nodes += 1  # bounds the node graph while it is built, before aliases are measured
            try:
                if self.kvmpy_depth > MAX_YAML_DEPTH:
                    raise ConfigError(f"invalid YAML: nested deeper than {MAX_YAML_DEPTH} levels")
                if self.kvmpy_nodes > MAX_YAML_NODES:
                    raise ConfigError(f"invalid YAML: more than {MAX_YAML_NODES} nodes")
                return super().compose_node(parent, index)
            finally:
                self.kvmpy_depth -= 1

    return BoundedLoader


def _expanded_size(yaml: Any, root: Any) -> int:
    """Nodes in the document once every alias is expanded, counted without expanding anything.

    Each node's expanded size is computed once (aliases share nodes), iteratively, so a
    billion-laughs document or a self-referencing alias is refused in microseconds.
    """
    sizes: dict[int, int] = {}
    on_path: set[int] = set()

    def children(node: Any) -> list:
        if isinstance(node, yaml.SequenceNode):
            return list(node.value)
        if isinstance(node, yaml.MappingNode):
            return [n for pair in node.value for n in pair]
        return []

    stack: list[tuple[Any, bool]] = [(root, False)]
    while stack:
        node, done = stack.pop()
        key = id(node)
        if done:
            on_path.discard(key)
            sizes[key] = 1 + sum(sizes[id(c)] for c in children(node))
            if sizes[key] > MAX_YAML_NODES:
                raise ConfigError(f"invalid YAML: more than {MAX_YAML_NODES} nodes once aliases are expanded")
            continue
        if key in sizes:
            continue
        if key in on_path:
            raise ConfigError("invalid YAML: an alias refers to a node that contains it")
        on_path.add(key)
        stack.append((node, True))
        stack.extend((c, False) for c in children(node) if id(c) not in sizes)
    return sizes[id(root)]


def _read_machine_file(path: Path) -> str:
    """The file's text: a regular file of at most MAX_MACHINE_FILE bytes of UTF-8, else ConfigError."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC)  # NONBLOCK: a FIFO must not hang us
    except (OSError, ValueError) as exc:
        reason = exc.strerror if isinstance(exc, OSError) and exc.strerror else str(exc)
        raise ConfigError(f"cannot read machine file {shown(str(path))}: {reason}") from None
    try:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode):
            raise ConfigError(f"machine file {shown(str(path))} is not a regular file")
        with os.fdopen(os.dup(fd), "rb") as f:
            raw = f.read(MAX_MACHINE_FILE + 1)
    except OSError as exc:
        raise ConfigError(f"cannot read machine file {shown(str(path))}: {exc.strerror or exc}") from None
    finally:
        os.close(fd)
    if len(raw) > MAX_MACHINE_FILE:
        raise ConfigError(f"machine file {shown(str(path))} is larger than {MAX_MACHINE_FILE} bytes")
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise ConfigError(f"machine file {shown(str(path))} is not UTF-8 (byte {exc.start})") from None


def _yaml_problem(yaml: Any, exc: Exception) -> str:
    """One line for any PyYAML failure (their own str() spans several lines)."""
    if isinstance(exc, yaml.reader.ReaderError):
        return f"invalid YAML at character {exc.position}: {exc.reason}"
    mark = getattr(exc, "problem_mark", None)
    where = f" at line {mark.line + 1}" if mark else ""
    problem = str(getattr(exc, "problem", None) or getattr(exc, "context", None) or type(exc).__name__)
    if len(problem) > 160:  # PyYAML quotes what it found: an alias or tag may be any length
        problem = problem[:160] + "..."
    return f"invalid YAML{where}: {problem.replace(chr(10), ' ')}"


def parse_yaml(text: str) -> Any:
    """Parse one machine document with bounded depth, bounded alias expansion and bounded integers."""
    import yaml  # only YAML users pay for the import

    try:
        loader = _yaml_loader(yaml)(text)  # the reader checks the characters here already
    except yaml.YAMLError as exc:
        raise ConfigError(_yaml_problem(yaml, exc)) from None
    try:
        node = loader.get_single_node()
        if node is None:
            return None
        _expanded_size(yaml, node)
        return loader.construct_document(node)
    except yaml.YAMLError as exc:
        raise ConfigError(_yaml_problem(yaml, exc)) from None
    except ValueError as exc:  # int() of an over-long number (more than 4300 digits), a bad date, ...
        if isinstance(exc, ConfigError):
            raise
        raise ConfigError(f"invalid YAML: a value cannot be converted ({shown(str(exc), 80)})") from None
    except (RecursionError, OverflowError) as exc:
        raise ConfigError(f"invalid YAML: {type(exc).__name__}") from None
    finally:
        loader.dispose()


def load_yaml(path: Path) -> MachineConfig:
    text = _read_machine_file(path)
    try:
        return from_mapping(parse_yaml(text), path.resolve().parent).validate()
    except ConfigError as exc:
        raise ConfigError(f"{path}: {exc}") from None
