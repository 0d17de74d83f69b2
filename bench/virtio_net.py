#!/usr/bin/env python3
"""virtio-net TCP throughput guest<->host over a tap, vhost off and on, kvmpy vs QEMU.

The same guest (Debian's cloud kernel, a ``kvmpy initrd`` with virtio_pci and
virtio_net and busybox) runs under each VMM with the same flags:

  -m 512 -smp 1 -netdev tap,id=n0,ifname=TAP,script=no,downscript=no,vhost=on|off
  -device virtio-net-pci,netdev=n0

The VMM opens the tap in L1's namespace; the bench then moves it into a fresh
network namespace holding the host side (10.77.0.1) and two TCP servers. The
guest (10.77.0.2) waits until it can ping the host side, then streams
``--size-mb`` MiB of zeros to port 5001 (``dd | nc``: "tx", guest to host) and
reads as much from port 5002 (``nc > /dev/null``: "rx", host to guest). The
host side times each stream from its first byte (tx) or the connection (rx)
to its end; a stream still going after ``--seconds`` is cut there (tx: the host
closes; rx: the host stops sending and waits for the guest to read the rest),
so a slow VMM costs bounded time. Each figure is the best of ``--repeat`` boots.

Usage:  python bench/virtio_net.py            # in the nested complete-KVM bed (flock it, see BRIEF)
        python bench/virtio_net.py --here     # on this machine's /dev/kvm (needs a complete KVM)
"""

from __future__ import annotations

import argparse
import os
import shutil
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from kvmpy.tools.fetch import cache_root, fetch_kernel  # noqa: E402
from tests.net.netns import NetNs  # noqa: E402

HOST_IP, GUEST_IP = "10.77.0.1", "10.77.0.2"
TAP = "kvbench0"
INIT = """#!/bin/sh
/bin/busybox --install -s
mount -t proc proc /proc
mount -t sysfs sysfs /sys
mount -t devtmpfs devtmpfs /dev
while read -r m; do insmod "/$m" || echo "insmod $m failed"; done < /etc/kvmpy-modules
for w in $(cat /proc/cmdline); do case "$w" in netbench=*) mb="${w#netbench=}";; esac; done
ip link set lo up
ip link set eth0 up
ip addr add @GUEST@/24 dev eth0
i=0
until ping -c 1 -W 1 @HOST@ >/dev/null 2>&1; do i=$((i + 1)); [ $i -gt 300 ] && break; done
dd if=/dev/zero bs=65536 count=$((mb * 16)) 2>/dev/null | nc @HOST@ 5001
echo "NETBENCH tx done"
nc @HOST@ 5002 > /dev/null
echo "NETBENCH rx done"
echo "NETBENCH $(grep eth0 /proc/net/dev)"
echo "NETBENCH $(grep '^Tcp:' /proc/net/snmp | tail -1)"
poweroff -f
""".replace("@GUEST@", GUEST_IP).replace("@HOST@", HOST_IP)


def build_assets() -> tuple[Path, Path]:
    """(kernel, initrd) under kvmpy's cache."""
    kernel = fetch_kernel("cloud-amd64")
    out = cache_root() / "bench-virtio-net"
    out.mkdir(parents=True, exist_ok=True)
    (out / "init.sh").write_text(INIT)
    initrd = out / "initrd.gz"
    from kvmpy.tools.initrd import main as initrd_main

    status = initrd_main(["-o", str(initrd), "--init", str(out / "init.sh"), "--modules-dir",
                          str(kernel.modules_dir), "-m", "virtio_pci", "-m", "virtio_net"])
    if status != 0:
        raise SystemExit(f"kvmpy initrd failed ({status})")
    return kernel.vmlinuz, initrd


class Servers:
    """Port 5001 takes the guest's stream (tx), port 5002 sends one (rx); each records MB/s."""

    def __init__(self, ns: NetNs, size: int, seconds: float) -> None:
        self.size = size
        self.seconds = seconds
        self.rates: dict[str, float] = {}
        self.threads = [self._serve(ns, 5001, self._take, "tx"), self._serve(ns, 5002, self._give, "rx")]

    def _serve(self, ns: NetNs, port: int, fn, name: str) -> threading.Thread:
        lsock = ns.socket(socket.AF_INET, socket.SOCK_STREAM)
        lsock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        lsock.bind(("0.0.0.0", port))
        lsock.listen(1)
        lsock.settimeout(900)

        def run() -> None:
            try:
                conn, _ = lsock.accept()
                with conn:
                    conn.settimeout(300)
                    nbytes, secs = fn(conn)
                self.rates[name] = nbytes / secs / 1e6 if secs > 0 else 0.0
            except OSError as exc:
                print(f"  server {name}: {exc}", flush=True)
            finally:
                lsock.close()

        t = threading.Thread(target=run, daemon=True)
        t.start()
        return t

    def _take(self, conn: socket.socket) -> tuple[int, float]:
        buf = bytearray(1 << 20)
        n = conn.recv_into(buf)
        t0, total = time.perf_counter(), n
        while n and time.perf_counter() - t0 < self.seconds:
            n = conn.recv_into(buf)
            total += n
        return total, time.perf_counter() - t0  # closing cuts a stream that ran out of time

    def _give(self, conn: socket.socket) -> tuple[int, float]:
        chunk = bytes(1 << 20)
        t0, sent = time.perf_counter(), 0
        while sent < self.size and time.perf_counter() - t0 < self.seconds:
            n = min(self.size - sent, 1 << 16)
            conn.sendall(chunk[:n])
            sent += n
        conn.shutdown(socket.SHUT_WR)
        while conn.recv(1 << 16):  # the guest closes once it has read everything
            pass
        return sent, time.perf_counter() - t0

    def join(self, timeout: float) -> None:
        for t in self.threads:
            t.join(timeout)


def one_run(cmd: list[str], kernel: Path, initrd: Path, vhost: str, size_mb: int, timeout: float,
            seconds: float) -> dict[str, float]:
    ns = NetNs.create()
    try:
        servers = Servers(ns, size_mb << 20, seconds)
        argv = [*cmd, "-m", "512", "-smp", "1", "-nodefaults", "-display", "none", "-serial", "stdio",
                "-no-reboot", "-kernel", str(kernel), "-initrd", str(initrd),
                "-append", f"console=ttyS0 quiet panic=-1 netbench={size_mb}",
                "-netdev", f"tap,id=n0,ifname={TAP},script=no,downscript=no,vhost={vhost}",
                "-device", "virtio-net-pci,netdev=n0"]
        proc = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        deadline = time.time() + 120
        while not os.path.exists(f"/sys/class/net/{TAP}") and time.time() < deadline and proc.poll() is None:
            time.sleep(0.05)
        if proc.poll() is None and os.path.exists(f"/sys/class/net/{TAP}"):
            ns.take(TAP, f"{HOST_IP}/24")
        try:
            out, err = proc.communicate(timeout=timeout)
        except subprocess.TimeoutExpired:
            proc.kill()
            out, err = proc.communicate()
        servers.join(30)
        for line in out.splitlines():  # the guest's counters: frame sizes, retransmissions
            if line.startswith("NETBENCH ") and "done" not in line:
                print(f"    guest: {' '.join(line.split()[1:])}", flush=True)
        if set(servers.rates) != {"tx", "rx"}:
            raise RuntimeError(f"{cmd[0]} vhost={vhost}: no figures (exit {proc.returncode}):\n"
                               f"{out[-2000:]}\n{err[-2000:]}")
        return servers.rates
    finally:
        ns.delete()


def measure(kernel: Path, initrd: Path, size_mb: int, repeat: int, timeout: float, where: str,
            seconds: float) -> None:
    qemu = shutil.which("qemu-system-x86_64")
    runners = {"kvmpy": [sys.executable, "-m", "kvmpy", "-enable-kvm"]}
    if qemu:
        runners["QEMU"] = [qemu, "-enable-kvm", "-cpu", "host"]
    vhost_ok = os.path.exists("/dev/vhost-net")
    best: dict[tuple[str, str], dict[str, float]] = {}
    for vhost in ("off", "on") if vhost_ok else ("off",):
        for name, cmd in runners.items():
            for _ in range(repeat):
                t = time.perf_counter()
                got = one_run(cmd, kernel, initrd, vhost, size_mb, timeout, seconds)
                print(f"  {name} vhost={vhost}: " + ", ".join(f"{k} {v:.1f} MB/s" for k, v in got.items())
                      + f" ({time.perf_counter() - t:.0f} s)", flush=True)
                prev = best.setdefault((name, vhost), {})
                for k, v in got.items():
                    prev[k] = max(prev.get(k, 0.0), v)
    print(f"\nvirtio-net TCP over tap on {where}: {size_mb} MiB each way (cut at {seconds:g} s), best of {repeat}"
          + ("" if vhost_ok else " (no /dev/vhost-net: vhost=on not measured)"))
    print(f"{'figure':22} {'kvmpy':>10} {'QEMU':>10} {'kvmpy/QEMU':>11}")
    for vhost in ("off", "on"):
        for d, what in (("tx", "guest->host"), ("rx", "host->guest")):
            if ("kvmpy", vhost) not in best:
                continue
            ours = best[("kvmpy", vhost)][d]
            label = f"{what} vhost={vhost}"
            if ("QEMU", vhost) in best:
                theirs = best[("QEMU", vhost)][d]
                print(f"{label:22} {ours:10.1f} {theirs:10.1f} {ours / theirs:10.2f}x  (MB/s)", flush=True)
            else:
                print(f"{label:22} {ours:10.1f} {'(no qemu)':>10}  (MB/s)", flush=True)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--here", action="store_true", help="run on this machine's /dev/kvm (a complete KVM)")
    ap.add_argument("--size-mb", type=int, default=256, help="MiB streamed each way")
    ap.add_argument("--repeat", type=int, default=1, help="boots per VMM and vhost setting; the best figure is kept")
    ap.add_argument("--seconds", type=float, default=30, help="each stream is cut after this long")
    ap.add_argument("--bed-timeout", type=int, default=2300, help="seconds the nested bed may run in all")
    ap.add_argument("--inside-bed", action="store_true", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.inside_bed or args.here:
        kernel = fetch_kernel("cloud-amd64").vmlinuz
        initrd = cache_root() / "bench-virtio-net" / "initrd.gz"
        if args.here:
            kernel, initrd = build_assets()
        where = "the nested bed (complete KVM)" if args.inside_bed else "this machine's KVM"
        measure(kernel, initrd, args.size_mb, args.repeat, 1500, where, args.seconds)
        return 0
    build_assets()  # on the host: L1 sees the cache read-only
    cmd = [sys.executable, "-m", "kvmpy.testbed", "--quiet", "--timeout", str(args.bed_timeout), "--",
           sys.executable, str(Path(__file__).resolve()), "--inside-bed", "--size-mb", str(args.size_mb),
           "--repeat", str(args.repeat), "--seconds", str(args.seconds)]
    return subprocess.run(cmd, cwd=REPO, env=dict(os.environ, PYTHONPATH=str(REPO))).returncode


if __name__ == "__main__":
    sys.exit(main())
