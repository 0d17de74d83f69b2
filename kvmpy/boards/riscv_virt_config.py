"""RiscvMachineConfig: everything needed to run a riscv64 ``virt`` guest under the TCG.

The kvmpy CLI/YAML layer (kvmpy/cli.py) and the board's own small CLI
(``riscv_virt_run.main``) both build one of these; ``validate()`` is the single place that rejects bad values, with a
``TcgUserError`` whose message fits on one line.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from kvmpy import units
from kvmpy.tcg.errors import TcgUserError

TRACE_FLAGS = frozenset({"in_asm", "exec", "int", "cpu", "op", "out_asm", "tb_stats", "nochain"})
MIN_MEMORY = 1 << 20
MAX_MEMORY = 16 << 30
DEFAULT_MEMORY = 128 << 20


@dataclass
class RiscvMachineConfig:
    kernel: Path
    memory: int = DEFAULT_MEMORY          # bytes
    bios: str = "none"
    append: str = ""                      # kernel command line (kept for -append; no DTB yet)
    serial: str = "stdio"                 # "stdio" | "file:PATH" | "none"
    trace: set[str] = field(default_factory=set)
    trace_file: Path | None = None        # None: stderr
    smp: int = 1
    machine: str = "virt"
    cpu: str = "rv64"
    no_reboot: bool = False

    def validate(self) -> None:
        if self.machine != "virt":
            raise TcgUserError(f"machine {self.machine!r} is not supported by the riscv64 TCG (only 'virt')")
        if self.cpu not in ("rv64", "any", "max"):
            raise TcgUserError(f"cpu {self.cpu!r} is not supported (use rv64)")
        if self.bios != "none":
            raise TcgUserError(
                f"-bios {self.bios}: only '-bios none' is supported (no OpenSBI firmware is bundled)")
        if self.smp != 1:
            raise TcgUserError(f"-smp {self.smp}: the riscv64 TCG runs one hart only")
        if not MIN_MEMORY <= self.memory <= MAX_MEMORY:
            raise TcgUserError(
                f"memory size {self.memory} bytes is outside {MIN_MEMORY >> 20} MiB..{MAX_MEMORY >> 30} GiB")
        if self.memory % 4096:
            raise TcgUserError(f"memory size {self.memory} is not a multiple of 4 KiB")
        if not (self.serial in ("stdio", "none") or self.serial.startswith("file:") and len(self.serial) > 5):
            raise TcgUserError(f"serial backend {self.serial!r}: use stdio, none or file:PATH")
        unknown = set(self.trace) - TRACE_FLAGS
        if unknown:
            raise TcgUserError(
                f"unknown -d item(s) {', '.join(sorted(unknown))}; known: {', '.join(sorted(TRACE_FLAGS))}")
        if not Path(self.kernel).is_file():
            raise TcgUserError(f"{self.kernel}: kernel not found")


def parse_memory_size(text: str) -> int:
    """QEMU's -m syntax: a number with an optional K/M/G/T suffix; a bare number means MiB (kvmpy.units)."""
    try:
        return units.parse_size(text, default_unit=1 << 20, decorated=True)
    except units.SizeError as exc:
        what = "too large" if exc.too_large else "not a memory size (examples: 128M, 1G)"
        raise TcgUserError(f"-m {text[:40]!r}: {what}") from None


def parse_trace_flags(text: str) -> set[str]:
    flags = {f.strip() for f in text.split(",") if f.strip()}
    unknown = flags - TRACE_FLAGS
    if unknown:
        raise TcgUserError(
            f"-d: unknown item(s) {', '.join(sorted(unknown))}; known: {', '.join(sorted(TRACE_FLAGS))}")
    return flags
