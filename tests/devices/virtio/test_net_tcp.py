"""Real TCP through virtio-net's Python data path, both ways, with mergeable RX buffers and TSO.

Two network namespaces stand for the host and the guest. The host side owns
the tap the device is bound to; the "guest" side is a second tap whose frames
a driver thread relays to and from the device's queues as Linux's virtio-net
driver would (one-page mergeable receive buffers, refilled as they are used,
a kick when the device asked for one; each transmitted frame one chain). So
the kernel's TCP on both sides runs over the device's receive and transmit
paths, with its GSO frames and checksum offloads, and the test checks that a
stream arrives intact, in time, in frames larger than the MTU.
"""

from __future__ import annotations

import fcntl
import hashlib
import os
import select
import socket
import struct
import sys
import threading
import time

import pytest

from kvmpy.devices.virtio.device import F_EVENT_IDX, F_INDIRECT_DESC, F_VERSION_1, VirtioContext, bit
from kvmpy.devices.virtio.net import DEFAULT_MAC, F_MRG_RXBUF, OFFLOAD_FEATURES, RX, TX, VirtioNet
from kvmpy.devices.virtio.queue import SplitQueue
from kvmpy.net.tap import TUN_F_CSUM, TUN_F_TSO4, TUN_F_TSO6, TUNSETOFFLOAD, TapBackend
from tests.devices.virtio.driver import DriverQueue, guest_memory
from tests.net.netns import NetNs, have_netns

pytestmark = pytest.mark.skipif(not have_netns(), reason="needs root, /dev/net/tun and ip netns")

HOST_IP, GUEST_IP = "10.88.0.1", "10.88.0.2"
PAGE = 4096
RX_BUFS, TX_BUFS = 0x100000, 0x800000  # 256 one-page RX buffers; 128 TX slots of 68 KiB
TX_SLOT = 0x11000


class LinuxLikeDriver:
    """The guest driver's data path, relaying between the device's queues and the guest-side tap."""

    def __init__(self, mem, dev: VirtioNet, tap: TapBackend) -> None:
        self.mem, self.dev, self.tap = mem, dev, tap
        self.rxd = DriverQueue(mem, 0x1000, 256, event_idx=True)
        self.txd = DriverQueue(mem, 0x10000, 256, event_idx=True)
        self.irq = os.eventfd(0, os.EFD_NONBLOCK | os.EFD_CLOEXEC)
        self.addr_of: dict[int, int] = {}
        self.frames = self.buffers = self.largest = 0
        self.partial = 0  # used-index updates that showed part of a frame (Linux drops such a frame)
        self.stop = threading.Event()
        self.error: BaseException | None = None
        self.lock = threading.Lock()  # device calls, as the transport's I/O thread serializes them

    def activate(self) -> None:
        features = (bit(F_VERSION_1) | bit(F_EVENT_IDX) | bit(F_INDIRECT_DESC) | bit(F_MRG_RXBUF)
                    | OFFLOAD_FEATURES)
        qs = [self.rxd.attach(SplitQueue(self.mem, 256)), self.txd.attach(SplitQueue(self.mem, 256))]
        for i in range(256):
            self.addr_of[self.rxd.add([], [(RX_BUFS + PAGE * i, PAGE)])] = RX_BUFS + PAGE * i
        ctx = VirtioContext(features, qs, lambda i: os.eventfd_write(self.irq, 1), lambda: None,
                            lambda why: setattr(self, "error", RuntimeError(why)))
        self.dev.activate(ctx)

    def _notify(self, index: int) -> None:
        with self.lock:
            self.dev.queue_notify(index)

    def run(self) -> None:
        try:
            self._loop()
        except BaseException as exc:  # reported by the test
            self.error = exc

    def _loop(self) -> None:
        pending: list[bytes] = []
        tx_free = list(range(128))
        tx_slot: dict[int, int] = {}
        poller = select.poll()
        poller.register(self.irq, select.POLLIN)
        poller.register(self.tap.fd, select.POLLIN)
        while not self.stop.is_set():
            poller.poll(50)
            try:
                os.eventfd_read(self.irq)
            except BlockingIOError:
                pass
            used = self.rxd.get_used()  # receive: buffers back to frames, into the guest's stack
            addrs = [self.addr_of.pop(head) for head, _ in used]
            pending += [self.mem.read(a, n) for (_, n), a in zip(used, addrs)]
            old = self.rxd.avail_idx
            for a in addrs:  # refill at once
                self.addr_of[self.rxd.add([], [(a, PAGE)])] = a
            while pending:
                need = struct.unpack_from("<H", pending[0], 10)[0]
                assert need >= 1, "a receive buffer without num_buffers"
                if len(pending) < need:
                    self.partial += 1
                    break
                frame = b"".join(pending[:need])
                del pending[:need]
                self.frames += 1
                self.buffers += need
                self.largest = max(self.largest, len(frame) - 12)
                os.write(self.tap.fd, frame)
            if used and self.rxd.kick_needed(old):
                self._notify(RX)
            for head, _ in self.txd.get_used():
                tx_free.append(tx_slot.pop(head))
            old, sent = self.txd.avail_idx, False
            while tx_free:  # transmit: the guest stack's frames, one chain each
                try:
                    frame = os.read(self.tap.fd, TX_SLOT)
                except BlockingIOError:
                    break
                slot = tx_free.pop()
                self.mem.write(TX_BUFS + slot * TX_SLOT, frame)
                tx_slot[self.txd.add([(TX_BUFS + slot * TX_SLOT, len(frame))], [])] = slot
                sent = True
            if sent and self.txd.kick_needed(old):
                self._notify(TX)


@pytest.fixture
def link():
    mem, _ = guest_memory(64 << 20)
    host_ns, guest_ns = NetNs.create(), NetNs.create()
    tag = os.getpid() % 100000
    host_if, guest_if = f"vh{tag}", f"vg{tag}"
    host_tap = TapBackend.from_options({"id": "h", "ifname": host_if, "script": "no", "downscript": "no"})
    guest_tap = TapBackend.from_options({"id": "g", "ifname": guest_if, "script": "no", "downscript": "no"})
    dev = VirtioNet(host_tap, DEFAULT_MAC, "net0")
    drv = LinuxLikeDriver(mem, dev, guest_tap)
    thread = threading.Thread(target=drv.run, daemon=True)
    try:
        # the guest's stack may hand the driver GSO frames, as Linux's does once TSO is negotiated
        fcntl.ioctl(guest_tap.fd, TUNSETOFFLOAD, TUN_F_CSUM | TUN_F_TSO4 | TUN_F_TSO6)
        host_ns.take(host_if, f"{HOST_IP}/24")
        guest_ns.take(guest_if, f"{GUEST_IP}/24")
        host_mac = host_ns.run("cat", f"/sys/class/net/{host_if}/address").strip()
        guest_mac = guest_ns.run("cat", f"/sys/class/net/{guest_if}/address").strip()
        host_ns.run("ip", "neigh", "replace", GUEST_IP, "lladdr", guest_mac, "dev", host_if, "nud", "permanent")
        guest_ns.run("ip", "neigh", "replace", HOST_IP, "lladdr", host_mac, "dev", guest_if, "nud", "permanent")
        os.set_blocking(guest_tap.fd, False)
        drv.activate()
        thread.start()
        yield host_ns, guest_ns, drv
    finally:
        drv.stop.set()
        if thread.is_alive():
            thread.join(5)
        dev.close()
        guest_tap.close()
        host_ns.delete()
        guest_ns.delete()


def _stream(sender_ns: NetNs, receiver_ns: NetNs, to_ip: str, size: int) -> tuple[str, str, float]:
    """Send ``size`` random-ish bytes over TCP; (sent digest, received digest, seconds)."""
    srv = receiver_ns.socket(socket.AF_INET, socket.SOCK_STREAM)
    srv.bind((to_ip, 5002))
    srv.listen(1)
    srv.settimeout(30)
    got: dict[str, str] = {}

    def sink() -> None:
        conn, _ = srv.accept()
        conn.settimeout(30)
        h = hashlib.sha256()
        while data := conn.recv(1 << 20):
            h.update(data)
        got["digest"] = h.hexdigest()
        conn.close()

    t = threading.Thread(target=sink, daemon=True)
    t.start()
    cli = sender_ns.socket(socket.AF_INET, socket.SOCK_STREAM)
    cli.settimeout(30)
    cli.connect((to_ip, 5002))
    block = hashlib.sha256(b"kvmpy").digest() * (1 << 15)  # 1 MiB, not all zeros
    h = hashlib.sha256()
    t0 = time.monotonic()
    for _ in range(size >> 20):
        cli.sendall(block)
        h.update(block)
    cli.close()
    t.join(60)
    srv.close()
    return h.hexdigest(), got.get("digest", "none"), time.monotonic() - t0


def test_tcp_host_to_guest_arrives_intact_in_tso_frames_over_mergeable_buffers(link) -> None:
    host_ns, guest_ns, drv = link
    # A real guest reads the used ring from its own CPU while the device writes it; a short GIL switch
    # interval lets the driver thread look as often, so a frame published piecemeal would be seen.
    interval = sys.getswitchinterval()
    sys.setswitchinterval(1e-5)
    try:
        sent, received, secs = _stream(host_ns, guest_ns, GUEST_IP, 16 << 20)
    finally:
        sys.setswitchinterval(interval)
    assert drv.error is None, drv.error
    assert received == sent
    assert drv.largest > 1514 and drv.buffers > drv.frames  # TSO frames, spread over several buffers
    assert drv.partial == 0  # a frame's buffers appear in the used ring all at once
    assert secs < 60


def test_tcp_guest_to_host_arrives_intact(link) -> None:
    host_ns, guest_ns, drv = link
    sent, received, secs = _stream(guest_ns, host_ns, HOST_IP, 16 << 20)
    assert drv.error is None, drv.error
    assert received == sent and drv.dev.counters.tx_frames > 0
    assert secs < 60
