#!/usr/bin/env python3
"""virtio-blk throughput: O_DIRECT sequential read/write MB/s and 4 KiB random-read IOPS, kvmpy vs QEMU.

The same guest (Debian's cloud kernel, a ``kvmpy initrd`` with virtio_pci and
virtio_blk, and bench/guest/blkbench.c built static) runs under each VMM with
the same flags and the same raw image on L1's tmpfs:

  -m 512 -smp 1 -drive file=IMG,format=raw,if=virtio,cache=writeback

blkbench opens /dev/vda with O_DIRECT (so the guest page cache is out of the
way) and does, in order: sequential 1 MiB writes over ``--size-mb`` and an
fdatasync, sequential 1 MiB reads over the same range, then 4 KiB reads at
random offsets for ``--rand-secs`` (one request in flight, as the guest issues
them one by one). Each figure is the best of ``--repeat`` boots.

Usage:  python bench/virtio_blk.py            # in the nested complete-KVM bed (flock it, see BRIEF)
        python bench/virtio_blk.py --here     # on this machine's /dev/kvm (needs a complete KVM)
"""

from __future__ import annotations

import argparse
import re
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.harness import REPO, Table, here_or_bed, keep_best, vmms  # noqa: E402
from kvmpy.tools.fetch import cache_root, fetch_kernel  # noqa: E402

GUEST_SRC = REPO / "bench" / "guest" / "blkbench.c"
FIGURES = {"seq-write": "MB/s", "seq-read": "MB/s", "rand-read-4k": "IOPS"}
INIT = """#!/bin/sh
/bin/busybox --install -s
mount -t proc proc /proc
mount -t sysfs sysfs /sys
mount -t devtmpfs devtmpfs /dev
while read -r m; do insmod "/$m" || echo "insmod $m failed"; done < /etc/kvmpy-modules
for w in $(cat /proc/cmdline); do case "$w" in blkbench=*) args="${w#blkbench=}";; esac; done
/blkbench /dev/vda $(echo "$args" | tr , ' ')
echo "BLKBENCH done $?"
poweroff -f
"""


def build_assets() -> tuple[Path, Path]:
    """(kernel, initrd) under kvmpy's cache: the static guest program and an initramfs around it."""
    kernel = fetch_kernel("cloud-amd64")
    out = cache_root() / "bench-virtio-blk"
    out.mkdir(parents=True, exist_ok=True)
    prog = out / "blkbench"
    if not prog.exists() or prog.stat().st_mtime < GUEST_SRC.stat().st_mtime:
        subprocess.run(["gcc", "-O2", "-static", "-o", str(prog), str(GUEST_SRC)], check=True)
    (out / "init.sh").write_text(INIT)
    initrd = out / "initrd.gz"
    from kvmpy.tools.initrd import main as initrd_main

    status = initrd_main(["-o", str(initrd), "--init", str(out / "init.sh"), "--file", f"{prog}:blkbench",
                          "--modules-dir", str(kernel.modules_dir), "-m", "virtio_pci", "-m", "virtio_blk"])
    if status != 0:
        raise SystemExit(f"kvmpy initrd failed ({status})")
    return kernel.vmlinuz, initrd


def one_run(cmd: list[str], kernel: Path, initrd: Path, image: Path, size_mb: int, rand_secs: float,
            timeout: float) -> dict[str, float]:
    argv = [*cmd, "-m", "512", "-smp", "1", "-nodefaults", "-display", "none", "-serial", "stdio",
            "-no-reboot", "-kernel", str(kernel), "-initrd", str(initrd),
            "-append", f"console=ttyS0 quiet panic=-1 blkbench={size_mb},{rand_secs}",
            "-drive", f"file={image},format=raw,if=virtio,cache=writeback"]
    p = subprocess.run(argv, capture_output=True, text=True, timeout=timeout)
    found = {m.group(1): float(m.group(2)) for m in re.finditer(r"BLKBENCH (\S+) ([\d.]+) ", p.stdout)}
    if set(found) != set(FIGURES):
        raise RuntimeError(f"{cmd[0]}: no figures (exit {p.returncode}):\n{p.stdout[-2000:]}\n{p.stderr[-2000:]}")
    return found


def assets_in_bed() -> tuple[Path, Path]:
    """The (kernel, initrd) that build_assets() left in the cache, as L1 sees it."""
    return fetch_kernel("cloud-amd64").vmlinuz, cache_root() / "bench-virtio-blk" / "initrd.gz"


def measure(args: argparse.Namespace, kernel: Path, initrd: Path, where: str) -> None:
    size_mb, rand_secs, repeat = args.size_mb, args.rand_secs, args.repeat
    with tempfile.TemporaryDirectory(prefix="vblk-bench-") as tmp:
        image = Path(tmp) / "disk.raw"
        with open(image, "wb") as f:
            f.truncate((size_mb + 16) << 20)
        best: dict[str, dict[str, float]] = {}
        for name, cmd in vmms().items():
            for _ in range(repeat):
                t = time.perf_counter()
                got = one_run(cmd, kernel, initrd, image, size_mb, rand_secs, 1200)
                print(f"  {name}: {got} ({time.perf_counter() - t:.0f} s)", flush=True)
                keep_best(best.setdefault(name, {}), got)
    print(f"\nvirtio-blk on {where}: {size_mb} MiB sequential, {rand_secs:g} s random, best of {repeat}")
    table = Table()
    table.header()
    for fig, unit in FIGURES.items():
        table.row(f"{fig} {unit}", best["kvmpy"][fig], best["QEMU"][fig] if "QEMU" in best else None)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--size-mb", type=int, default=128, help="MiB covered by the sequential passes")
    ap.add_argument("--rand-secs", type=float, default=5.0, help="seconds of random 4 KiB reads")
    ap.add_argument("--repeat", type=int, default=1, help="boots per VMM; the best figure is kept")
    return here_or_bed(ap, __file__, build_assets, assets_in_bed, measure)


if __name__ == "__main__":
    sys.exit(main())
