"""virtio-serial behind the real virtio-pci transport: Linux's init sequence over the PCI buses, the MULTIPORT
handshake through kicks on the transport's I/O thread, the function's config space against QEMU's, and
``-device virtio-serial-pci``/``virtconsole``/``virtserialport`` lines built by a real PC board on -chardev sockets."""

from __future__ import annotations

import socket
import struct
import time

import pytest

from kvmpy.devices.chardev import BufferBackend
from kvmpy.devices.virtio.console import (CONSOLE_PORT, CONTROL_RX, CONTROL_TX, DEVICE_ADD, DEVICE_READY,
                                          F_EMERG_WRITE, F_MULTIPORT, PORT_NAME, PORT_OPEN, PORT_READY, PortSpec,
                                          VirtioSerial)
from kvmpy.devices.virtio.device import F_EVENT_IDX, F_INDIRECT_DESC, F_VERSION_1, STATUS_DRIVER_OK
from kvmpy.devices.virtio import pci as vp
from kvmpy.devices.virtio.pci import VirtioPci

from .pci_driver import BoardPorts, PciRig, VirtioPciDriver
from .test_pci import wait_for

QA = "org.qemu.guest_agent.0"
BUF = 0x800000


@pytest.fixture
def serial_pci():
    rig = PciRig()
    con, qga = BufferBackend(), BufferBackend()
    fn = VirtioPci("virtio-serial-pci", VirtioSerial([PortSpec(0, None, True, con), PortSpec(1, QA, False, qga)]),
                   rig.memory)
    rig.bus.plug(fn, 2)
    yield rig, fn, VirtioPciDriver(rig, fn), con, qga
    fn.close()


class Buffers:
    """Guest buffers from a bump allocator, remembered by (queue, head)."""

    def __init__(self, d: VirtioPciDriver) -> None:
        self.d, self.next, self.bufs = d, BUF, {}

    def post(self, q: int, count: int = 4, size: int = 4096) -> None:
        for _ in range(count):
            self.bufs[q, self.d.queues[q].add([], [(self.next, size)])] = self.next
            self.next += size
        self.d.kick(q)

    def send(self, q: int, data: bytes) -> None:
        self.d.rig.memory.write(self.next, data)
        self.d.queues[q].add([(self.next, len(data))], [])
        self.next += (len(data) + 15) & ~15
        self.d.kick(q)

    def wait(self, q: int, count: int) -> list[bytes]:
        got: list[bytes] = []

        def more() -> bool:
            for head, n in self.d.queues[q].get_used():
                addr = self.bufs.pop((q, head), None)
                if addr is not None:
                    got.append(self.d.rig.memory.read(addr, n))
            return len(got) >= count
        assert wait_for(more), f"queue {q}: {len(got)} of {count} buffers came back"
        return got


def probe(d: VirtioPciDriver) -> Buffers:
    """Linux's virtcons_probe: control buffers, DEVICE_READY, PORT_READY for each port added, PORT_OPEN."""
    b = Buffers(d)
    b.post(CONTROL_RX, 8)
    b.send(CONTROL_TX, struct.pack("<IHH", 0, DEVICE_READY, 1))
    added = [struct.unpack_from("<IHH", m) for m in b.wait(CONTROL_RX, 2)]
    assert added == [(0, DEVICE_ADD, 1), (1, DEVICE_ADD, 1)]
    for nr, _, _ in added:
        b.send(CONTROL_TX, struct.pack("<IHH", nr, PORT_READY, 1))
    msgs = [(*struct.unpack_from("<IHH", m), m[8:]) for m in b.wait(CONTROL_RX, 4)]
    assert msgs == [(0, CONSOLE_PORT, 1, b""), (0, PORT_OPEN, 1, b""), (1, PORT_NAME, 1, QA.encode() + b"\0"),
                    (1, PORT_OPEN, 1, b"")]
    for nr in (0, 1):
        b.send(CONTROL_TX, struct.pack("<IHH", nr, PORT_OPEN, 1))
    return b


def test_linux_probe_handshake_and_data_through_the_transport(serial_pci) -> None:
    rig, fn, d, con, qga = serial_pci
    offered = d.device_features()
    assert offered == (1 << F_VERSION_1) | (1 << F_INDIRECT_DESC) | (1 << F_EVENT_IDX) | (1 << F_MULTIPORT) \
        | (1 << F_EMERG_WRITE)
    assert d.common_read(0x12, 2) == 64  # num_queues: (31 ports + control) * 2
    d.init()
    assert d.status() & STATUS_DRIVER_OK
    assert d.device_cfg_read(4, 4) == 31  # max_nr_ports
    b = probe(d)
    b.post(0, 2)
    b.post(4, 2)
    con.send(b"root\n")
    qga.send(b'{"execute":"guest-ping"}\n')
    assert b.wait(0, 1) == [b"root\n"] and b.wait(4, 1) == [b'{"execute":"guest-ping"}\n']
    b.send(1, b"# ")
    b.send(5, b'{"return": {}}\n')
    assert con.wait_for(b"# ", 5) and qga.wait_for(b'{"return": {}}', 5)
    assert wait_for(d.intx_level)


def test_config_space_matches_qemu() -> None:
    from tests.devices.pci.qtest import QemuQtest, have_qemu

    rig = PciRig()
    fn = VirtioPci("virtio-serial-pci", VirtioSerial(), rig.memory)
    rig.bus.plug(fn, 2)
    mine = rig.config_space(2 << 3)  # as firmware first sees it
    fn.close()
    assert mine[0:4] == bytes.fromhex("f41a4310") and mine[0x0A:0x0C] == b"\x80\x07"
    if not have_qemu():
        pytest.skip("qemu-system-x86_64 not installed")
    qemu = QemuQtest("-device", "virtio-serial-pci,disable-legacy=on,vectors=0")
    try:
        theirs = qemu.config_space(2 << 3)
    finally:
        qemu.close()
    assert mine == theirs


@pytest.mark.kvm_host
def test_device_lines_on_a_pc_board_with_socket_chardevs(tmp_path) -> None:
    from kvmpy.config import MachineConfig
    from kvmpy.config_devices import ChardevSpec, DeviceSpec
    from kvmpy.machine import Machine
    from tests.guests.build import build_guest

    def line(text: str) -> DeviceSpec:
        driver, *props = text.split(",")
        pairs = tuple(tuple(p.split("=", 1)) for p in props)
        return DeviceSpec(driver, dict(pairs).get("id"), tuple(p for p in pairs if p[0] != "id"),
                          source=f"-device {text}")

    socks = {name: tmp_path / f"{name}.sock" for name in ("con0", "qga0")}
    chardevs = tuple(ChardevSpec("socket", name, path=str(path), server=True, wait=False,
                                 source=f"-chardev socket,id={name}") for name, path in socks.items())
    devices = (line("virtio-serial-pci,id=vs0"), line(f"virtserialport,chardev=qga0,name={QA}"),
               line("virtconsole,chardev=con0"))
    cfg = MachineConfig(kernel=build_guest("hello"), memory=64 << 20, no_reboot=True, devices=devices,
                        chardevs=chardevs).validate()
    machine = Machine(cfg, BufferBackend())
    clients: dict[str, socket.socket] = {}
    try:
        fn = machine.board.devices["virtio-serial-pci@02.0"]
        assert isinstance(fn, VirtioPci) and fn.qdev_id == "vs0"
        d = VirtioPciDriver(BoardPorts(machine.board), fn)
        msix_control = d.rig.cfg_read(d.devfn, vp.MSIX_CAP_AT + 2, 2)
        assert msix_control & 0x7FF == 31  # table size - 1: QEMU's default of max_ports + 1 vectors
        d.init(queue_base=0x100000, wanted=d.device_features())
        b = probe(d)  # port 0 is the console, port 1 the named one: as QEMU numbers them
        for name, path in socks.items():
            clients[name] = socket.socket(socket.AF_UNIX)
            clients[name].settimeout(5)
            clients[name].connect(str(path))
        b.post(4, 2)
        clients["qga0"].sendall(b'{"execute":"guest-ping"}\n')  # waits in the socket until the server takes it
        assert b.wait(4, 1) == [b'{"execute":"guest-ping"}\n']
        clients["con0"].settimeout(0.2)
        got = b""
        deadline = time.monotonic() + 5
        while b"login: " not in got and time.monotonic() < deadline:  # output before the server took its
            b.send(1, b"login: ")                                         # peer is dropped, as under QEMU
            try:
                got += clients["con0"].recv(100)
            except socket.timeout:
                pass
        assert got.startswith(b"login: ")
    finally:
        for c in clients.values():
            c.close()
        machine.close()
    assert not socks["con0"].exists()  # the device closed its chardevs


def test_device_line_mistakes_get_qemus_messages(tmp_path) -> None:
    from kvmpy.config_devices import DeviceSpec
    from kvmpy.devices.virtio.console import bus_ports
    from kvmpy.errors import ConfigError

    serial = DeviceSpec("virtio-serial-pci", "vs0", source="-device virtio-serial-pci,id=vs0")
    other = DeviceSpec("virtio-serial-pci", "vs1", source="-device virtio-serial-pci,id=vs1")
    on0 = DeviceSpec("virtconsole", None, (("chardev", "a"),), source="-device virtconsole,chardev=a")
    on1 = DeviceSpec("virtconsole", None, (("chardev", "b"), ("bus", "vs1.0")), source="-device virtconsole,bus=vs1.0")
    assert bus_ports((serial, other, on0, on1), serial) == [on0]
    assert bus_ports((serial, other, on0, on1), other) == [on1]
    lost = DeviceSpec("virtconsole", None, (("chardev", "c"), ("bus", "vs9.0")), source="-device virtconsole,bus=vs9.0")
    with pytest.raises(ConfigError, match=r"^-device virtconsole,bus=vs9.0: Bus 'vs9.0' not found$"):
        bus_ports((serial, lost), serial)
