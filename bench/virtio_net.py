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
to its end. Each figure is the best of ``--repeat`` boots.

Usage:  python bench/virtio_net.py            # in the nested complete-KVM bed (flock it, see BRIEF)
        python bench/virtio_net.py --here     # on this machine's /dev/kvm (needs a complete KVM)
"""

from __future__ import annotations

import argparse
import os
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.harness import Table, here_or_bed, keep_best, vmms  # noqa: E402
from kvmpy.tools.fetch import cache_root, fetch_kernel  # noqa: E402
from tests.net.netns import NetNs  # noqa: E402

HOST_IP, GUEST_IP = "10.77.0.1", "10.77.0.2"
TAP = "kvbench{}"  # numbered per run: a run never meets the previous run's tap still going away
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

    def __init__(self, ns: NetNs, size: int) -> None:
        self.size = size
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
        while n:
            n = conn.recv_into(buf)
            total += n
        return total, time.perf_counter() - t0

    def _give(self, conn: socket.socket) -> tuple[int, float]:
        chunk = bytes(1 << 20)
        t0, left = time.perf_counter(), self.size
        while left > 0:
            conn.sendall(chunk[:min(left, len(chunk))])
            left -= len(chunk)
        conn.shutdown(socket.SHUT_WR)
        while conn.recv(1 << 16):  # the guest closes once it has read everything
            pass
        return self.size, time.perf_counter() - t0

    def join(self, timeout: float) -> None:
        for t in self.threads:
            t.join(timeout)


def one_run(cmd: list[str], kernel: Path, initrd: Path, vhost: str, size_mb: int, timeout: float,
            tap: str = TAP.format(0)) -> dict[str, float]:
    ns = NetNs.create()
    try:
        servers = Servers(ns, size_mb << 20)
        argv = [*cmd, "-m", "512", "-smp", "1", "-nodefaults", "-display", "none", "-serial", "stdio",
                "-no-reboot", "-kernel", str(kernel), "-initrd", str(initrd),
                "-append", f"console=ttyS0 quiet panic=-1 netbench={size_mb}",
                "-netdev", f"tap,id=n0,ifname={tap},script=no,downscript=no,vhost={vhost}",
                "-device", "virtio-net-pci,netdev=n0"]
        proc = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        deadline = time.time() + 120
        while not os.path.exists(f"/sys/class/net/{tap}") and time.time() < deadline and proc.poll() is None:
            time.sleep(0.05)
        if proc.poll() is None and os.path.exists(f"/sys/class/net/{tap}"):
            ns.take(tap, f"{HOST_IP}/24")
        try:
            out, err = proc.communicate(timeout=timeout)
        except subprocess.TimeoutExpired:
            proc.kill()
            out, err = proc.communicate()
        servers.join(30)
        if set(servers.rates) != {"tx", "rx"}:
            raise RuntimeError(f"{cmd[0]} vhost={vhost}: no figures (exit {proc.returncode}):\n"
                               f"{out[-2000:]}\n{err[-2000:]}")
        return servers.rates
    finally:
        ns.delete()


def assets_in_bed() -> tuple[Path, Path]:
    """The (kernel, initrd) that build_assets() left in the cache, as L1 sees it."""
    return fetch_kernel("cloud-amd64").vmlinuz, cache_root() / "bench-virtio-net" / "initrd.gz"


def measure(args: argparse.Namespace, kernel: Path, initrd: Path, where: str) -> None:
    size_mb, repeat = args.size_mb, args.repeat
    runners = vmms(["-cpu", "host"])
    vhost_ok = os.path.exists("/dev/vhost-net")
    best: dict[tuple[str, str], dict[str, float]] = {}
    runs = 0
    for vhost in ("off", "on") if vhost_ok else ("off",):
        for name, cmd in runners.items():
            for _ in range(repeat):
                t = time.perf_counter()
                runs += 1
                got = one_run(cmd, kernel, initrd, vhost, size_mb, 1500, TAP.format(runs))
                print(f"  {name} vhost={vhost}: " + ", ".join(f"{k} {v:.1f} MB/s" for k, v in got.items())
                      + f" ({time.perf_counter() - t:.0f} s)", flush=True)
                keep_best(best.setdefault((name, vhost), {}), got)
    print(f"\nvirtio-net TCP over tap on {where}: {size_mb} MiB each way, best of {repeat}"
          + ("" if vhost_ok else " (no /dev/vhost-net: vhost=on not measured)"))
    table = Table(label_width=22, width=10, unit="MB/s")
    table.header()
    for vhost in ("off", "on"):
        for d, what in (("tx", "guest->host"), ("rx", "host->guest")):
            if ("kvmpy", vhost) in best:
                theirs = best.get(("QEMU", vhost))
                table.row(f"{what} vhost={vhost}", best[("kvmpy", vhost)][d], theirs[d] if theirs else None)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--size-mb", type=int, default=256, help="MiB streamed each way")
    ap.add_argument("--repeat", type=int, default=1, help="boots per VMM and vhost setting; the best figure is kept")
    return here_or_bed(ap, __file__, build_assets, assets_in_bed, measure)


if __name__ == "__main__":
    sys.exit(main())
