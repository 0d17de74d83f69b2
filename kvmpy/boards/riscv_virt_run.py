"""Running a riscv64 ``virt`` guest: ``run_machine()`` for the kvmpy CLI/YAML front end, and ``main()``.

Both take kvmpy's one ``MachineConfig`` (kvmpy/config.py), whose ``validate()``
checks it against the ``virt`` board's entry in ``config.BOARDS``.
``run_machine`` returns the process exit status with QEMU's meaning:
sifive_test pass -> 0, fail -> its code, HTIF tohost exit -> ``value >> 1``.
User mistakes raise ``ConfigError`` (the config) or ``TcgUserError`` (the
program, the console, the trace file): one-line messages; the CLI exits 2.
``main`` is the standalone CLI with qemu-system-riscv64's flags
(``python -m kvmpy.tcg_fallback`` runs it).
"""

from __future__ import annotations

import argparse
import logging
import sys
import time
from contextlib import ExitStack
from pathlib import Path
from typing import IO

from kvmpy.boards.riscv_virt import DEFAULT_TIER, BootImage, BootSpec, VirtBoard
from kvmpy.boards.riscv_virtio import build_virtio_devices
from kvmpy.config import TRACE_ITEMS, ConfigError, MachineConfig, parse_size, parse_trace
from kvmpy.devices.chardev import open_backend
from kvmpy.loader.elf import EM_RISCV, ElfImage, read_elf
from kvmpy.loader.errors import LoaderError
from kvmpy.loader.files import read_boot_file
from kvmpy.tcg.errors import TcgUserError
from kvmpy.tcg.target.riscv.translate import INSTRET

log = logging.getLogger(__name__)

MAX_RESETS = 100


ELF_MAGIC = b"\x7fELF"
# -bios default: QEMU's own name for its OpenSBI (Debian's qemu-system-data), else Debian's opensbi package
DEFAULT_FIRMWARE = (Path("/usr/share/qemu/opensbi-riscv64-generic-fw_dynamic.bin"),
                    Path("/usr/lib/riscv64-linux-gnu/opensbi/generic/fw_dynamic.bin"))
FIRMWARE_DIRS = (Path("/usr/share/qemu"),)


def read_program(path: Path) -> ElfImage:
    """The riscv64 executable to run; a bad file is a ``TcgUserError``."""
    try:
        return read_elf(path, "kernel", machine=EM_RISCV, elf_class=64, exec_only=True)
    except LoaderError as exc:
        raise TcgUserError(str(exc)) from None


def read_image(path: Path, what: str) -> BootImage:
    """A -kernel or -bios file: a riscv64 ELF, or else a raw image (as QEMU tries them)."""
    try:
        data = read_boot_file(path, what)
    except LoaderError as exc:
        raise TcgUserError(str(exc)) from None
    if data[:4] == ELF_MAGIC:
        return BootImage(path, elf=read_program(path))
    if not data:
        raise TcgUserError(f"{what} {path}: the file is empty")
    return BootImage(path, raw=data)


def find_firmware(name: str, data_dirs: tuple[Path, ...] = ()) -> Path:
    """The file ``-bios NAME`` means: 'default' is OpenSBI fw_dynamic; a bare name is looked up
    in the -L directories and QEMU's data directory, as qemu_find_file does."""
    if name == "default":
        candidates: tuple[Path, ...] = DEFAULT_FIRMWARE
    elif "/" in name:
        candidates = (Path(name),)
    else:
        candidates = tuple(d / name for d in (*data_dirs, *FIRMWARE_DIRS)) + (Path(name),)
    for p in candidates:
        try:
            if p.is_file():
                return p
        except (OSError, ValueError):
            continue
    if name == "default":
        raise TcgUserError("-bios default: OpenSBI not found (install Debian's opensbi package)")
    raise TcgUserError(f"Unable to load the RISC-V firmware {name[:200]!r}")


def boot_spec(cfg: MachineConfig) -> BootSpec:
    """What -bios, -kernel and -append ask the board to boot."""
    firmware = None
    if cfg.bios is not None and cfg.bios != "none":
        firmware = read_image(find_firmware(cfg.bios, cfg.data_dirs), "firmware")
    kernel = None
    if cfg.kernel is not None:
        # Without firmware kvmpy runs ELF programs only (a raw image there is almost always a mistake);
        # after firmware a raw -kernel is the next stage (U-Boot's u-boot.bin, Linux's Image).
        kernel = read_image(Path(cfg.kernel), "kernel") if firmware is not None else \
            BootImage(cfg.kernel, elf=read_program(Path(cfg.kernel)))
    return BootSpec(kernel=kernel, firmware=firmware, bootargs=cfg.append or "")


def build_board(cfg: MachineConfig, stack: ExitStack) -> tuple[VirtBoard, BootSpec]:
    """A booted board and what it booted; its console and trace file are closed by ``stack``."""
    cfg.validate()
    if cfg.machine != "virt":
        raise ConfigError(f"the riscv64 runner runs machine 'virt', not {cfg.machine!r}")
    spec = boot_spec(cfg)
    if spec.kernel is None and spec.firmware is None:
        raise ConfigError("machine 'virt' needs -kernel or -bios FILE")
    try:
        console = open_backend(cfg.serial)
    except ValueError as exc:
        raise TcgUserError(str(exc)) from None
    stack.callback(console.close)
    trace: IO[str] | None = None
    if cfg.trace:
        if cfg.trace_file is not None:
            try:
                trace = stack.enter_context(Path(cfg.trace_file).open("w", buffering=1))
            except OSError as exc:
                raise TcgUserError(f"{cfg.trace_file}: cannot open trace file: {exc.strerror}") from exc
        else:
            trace = sys.stderr
    board = VirtBoard(cfg.memory, console, trace, cfg.trace,
                      ns_per_insn=None if cfg.icount is None else 1 << cfg.icount,
                      tier=cfg.tcg_tier or DEFAULT_TIER, harts=cfg.smp)
    stack.callback(board.close)
    for _, device in build_virtio_devices(cfg, board.ram.memory):
        board.plug_virtio(device)
    board.boot(spec)
    return board, spec


def run_machine(cfg: MachineConfig) -> int:
    """Run the guest until it exits; return the exit status."""
    with ExitStack() as stack:
        board, _ = build_board(cfg, stack)
        start = time.perf_counter()
        resets = 0
        while True:
            ex = board.run()
            if not ex.reset:
                break
            if cfg.no_reboot or resets >= MAX_RESETS:
                break
            resets += 1
            board.reset()
        elapsed = time.perf_counter() - start
        instret = sum(h.cpu.R[INSTRET] for h in board.harts)
        log.info("%s after %d instructions in %.3f s", ex.reason, instret, elapsed)
        if "tb_stats" in cfg.trace:
            out = board.trace or sys.stderr
            mips = instret / elapsed / 1e6 if elapsed > 0 else 0.0
            out.write(f"{board.cache.stats.format()}\n"
                      f"instructions={instret} seconds={elapsed:.3f} MIPS={mips:.2f}\n")
            out.flush()
        return ex.status


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python -m kvmpy.tcg_fallback",
        description="Run a riscv64 ELF on kvmpy's TCG fallback (QEMU virt board).",
        prefix_chars="-", allow_abbrev=False)
    p.add_argument("-machine", "-M", default="virt", help="board (only 'virt')")
    p.add_argument("-cpu", default="rv64", help="CPU model (only 'rv64')")
    p.add_argument("-bios", default="none",
                   help="firmware: none, default (OpenSBI fw_dynamic) or FILE (ELF, or raw at 0x80000000)")
    p.add_argument("-kernel", type=Path, default=None,
                   help="riscv64 ELF (by physical address) or raw image (0x80200000 after firmware)")
    p.add_argument("-append", default="", help="kernel command line (/chosen/bootargs in the device tree)")
    p.add_argument("-m", default="128M", help="RAM size, e.g. 128M (default 128M)")
    p.add_argument("-smp", type=int, default=1, help="number of harts (default 1)")
    p.add_argument("-nographic", action="store_true", help="serial on stdio (the default)")
    p.add_argument("-serial", default=None, help="stdio | file:PATH | none")
    p.add_argument("-d", default="", metavar="ITEMS",
                   help=f"QEMU log items ({','.join(TRACE_ITEMS)}); the virt board honours "
                        "in_asm,exec,cpu,int,op,out_asm,tb_stats,nochain")
    p.add_argument("-D", type=Path, default=None, metavar="FILE", help="write traces to FILE")
    p.add_argument("-no-reboot", action="store_true", help="exit instead of resetting")
    p.add_argument("-icount", type=int, default=None, metavar="SHIFT",
                   help="deterministic time: each instruction is 2**SHIFT ns of mtime (default: real time)")
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        cfg = MachineConfig(
            arch="riscv64", machine=args.machine, accel="tcg", kernel=args.kernel,
            memory=parse_size(args.m, "memory size"), bios=args.bios, append=args.append,
            serial=args.serial or "stdio", trace=parse_trace(args.d), trace_file=args.D, smp=args.smp,
            cpu=args.cpu, no_reboot=args.no_reboot, icount=args.icount)
        return run_machine(cfg)
    except ConfigError as exc:
        print(f"kvmpy: {exc}", file=sys.stderr)
        return 2
    except TcgUserError as exc:
        print(f"kvmpy: {exc}", file=sys.stderr)
        return exc.exit_code
    except KeyboardInterrupt:
        print("kvmpy: interrupted", file=sys.stderr)
        return 130
