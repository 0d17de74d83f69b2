#!/usr/bin/env python3
"""Exit latency: the cost of one port-I/O exit under kvmpy and under QEMU, side by side.

One multiboot guest (tests/guests/pio_loop.S) runs a tight loop of port I/O.
Each hypervisor runs it with a small and a large iteration count, through its
own command line with the same flags; the difference of the wall times divided
by the difference of the counts is the cost per iteration, with start-up
cancelled out. The best of ``--repeat`` runs is kept for each point.

Two loops are measured:
  in  0x3fd  a read of COM1's line status register: a real exit on both.
  out 0x80   a write to the POST/delay port: QEMU exits every time; kvmpy lets
             KVM coalesce these effect-free writes, so most never leave the kernel.

Usage:  python bench/exit_latency.py            # on this host's KVM, then in the nested bed
        python bench/exit_latency.py --host     # this host's KVM only
        python bench/exit_latency.py --bed      # only inside the nested complete-KVM bed
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.harness import Table, run_in_bed, vmms  # noqa: E402
from tests.guests.build import build_guest  # noqa: E402

FLAGS = ["-m", "64", "-display", "none", "-nodefaults", "-serial", "null", "-no-reboot",
         "-device", "isa-debug-exit,iobase=0xf4,iosize=0x04"]
MODES = {"in 0x3fd (UART LSR)": 1, "out 0x80 (POST port)": 0}
PASS = 33


def _wall(cmd: list[str], timeout: float) -> float:
    start = time.perf_counter()
    p = subprocess.run(cmd, capture_output=True, timeout=timeout)
    elapsed = time.perf_counter() - start
    if p.returncode != PASS:
        raise RuntimeError(f"{cmd[0]} exited {p.returncode}: {p.stderr.decode(errors='replace')[-500:]}")
    return elapsed


def per_exit_us(name: str, cmd: list[str], kernel: Path, mode: int, n_small: int, n_large: int,
                repeat: int, timeout: float) -> float | None:
    """µs per iteration, or None when the runs' own spread is as large as the difference being measured
    (a loaded machine: a figure from that would be noise, even negative)."""
    def point(n: int) -> list[float]:
        return [_wall([*cmd, *FLAGS, "-kernel", str(kernel), "-append", f"n={n} mode={mode}"], timeout)
                for _ in range(repeat)]

    small, large = point(n_small), point(n_large)
    diff = min(large) - min(small)
    noise = max(max(small) - min(small), max(large) - min(large))
    if diff <= 0 or diff <= noise:
        print(f"  {name} mode={mode}: {n_large - n_small} more iterations took {diff * 1e3:+.1f} ms, within "
              f"the runs' spread of {noise * 1e3:.1f} ms; not measurable here (try a larger --n)", flush=True)
        return None
    return diff / (n_large - n_small) * 1e6


def measure(n_small: int, n_large: int, repeat: int, timeout: float, label: str) -> None:
    kernel = build_guest("pio_loop")
    runners = vmms()
    print(f"exit latency on {label}: {n_small} vs {n_large} iterations, best of {repeat}", flush=True)
    table = Table(label="loop", label_width=24, width=10, precision=2, ours="kvmpy µs", theirs="QEMU µs")
    table.header()
    for name, mode in MODES.items():
        us = {vmm: per_exit_us(vmm, cmd, kernel, mode, n_small, n_large, repeat, timeout)
              for vmm, cmd in runners.items()}
        table.row(name, us["kvmpy"], us.get("QEMU"), missing="(noisy)" if "QEMU" in us else "(no qemu)")


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    where = ap.add_mutually_exclusive_group()
    where.add_argument("--host", action="store_true", help="only this host's /dev/kvm")
    where.add_argument("--bed", action="store_true", help="only inside the nested complete-KVM bed")
    ap.add_argument("--n", type=int, default=None, help="large iteration count (default 100000 host, 20000 bed)")
    ap.add_argument("--repeat", type=int, default=3, help="runs per point; the fastest is kept")
    ap.add_argument("--inside-bed", action="store_true", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.inside_bed:
        n = args.n or 20000
        measure(n // 5, n, args.repeat, 600, "the nested bed (complete KVM)")
        return 0
    if not args.bed:
        n = args.n or 100000
        measure(n // 5, n, args.repeat, 300, "this host's KVM")
    if not args.host:
        build_guest("pio_loop")  # build on the host: L1 has a read-only view of the toolchain cache
        print(flush=True)
        return run_in_bed(__file__, ["--repeat", str(args.repeat)] + (["--n", str(args.n)] if args.n else []))
    return 0


if __name__ == "__main__":
    sys.exit(main())
