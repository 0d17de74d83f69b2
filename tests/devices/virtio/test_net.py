"""virtio-net over the real SplitQueue in real guest memory, with a real tap in a network namespace.

The test plays the guest driver (rings laid out as Linux lays them out) and
the host side (sockets inside the namespace that holds the tap).
"""

from __future__ import annotations

import os
import struct
import time

import pytest

from kvmpy.devices.device import DeviceStateError
from kvmpy.devices.virtio.device import F_EVENT_IDX, F_VERSION_1, VirtioContext, bit
from kvmpy.devices.virtio.net import (F_CSUM, F_GUEST_CSUM, F_GUEST_TSO4, F_HOST_TSO4, F_MAC, F_MRG_RXBUF,
                                      F_STATUS, MAX_FRAME, RX, TX, VirtioNet, default_mac, format_mac, parse_mac)
from kvmpy.devices.virtio.queue import SplitQueue
from kvmpy.memory.address_space import AddressSpace
from kvmpy.memory.guest_memory import GuestMemory
from kvmpy.memory.ramblock import RAMBlock
from kvmpy.memory.region import MemoryRegion
from kvmpy.net.tap import TapBackend
from tests.devices.virtio.driver import DriverQueue
from tests.net.netns import NetNs, have_netns, parse_udp, udp_frame

pytestmark = pytest.mark.skipif(not have_netns(), reason="needs root, /dev/net/tun and ip netns")

GUEST_MAC, GUEST_IP, HOST_IP = "52:54:00:12:34:56", "10.78.0.2", "10.78.0.1"
HDR = struct.Struct("<BBHHHHH")
RAM = 4 << 20
RX_RING, TX_RING = 0x1000, 0x3000
BUFS = 0x100000  # RX buffers from here, 64 KiB apart
TXBUF = 0x300000
OUTSIDE = RAM + 0x1000  # not RAM


class Guest:
    """The driver side: two queues, what the device signalled, and the host-side namespace and socket."""

    def __init__(self, vnet_hdr: bool = True, features: int = 0, size: int = 16) -> None:
        ram = RAMBlock.allocate("ram", RAM)
        root = MemoryRegion.container("sys", 1 << 40)
        root.add_subregion(0, MemoryRegion.ram_region("ram", ram))
        self.space = AddressSpace("sys", root)
        self.space.commit()
        self.mem = GuestMemory(self.space)
        self.ns = NetNs.create()
        name = f"kn{os.getpid() % 100000}"
        opts = {"id": "n0", "ifname": name, "script": "no", "downscript": "no"}
        if not vnet_hdr:
            opts["vnet_hdr"] = "off"
        self.tap = TapBackend.from_options(opts)
        self.ns.take(name, f"{HOST_IP}/24", (GUEST_IP, GUEST_MAC))
        self.host_mac = self.ns.run("cat", f"/sys/class/net/{name}/address").strip()
        self.sock = self.ns.socket()
        self.sock.bind((HOST_IP, 7000))
        self.sock.settimeout(5)
        self.dev = VirtioNet(self.tap, parse_mac(GUEST_MAC), "net0", self.space)
        self.rxd = DriverQueue(self.mem, RX_RING, size)
        self.txd = DriverQueue(self.mem, TX_RING, size)
        self.irqs: list[int] = []
        self.config_changes = 0
        self.resets: list[str] = []
        self.features = features or (bit(F_VERSION_1) | bit(F_MAC) | bit(F_STATUS))

    def activate(self) -> None:
        qs = [self.rxd.attach(SplitQueue(self.mem, 256)), self.txd.attach(SplitQueue(self.mem, 256))]
        self.ctx = VirtioContext(self.features, qs, self.irqs.append, self._config_changed, self.resets.append)
        self.dev.activate(self.ctx)

    def _config_changed(self) -> None:
        self.config_changes += 1

    def close(self) -> None:
        self.dev.close()
        self.ns.delete()

    # ---- driver actions ----
    def post_rx(self, count: int, size: int) -> list[tuple[int, int]]:
        bufs = []
        for _ in range(count):
            addr = BUFS + 0x10000 * self.rxd.free_head  # buffer i belongs to descriptor i
            self.rxd.add([], [(addr, size)])
            bufs.append((addr, size))
        self.dev.queue_notify(RX)
        return bufs

    def send(self, packet: bytes) -> int:
        self.mem.write(TXBUF, packet)
        head = self.txd.add([(TXBUF, 12), (TXBUF + 12, len(packet) - 12)], [])
        self.dev.queue_notify(TX)
        return head

    def wait_used(self, drv: DriverQueue, n: int = 1, timeout: float = 5) -> list[tuple[int, int]]:
        deadline = time.time() + timeout
        got: list[tuple[int, int]] = []
        while len(got) < n and time.time() < deadline:
            got += drv.get_used()
            if len(got) < n:
                time.sleep(0.01)
        return got

    def host_send(self, payload: bytes) -> None:
        self.sock.sendto(payload, (GUEST_IP, 7001))


@pytest.fixture
def guest():
    g = Guest()
    yield g
    g.close()


def _rx_bytes(g: Guest, used: list[tuple[int, int]]) -> bytes:
    return b"".join(g.mem.read(BUFS + 0x10000 * head, n) for head, n in used)


def _wait_udp(g: Guest, want: int = 1) -> list[tuple[int, int]]:
    """Used RX entries until ``want`` UDP frames arrived (skipping IPv6 neighbour discovery and the like)."""
    out: list[tuple[int, int]] = []
    deadline = time.time() + 5
    while time.time() < deadline:
        for used in g.wait_used(g.rxd, 1, 0.2):
            out.append(used)
        frames = [u for u in out if parse_udp(_rx_bytes(g, [u])[12:]) is not None]
        if len(frames) >= want:
            return frames
    raise AssertionError(f"no UDP frame reached the guest (used: {out})")


# ---- configuration -------------------------------------------------------------------------
def test_config_space_and_features(guest) -> None:
    dev = guest.dev
    assert dev.config_read(0, 4) == int.from_bytes(bytes.fromhex("52540012"), "little")
    assert dev.config_read(4, 2) == 0x5634 and dev.config_read(6, 2) == 1 and dev.config_read(8, 2) == 1
    assert dev.config_read(10, 4) == 0 and dev.config_read(100, 1) == 0
    f = dev.device_features()
    assert f & bit(F_MAC) and f & bit(F_STATUS) and f & bit(F_MRG_RXBUF)
    assert f & bit(F_CSUM) and f & bit(F_GUEST_TSO4) and f & bit(F_HOST_TSO4)  # the tap carries vnet headers
    assert dev.queue_max_sizes == (256, 256) and dev.pci_class == 0x0200


def test_no_offloads_without_a_vnet_header_backend() -> None:
    g = Guest(vnet_hdr=False)
    try:
        assert not g.tap.vnet_hdr
        f = g.dev.device_features()
        assert f & bit(F_MRG_RXBUF) and not f & (bit(F_CSUM) | bit(F_GUEST_CSUM) | bit(F_HOST_TSO4))
        g.activate()
        # transmit: the device strips the header; receive: it makes one
        frame, _ = udp_frame(GUEST_MAC, g.host_mac, GUEST_IP, HOST_IP, 7001, 7000, b"plain")
        g.send(bytes(12) + frame)
        assert g.sock.recvfrom(100) == (b"plain", (GUEST_IP, 7001))
        g.post_rx(8, 2048)
        g.host_send(b"made header")
        used = _wait_udp(g)
        data = _rx_bytes(g, used[:1])
        assert HDR.unpack_from(data) == (0, 0, 0, 0, 0, 0, 1)
        assert parse_udp(data[12:])[4] == b"made header"
    finally:
        g.close()


def test_mac_helpers_follow_qemu() -> None:
    assert format_mac(default_mac(0)) == "52:54:00:12:34:56" and format_mac(default_mac(2)) == "52:54:00:12:34:58"
    assert parse_mac("52-54-00-ab-cd-ef") == bytes.fromhex("525400abcdef")
    for bad in ("52:54:00:12:34", "zz:54:00:12:34:56", "01:00:5e:00:00:01"):
        with pytest.raises(ValueError):
            parse_mac(bad)


# ---- transmit -------------------------------------------------------------------------------
def test_transmit_reaches_the_host_with_checksum_offload(guest) -> None:
    guest.features |= bit(F_CSUM)
    guest.activate()
    frame, _ = udp_frame(GUEST_MAC, guest.host_mac, GUEST_IP, HOST_IP, 7001, 7000, b"hello host")
    head = guest.send(bytes(12) + frame)
    assert guest.sock.recvfrom(100) == (b"hello host", (GUEST_IP, 7001))
    assert guest.txd.get_used() == [(head, 0)] and TX in guest.irqs
    partial, l4 = udp_frame(GUEST_MAC, guest.host_mac, GUEST_IP, HOST_IP, 7001, 7000, b"offloaded", partial=True)
    guest.send(HDR.pack(1, 0, 0, 0, l4, 6, 0) + partial)  # VIRTIO_NET_HDR_F_NEEDS_CSUM
    assert guest.sock.recvfrom(100) == (b"offloaded", (GUEST_IP, 7001))
    assert guest.dev.counters.tx_frames == 2


def test_hostile_transmit_chains_fail_alone(guest) -> None:
    guest.activate()
    txd, mem = guest.txd, guest.mem
    frame, _ = udp_frame(GUEST_MAC, guest.host_mac, GUEST_IP, HOST_IP, 7001, 7000, b"after the bad ones")
    mem.write(TXBUF, bytes(12) + frame)
    bad_addr = txd.add([(OUTSIDE, 100)], [])  # a buffer outside RAM
    short = txd.add([(TXBUF, 8)], [])  # shorter than the header
    huge = txd.add([(TXBUF, 12 + MAX_FRAME + 1)], [])  # longer than any frame
    good = txd.add([(TXBUF, 12 + len(frame))], [])
    guest.dev.queue_notify(TX)
    assert guest.sock.recvfrom(100)[0] == b"after the bad ones"
    assert sorted(txd.get_used()) == sorted([(bad_addr, 0), (short, 0), (huge, 0), (good, 0)])
    assert guest.dev.counters.bad_chains == 1 and guest.dev.counters.tx_dropped == 3 and not guest.resets
    # a ring that runs ahead of itself is broken: the device asks for a reset and stops
    txd.set_avail_idx((txd.avail_idx + 100) & 0xFFFF)
    guest.dev.queue_notify(TX)
    assert guest.resets and "ahead" in guest.resets[0]


# ---- receive --------------------------------------------------------------------------------
def test_receive_into_single_buffers(guest) -> None:
    guest.activate()
    guest.post_rx(8, 2048)
    guest.host_send(b"to the guest")
    used = _wait_udp(guest)
    data = _rx_bytes(guest, used[:1])
    flags, gso, _, _, _, _, nbuf = HDR.unpack_from(data)
    assert nbuf == 1 and gso == 0 and flags == 0  # the guest took no checksum offload
    assert parse_udp(data[12:]) == (HOST_IP, GUEST_IP, 7000, 7001, b"to the guest") and RX in guest.irqs


def test_mergeable_receive_spreads_a_frame_over_buffers() -> None:
    g = Guest(size=64)
    g.features |= bit(F_MRG_RXBUF) | bit(F_EVENT_IDX)
    try:
        g.activate()
        g.post_rx(40, 256)
        payload = bytes(range(256)) * 5  # 1280 bytes: 12 + 14 + 20 + 8 + 1280 = 6 buffers of 256
        g.host_send(payload)
        deadline = time.time() + 5
        used: list[tuple[int, int]] = []
        while time.time() < deadline:
            used += g.rxd.get_used()
            # frames are whole: read num_buffers from each first buffer
            i, frames = 0, []
            while i < len(used):
                n = HDR.unpack_from(g.mem.read(BUFS + 0x10000 * used[i][0], 12))[6]
                frames.append(used[i:i + n])
                i += n
            done = [f for f in frames if len(f) > 1]
            if done and sum(n for _, n in done[0]) == 12 + 14 + 20 + 8 + 1280:
                break
            time.sleep(0.01)
        parts = done[0]
        assert len(parts) == 6 and all(n == 256 for _, n in parts[:-1])
        assert parse_udp(_rx_bytes(g, parts)[12:])[4] == payload
    finally:
        g.close()


def test_guest_checksum_offload_marks_received_frames() -> None:
    g = Guest()
    g.features |= bit(F_GUEST_CSUM)
    try:
        g.activate()
        assert g.tap.offloads & 1  # TUN_F_CSUM
        g.post_rx(8, 2048)
        g.host_send(b"csum")
        data = _rx_bytes(g, _wait_udp(g)[:1])
        flags, _, _, _, start, offset, _ = HDR.unpack_from(data)
        assert flags & 1 and (start, offset) == (34, 6)
    finally:
        g.close()


def test_receive_waits_for_buffers(guest) -> None:
    guest.activate()
    guest.host_send(b"early")
    time.sleep(0.3)
    assert guest.rxd.get_used() == []
    guest.post_rx(8, 2048)  # the kick wakes the backend, which delivers the frame it held
    assert parse_udp(_rx_bytes(guest, _wait_udp(guest)[:1])[12:])[4] == b"early"


def test_hostile_receive_chains(guest) -> None:
    guest.activate()
    rxd = guest.rxd
    read_only = rxd.add([(BUFS, 2048)], [])  # nothing to write into
    outside = rxd.add([], [(OUTSIDE, 2048)])  # not RAM
    guest.post_rx(4, 2048)
    guest.host_send(b"still fine")
    used = guest.wait_used(rxd, 3)
    assert (read_only, 0) in used and (outside, 0) in used
    frames = [parse_udp(_rx_bytes(guest, [u])[12:]) for u in used if u[1]]
    assert [f[4] for f in frames] == [b"still fine"] and not guest.resets


# ---- link state, quiesce, state ---------------------------------------------------------------
def test_link_down_and_up(guest) -> None:
    guest.activate()
    guest.post_rx(8, 2048)
    guest.dev.set_link(False)
    assert guest.config_changes == 1 and guest.dev.config_read(6, 2) == 0
    frame, _ = udp_frame(GUEST_MAC, guest.host_mac, GUEST_IP, HOST_IP, 7001, 7000, b"lost")
    head = guest.send(bytes(12) + frame)
    assert guest.txd.get_used() == [(head, 0)]  # consumed and dropped, as QEMU drops TX while down
    guest.host_send(b"lost too")
    time.sleep(0.3)
    assert all(parse_udp(_rx_bytes(guest, [u])[12:]) is None for u in guest.rxd.get_used())
    with pytest.raises(OSError):
        guest.sock.settimeout(0.3)
        guest.sock.recvfrom(100)
    guest.dev.set_link(True)
    assert guest.config_changes == 2 and guest.dev.config_read(6, 2) == 1
    guest.sock.settimeout(5)
    frame, _ = udp_frame(GUEST_MAC, guest.host_mac, GUEST_IP, HOST_IP, 7001, 7000, b"back")
    guest.send(bytes(12) + frame)
    assert guest.sock.recvfrom(100)[0] == b"back"


def test_quiesce_returns_held_buffers(guest) -> None:
    guest.features |= bit(F_MRG_RXBUF)
    guest.activate()
    guest.post_rx(2, 256)  # too little room for a 1300-byte frame: the device holds what it popped
    guest.host_send(b"x" * 1200)
    deadline = time.time() + 5
    while guest.ctx.queues[RX].next_avail != 2 and time.time() < deadline:
        time.sleep(0.01)
    assert guest.ctx.queues[RX].next_avail == 2 and guest.rxd.get_used() == []
    guest.dev.quiesce()
    assert guest.ctx.queues[RX].next_avail == 0  # back on the ring, nothing lost across a save
    guest.dev.resume()
    guest.post_rx(8, 256)  # now there is room: the held frame arrives in 6 buffers, starting with the first two
    used = guest.wait_used(guest.rxd, 6)
    assert [h for h, _ in used][:2] == [0, 1] and parse_udp(_rx_bytes(guest, used)[12:])[4] == b"x" * 1200


def test_state_round_trip_and_hostile_state(guest) -> None:
    guest.dev.set_link(False)
    state = guest.dev.save()
    assert state == {"mac": bytes.fromhex("525400123456"), "link_up": False}
    other = VirtioNet(guest.tap, default_mac(3))
    other.restore(state)
    assert other.mac == state["mac"] and not other.link_up
    for bad in ({"mac": b"\x01" * 6, "link_up": True}, {"mac": b"12345", "link_up": True},
                {"mac": bytes(6), "link_up": 1}, {"mac": bytes(6)}, {**state, "x": 1}):
        with pytest.raises(DeviceStateError):
            other.validate(bad)


# ---- the whole stack on a PC board: -netdev tap + -device virtio-net-pci, the transport, the monitor ------
@pytest.mark.kvm_host
def test_virtio_net_pci_on_a_pc_board() -> None:
    from kvmpy.config import MachineConfig
    from kvmpy.config_devices import DeviceSpec, NetdevSpec
    from kvmpy.devices.chardev import BufferBackend
    from kvmpy.machine import Machine, qmp_commands
    from kvmpy.monitor.context import Context
    from kvmpy.monitor.protocol import QmpError
    from tests.devices.virtio.pci_driver import BoardPorts, VirtioPciDriver
    from tests.guests.build import build_guest

    name = f"kb{os.getpid() % 100000}"
    cfg = MachineConfig(
        kernel=build_guest("hello"), memory=32 << 20, no_reboot=True,
        netdevs=(NetdevSpec("tap", "n0", (("ifname", name), ("script", "no"), ("downscript", "no"))),),
        devices=(DeviceSpec("virtio-net-pci", "nic0", (("netdev", "n0"),)),
                 DeviceSpec("virtio-net-pci", None, (("netdev", "n1"), ("mac", "52:54:00:aa:bb:cc"))))[:1],
    ).validate()
    ns = NetNs.create()
    m = Machine(cfg, BufferBackend())
    try:
        ns.take(name, f"{HOST_IP}/24", (GUEST_IP, GUEST_MAC))
        host_mac = ns.run("cat", f"/sys/class/net/{name}/address").strip()
        sock = ns.socket()
        sock.bind((HOST_IP, 7000))
        sock.settimeout(5)
        fn = m.board.devices["virtio-net-pci@02.0"]
        assert (fn.identity.vendor, fn.identity.device, fn.identity.class_code) == (0x1AF4, 0x1041, 0x0200)
        d = VirtioPciDriver(BoardPorts(m.board), fn)
        assert bytes(d.device_cfg_read(i, 1) for i in range(6)) == bytes.fromhex("525400123456")
        d.init(queue_base=0x100000, wanted=bit(F_VERSION_1) | bit(F_MAC) | bit(F_STATUS) | bit(F_CSUM))
        frame, _ = udp_frame(GUEST_MAC, host_mac, GUEST_IP, HOST_IP, 7001, 7000, b"through the transport")
        m.board.memory.write(0x200000, bytes(12) + frame)
        d.queues[TX].add([(0x200000, 12 + len(frame))], [])
        d.kick(TX)
        assert sock.recvfrom(100) == (b"through the transport", (GUEST_IP, 7001))
        # and back: an RX buffer, a frame from the host, the used ring
        d.queues[RX].add([], [(0x300000, 2048)])
        d.kick(RX)
        sock.sendto(b"to the board", (GUEST_IP, 7001))
        deadline, used = time.time() + 5, []
        while not used and time.time() < deadline:
            used = d.queues[RX].get_used()
            time.sleep(0.01)
        assert used and parse_udp(m.board.memory.read(0x300000 + 12, used[0][1] - 12))[4] == b"to the board"
        # the monitor: info network, set_link by the NIC's id and by the netdev's, a wrong name
        table = qmp_commands()
        ctx = Context(m, commands=table)
        text = table.dispatch(ctx, "human-monitor-command", {"command-line": "info network"})
        assert text == (f"nic0: index=0,type=nic,model=virtio-net-pci,macaddr=52:54:00:12:34:56\r\n"
                        f" \\ n0: index=0,type=tap,ifname={name},script=no,downscript=no\r\n")
        assert table.dispatch(ctx, "set_link", {"name": "nic0", "up": False}) == {}
        assert d.device_cfg_read(6, 2) == 0 and d.isr() & 2  # link down, a configuration change
        table.dispatch(ctx, "set_link", {"name": "n0", "up": True})
        assert d.device_cfg_read(6, 2) == 1
        with pytest.raises(QmpError, match="Device 'nope' not found"):
            table.dispatch(ctx, "set_link", {"name": "nope", "up": True})
    finally:
        m.close()
        ns.delete()
