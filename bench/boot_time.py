#!/usr/bin/env python3
"""Boot time: Debian's cloud kernel + a busybox initramfs, launch to poweroff, kvmpy against QEMU.

Both hypervisors boot the same bzImage and initramfs with the same flags
(``-enable-kvm -m 512M -smp N -nodefaults -serial stdio -no-reboot``, command line
``console=ttyS0 quiet panic=-1``); the initramfs's /init prints the guest's uptime
and runs ``poweroff -f``. Each run is timed from launching the command to its
exit. kvmpy is also timed with the bzImage decompressed on the host (PVH entry).
They alternate for ``--repeat`` rounds; the best wall time of each is compared.

This needs a complete KVM: on a PVM host the script prepares the kernel and the
initramfs, then re-runs itself inside the nested bed (kvmpy.testbed).

    python bench/boot_time.py [--repeat 3] [--smp 1]
"""

from __future__ import annotations

import argparse
import os
import re
import shutil
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

INIT = """#!/bin/sh
/bin/busybox mount -t proc proc /proc
echo "BENCH init uptime=$(/bin/busybox cut -d' ' -f1 /proc/uptime)"
/bin/busybox poweroff -f
"""
APPEND = "console=ttyS0 quiet panic=-1"


def prepare() -> tuple[Path, Path]:
    from kvmpy.tools.initrd import main as initrd_main
    from kvmpy.tools.fetch import cache_root, fetch_kernel

    kernel = fetch_kernel("cloud-amd64")
    d = cache_root() / "bench-boot"
    d.mkdir(parents=True, exist_ok=True)
    init = d / "init.sh"
    initrd = d / "initrd.gz"
    if not initrd.exists() or not init.exists() or init.read_text() != INIT:
        init.write_text(INIT)
        if initrd_main(["-o", str(initrd), "--init", str(init)]) != 0:
            sys.exit("bench: kvmpy initrd failed")
    return kernel.vmlinuz, initrd


def run_once(argv: list[str]) -> tuple[float, float | None, int]:
    t0 = time.monotonic()
    res = subprocess.run(argv, stdin=subprocess.DEVNULL, capture_output=True, text=True, timeout=600)
    wall = time.monotonic() - t0
    m = re.search(r"BENCH init uptime=([\d.]+)", res.stdout)
    if res.returncode != 0 or not m:
        print(f"bench: {argv[0]} failed (status {res.returncode}):\n{res.stdout[-2000:]}\n{res.stderr[-2000:]}",
              file=sys.stderr)
    return wall, float(m.group(1)) if m else None, res.returncode


def inner(kernel: Path, initrd: Path, repeat: int, smp: int) -> int:
    common = ["-enable-kvm", "-m", "512M", "-smp", str(smp), "-kernel", str(kernel), "-initrd", str(initrd),
              "-append", APPEND, "-nodefaults", "-serial", "stdio", "-display", "none", "-no-reboot"]
    runs = {
        "qemu": [shutil.which("qemu-system-x86_64") or "qemu-system-x86_64", *common],
        "kvmpy": [sys.executable, "-m", "kvmpy", *common],
        "kvmpy-pvh": [sys.executable, "-m", "kvmpy", "-machine", "pc,linux-boot=pvh", *common],
    }
    results: dict[str, list[tuple[float, float | None]]] = {k: [] for k in runs}
    for r in range(repeat):
        for name, argv in runs.items():
            wall, uptime, status = run_once(argv)
            if status != 0 or uptime is None:
                return 1
            results[name].append((wall, uptime))
            print(f"round {r + 1} {name:10s} wall {wall:6.2f} s  guest uptime at init {uptime:5.2f} s", flush=True)
    best = {k: min(v) for k, v in results.items()}
    print(f"\nbest of {repeat}, -smp {smp}: launch to poweroff")
    for name, (wall, uptime) in best.items():
        print(f"  {name:10s} {wall:6.2f} s wall   (guest reached init at {uptime:.2f} s uptime)")
    q = best["qemu"][0]
    print(f"  ratio kvmpy/qemu {best['kvmpy'][0] / q:.2f}   kvmpy-pvh/qemu {best['kvmpy-pvh'][0] / q:.2f}"
          f"   (goal <= 0.5)")
    return 0


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--smp", type=int, default=1)
    ap.add_argument("--inner", nargs=2, metavar=("KERNEL", "INITRD"), help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.inner:
        return inner(Path(args.inner[0]), Path(args.inner[1]), args.repeat, args.smp)
    from kvmpy.kvm.flavor import KvmKind, host_kvm_kind

    kernel, initrd = prepare()
    argv = [sys.executable, str(Path(__file__).resolve()), "--repeat", str(args.repeat), "--smp", str(args.smp),
            "--inner", str(kernel), str(initrd)]
    if host_kvm_kind() is KvmKind.COMPLETE or os.environ.get("KVMPY_IN_BED") == "1":
        return subprocess.call(argv)
    from kvmpy.testbed.bed import BedError, NestedBed

    print("bench: host KVM is not complete; running inside the nested bed", file=sys.stderr, flush=True)
    try:
        res = NestedBed(on_output=print).run(argv, cwd=REPO, timeout=3000)
    except BedError as exc:
        print(f"bench: the nested bed failed: {exc}", file=sys.stderr)
        return 1
    return res.returncode


if __name__ == "__main__":
    sys.exit(main())
