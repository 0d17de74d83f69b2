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

``--firmware disk|iso`` boots through the firmware instead (issue 14): SeaBIOS, then
GRUB from the disk ``kvmpy debian-image`` builds (on virtio-blk, as
tests/linux/test_debian_guest does) to systemd's serial ``login:``, or GRUB from the
grub-mkrescue ISO of tests/firmware/linux_iso.py (``-cdrom``) to the busybox init.
Both VMMs get ``-enable-kvm -m 1G -nographic -no-reboot``; the serial output is
timestamped at each phase (SeaBIOS banner, "Booting from", GRUB's menu, GRUB
starting the entry, init or login) and each phase is compared. ``--here`` runs
on this machine's KVM: a PVM host runs SeaBIOS and GRUB but not Linux, so there
the runs stop where GRUB starts loading the kernel.

    python bench/boot_time.py [--repeat 3] [--smp 1]
    python bench/boot_time.py --firmware disk|iso [--repeat 1] [--here]
"""

from __future__ import annotations

import argparse
import os
import re
import select
import shutil
import signal
import subprocess
import sys
import tempfile
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


# ---- firmware boots (issue 14) ------------------------------------------------------------------
FW_FLAGS = ["-enable-kvm", "-m", "1G", "-nographic", "-no-reboot"]
# (phase name, the serial text that ends it); a boot ends at the last one it is asked to reach.
FW_PHASES = {
    "disk": [("SeaBIOS banner", b"SeaBIOS ("), ("to 'Booting from'", b"Booting from "),
             ("GRUB menu", b"GNU GRUB"), ("GRUB starts the entry", b"Booting `"), ("login prompt", b"login:")],
    "iso": [("SeaBIOS banner", b"SeaBIOS ("), ("to 'Booting from'", b"Booting from "),
            ("GRUB starts the entry", b"kvmpy-iso-grub"), ("init", b"KVMPY-TEST init")],
}
FW_TIMEOUT = 1800.0


def fw_assets(kind: str, build: bool) -> Path:
    """The Debian disk image or the Linux ISO, built on the host (``build``) or only looked up (in the bed)."""
    if kind == "disk":
        from kvmpy.tools.debian_image import debian_image

        return debian_image(build_missing=build)
    from tests.firmware.linux_iso import linux_iso
    from tests.linux.conftest import prepare_assets

    assets = prepare_assets(build=build)
    return linux_iso(assets.kernel, assets.initrd, build=build)


def fw_boot(argv: list[str], marks: list[tuple[str, bytes]], timeout: float) -> dict[str, float] | None:
    """Launch ``argv`` and return when each mark first appeared on its output (seconds after launch), stopping
    it at the last; None (with its output) if it exited or timed out first."""
    t0 = time.monotonic()
    proc = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    assert proc.stdout is not None
    fd = proc.stdout.fileno()
    out = bytearray()
    seen: dict[str, float] = {}
    todo = list(marks)
    try:
        while todo:
            left = timeout - (time.monotonic() - t0)
            if left <= 0:
                break
            ready, _, _ = select.select([fd], [], [], min(left, 1.0))
            if not ready:
                continue
            chunk = os.read(fd, 65536)
            if not chunk:
                break
            now = time.monotonic() - t0
            scan_from = max(0, len(out) - 64)  # a mark may straddle two reads
            out += chunk
            while todo and out.find(todo[0][1], scan_from) >= 0:
                seen[todo.pop(0)[0]] = now
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.wait()
    if todo:
        print(f"bench: {argv[0]} did not reach {todo[0][0]!r} ({len(out)} bytes of output):\n"
              f"{out[-1500:].decode(errors='replace')}", file=sys.stderr)
        return None
    return seen


def fw_inner(kind: str, image: Path, repeat: int, here: bool) -> int:
    marks = FW_PHASES[kind]
    if here:  # a PVM host cannot run Linux: stop when GRUB starts on the kernel
        last = next(i for i, (name, _) in enumerate(marks) if name == "GRUB starts the entry")
        marks = marks[:last + 1]
    runs = {"QEMU": [shutil.which("qemu-system-x86_64") or "qemu-system-x86_64"],
            "kvmpy": [sys.executable, "-m", "kvmpy"]}
    best: dict[str, dict[str, float]] = {}
    with tempfile.TemporaryDirectory(prefix="kvmpy-bench-fw-", dir="/run" if os.access("/run", os.W_OK) else None) \
            as work:
        for r in range(repeat):
            for name, vmm in runs.items():
                if kind == "disk":  # a fresh overlay each boot: the guest writes to its disk
                    disk = Path(work) / f"{name}-{r}.qcow2"
                    subprocess.run(["qemu-img", "create", "-q", "-f", "qcow2", "-b", str(image), "-F", "qcow2",
                                    str(disk)], check=True, timeout=60)
                    media = ["-drive", f"file={disk},if=virtio"]
                else:
                    media = ["-cdrom", str(image)]
                got = fw_boot([*vmm, *FW_FLAGS, *media], marks, FW_TIMEOUT)
                if got is None:
                    return 1
                print(f"round {r + 1} {name:6s} " + "  ".join(f"{k} {v:.1f}" for k, v in got.items()), flush=True)
                last = marks[-1][0]
                if name not in best or got[last] < best[name][last]:
                    best[name] = got
    where = "this host's KVM" if here else "the nested bed (complete KVM)"
    print(f"\nfirmware boot ({kind}, {'-drive if=virtio' if kind == 'disk' else '-cdrom'}), best of {repeat} on "
          f"{where}: seconds after launch, and per phase")
    print(f"{'phase':24s} {'kvmpy':>8s} {'QEMU':>8s} {'ratio':>6s}   {'kvmpy':>8s} {'QEMU':>8s} {'ratio':>6s}")
    prev = {"kvmpy": 0.0, "QEMU": 0.0}
    for name, _ in marks:
        k, q = best["kvmpy"][name], best["QEMU"][name]
        dk, dq = k - prev["kvmpy"], q - prev["QEMU"]
        prev = {"kvmpy": k, "QEMU": q}
        print(f"{name:24s} {k:8.1f} {q:8.1f} {k / q:6.2f}   {dk:8.1f} {dq:8.1f} {dk / dq if dq > 0 else 0:6.2f}")
    return 0


def run_in_bed(argv: list[str], why: str) -> int:
    """Re-run this script (``argv``) inside the nested complete-KVM bed; its exit status."""
    from kvmpy.testbed.bed import BedError, NestedBed

    print(f"bench: {why}", file=sys.stderr, flush=True)
    try:
        res = NestedBed(on_output=print).run(argv, cwd=REPO, timeout=3000)
    except BedError as exc:
        print(f"bench: the nested bed failed: {exc}", file=sys.stderr)
        return 1
    return res.returncode


def fw_main(args: argparse.Namespace) -> int:
    from kvmpy.kvm.flavor import KvmKind, host_kvm_kind

    in_bed = os.environ.get("KVMPY_IN_BED") == "1"
    image = fw_assets(args.firmware, build=not in_bed)
    if args.here or in_bed or host_kvm_kind() is KvmKind.COMPLETE:
        return fw_inner(args.firmware, image, args.repeat, here=host_kvm_kind() is not KvmKind.COMPLETE)
    argv = [sys.executable, str(Path(__file__).resolve()), "--firmware", args.firmware, "--repeat", str(args.repeat)]
    return run_in_bed(argv, "running inside the nested bed")


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--repeat", type=int, default=None, help="rounds (default 3; 1 with --firmware)")
    ap.add_argument("--smp", type=int, default=1)
    ap.add_argument("--firmware", choices=sorted(FW_PHASES), help="boot through SeaBIOS and GRUB: the Debian "
                    "disk image to login, or the Linux ISO to init (default: -kernel, launch to poweroff)")
    ap.add_argument("--here", action="store_true", help="with --firmware: on this machine's KVM (a PVM host: "
                    "up to GRUB starting the kernel load)")
    ap.add_argument("--inner", nargs=2, metavar=("KERNEL", "INITRD"), help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.firmware:
        args.repeat = args.repeat or 1
        return fw_main(args)
    args.repeat = args.repeat or 3
    if args.inner:
        return inner(Path(args.inner[0]), Path(args.inner[1]), args.repeat, args.smp)
    from kvmpy.kvm.flavor import KvmKind, host_kvm_kind

    kernel, initrd = prepare()
    argv = [sys.executable, str(Path(__file__).resolve()), "--repeat", str(args.repeat), "--smp", str(args.smp),
            "--inner", str(kernel), str(initrd)]
    if host_kvm_kind() is KvmKind.COMPLETE or os.environ.get("KVMPY_IN_BED") == "1":
        return subprocess.call(argv)
    return run_in_bed(argv, "host KVM is not complete; running inside the nested bed")


if __name__ == "__main__":
    sys.exit(main())
