"""Guest MIPS of kvmpy's riscv64 TCG against qemu-system-riscv64 and unicorn, side by side.

Workloads are the C test guests (sha256, qsort, coremark-like mix), built with
gcc-riscv64-linux-gnu by tests/tcg_fallback/guests/build.py.  The instruction
count is kvmpy's instret for the run (the programs are deterministic, so the
same count applies to QEMU and unicorn).  QEMU's figure subtracts its start-up
time, measured with the trivial "hello" guest.

    python bench/tcg_mips.py [--workloads sha256,qsort,coremark] [--no-qemu] [--no-unicorn]
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import tempfile
import time
from contextlib import ExitStack
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "tests" / "tcg_fallback" / "guests"))

from build import build_guest  # noqa: E402

from kvmpy.tcg_fallback import run as tcg_run  # noqa: E402
from kvmpy.tcg_fallback.config import RiscvMachineConfig  # noqa: E402
from kvmpy.tcg_fallback.elf import parse_elf  # noqa: E402
from kvmpy.tcg_fallback.riscv.translate import INSTRET  # noqa: E402

QEMU = ["qemu-system-riscv64", "-machine", "virt", "-cpu", "rv64", "-bios", "none",
        "-nographic", "-m", "128M"]


def run_kvmpy(elf: Path) -> tuple[int, float, str]:
    cfg = RiscvMachineConfig(kernel=elf, serial="none")
    with ExitStack() as stack:
        board, _ = tcg_run.build_board(cfg, stack)
        t0 = time.perf_counter()
        ex = board.run()
        dt = time.perf_counter() - t0
        if ex.status != 0:
            raise RuntimeError(f"{elf.name}: guest failed under kvmpy: {ex.reason}")
        return board.cpu.R[INSTRET], dt, board.cache.stats.format()


def run_qemu(elf: Path) -> float:
    t0 = time.perf_counter()
    subprocess.run(QEMU + ["-kernel", str(elf)], stdin=subprocess.DEVNULL,
                   stdout=subprocess.DEVNULL, check=True, timeout=120)
    return time.perf_counter() - t0


def run_unicorn(elf: Path) -> float:
    import unicorn
    from unicorn import riscv_const as rc

    img = parse_elf(elf)
    mu = unicorn.Uc(unicorn.UC_ARCH_RISCV, unicorn.UC_MODE_RISCV64)
    mu.mem_map(0x80000000, 128 << 20)
    mu.mem_map(0x10000000, 0x1000)          # UART as plain memory: LSR reads 0x60 below
    mu.mem_map(0x100000, 0x1000)            # sifive_test: a write stops the run
    mu.mem_write(0x10000005, b"\x60")
    for paddr, data, memsz in img.segments:
        mu.mem_write(paddr, data + bytes(memsz - len(data)))

    def on_write(uc, access, addr, size, value, user):
        uc.emu_stop()

    mu.hook_add(unicorn.UC_HOOK_MEM_WRITE, on_write, begin=0x100000, end=0x100fff)
    mu.reg_write(rc.UC_RISCV_REG_PC, img.entry)
    t0 = time.perf_counter()
    mu.emu_start(img.entry, 0xFFFFFFFFFFFFFFFF, timeout=120_000_000)
    return time.perf_counter() - t0


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--workloads", default="sha256,qsort,coremark")
    ap.add_argument("--no-qemu", action="store_true")
    ap.add_argument("--no-unicorn", action="store_true")
    args = ap.parse_args(argv)
    names = [n for n in args.workloads.split(",") if n]
    print("building guests...", file=sys.stderr)
    elfs = {n: build_guest(n) for n in names + ["hello"]}
    qemu_startup = 0.0
    if not args.no_qemu:
        qemu_startup = min(run_qemu(elfs["hello"]) for _ in range(3))
        print(f"qemu start-up {qemu_startup * 1e3:.0f} ms (subtracted)")
    print(f"{'workload':10} {'instructions':>13} {'kvmpy MIPS':>11} {'qemu MIPS':>10} {'unicorn MIPS':>13}"
          f" {'qemu/kvmpy':>11} {'unicorn/kvmpy':>14}")
    for n in names:
        print(f"running {n}...", file=sys.stderr)
        count, dt, stats = run_kvmpy(elfs[n])
        k = count / dt / 1e6
        q = u = float("nan")
        if not args.no_qemu:
            qdt = max(run_qemu(elfs[n]) - qemu_startup, 1e-4)
            q = count / qdt / 1e6
        if not args.no_unicorn:
            u = count / run_unicorn(elfs[n]) / 1e6
        print(f"{n:10} {count:13d} {k:11.2f} {q:10.1f} {u:13.1f} {q / k:11.1f} {u / k:14.1f}")
        print(f"  {stats}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
