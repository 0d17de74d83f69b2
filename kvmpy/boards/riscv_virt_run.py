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

from kvmpy.boards.riscv_virt import VirtBoard
from kvmpy.config import TRACE_ITEMS, ConfigError, MachineConfig, parse_size, parse_trace
from kvmpy.devices.chardev import open_backend
from kvmpy.loader.elf import EM_RISCV, ElfImage, read_elf
from kvmpy.loader.errors import LoaderError
from kvmpy.tcg.errors import TcgUserError
from kvmpy.tcg.target.riscv.translate import INSTRET

log = logging.getLogger(__name__)

MAX_RESETS = 100


def read_program(path: Path) -> ElfImage:
    """The riscv64 executable to run; a bad file is a ``TcgUserError``."""
    try:
        return read_elf(path, "kernel", machine=EM_RISCV, elf_class=64, exec_only=True)
    except LoaderError as exc:
        raise TcgUserError(str(exc)) from None


def build_board(cfg: MachineConfig, stack: ExitStack) -> tuple[VirtBoard, ElfImage]:
    """A board with the program loaded; its console and trace file are closed by ``stack``."""
    cfg.validate()
    if cfg.machine != "virt":
        raise ConfigError(f"the riscv64 runner runs machine 'virt', not {cfg.machine!r}")
    assert cfg.kernel is not None  # validate() requires it
    img = read_program(Path(cfg.kernel))
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
    board = VirtBoard(cfg.memory, console, trace, cfg.trace)
    board.load(img, cfg.kernel)
    return board, img


def run_machine(cfg: MachineConfig) -> int:
    """Run the guest until it exits; return the exit status."""
    with ExitStack() as stack:
        board, img = build_board(cfg, stack)
        start = time.perf_counter()
        resets = 0
        while True:
            ex = board.run()
            if not ex.reset:
                break
            if cfg.no_reboot or resets >= MAX_RESETS:
                break
            resets += 1
            board.reset(img, cfg.kernel)
        elapsed = time.perf_counter() - start
        instret = board.cpu.R[INSTRET]
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
        description="Run a riscv64 ELF on kvmpy's TCG fallback (QEMU virt board, one hart).",
        prefix_chars="-", allow_abbrev=False)
    p.add_argument("-machine", "-M", default="virt", help="board (only 'virt')")
    p.add_argument("-cpu", default="rv64", help="CPU model (only 'rv64')")
    p.add_argument("-bios", default="none", help="firmware (only 'none')")
    p.add_argument("-kernel", required=True, type=Path, help="riscv64 ELF to load (by physical address)")
    p.add_argument("-append", default="", help="kernel command line (accepted, not passed: no DTB)")
    p.add_argument("-m", default="128M", help="RAM size, e.g. 128M (default 128M)")
    p.add_argument("-smp", type=int, default=1, help="number of harts (only 1)")
    p.add_argument("-nographic", action="store_true", help="serial on stdio (the default)")
    p.add_argument("-serial", default=None, help="stdio | file:PATH | none")
    p.add_argument("-d", default="", metavar="ITEMS",
                   help=f"QEMU log items ({','.join(TRACE_ITEMS)}); the virt board honours "
                        "in_asm,exec,cpu,int,op,out_asm,tb_stats,nochain")
    p.add_argument("-D", type=Path, default=None, metavar="FILE", help="write traces to FILE")
    p.add_argument("-no-reboot", action="store_true", help="exit instead of resetting")
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        cfg = MachineConfig(
            arch="riscv64", machine=args.machine, accel="tcg", kernel=args.kernel,
            memory=parse_size(args.m, "memory size"), bios=args.bios, append=args.append,
            serial=args.serial or "stdio", trace=parse_trace(args.d), trace_file=args.D, smp=args.smp,
            cpu=args.cpu, no_reboot=args.no_reboot)
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
