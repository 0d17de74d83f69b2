"""Standalone CLI: ``python -m kvmpy.tcg_fallback -machine virt -kernel prog.elf ...``.

Takes the qemu-system-riscv64 flags the TCG fallback understands; the main
``kvmpy`` CLI offers the same through kvmpy/cli.py.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from kvmpy.tcg_fallback.config import RiscvMachineConfig, parse_memory_size, parse_trace_flags
from kvmpy.tcg_fallback.errors import TcgUserError


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
                   help="trace items: in_asm,exec,cpu,int,op,out_asm,tb_stats,nochain")
    p.add_argument("-D", type=Path, default=None, metavar="FILE", help="write traces to FILE")
    p.add_argument("-no-reboot", action="store_true", help="exit instead of resetting")
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    from kvmpy.tcg_fallback.run import run_machine       # keep --help fast
    try:
        cfg = RiscvMachineConfig(
            kernel=args.kernel, memory=parse_memory_size(args.m), bios=args.bios,
            append=args.append, serial=args.serial or "stdio", trace=parse_trace_flags(args.d),
            trace_file=args.D, smp=args.smp, machine=args.machine, cpu=args.cpu,
            no_reboot=args.no_reboot)
        return run_machine(cfg)
    except TcgUserError as exc:
        print(f"kvmpy: {exc}", file=sys.stderr)
        return exc.exit_code
    except KeyboardInterrupt:
        print("kvmpy: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
