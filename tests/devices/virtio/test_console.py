"""virtio-serial driven as Linux drives it, through real split queues over real guest memory: the MULTIPORT
handshake, consoles and named ports on real CharBackends, flow control, and hostile control traffic."""

from __future__ import annotations

import struct
from dataclasses import dataclass

import pytest

from kvmpy.devices.chardev import BufferBackend
from kvmpy.devices.device import DeviceStateError
from kvmpy.devices.virtio.console import (CONSOLE_PORT, CONTROL_LIMIT, CONTROL_RX, CONTROL_TX, DEVICE_ADD,
                                          DEVICE_READY, F_EMERG_WRITE, F_MULTIPORT, PENDING_LIMIT, PORT_NAME,
                                          PORT_OPEN, PORT_READY, PortSpec, VirtioSerial, ports_from_devices, rx_queue)
from kvmpy.devices.virtio.device import F_VERSION_1, VirtioContext, bit
from kvmpy.devices.virtio.queue import SplitQueue, VirtQueueError
from kvmpy.memory.guest_memory import GuestMemory

from .driver import DriverQueue, guest_memory

MiB = 1 << 20
QA = "org.qemu.guest_agent.0"


@pytest.fixture(scope="module")
def machine():
    return guest_memory(4 * MiB)


@pytest.fixture
def mem(machine):
    m, ram = machine
    ram.array[:] = 0
    return m


class Guest:
    """The guest's virtio_console driver, reduced to what the tests need; buffers from a bump allocator."""

    def __init__(self, mem: GuestMemory, dev: VirtioSerial, multiport: bool = True, ports: int = 2) -> None:
        self.mem, self.dev = mem, dev
        self.queues = [SplitQueue(mem, n) for n in dev.queue_max_sizes]
        self.drv: dict[int, DriverQueue] = {}
        used = [0, 1] + ([2, 3] + [q for p in range(1, ports) for q in (rx_queue(p), rx_queue(p) + 1)]
                         if multiport else [])
        for i in used:
            self.drv[i] = DriverQueue(mem, 0x1000 * (i + 1), 32)
            self.drv[i].attach(self.queues[i])
        self.bufs: dict[tuple[int, int], tuple[int, int]] = {}
        self.next_buf = MiB
        self.interrupts: list[int] = []
        self.resets: list[str] = []
        features = bit(F_VERSION_1) | (dev.device_features() if multiport else 0)
        self.ctx = VirtioContext(features, self.queues, self.interrupts.append, lambda: None, self.resets.append)
        dev.activate(self.ctx)

    def alloc(self, n: int) -> int:
        if self.next_buf + n > 4 * MiB:
            self.next_buf = MiB
        addr, self.next_buf = self.next_buf, self.next_buf + (n + 15) // 16 * 16
        return addr

    def post(self, i: int, count: int = 4, size: int = 64) -> None:
        for _ in range(count):
            addr = self.alloc(size)
            self.bufs[i, self.drv[i].add([], [(addr, size)])] = (addr, size)
        self.dev.queue_notify(i)

    def send(self, i: int, data: bytes) -> None:
        addr = self.alloc(len(data))
        self.mem.write(addr, data)
        self.drv[i].add([(addr, len(data))], [])
        self.dev.queue_notify(i)

    def received(self, i: int) -> list[bytes]:
        out = []
        for head, n in self.drv[i].get_used():
            addr, size = self.bufs.pop((i, head), (0, 0))
            assert n <= size
            out.append(self.mem.read(addr, n))
        return out

    def control(self, nr: int, event: int, value: int, extra: bytes = b"") -> None:
        self.send(CONTROL_TX, struct.pack("<IHH", nr, event, value) + extra)
        assert self.drv[CONTROL_TX].get_used()  # the device gives every control buffer back

    def control_in(self) -> list[tuple[int, int, int, bytes]]:
        msgs = [(*struct.unpack_from("<IHH", m), m[8:]) for m in self.received(CONTROL_RX)]
        return msgs

    def handshake(self) -> list[tuple[int, int, int, bytes]]:
        """What Linux does at probe: control buffers, DEVICE_READY, PORT_READY for each added port."""
        self.post(CONTROL_RX, 16, 4096)
        self.control(0, DEVICE_READY, 1)
        added = self.control_in()
        for nr, event, _, _ in added:
            assert event == DEVICE_ADD
            self.control(nr, PORT_READY, 1)
        return added + self.control_in()


@dataclass
class Setup:
    dev: VirtioSerial
    con: BufferBackend
    qga: BufferBackend


@pytest.fixture
def serial():
    con, qga = BufferBackend(), BufferBackend()
    dev = VirtioSerial([PortSpec(0, None, True, con), PortSpec(1, QA, False, qga)])
    yield Setup(dev, con, qga)
    dev.close()


def test_multiport_handshake_as_linux_sees_it(mem, serial) -> None:
    g = Guest(mem, serial.dev)
    msgs = g.handshake()
    assert msgs == [(0, DEVICE_ADD, 1, b""), (1, DEVICE_ADD, 1, b""),
                    (0, CONSOLE_PORT, 1, b""), (0, PORT_OPEN, 1, b""),
                    (1, PORT_NAME, 1, QA.encode() + b"\0"), (1, PORT_OPEN, 1, b"")]
    assert CONTROL_RX in g.interrupts and CONTROL_TX in g.interrupts


def test_console_and_named_port_carry_data_both_ways(mem, serial) -> None:
    g = Guest(mem, serial.dev)
    g.handshake()
    g.control(0, PORT_OPEN, 1)
    g.control(1, PORT_OPEN, 1)
    g.send(1, b"login: ")
    g.send(5, b'{"return": {}}\n')
    assert serial.con.output == b"login: " and serial.qga.output == b'{"return": {}}\n'
    g.post(0)
    g.post(4)
    serial.con.send(b"root\n")
    serial.qga.send(b'{"execute":"guest-ping"}\n')
    assert g.received(0) == [b"root\n"] and g.received(4) == [b'{"execute":"guest-ping"}\n']
    assert 0 in g.interrupts and 4 in g.interrupts and 1 in g.interrupts and 5 in g.interrupts


def test_host_data_waits_for_guest_buffers_and_for_the_port_to_open(mem, serial) -> None:
    g = Guest(mem, serial.dev)
    g.handshake()
    port = 1
    serial.qga.send(b"a" * 100)               # not open yet: held
    g.post(4, 2, 64)
    assert g.received(4) == []
    g.control(port, PORT_OPEN, 1)             # opening delivers what fits: two 64-byte buffers
    assert g.received(4) == [b"a" * 64, b"a" * 36]
    serial.qga.send(b"b" * 10)                # no buffers: held
    assert g.received(4) == []
    g.post(4, 1, 4)
    g.post(4, 1, 64)
    assert g.received(4) == [b"bbbb", b"b" * 6]
    g.control(port, PORT_OPEN, 0)             # closed again: held
    serial.qga.send(b"c")
    g.post(4, 1)
    assert g.received(4) == []


def test_receive_reports_what_it_could_hold(mem, serial) -> None:
    taken = serial.dev.receive(1, b"x" * (PENDING_LIMIT - 10))
    assert taken == PENDING_LIMIT - 10
    assert serial.dev.receive(1, b"y" * 100) == 10
    assert serial.dev.receive(1, b"z") == 0
    assert serial.dev.receive(7, b"no such port") == 0


def test_without_multiport_port_0_is_an_open_console(mem, serial) -> None:
    g = Guest(mem, serial.dev, multiport=False)
    serial.con.send(b"typed early")
    g.post(0)
    assert g.received(0) == [b"typed early"]
    g.send(1, b"hello")
    assert serial.con.output == b"hello"
    serial.dev.queue_notify(CONTROL_TX)  # control queues do not exist without MULTIPORT: ignored
    serial.dev.queue_notify(5)


def test_backend_answering_at_once_does_not_deadlock(mem, serial) -> None:
    g = Guest(mem, serial.dev)
    g.handshake()
    g.control(1, PORT_OPEN, 1)
    g.post(4)
    serial.qga.expect(b"ping", then=b"pong")  # BufferBackend answers from inside the device's write
    g.send(5, b"ping")
    assert g.received(4) == [b"pong"]


def test_config_space_and_emergency_write(mem, serial) -> None:
    dev = serial.dev
    assert dev.device_features() == bit(F_MULTIPORT) | bit(F_EMERG_WRITE)
    assert dev.config_read(4, 4) == 31 and dev.config_read(0, 2) == 0 and dev.config_read(12, 4) == 0
    assert len(dev.queue_max_sizes) == 64
    dev.config_write(8, 4, ord("!"))
    assert serial.con.output == b"!"


# ---- hostile drivers ----------------------------------------------------------------------------

def test_bad_port_ids_short_and_unknown_messages_are_ignored(mem, serial) -> None:
    g = Guest(mem, serial.dev)
    g.post(CONTROL_RX, 8, 4096)
    for nr in (2, 30, 31, 0xFFFFFFFF):
        g.control(nr, PORT_READY, 1)
        g.control(nr, PORT_OPEN, 1)
    g.send(CONTROL_TX, b"\x01\x00")          # shorter than a control message
    g.control(0, 0xFFFF, 0xFFFF)
    g.control(1, PORT_OPEN, 1)               # open before PORT_READY: not open
    serial.qga.send(b"secret")
    g.post(4)
    assert g.control_in() == [] and g.received(4) == []
    assert serial.dev.save()["ports"]["1"]["guest_open"] is False


def test_huge_control_message_is_read_only_to_its_header(mem, serial) -> None:
    g = Guest(mem, serial.dev)
    g.post(CONTROL_RX, 8, 4096)
    g.control(1, PORT_NAME, 1, b"N" * (2 * MiB))  # a name the driver has no business sending
    assert g.control_in() == []
    g.control(0, DEVICE_READY, 1)
    assert [m[:2] for m in g.control_in()] == [(0, DEVICE_ADD), (1, DEVICE_ADD)]


def test_repeated_handshakes_do_not_grow_the_device(mem, serial) -> None:
    g = Guest(mem, serial.dev)
    for _ in range(CONTROL_LIMIT):            # the driver never posts control buffers
        g.control(0, DEVICE_READY, 1)
    assert len(serial.dev.save()["control"]) == CONTROL_LIMIT
    g.post(CONTROL_RX, 30, 64)
    assert len(g.control_in()) == 30


def test_broken_transmit_ring_is_a_queue_error_for_the_transport(mem, serial) -> None:
    g = Guest(mem, serial.dev)
    g.handshake()
    g.control(0, PORT_OPEN, 1)
    g.post(0)
    g.drv[1].publish(1000)  # head beyond the queue
    with pytest.raises(VirtQueueError):
        serial.dev.queue_notify(1)
    serial.con.send(b"after")  # the device stopped using its queues
    assert g.received(0) == []


def test_broken_receive_ring_met_on_the_backend_thread_marks_needs_reset(mem, serial) -> None:
    g = Guest(mem, serial.dev)
    g.handshake()
    g.control(1, PORT_OPEN, 1)
    g.drv[4].set_avail_idx(100)  # far more than the queue size ahead
    assert serial.qga.send(b"data") is None
    assert len(g.resets) == 1 and "queue size" in g.resets[0]
    serial.qga.send(b"more")
    assert len(g.resets) == 1


def test_reset_forgets_the_drivers_view_but_keeps_host_data(mem, serial) -> None:
    g = Guest(mem, serial.dev)
    g.handshake()
    g.control(1, PORT_OPEN, 1)
    serial.dev.reset()
    serial.qga.send(b"kept")
    g2 = Guest(mem, serial.dev)
    g2.handshake()
    g2.post(4)
    assert g2.received(4) == []
    g2.control(1, PORT_OPEN, 1)
    assert g2.received(4) == [b"kept"]


# ---- state ----------------------------------------------------------------------------------------

def test_save_validate_restore(mem, serial) -> None:
    g = Guest(mem, serial.dev)
    g.handshake()
    g.control(1, PORT_OPEN, 1)
    serial.qga.send(b"in flight")
    g.control(0, DEVICE_READY, 1)  # two DEVICE_ADDs waiting for control buffers
    state = serial.dev.save()
    other = VirtioSerial([PortSpec(0, None, True, BufferBackend()), PortSpec(1, QA, False, BufferBackend())])
    before = other.save()
    other.validate(state)
    assert other.save() == before
    other.restore(state)
    assert other.save() == state
    for bad in ({**state, "x": 1}, {**state, "ports": {"0": state["ports"]["0"]}},
                {**state, "control": [b"short"]}, {**state, "control": [b"12345678"] * (CONTROL_LIMIT + 1)},
                {**state, "ports": {**state["ports"], "1": {**state["ports"]["1"], "pending": "text"}}}):
        with pytest.raises(DeviceStateError):
            other.validate(bad)
    assert other.save() == state


# ---- -device lines --------------------------------------------------------------------------------

@dataclass(frozen=True)
class Line:
    driver: str
    props: dict
    id: str | None = None

    @property
    def source(self) -> str:
        return "-device " + ",".join([self.driver] + [f"{k}={v}" for k, v in self.props.items()])

    def get(self, key: str, default: str | None = None) -> str | None:
        return self.props.get(key, default)


def test_port_numbers_as_qemu_gives_them() -> None:
    made: list[str] = []

    def chardev(name: str) -> BufferBackend:
        made.append(name)
        return BufferBackend()

    lines = [Line("virtserialport", {"chardev": "qga0", "name": QA}), Line("virtconsole", {"chardev": "c0"}),
             Line("virtconsole", {"chardev": "c1"}), Line("virtserialport", {"chardev": "p5", "nr": "5"}),
             Line("virtio-blk-pci", {"drive": "d0"})]
    ports = ports_from_devices(lines, chardev)
    assert [(p.nr, p.name, p.console) for p in ports] == [(0, None, True), (1, QA, False), (2, None, True),
                                                           (5, None, False)]
    assert made == ["qga0", "c0", "c1", "p5"]


@pytest.mark.parametrize("lines,message", [
    ([Line("virtserialport", {"chardev": "a", "nr": "0"})], "reserved for virtconsole"),
    ([Line("virtconsole", {"chardev": "a", "nr": "31"})], "exceeds max"),
    ([Line("virtconsole", {"chardev": "a"}), Line("virtconsole", {"chardev": "b", "nr": "0"})], "already exists at id 0"),
    ([Line("virtserialport", {"chardev": "a", "name": "x"}), Line("virtserialport", {"chardev": "b", "name": "x"})],
     "already exists by name x"),
    ([Line("virtserialport", {"chardev": "a", "name": "n" * 256})], "port name"),
    ([Line("virtserialport", {"name": "x"})], "'chardev' is required"),
    ([Line("virtserialport", {"chardev": "a", "nr": "two"})], "nr must be a number"),
    ([Line("virtserialport", {"chardev": str(i)}) for i in range(31)], "Out of ports"),
])
def test_port_line_mistakes(lines, message) -> None:
    with pytest.raises(ValueError, match=message):
        ports_from_devices(lines, lambda name: BufferBackend())
