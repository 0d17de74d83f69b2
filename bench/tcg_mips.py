"""Guest MIPS of kvmpy's riscv64 TCG against qemu-system-riscv64 and unicorn, side by side.

Workloads are the C test guests (sha256, qsort, coremark-like mix), built with
gcc-riscv64-linux-gnu by tests/guests/riscv/build.py with a compile-time
repeat count (-DREPEAT=n: the guest does the same work n times).

Instruction counts: kvmpy's instret at REPEAT=1,2,3 must be linear,
count(n) = a + b*n (checked exactly; the guests are deterministic), which gives
the count of any build without running it under kvmpy.

QEMU and unicorn run a build sized (after a calibration run) to take about
--seconds, and a REPEAT=1 build; their figure is b*(n-1) / (t(n) - t(1)),
best of --tries, so start-up and translation cancel out.  kvmpy's native tier
is measured the same way (best of two; its "kvmpy n" column), since its
t(3) - t(1) is only tens of ms, within the jitter of its machine-code
compiles; the py tier as b*2 / (t(3) - t(1)) with the best of two runs each
("kvmpy M/s", used for the ratios).  Both also as their whole REPEAT=3 run,
translation included ("whole run").

    python bench/tcg_mips.py [--workloads sha256,qsort,coremark] [--seconds 1.5]
                             [--tries 3] [--no-qemu] [--no-unicorn] [--tiers py,native]

Each kvmpy TCG tier (-accel tcg,tier=...) gets its own row; the native tier's line
also gives its translation cost (machine-code compile time per unit) and the size
of its code cache.
"""

from __future__ import annotations

import argparse
import math
import resource
import subprocess
import sys
import time
from contextlib import ExitStack
from pathlib import Path
from typing import Callable

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from kvmpy.boards import riscv_virt_run as tcg_run  # noqa: E402
from kvmpy.config import MachineConfig  # noqa: E402
from kvmpy.boards.riscv_virt_run import read_program  # noqa: E402
from kvmpy.tcg.target.riscv.translate import INSTRET  # noqa: E402
from tests.guests.riscv.build import GuestBuildError, build_guest  # noqa: E402

QEMU = ["qemu-system-riscv64", "-machine", "virt", "-cpu", "rv64", "-bios", "none",
        "-nographic", "-m", "128M"]
KVMPY_REPEATS = (1, 2, 3)
CALIBRATE_REPEAT = 8
MAX_REPEAT = 1 << 16
SIFIVE_TEST = 0x100000
SIFIVE_PASS = 0x5555
# --clock cpu: CPU time (this process's, or the QEMU child's) instead of wall time, for a
# machine where other work takes the CPUs: a niced benchmark's wall time mostly measures that.
CLOCK = {"cpu": False}


def _now() -> float:
    return time.process_time() if CLOCK["cpu"] else time.perf_counter()


def _child_cpu() -> float:
    ru = resource.getrusage(resource.RUSAGE_CHILDREN)
    return ru.ru_utime + ru.ru_stime


def guest(name: str, repeat: int) -> Path:
    return build_guest(name, defines={"REPEAT": repeat})


def run_kvmpy(elf: Path, tier: str = "py") -> tuple[int, float, str]:
    cfg = MachineConfig(arch="riscv64", kernel=elf, serial="none", tcg_tier=tier)
    with ExitStack() as stack:
        board, _ = tcg_run.build_board(cfg, stack)
        t0 = _now()
        ex = board.run()
        dt = _now() - t0
        if ex.status != 0:
            raise RuntimeError(f"{elf.name}: guest failed under kvmpy: {ex.reason}")
        stats = board.cache.stats.format()
        if board.native is not None:
            stats += "\n  kvmpy " + board.native.stats.format(board.native.code.size)
        return board.cpu.R[INSTRET], dt, stats


def run_qemu(elf: Path) -> float:
    t0, c0 = time.perf_counter(), _child_cpu()
    subprocess.run(QEMU + ["-kernel", str(elf)], stdin=subprocess.DEVNULL,
                   stdout=subprocess.DEVNULL, check=True, timeout=300)
    return _child_cpu() - c0 if CLOCK["cpu"] else time.perf_counter() - t0


def run_unicorn(elf: Path) -> float:
    import unicorn
    from unicorn import riscv_const as rc

    img = read_program(elf)
    mu = unicorn.Uc(unicorn.UC_ARCH_RISCV, unicorn.UC_MODE_RISCV64)
    mu.mem_map(0x80000000, 128 << 20)
    mu.mem_map(0x10000000, 0x1000)          # UART as plain memory: LSR reads 0x60 below
    mu.mem_write(0x10000005, b"\x60")
    for seg in img.segments:
        mu.mem_write(seg.paddr, bytes(img.segment_bytes(seg)) + bytes(seg.memsz - seg.filesz))
    # sifive_test stays unmapped: its write ends the run through the unmapped-access
    # hook, which (unlike a mapped-write hook) keeps unicorn's fast store path.
    result: list[int] = []

    def on_unmapped(uc, access, addr, size, value, user):
        result.append(value if addr == SIFIVE_TEST else -1)
        return False

    mu.hook_add(unicorn.UC_HOOK_MEM_WRITE_UNMAPPED, on_unmapped)
    mu.reg_write(rc.UC_RISCV_REG_PC, img.entry)
    t0 = _now()
    try:
        mu.emu_start(img.entry, 0xFFFFFFFFFFFFFFFF, timeout=300_000_000)
    except unicorn.UcError:
        pass
    dt = _now() - t0
    if result != [SIFIVE_PASS]:
        raise RuntimeError(f"{elf.name}: guest did not pass under unicorn ({result})")
    return dt


def instruction_model(name: str, tier: str) -> tuple[int, int, float, float, str]:
    """(a, b, best kvmpy seconds at REPEAT=1 and at REPEAT=3, TB stats of the last
    REPEAT=3 run) with count(REPEAT=n) = a + b*n, checked at 1, 2, 3."""
    counts, times = [], {}
    stats = ""
    for n in KVMPY_REPEATS + (KVMPY_REPEATS[0], KVMPY_REPEATS[-1]):
        count, dt, st = run_kvmpy(guest(name, n), tier)
        counts.append(count)
        times[n] = min(times.get(n, dt), dt)
        if n == KVMPY_REPEATS[-1]:
            stats = st
    counts = counts[:len(KVMPY_REPEATS)]
    b = counts[1] - counts[0]
    a = counts[0] - b
    for n, c in zip(KVMPY_REPEATS, counts):
        if a + b * n != c or b <= 0:
            raise RuntimeError(f"{name}: instret is not linear in REPEAT: {counts}")
    return a, b, times[KVMPY_REPEATS[0]], times[KVMPY_REPEATS[-1]], stats


def differential_mips(name: str, b: int, runner: Callable[[Path], float], seconds: float,
                      tries: int) -> tuple[float, int]:
    """(M instr/s, repeat) of ``runner`` from t(REPEAT=n) - t(REPEAT=1), n sized to ``seconds``."""
    t1 = min(runner(guest(name, 1)) for _ in range(tries))
    # Calibrate: grow n until the extra time is well above start-up jitter, then size n to it.
    n = CALIBRATE_REPEAT
    while True:
        extra = runner(guest(name, n)) - t1
        if extra >= 0.2 * seconds or n >= MAX_REPEAT:
            break
        n *= 4
    per_rep = max(extra, 1e-3) / (n - 1)
    n = min(MAX_REPEAT, max(CALIBRATE_REPEAT, 1 << round(math.log2(seconds / per_rep))))
    tn = min(runner(guest(name, n)) for _ in range(tries))
    dt = tn - t1
    if dt <= 0.1 * tn:
        raise RuntimeError(f"{name}: REPEAT={n} run ({tn:.3f} s) too close to REPEAT=1 ({t1:.3f} s)")
    return b * (n - 1) / dt / 1e6, n


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--workloads", default="sha256,qsort,coremark")
    ap.add_argument("--seconds", type=float, default=1.5,
                    help="target run time of the long QEMU/unicorn builds (default 1.5)")
    ap.add_argument("--tries", type=int, default=3, help="best of this many QEMU/unicorn runs")
    ap.add_argument("--no-qemu", action="store_true")
    ap.add_argument("--no-unicorn", action="store_true")
    ap.add_argument("--tiers", default="py,native", help="kvmpy TCG tiers to measure (default py,native)")
    ap.add_argument("--clock", choices=("wall", "cpu"), default="wall",
                    help="time kvmpy and QEMU by wall time (default) or by CPU time (a busy machine)")
    args = ap.parse_args(argv)
    CLOCK["cpu"] = args.clock == "cpu"
    names = [n for n in args.workloads.split(",") if n]
    tiers = [t for t in args.tiers.split(",") if t]
    if not tiers or any(t not in ("py", "native") for t in tiers):
        print("error: --tiers takes py and/or native", file=sys.stderr)
        return 2
    if not names or not 0.1 <= args.seconds <= 60 or not 1 <= args.tries <= 20:
        print("error: need workloads, 0.1 <= --seconds <= 60 and 1 <= --tries <= 20", file=sys.stderr)
        return 2
    rows = []
    for n in names:
        per_tier = []
        for tier in tiers:
            print(f"{n}: kvmpy tier={tier} at REPEAT={','.join(map(str, KVMPY_REPEATS))}...", file=sys.stderr)
            try:
                a, b, kt1, kt3, stats = instruction_model(n, tier)
            except GuestBuildError as exc:
                print(f"error: {exc}", file=sys.stderr)
                return 2
            kcount = a + b * KVMPY_REPEATS[-1]
            kwhole = kcount / kt3 / 1e6
            span = KVMPY_REPEATS[-1] - KVMPY_REPEATS[0]
            k = b * span / max(kt3 - kt1, 1e-6) / 1e6
            kn = KVMPY_REPEATS[-1]
            if tier == "native":
                print(f"{n}: kvmpy tier={tier} at a calibrated REPEAT...", file=sys.stderr)
                k, kn = differential_mips(n, b, lambda elf, t=tier: run_kvmpy(elf, t)[1], args.seconds, 2)
            per_tier.append((tier, a, b, kcount, kwhole, k, kn, stats))
        q = u = float("nan")
        qn = un = 0
        if not args.no_qemu:
            print(f"{n}: qemu...", file=sys.stderr)
            q, qn = differential_mips(n, b, run_qemu, args.seconds, args.tries)
        if not args.no_unicorn:
            print(f"{n}: unicorn...", file=sys.stderr)
            u, un = differential_mips(n, b, run_unicorn, args.seconds, args.tries)
        for tier, a, b, kcount, kwhole, k, kn, stats in per_tier:
            rows.append((f"{n}/{tier}", a, b, kcount, kwhole, k, kn, q, qn, u, un, stats))
    print(f"instructions = a + b*REPEAT (kvmpy instret, linear at REPEAT={KVMPY_REPEATS}); "
          f"kvmpy M/s from t(n) - t(1), best of 2 (py: n=3); QEMU/unicorn from t(REPEAT=n) - t(REPEAT=1), "
          f"best of {args.tries}; whole run = kvmpy's REPEAT=3 run with translation; {args.clock} time")
    print(f"{'workload':16} {'a':>6} {'b/REPEAT':>9} {'kvmpy insns':>12} {'whole run':>10} {'kvmpy n':>8}"
          f" {'kvmpy M/s':>10}"
          f" {'qemu n':>7} {'qemu M/s':>9} {'unicorn n':>10} {'unicorn M/s':>12}"
          f" {'kvmpy/qemu':>11} {'kvmpy/unicorn':>14}")
    for n, a, b, kcount, kwhole, k, kn, q, qn, u, un, stats in rows:
        print(f"{n:16} {a:6d} {b:9d} {kcount:12d} {kwhole:10.2f} {kn:8d} {k:10.2f} {qn:7d} {q:9.1f} {un:10d}"
              f" {u:12.1f} {k / q:11.4f} {k / u:14.4f}")
        print(f"  kvmpy {stats}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
