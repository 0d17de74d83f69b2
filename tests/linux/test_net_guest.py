"""Linux guests on kvmpy's network backends: in the complete-KVM bed, and one on any host under QEMU's TCG.

- ``-netdev user`` (passt): the guest gets its address by DHCP (busybox
  udhcpc) and downloads a file from an HTTP server on the host's loopback
  through the gateway address 10.0.2.2, as under QEMU's slirp.
- ``-netdev stream``: a kvmpy guest and a QEMU guest (QEMU+KVM inside the bed)
  on one segment: ping both ways, and each fetches the other's /payload over
  TCP (busybox httpd and wget); the checksums must match the initramfs's.

L1 has no network interface, and passt needs one with a default route to
take its addresses from, so the user test first gives L1 a carrier-less tap
with an address and a default route (the tun module is loaded in L1).

The host test runs the -netdev user guest under QEMU's TCG instead, its
``-netdev stream`` relayed by kvmpy to kvmpy's user backend.
"""

from __future__ import annotations

import contextlib
import hashlib
import http.server
import importlib.util
import random
import re
import shutil
import subprocess
import threading
from pathlib import Path

import pytest

import kvmpy
from kvmpy.net.netdev import build_netdev
from tests.linux.guest_process import GuestProcess

BOOT_TIMEOUT = 300.0
CMD_TIMEOUT = 120.0
APPEND = "console=ttyS0 quiet panic=-1 kvmpy_test=shell"
# udhcpc calls this with "bound" and the lease in its environment ($mask is the prefix length).
DHCP_SCRIPT = ('printf \'#!/bin/sh\\n[ "$1" = bound ] || exit 0\\nip addr add $ip/$mask dev $interface\\n'
               'ip route add default via $router\\necho "DHCP-BOUND $ip via $router"\\n\' > /tmp/dhcp.sh; '
               'chmod +x /tmp/dhcp.sh\n')


needs_virtio_net = pytest.mark.skipif(importlib.util.find_spec("kvmpy.devices.virtio.net") is None,
                                      reason="needs virtio-net-pci (kvmpy/devices/virtio/net.py)")
needs_passt = pytest.mark.skipif(shutil.which("passt") is None, reason="needs passt (Debian package 'passt')")


def _done(tag: str) -> str:
    """A shell suffix printing ``tag-42``; the command's echo shows ``$((6*7))``, so only the output matches."""
    return f'; echo "{tag}-$((6*7)) rc=$?"\n'


@contextlib.contextmanager
def _l1_external_interface():
    """passt derives its addresses from the interface with the default route; L1 has none, so make one."""
    if subprocess.run(["ip", "route", "show", "default"], capture_output=True, text=True).stdout.strip():
        yield
        return
    cmds = [["ip", "tuntap", "add", "dev", "kvmpyext0", "mode", "tap"],
            ["ip", "addr", "add", "192.0.2.2/24", "dev", "kvmpyext0"],
            ["ip", "link", "set", "kvmpyext0", "up"],
            ["ip", "route", "add", "default", "via", "192.0.2.1"]]
    try:
        for cmd in cmds:
            subprocess.run(cmd, check=True, capture_output=True)
        yield
    finally:
        subprocess.run(["ip", "link", "del", "kvmpyext0"], capture_output=True)


class _Quiet(http.server.SimpleHTTPRequestHandler):
    def log_message(self, format: str, *args) -> None:  # noqa: A002 - the base class's name
        pass


@contextlib.contextmanager
def _host_http(directory: Path):
    """An HTTP server on the host's loopback serving 1 MiB of random bytes as /blob: yields (port, sha256)."""
    payload = random.Random(5).randbytes(1 << 20)
    (directory / "blob").write_bytes(payload)
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), lambda *a: _Quiet(*a, directory=str(directory)))
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        yield server.server_address[1], hashlib.sha256(payload).hexdigest()
    finally:
        server.shutdown()


def _dhcp_and_download(send, expect, port: int) -> None:
    """The guest side of a -netdev user test; ``expect(regex, timeout)`` waits on the guest's console."""
    expect("KVMPY-TEST cmdline=", BOOT_TIMEOUT)
    send(DHCP_SCRIPT)
    send("ip link set eth0 up; udhcpc -i eth0 -n -q -t 5 -s /tmp/dhcp.sh" + _done("DHCP"))
    expect(r"DHCP-42 rc=\d+", CMD_TIMEOUT)
    send(f"wget -q -O /tmp/blob http://10.0.2.2:{port}/blob; sha256sum /tmp/blob" + _done("WGET"))
    expect(r"WGET-42 rc=\d+", CMD_TIMEOUT)
    send("poweroff -f\n")


def _check_dhcp_and_download(out: str, sha256: str) -> None:
    assert "DHCP-BOUND 10.0.2.15 via 10.0.2.2" in out, out[-3000:]
    assert f"{sha256}  /tmp/blob" in out, out[-3000:]


def _user_namespaces_allowed() -> bool:
    """passt sandboxes itself in a user namespace, which the kernel refuses inside a chroot or where they are off."""
    return subprocess.run(["unshare", "--user", "true"], capture_output=True).returncode == 0


@pytest.mark.kvm_full
@needs_virtio_net
@needs_passt
def test_user_net_dhcp_and_download_from_the_host(linux_assets, tmp_path):
    if not _user_namespaces_allowed():
        pytest.skip("passt cannot create its user namespace here (a chroot, or user namespaces are disabled); "
                    "test_user_net_for_a_qemu_tcg_guest_through_a_stream_relay covers -netdev user on the host")
    with _host_http(tmp_path) as (port, sha256), _l1_external_interface(), kvmpy.VM(
            linux_assets.kernel, initrd=linux_assets.initrd, memory="512M", no_reboot=True, append=APPEND,
            process=True, extra_args=["-netdev", "user,id=n0", "-device", "virtio-net-pci,netdev=n0"]) as vm:
        _dhcp_and_download(vm.console.send, lambda p, t: vm.console.expect(re.compile(p), timeout=t), port)
        vm.wait(timeout=CMD_TIMEOUT)
        out = vm.console.output
    _check_dhcp_and_download(out, sha256)


@pytest.mark.slow
@needs_passt
@pytest.mark.skipif(shutil.which("qemu-system-x86_64") is None, reason="needs qemu-system-x86_64")
def test_user_net_for_a_qemu_tcg_guest_through_a_stream_relay(linux_assets, tmp_path):
    """Runs on any host: the same guest under QEMU's TCG, its -netdev stream connected to a kvmpy stream
    server whose frames a relay passes to and from kvmpy's -netdev user (passt). A real Linux network
    stack exercises user.py and stream.py end to end, without kvmpy's own NIC."""
    relay = build_netdev("stream", "relay", [("server", "on"), ("addr.type", "unix"),
                                             ("addr.path", str(tmp_path / "relay.sock"))])
    user = build_netdev("user", "u0", [])
    relay.start(lambda frame: (user.send(frame), True)[1])
    user.start(lambda frame: (relay.send(frame), True)[1])
    qemu = None
    try:
        with _host_http(tmp_path) as (port, sha256):
            qemu = _qemu_guest(linux_assets, f"stream,id=n0,addr.type=unix,addr.path={tmp_path / 'relay.sock'}",
                               tmp_path, accel=("-accel", "tcg"))
            _dhcp_and_download(qemu.send, qemu.expect, port)
            qemu.wait(CMD_TIMEOUT)
    finally:
        if qemu is not None:
            qemu.close()
        user.close()
        relay.close()
    _check_dhcp_and_download(qemu.text(), sha256)
    # The relay has no flow control: when the TCG guest falls behind passt, frames beyond the 256 KiB
    # output buffer are dropped and counted, and TCP resends them (the checksum above still matches).
    # passt sent the 1 MiB in MTU-sized frames; the guest's ACKs are fewer (its GRO coalesces what a
    # slow TCG guest receives in one poll, so their count depends on timing; one run saw under 100).
    assert user.stream.stats.rx_frames >= (1 << 20) // 1500 and relay.stats.rx_frames > 10, \
        (relay.stats, user.stream.stats)


def _qemu_guest(assets, netdev: str, cwd: Path, accel: tuple[str, ...] = ("-enable-kvm", "-cpu", "host")
                ) -> GuestProcess:
    """QEMU (KVM in the bed, or TCG) booting the same kernel and initramfs, its serial console on stdin/stdout."""
    return GuestProcess(["qemu-system-x86_64", *accel, "-m", "256", "-nodefaults", "-display", "none",
                         "-no-reboot", "-kernel", str(assets.kernel), "-initrd", str(assets.initrd),
                         "-append", APPEND, "-serial", "stdio", "-netdev", netdev,
                         "-device", "virtio-net-pci,netdev=n0,mac=52:54:00:00:00:01"], cwd=cwd)


STATS = ('echo "NETSTATS carrier=$(cat /sys/class/net/eth0/carrier) '
         'tx=$(cat /sys/class/net/eth0/statistics/tx_packets) rx=$(cat /sys/class/net/eth0/statistics/rx_packets) '
         'drop=$(cat /sys/class/net/eth0/statistics/rx_dropped)"')


def _stats(console: str) -> list[str]:
    return re.findall(r"NETSTATS carrier=\S* tx=\d+ rx=\d+ drop=\d+", console)


def _serve_and_up(address: str) -> str:
    return (f"ip addr add {address}/24 dev eth0; ip link set eth0 up; "
            "mkdir -p /www; cp /payload /www/; httpd -p 8080 -h /www" + _done("UP"))


@pytest.mark.kvm_full
@needs_virtio_net
def test_stream_ping_and_tcp_between_kvmpy_and_qemu_guests(linux_assets, tmp_path):
    sock = Path(tmp_path) / "seg.sock"  # /tmp is a tmpfs in L1: unix sockets cannot live on its 9p shares
    qemu = _qemu_guest(linux_assets, f"stream,id=n0,server=on,addr.type=unix,addr.path={sock}", tmp_path)
    try:
        qemu.expect("KVMPY-TEST cmdline=", BOOT_TIMEOUT)
        qemu.send(_serve_and_up("10.9.0.1"))
        qemu.expect(r"UP-42 rc=0", CMD_TIMEOUT)
        with kvmpy.VM(linux_assets.kernel, initrd=linux_assets.initrd, memory="512M", no_reboot=True,
                      append=APPEND, process=True,
                      extra_args=["-netdev", f"stream,id=n0,server=off,addr.type=unix,addr.path={sock}",
                                  "-device", "virtio-net-pci,netdev=n0,mac=52:54:00:00:00:02"]) as vm:
            vm.console.expect("KVMPY-TEST cmdline=", timeout=BOOT_TIMEOUT)
            vm.console.send(_serve_and_up("10.9.0.2"))
            vm.console.expect("UP-42 rc=0", timeout=CMD_TIMEOUT)
            vm.console.send("ping -c 3 -W 5 10.9.0.1" + _done("PING"))
            vm.console.expect(re.compile(r"PING-42 rc=\d+"), timeout=CMD_TIMEOUT)
            vm.console.send(STATS + _done("STATS"))
            vm.console.expect(re.compile(r"STATS-42 rc=\d+"), timeout=CMD_TIMEOUT)
            network = vm.hmp("info network")
            qemu.send(STATS + _done("QSTATS"))
            qemu.expect(r"QSTATS-42 rc=\d+", CMD_TIMEOUT)
            diag = f"kvmpy: {network}\nkvmpy guest: {_stats(vm.console.output)}\nQEMU guest: {_stats(qemu.text())}"
            assert "PING-42 rc=0" in vm.console.output, diag
            vm.console.send("wget -q -O - http://10.9.0.1:8080/payload | sha256sum" + _done("FETCH"))
            vm.console.expect(re.compile(r"FETCH-42 rc=\d+"), timeout=CMD_TIMEOUT)
            try:
                qemu.send("ping -c 3 -W 5 10.9.0.2" + _done("QPING"))
                qemu.expect(r"QPING-42 rc=\d+", CMD_TIMEOUT)
                qemu.send("wget -q -O - http://10.9.0.2:8080/payload | sha256sum" + _done("QFETCH"))
                qemu.expect(r"QFETCH-42 rc=\d+", CMD_TIMEOUT)
            except Exception as exc:  # the other side's state says which of the two stopped
                exc.add_note(f"kvmpy running={vm.running}; "
                             f"{vm.hmp('info network') if vm.running else ''}\n"
                             f"kvmpy's console tail:\n{vm.console.output[-1500:]}")
                raise
            vm.console.send("poweroff -f\n")
            vm.wait(timeout=CMD_TIMEOUT)
            out = vm.console.output
    finally:
        qemu.close()
    theirs = qemu.text()
    assert "PING-42 rc=0" in out and "3 packets received" in out, out[-3000:]
    assert "QPING-42 rc=0" in theirs and "3 packets received" in theirs, theirs[-3000:]
    assert f"{linux_assets.payload_sha256}  -" in out, out[-3000:]  # kvmpy guest fetched QEMU guest's file
    assert f"{linux_assets.payload_sha256}  -" in theirs, theirs[-3000:]  # and the other way round
