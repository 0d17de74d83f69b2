"""A Linux guest on virtio-net over a tap whose host side lives in a network namespace, vhost on and off.

kvmpy opens the tap (``-netdev tap,ifname=...,script=no,downscript=no``) in
L1's own namespace; the test then moves the interface into a fresh namespace
(its fd keeps working) and gives it 10.77.0.1. The guest (busybox) sets
10.77.0.2 on eth0, pings the host side, sends /payload to a TCP server there
and fetches it back from another, and both sides compare SHA-256 sums. QMP
set_link takes the guest's carrier down and up. With vhost=on the kernel's
vhost worker (a thread named vhost-<pid>) must exist while the guest runs.
"""

from __future__ import annotations

import hashlib
import os
import re
import socket
import threading
import time
from pathlib import Path

import pytest

import kvmpy
from tests.net.netns import NetNs

BOOT_TIMEOUT = 300.0
HOST_IP, GUEST_IP = "10.77.0.1", "10.77.0.2"


def _server(ns: NetNs, port: int, send: bytes | None, got: dict) -> threading.Thread:
    lsock = ns.socket(socket.AF_INET, socket.SOCK_STREAM)
    lsock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    lsock.bind(("0.0.0.0", port))
    lsock.listen(1)
    lsock.settimeout(BOOT_TIMEOUT)

    def run() -> None:
        try:
            conn, _ = lsock.accept()
            conn.settimeout(120)
            if send is None:
                data = bytearray()
                while chunk := conn.recv(1 << 16):
                    data += chunk
                got[port] = bytes(data)
            else:
                conn.sendall(send)
                conn.shutdown(socket.SHUT_WR)
                while conn.recv(1 << 16):
                    pass
                got[port] = b"sent"
            conn.close()
        except OSError as exc:
            got[port] = exc
        finally:
            lsock.close()

    t = threading.Thread(target=run, daemon=True)
    t.start()
    return t


def _vhost_threads() -> set[str]:
    names = set()
    for p in Path("/proc").iterdir():
        if p.name.isdigit():
            try:
                comm = (p / "comm").read_text().strip()
            except OSError:
                continue
            if comm.startswith("vhost-"):
                names.add(comm)
    return names


@pytest.mark.kvm_full
@pytest.mark.parametrize("vhost", ["off", "on"])
def test_ping_tcp_and_link_over_tap(linux_assets, vhost):
    if vhost == "on" and not os.path.exists("/dev/vhost-net"):
        pytest.fail("/dev/vhost-net is missing (the bed's L1 loads vhost_net)")
    payload = (linux_assets.initrd.parent / "payload.bin").read_bytes()
    ifname = f"kvt{vhost}"
    ns = NetNs.create()
    got: dict = {}
    servers = [_server(ns, 5001, None, got), _server(ns, 5002, payload, got)]
    before = _vhost_threads()
    args = ["-netdev", f"tap,id=n0,ifname={ifname},script=no,downscript=no,vhost={vhost}",
            "-device", "virtio-net-pci,netdev=n0,id=nic0"]
    try:
        with kvmpy.VM(linux_assets.kernel, initrd=linux_assets.initrd, memory="512M", smp=1, no_reboot=True,
                      process=True, extra_args=args, append="console=ttyS0 quiet panic=-1 kvmpy_test=shell") as vm:
            deadline = time.time() + 60
            while not os.path.exists(f"/sys/class/net/{ifname}") and time.time() < deadline:
                time.sleep(0.1)
            ns.take(ifname, f"{HOST_IP}/24")
            vm.console.expect("KVMPY-TEST cmdline=", timeout=BOOT_TIMEOUT)
            vm.console.send(f"ip link set eth0 up; ip addr add {GUEST_IP}/24 dev eth0; "
                            f"echo MAC-$(cat /sys/class/net/eth0/address)-$((6*7))\n")
            vm.console.expect("MAC-52:54:00:12:34:56-42", timeout=60)
            vm.console.send(f"ping -c 3 -W 5 {HOST_IP} | grep -E 'packets|rtt'; echo PING-$((6*7))\n")
            vm.console.expect("PING-42", timeout=120)
            vm.console.send(f"nc {HOST_IP} 5001 < /payload; echo SENT-$((6*7))\n")
            vm.console.expect("SENT-42", timeout=120)
            vm.console.send(f"nc {HOST_IP} 5002 > /tmp/in; echo GOT-$(sha256sum < /tmp/in | cut -c1-64)-$((6*7))\n")
            back = vm.console.expect(re.compile(r"GOT-([0-9a-f]{64})-42"), timeout=120).group(1)
            workers = _vhost_threads() - before
            vm.console.send("echo CARRIER-$(cat /sys/class/net/eth0/carrier)-$((6*7))\n")
            vm.console.expect("CARRIER-1-42", timeout=60)
            assert vm.qmp("set_link", {"name": "nic0", "up": False}) == {}
            vm.console.send("until [ $(cat /sys/class/net/eth0/carrier) = 0 ]; do sleep 0.2; done; "
                            "echo DOWN-$((6*7))\n")
            vm.console.expect("DOWN-42", timeout=60)
            network = vm.hmp("info network")
            vm.qmp("set_link", {"name": "n0", "up": True})
            vm.console.send(f"until [ $(cat /sys/class/net/eth0/carrier) = 1 ]; do sleep 0.2; done; "
                            f"ping -c 1 -W 5 {HOST_IP} | grep packets; echo UP-$((6*7))\n")
            vm.console.expect("UP-42", timeout=120)
            vm.console.send("poweroff -f\n")
            assert vm.wait(timeout=120) == 0
    finally:
        ns.delete()
    for t in servers:
        t.join(timeout=10)
    out = vm.console.output
    assert re.search(r"3 packets transmitted, 3 packets received", out), out[-3000:]
    assert got.get(5001) == payload, f"the host got {len(got.get(5001) or b'')} bytes"
    assert got.get(5002) == b"sent" and back == hashlib.sha256(payload).hexdigest()
    assert re.search(r"1 packets transmitted, 1 packets received", out), out[-3000:]
    assert network.startswith("nic0: index=0,type=nic,model=virtio-net-pci,macaddr=52:54:00:12:34:56"), network
    assert f"type=tap,ifname={ifname},script=no,downscript=no" in network, network
    if vhost == "on":
        assert workers, "no vhost worker thread while the guest ran with vhost=on"
    else:
        assert not workers, workers
