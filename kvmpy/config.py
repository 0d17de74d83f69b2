"""MachineConfig: the one validated description of a VM, produced by both the CLI and YAML files.

Everything a user can get wrong is checked here and reported as a ConfigError
with one line that names the problem; front ends turn it into exit status 2.

YAML schema (all keys optional except ``kernel``; unknown keys are refused):

    name: demo                 # -name
    arch: x86_64               # x86_64 (KVM) or riscv64 (TCG fallback, machine "virt")
    accel: kvm                 # kvm or tcg
    memory: 64M                # -m; plain numbers are MiB, suffixes K M G T
    smp: 1                     # -smp
    kernel: path/to/kernel     # -kernel; relative paths are relative to the YAML file
    initrd: path/to/initrd     # -initrd
    append: "console=ttyS0"    # -append
    serial: stdio              # stdio | null | file:PATH | none (no COM1 device)
    no_reboot: false           # -no-reboot
    start_paused: false        # -S
    devices:                   # -device
      - type: isa-debug-exit
        iobase: 0xf4
        iosize: 4
    trace: [in_asm, exec]      # -d (TCG)
    trace_file: trace.log      # -D
    qmp: unix:/tmp/q.sock,server,wait=off   # -qmp; a string or a list (tcp:HOST:PORT,server also)
    linux_boot: auto           # Linux bzImage entry: auto, bzimage, or pvh (decompressed on the host)
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

MiB = 1 << 20
DEFAULT_MEMORY = 128 * MiB
MAX_MEMORY = 1 << 40
MAX_SMP = 255

ARCHES = ("x86_64", "riscv64")
ACCELS = ("kvm", "tcg")
SERIAL_RE = re.compile(r"^(stdio|none|null|file:.+)$")
TRACE_FLAGS = {"in_asm", "exec", "cpu", "int", "op", "op_opt", "out_asm", "tb_stats", "unimp", "guest_errors", "nochain"}


class ConfigError(ValueError):
    """A user mistake in the machine description."""


_SIZE_RE = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([kmgtKMGT]?)(?:i?[bB])?\s*$")
_UNITS = {"": MiB, "k": 1 << 10, "m": MiB, "g": 1 << 30, "t": 1 << 40}


def parse_size(text: str | int, what: str = "size", default_unit: int = MiB) -> int:
    """QEMU-style sizes: ``512`` (MiB by default), ``512M``, ``1G``, ``1.5G``, ``65536K``."""
    if isinstance(text, bool):
        raise ConfigError(f"invalid {what}: {text!r}")
    if isinstance(text, int):
        value = text * default_unit
    else:
        m = _SIZE_RE.match(str(text))
        if not m:
            raise ConfigError(f"invalid {what} {text!r} (expected e.g. 512M or 2G)")
        unit = _UNITS[m.group(2).lower()] if m.group(2) else default_unit
        value = int(float(m.group(1)) * unit)
    if value <= 0:
        raise ConfigError(f"invalid {what} {text!r}: must be positive")
    return value


def parse_int(text: str | int, what: str) -> int:
    if isinstance(text, bool):
        raise ConfigError(f"invalid {what}: {text!r}")
    if isinstance(text, int):
        return text
    try:
        return int(str(text), 0)
    except ValueError:
        raise ConfigError(f"invalid {what} {text!r} (expected an integer)") from None


@dataclass
class DebugExitConfig:
    iobase: int = 0x501
    iosize: int = 0x02


@dataclass
class MachineConfig:
    kernel: Path | None = None
    name: str | None = None
    arch: str = "x86_64"
    accel: str = "kvm"
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
    trace: set[str] = field(default_factory=set)
    trace_file: Path | None = None
    qmp: list[str] = field(default_factory=list)  # -qmp specs: unix:PATH,server[,wait=off] or tcp:HOST:PORT,...
    linux_boot: str = "auto"  # Linux kernels: auto, bzimage (64-bit entry) or pvh (host-side decompression)
    incoming: str | None = None  # -incoming URI|defer: wait for a migration stream (kvmpy.migration)

    def validate(self) -> "MachineConfig":
        if self.arch not in ARCHES:
            raise ConfigError(f"unknown architecture {self.arch!r} (supported: {', '.join(ARCHES)})")
        if self.accel not in ACCELS:
            raise ConfigError(f"unknown accelerator {self.accel!r} (supported: {', '.join(ACCELS)})")
        if self.arch == "x86_64" and self.accel != "kvm":
            raise ConfigError("x86 guests need KVM for now: use -enable-kvm (the TCG fallback runs riscv64 guests)")
        if self.arch == "riscv64" and self.accel == "kvm":
            raise ConfigError("riscv64 guests run on the TCG fallback: KVM here is x86 only (drop -enable-kvm)")
        if self.kernel is None:
            raise ConfigError("no kernel given (use -kernel FILE)")
        if not self.kernel.is_file():
            raise ConfigError(f"kernel {self.kernel} does not exist or is not a file")
        if self.initrd is not None and self.arch == "x86_64":
            for part in str(self.initrd).split(","):
                f = Path(part.split(" ", 1)[0])
                if not f.is_file():
                    raise ConfigError(f"initrd {f} does not exist or is not a file")
        if not (2 * MiB <= self.memory <= MAX_MEMORY):
            raise ConfigError(f"memory size {self.memory} bytes is out of range (2M to 1T)")
        if self.memory % 4096:
            raise ConfigError("memory size must be a multiple of 4 KiB")
        if not (1 <= self.smp <= MAX_SMP):
            raise ConfigError(f"invalid -smp {self.smp} (1 to {MAX_SMP})")
        if self.arch == "riscv64" and self.smp != 1:
            raise ConfigError("the riscv64 TCG fallback runs one vCPU (-smp 1)")
        if not SERIAL_RE.match(self.serial):
            raise ConfigError(f"unsupported serial backend {self.serial!r} (use stdio, file:PATH, null or none)")
        if self.debug_exit is not None:
            if self.debug_exit.iosize not in (1, 2, 4):
                raise ConfigError(f"isa-debug-exit iosize {self.debug_exit.iosize} must be 1, 2 or 4")
            if not (0 <= self.debug_exit.iobase <= 0xFFFF - self.debug_exit.iosize + 1):
                raise ConfigError(f"isa-debug-exit iobase {self.debug_exit.iobase:#x} is not a port")
        if self.linux_boot not in ("auto", "bzimage", "pvh"):
            raise ConfigError(f"invalid linux_boot {self.linux_boot!r} (auto, bzimage or pvh)")
        unknown = self.trace - TRACE_FLAGS
        if unknown:
            raise ConfigError(f"unknown -d item(s): {', '.join(sorted(unknown))}")
        if self.name is not None and ("\n" in self.name or len(self.name) > 256):
            raise ConfigError("invalid -name")
        if self.qmp:
            if self.arch != "x86_64":
                raise ConfigError("-qmp is supported for x86 KVM machines only")
            from kvmpy.monitor.endpoint import parse_endpoint  # raises ConfigError naming the bad spec

            for spec in self.qmp:
                parse_endpoint(spec)
        return self


YAML_KEYS = {"name", "arch", "accel", "memory", "smp", "kernel", "initrd", "append", "serial", "no_reboot",
             "start_paused", "devices", "bios", "cpu", "trace", "trace_file", "qmp", "linux_boot"}


def _expect(value: Any, types: type | tuple[type, ...], key: str) -> Any:
    if not isinstance(value, types) or isinstance(value, bool) and bool not in (types if isinstance(types, tuple) else (types,)):
        names = " or ".join(t.__name__ for t in (types if isinstance(types, tuple) else (types,)))
        raise ConfigError(f"'{key}' must be {names}, not {type(value).__name__}")
    return value


def from_mapping(data: Any, base_dir: Path) -> MachineConfig:
    """Build a config from parsed YAML; relative paths are resolved against ``base_dir``."""
    if not isinstance(data, dict):
        raise ConfigError("the machine file must be a YAML mapping of keys to values")
    unknown = set(map(str, data)) - YAML_KEYS
    if unknown:
        raise ConfigError(f"unknown key(s) in machine file: {', '.join(sorted(unknown))}")

    def path(key: str) -> Path | None:
        v = data.get(key)
        if v is None:
            return None
        p = Path(_expect(v, str, key)).expanduser()
        return p if p.is_absolute() else base_dir / p

    cfg = MachineConfig()
    cfg.kernel = path("kernel")
    cfg.initrd = path("initrd")
    cfg.trace_file = path("trace_file")
    if "name" in data:
        cfg.name = str(_expect(data["name"], (str, int), "name"))
    for key in ("arch", "accel", "serial", "bios", "cpu", "linux_boot"):
        if key in data:
            setattr(cfg, key, _expect(data[key], str, key))
    if "append" in data:
        cfg.append = _expect(data["append"], str, "append")
    if "memory" in data:
        cfg.memory = parse_size(_expect(data["memory"], (str, int), "memory"), "memory size")
    if "smp" in data:
        cfg.smp = _expect(data["smp"], int, "smp")
    for key in ("no_reboot", "start_paused"):
        if key in data:
            setattr(cfg, key, _expect(data[key], bool, key))
    if "trace" in data:
        items = _expect(data["trace"], (list, str), "trace")
        cfg.trace = set(items.split(",")) if isinstance(items, str) else {str(i) for i in items}
    if "qmp" in data:
        q = _expect(data["qmp"], (list, str), "qmp")
        cfg.qmp = [q] if isinstance(q, str) else [str(_expect(i, str, "qmp")) for i in q]
    for i, dev in enumerate(_expect(data.get("devices", []) or [], list, "devices")):
        if not isinstance(dev, dict) or not isinstance(dev.get("type"), str):
            raise ConfigError(f"devices[{i}] must be a mapping with a 'type'")
        if dev["type"] != "isa-debug-exit":
            raise ConfigError(f"devices[{i}]: unsupported device type {dev['type']!r}")
        extra = set(dev) - {"type", "iobase", "iosize"}
        if extra:
            raise ConfigError(f"devices[{i}]: unknown key(s) {', '.join(sorted(map(str, extra)))}")
        cfg.debug_exit = DebugExitConfig(parse_int(dev.get("iobase", 0x501), "iobase"),
                                         parse_int(dev.get("iosize", 2), "iosize"))
    return cfg


def load_yaml(path: Path) -> MachineConfig:
    import yaml  # only YAML users pay for the import

    try:
        text = path.read_text()
    except OSError as exc:
        raise ConfigError(f"cannot read machine file {path}: {exc.strerror}") from None
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" at line {mark.line + 1}" if mark else ""
        raise ConfigError(f"{path}: invalid YAML{where}: {getattr(exc, 'problem', exc)}") from None
    try:
        return from_mapping(data, path.resolve().parent).validate()
    except ConfigError as exc:
        raise ConfigError(f"{path}: {exc}") from None
