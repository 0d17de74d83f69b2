"""run_machine(): the entry point the kvmpy CLI/YAML front end calls for riscv64 guests.

Returns the process exit status with QEMU's meaning: sifive_test pass -> 0,
fail -> its code, HTIF tohost exit -> ``value >> 1``.  User mistakes raise
``TcgUserError`` (one-line message; the CLI exits 2).
"""

from __future__ import annotations

import logging
import sys
import time
from contextlib import ExitStack
from pathlib import Path
from typing import IO

from kvmpy.tcg_fallback.boards.virt import BoardIO, VirtBoard
from kvmpy.tcg_fallback.config import RiscvMachineConfig
from kvmpy.tcg_fallback.elf import parse_elf
from kvmpy.tcg_fallback.errors import TcgUserError
from kvmpy.tcg_fallback.riscv.translate import INSTRET

log = logging.getLogger(__name__)

MAX_RESETS = 100


def _serial_output(cfg: RiscvMachineConfig, stack: ExitStack):
    if cfg.serial == "none":
        return (lambda data: None), None
    if cfg.serial == "stdio":
        out = sys.stdout.buffer

        def write(data: bytes) -> None:
            out.write(data)
            out.flush()
        try:
            fd = sys.stdin.fileno()
        except (OSError, ValueError, AttributeError):
            fd = None
        return write, fd
    path = Path(cfg.serial[5:])
    try:
        f = stack.enter_context(path.open("wb", buffering=0))
    except OSError as exc:
        raise TcgUserError(f"{path}: cannot open serial output file: {exc.strerror}") from exc
    return f.write, None


def build_board(cfg: RiscvMachineConfig, stack: ExitStack) -> tuple[VirtBoard, "object"]:
    cfg.validate()
    img = parse_elf(Path(cfg.kernel))
    output, input_fd = _serial_output(cfg, stack)
    trace: IO[str] | None = None
    if cfg.trace:
        if cfg.trace_file is not None:
            try:
                trace = stack.enter_context(Path(cfg.trace_file).open("w", buffering=1))
            except OSError as exc:
                raise TcgUserError(f"{cfg.trace_file}: cannot open trace file: {exc.strerror}") from exc
        else:
            trace = sys.stderr
    board = VirtBoard(cfg.memory, BoardIO(output, input_fd, trace), cfg.trace)
    board.load(img, cfg.kernel)
    return board, img


def run_machine(cfg: RiscvMachineConfig) -> int:
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
            out = board.io.trace or sys.stderr
            mips = instret / elapsed / 1e6 if elapsed > 0 else 0.0
            out.write(f"{board.cache.stats.format()}\n"
                      f"instructions={instret} seconds={elapsed:.3f} MIPS={mips:.2f}\n")
            out.flush()
        return ex.status
