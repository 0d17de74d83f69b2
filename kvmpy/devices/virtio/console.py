"""virtio-console (virtio-serial, device type 3): hvc consoles and named serial ports on character backends.

``VirtioSerial`` is QEMU's ``virtio-serial-pci`` device model: up to
``max_ports`` ports (31, as QEMU), each a pair of queues, plus a pair of
control queues when the driver accepts MULTIPORT (virtio 1.2, 5.3). A port is
either a console (``-device virtconsole``: Linux's hvc0, hvc1, ...) or a named
port (``-device virtserialport,name=org.qemu.guest_agent.0``: Linux's
/dev/vportNpM and /dev/virtio-ports/NAME), and is backed by a ``CharBackend``.

Queues: port 0 uses 0 (receive) and 1 (transmit), the control queues are 2
(device -> driver) and 3 (driver -> device), port p >= 1 uses 2p+2 and 2p+3.

The control conversation, as between Linux and QEMU: the driver sends
DEVICE_READY; the device answers DEVICE_ADD for each port; the driver sends
PORT_READY for each; the device then says CONSOLE_PORT (for consoles),
PORT_NAME (for named ports) and PORT_OPEN (the host side is connected); the
driver says PORT_OPEN 1/0 when a guest program opens or closes the port.
Host data for a port is held (up to ``PENDING_LIMIT`` bytes; a backend's
``receive`` is told how much was taken) until the guest has opened the port
and posted receive buffers. Without MULTIPORT only port 0 exists and is open.

A hostile driver gets nothing for its trouble: short or unknown control
messages, ports that do not exist and repeated handshakes are ignored (and the
device's own control output is bounded); every queue access goes through
``SplitQueue``, whose ``VirtQueueError`` makes the transport mark the device
NEEDS_RESET. Backend input arrives on the backend's thread, kicks on the
transport's I/O thread: one lock serialises everything that touches the
queues.
"""

from __future__ import annotations

import logging
import struct
import threading
from collections import deque
from dataclasses import dataclass, replace
from typing import TYPE_CHECKING, Any, Callable, Iterable, Protocol, Sequence

from kvmpy.devices.chardev import CharBackend, open_chardev
from kvmpy.devices.device import DeviceStateError, bool_field, bytes_field, check_keys
from kvmpy.devices.virtio.device import DeviceType, VirtioContext, VirtioDevice, bit
from kvmpy.devices.virtio.pci import PciBoard, VirtioPci, virtio_pci
from kvmpy.devices.virtio.queue import VirtQueueError
from kvmpy.errors import ConfigError
from kvmpy.lifecycle import MachineEvent

if TYPE_CHECKING:
    from kvmpy.config import MachineConfig
    from kvmpy.config_devices import DeviceSpec

log = logging.getLogger(__name__)

F_SIZE = 0
F_MULTIPORT = 1
F_EMERG_WRITE = 2

# Control events (virtio 1.2, 5.3.6.2).
DEVICE_READY = 0
DEVICE_ADD = 1
DEVICE_REMOVE = 2
PORT_READY = 3
CONSOLE_PORT = 4
RESIZE = 5
PORT_OPEN = 6
PORT_NAME = 7

CONTROL = struct.Struct("<IHH")  # le32 id, le16 event, le16 value
CONFIG = struct.Struct("<HHII")  # cols, rows, max_nr_ports, emerg_wr
QUEUE_SIZE = 128                 # every queue, as QEMU
DEFAULT_MAX_PORTS = 31           # QEMU's max_ports default
PENDING_LIMIT = 1 << 20          # host bytes held per port while the guest cannot take them
CONTROL_LIMIT = 1024             # control messages held for the driver
NAME_LIMIT = 255                 # bytes in a port name
TX_CHUNK = 64 * 1024             # guest output is handed to the backend this much at a time
CONTROL_RX, CONTROL_TX = 2, 3


@dataclass(frozen=True)
class PortSpec:
    """One port: its number, its name (named ports), whether it is a console, and its backend."""

    nr: int
    name: str | None
    console: bool
    backend: CharBackend


class DeviceLine(Protocol):
    """What ``ports_from_devices`` needs of a ``-device`` line (kvmpy.config.DeviceSpec is one)."""

    driver: str
    id: str | None
    source: str  # "-device TEXT", for messages

    def get(self, key: str, default: str | None = None) -> str | None: ...


def rx_queue(nr: int) -> int:
    return 0 if nr == 0 else 2 * nr + 2


def port_of_queue(index: int) -> int | None:
    """The port a data queue belongs to (None for the control queues)."""
    if index in (CONTROL_RX, CONTROL_TX):
        return None
    return 0 if index < 2 else index // 2 - 1


def ports_from_devices(lines: Iterable[DeviceLine], chardev: Callable[[str], CharBackend],
                       max_ports: int = DEFAULT_MAX_PORTS) -> list[PortSpec]:
    """The ports that ``-device virtconsole``/``virtserialport`` lines put on one virtio-serial bus.

    Numbers as QEMU gives them: ``nr=`` if set; else a console takes 0 when it is
    still free, and anything else the lowest free number from 1 (0 is kept for a
    console). Raises ConfigError, with QEMU's wording where it has one, for a user mistake.
    """
    ports: dict[int, PortSpec] = {}
    names: set[str] = set()
    for line in lines:
        if line.driver not in ("virtconsole", "virtserialport"):
            continue
        console = line.driver == "virtconsole"
        what = line.source or f"-device {line.driver}"
        dev = line.get("chardev")
        if not dev:
            raise ConfigError(f"{what}: Property 'chardev' is required")
        name = line.get("name")
        if name is not None:
            raw = name.encode()
            if not raw or len(raw) > NAME_LIMIT or b"\0" in raw:
                raise ConfigError(f"{what}: port name must be 1 to {NAME_LIMIT} bytes without NUL")
            if name in names:
                raise ConfigError(f"{what}: virtio-serial-bus: A port already exists by name {name}")
        nr_text = line.get("nr")
        if nr_text is not None:
            try:
                nr = int(nr_text, 0)
            except ValueError:
                raise ConfigError(f"{what}: nr must be a number, not {nr_text!r}") from None
        elif console and 0 not in ports:
            nr = 0
        else:
            nr = next((n for n in range(1, max_ports) if n not in ports), max_ports)
            if nr >= max_ports:
                raise ConfigError(f"{what}: virtio-serial-bus: Out of ports for device")
        if nr == 0 and not console:
            raise ConfigError(f"{what}: virtio-serial-bus: Port number 0 on virtio-serial devices reserved "
                             "for virtconsole devices for backward compatibility")
        if not 0 <= nr < max_ports:
            raise ConfigError(f"{what}: virtio-serial-bus: Port number {nr} on virtio-serial device exceeds "
                             f"max ({max_ports})")
        if nr in ports:
            raise ConfigError(f"{what}: virtio-serial-bus: A port already exists at id {nr}")
        if name is not None:
            names.add(name)
        ports[nr] = PortSpec(nr, name, console, chardev(dev))
    return [ports[n] for n in sorted(ports)]


class _Port:
    """A port's host side and the guest's view of it."""

    def __init__(self, spec: PortSpec) -> None:
        self.spec = spec
        self.ready = False            # the driver said PORT_READY 1
        self.guest_open = False       # a guest program has it open (PORT_OPEN 1 from the driver)
        self.pending = bytearray()    # host -> guest bytes not yet in a guest buffer


class VirtioSerial(VirtioDevice):
    """virtio-serial with MULTIPORT: consoles and named ports, each on a CharBackend."""

    device_type = DeviceType.CONSOLE
    pci_class = 0x0780  # communication controller, other (as QEMU)
    name = "virtio-serial"

    def __init__(self, ports: Sequence[PortSpec] = (), max_ports: int = DEFAULT_MAX_PORTS,
                 on_quit: Callable[[], None] = lambda: None) -> None:
        if not 1 <= max_ports <= 511:  # QEMU's limit: (511 + 1) * 2 queues fit VIRTIO_QUEUE_MAX
            raise ValueError(f"virtio-serial: max_ports must be in [1, 511], not {max_ports}")
        self.max_ports = max_ports
        self.ports: dict[int, _Port] = {}
        for spec in ports:
            if not 0 <= spec.nr < max_ports or spec.nr in self.ports:
                raise ValueError(f"virtio-serial: port number {spec.nr} is out of range or taken")
            self.ports[spec.nr] = _Port(spec)
        self.on_quit = on_quit
        self._lock = threading.RLock()  # re-entered when a backend answers output at once (BufferBackend)
        self._ctx: VirtioContext | None = None
        self._multiport = False
        self._quiesced = False
        self._started = False
        self._control_out: deque[bytes] = deque()
        self._dropped_control = 0

    # ---- VirtioDevice: identity and configuration ------------------------------------------

    @property
    def queue_max_sizes(self) -> tuple[int, ...]:
        return (QUEUE_SIZE,) * (2 * (self.max_ports + 1))

    def device_features(self) -> int:
        return bit(F_MULTIPORT) | bit(F_EMERG_WRITE)

    def config_read(self, offset: int, size: int) -> int:
        raw = CONFIG.pack(0, 0, self.max_ports, 0)
        if offset < 0 or size <= 0 or offset + size > len(raw):
            return 0
        return int.from_bytes(raw[offset:offset + size], "little")

    def config_write(self, offset: int, size: int, value: int) -> None:
        """emerg_wr (offset 8): one character for port 0, even before the driver is ready."""
        if offset == 8 and size in (1, 2, 4):
            port = self.ports.get(0)
            if port is not None:
                port.spec.backend.write(bytes((value & 0xFF,)))

    # ---- VirtioDevice: life cycle -----------------------------------------------------------

    def activate(self, ctx: VirtioContext) -> None:
        start = False
        with self._lock:
            self._ctx = ctx
            self._multiport = bool(ctx.features & bit(F_MULTIPORT))
            if not self._multiport and 0 in self.ports:
                self.ports[0].ready = self.ports[0].guest_open = True  # a single, always-open console
            if not self._started:
                self._started = start = True
            self._flush_all()
        if start:  # outside the lock: a backend may deliver input from start() itself
            for nr, port in sorted(self.ports.items()):
                port.spec.backend.start(lambda data, nr=nr: self.receive(nr, data), self.on_quit)

    def reset(self) -> None:
        """The driver went away: forget its view of the ports (host data still waiting is kept)."""
        with self._lock:
            self._ctx = None
            self._multiport = False
            self._control_out.clear()
            for port in self.ports.values():
                port.ready = port.guest_open = False

    def quiesce(self) -> None:
        with self._lock:
            self._quiesced = True

    def resume(self) -> None:
        with self._lock:
            self._quiesced = False
            self._flush_all()

    def close(self) -> None:
        for port in self.ports.values():
            port.spec.backend.close()

    # ---- kicks (transport I/O thread) ---------------------------------------------------------

    def queue_notify(self, index: int) -> None:
        with self._lock:
            ctx = self._ctx
            if ctx is None or self._quiesced:
                return
            try:
                self._kicked(ctx, index)
            except VirtQueueError:
                self._ctx = None  # the transport marks the device NEEDS_RESET; backend input must stop too
                raise

    def _kicked(self, ctx: VirtioContext, index: int) -> None:
        if index in (CONTROL_TX, CONTROL_RX):
            if self._multiport:
                (self._control_messages if index == CONTROL_TX else self._send_control)(ctx)
            return
        nr = port_of_queue(index)
        if nr is None or (nr and not self._multiport) or not 0 <= index < len(ctx.queues):
            return
        if index % 2:
            self._transmit(ctx, index, self.ports.get(nr))
        elif nr in self.ports:
            self._deliver(ctx, self.ports[nr])

    def _transmit(self, ctx: VirtioContext, index: int, port: _Port | None) -> None:
        """Guest output on a port's transmit queue goes to its backend (dropped for a port that does not exist)."""
        q = ctx.queues[index]
        pushed = False
        while (chain := q.pop()) is not None:
            if port is not None:
                for off in range(0, chain.readable_len, TX_CHUNK):
                    port.spec.backend.write(q.read(chain, off, TX_CHUNK))
            q.push(chain, 0)
            pushed = True
        if pushed:
            ctx.interrupt(index)

    # ---- host input (backend thread) ----------------------------------------------------------

    def receive(self, nr: int, data: bytes) -> int:
        """Bytes from port ``nr``'s backend; returns how many were taken (the rest: the port is full)."""
        port = self.ports.get(nr)
        if port is None:
            return 0
        with self._lock:
            room = PENDING_LIMIT - len(port.pending)
            taken = data[:max(room, 0)]
            port.pending += taken
            ctx = self._ctx
            if ctx is not None and not self._quiesced:
                self._guarded(ctx, lambda: self._deliver(ctx, port))
        if len(taken) < len(data):
            log.debug("virtio-serial port %d: guest not reading, %d bytes refused", nr, len(data) - len(taken))
        return len(taken)

    def _guarded(self, ctx: VirtioContext, work: Callable[[], None]) -> None:
        """Run queue work off the transport's thread: a broken ring marks the device NEEDS_RESET."""
        try:
            work()
        except VirtQueueError as exc:
            self._ctx = None
            ctx.needs_reset(str(exc))

    def _deliver(self, ctx: VirtioContext, port: _Port) -> None:
        """Move a port's pending host data into the guest's receive buffers, as far as they go."""
        if not port.pending or not port.guest_open:
            return
        index = rx_queue(port.spec.nr)
        q = ctx.queues[index]
        pushed = False
        while port.pending and (chain := q.pop()) is not None:
            n = q.write(chain, bytes(port.pending[:chain.writable_len]))
            del port.pending[:n]
            q.push(chain, n)
            pushed = True
        if pushed:
            ctx.interrupt(index)

    def _flush_all(self) -> None:
        """After activation, resume or restore: send what waits (caller holds the lock)."""
        ctx = self._ctx
        if ctx is None or self._quiesced:
            return
        work: list[Callable[[], None]] = [lambda p=p: self._deliver(ctx, p) for p in self.ports.values()]
        if self._multiport:
            work.append(lambda: self._send_control(ctx))
        for item in work:
            if self._ctx is None:
                return
            self._guarded(ctx, item)

    # ---- the control queues -------------------------------------------------------------------

    def _control_messages(self, ctx: VirtioContext) -> None:
        q = ctx.queues[CONTROL_TX]
        pushed = False
        while (chain := q.pop()) is not None:
            msg = q.read(chain, 0, CONTROL.size)
            q.push(chain, 0)
            pushed = True
            if len(msg) == CONTROL.size:
                self._handle_control(*CONTROL.unpack(msg))
            else:
                log.debug("virtio-serial: %d-byte control message ignored", len(msg))
        if pushed:
            ctx.interrupt(CONTROL_TX)
        self._send_control(ctx)
        for port in self.ports.values():
            self._deliver(ctx, port)

    def _handle_control(self, nr: int, event: int, value: int) -> None:
        if event == DEVICE_READY:
            if value != 1:
                log.warning("virtio-serial: the guest driver failed to initialise the device")
                return
            for n in sorted(self.ports):
                self._queue_control(n, DEVICE_ADD, 1)
            return
        port = self.ports.get(nr)
        if port is None:
            log.debug("virtio-serial: control event %d for port %d, which does not exist", event, nr)
            return
        if event == PORT_READY:
            if value != 1:
                log.warning("virtio-serial: the guest could not add port %d", nr)
                return
            port.ready = True
            if port.spec.console:
                self._queue_control(nr, CONSOLE_PORT, 1)
            if port.spec.name is not None:
                self._queue_control(nr, PORT_NAME, 1, port.spec.name.encode() + b"\0")
            self._queue_control(nr, PORT_OPEN, 1)  # the host side is always connected
        elif event == PORT_OPEN:
            port.guest_open = bool(value) and port.ready
        else:
            log.debug("virtio-serial: control event %d from the guest ignored", event)

    def _queue_control(self, nr: int, event: int, value: int, extra: bytes = b"") -> None:
        if len(self._control_out) >= CONTROL_LIMIT:
            self._dropped_control += 1  # a driver repeating its handshake endlessly gets no more
            return
        self._control_out.append(CONTROL.pack(nr, event, value) + extra)

    def _send_control(self, ctx: VirtioContext) -> None:
        q = ctx.queues[CONTROL_RX]
        pushed = False
        while self._control_out and (chain := q.pop()) is not None:
            msg = self._control_out.popleft()
            q.push(chain, q.write(chain, msg))
            pushed = True
        if pushed:
            ctx.interrupt(CONTROL_RX)

    # ---- state --------------------------------------------------------------------------------

    def save(self) -> dict[str, Any]:
        with self._lock:
            return {"ports": {str(nr): {"ready": p.ready, "guest_open": p.guest_open, "pending": bytes(p.pending)}
                              for nr, p in sorted(self.ports.items())},
                    "control": [bytes(m) for m in self._control_out]}

    def validate(self, state: dict[str, Any]) -> dict[int, tuple[bool, bool, bytes]]:
        check_keys(state, {"ports", "control"})
        ports, control = state["ports"], state["control"]
        if not isinstance(ports, dict) or set(ports) != {str(nr) for nr in self.ports}:
            raise DeviceStateError(f"virtio-serial: saved ports {sorted(ports) if isinstance(ports, dict) else ports!r}"
                                   f" differ from this device's {sorted(self.ports)}")
        out = {}
        for key, p in ports.items():
            check_keys(p, {"ready", "guest_open", "pending"})
            out[int(key)] = (bool_field(p, "ready"), bool_field(p, "guest_open"),
                             bytes_field(p, "pending", PENDING_LIMIT))
        if not isinstance(control, list) or len(control) > CONTROL_LIMIT:
            raise DeviceStateError(f"virtio-serial: control must be a list of at most {CONTROL_LIMIT} messages")
        for m in control:
            if not isinstance(m, (bytes, bytearray)) or not CONTROL.size <= len(m) <= CONTROL.size + NAME_LIMIT + 1:
                raise DeviceStateError("virtio-serial: a saved control message has a bad length")
        return out

    def restore(self, state: dict[str, Any]) -> None:
        checked = self.validate(state)
        with self._lock:
            for nr, (ready, guest_open, pending) in checked.items():
                port = self.ports[nr]
                port.ready, port.guest_open, port.pending = ready, guest_open, bytearray(pending)
            self._control_out = deque(bytes(m) for m in state["control"])


# ---- -device virtio-serial-pci ---------------------------------------------------------------------

PORT_DRIVERS = ("virtconsole", "virtserialport")


class SerialBoard(PciBoard, Protocol):
    """A board that builds virtio-serial-pci: the transport's needs, its configuration, its event sink."""

    config: "MachineConfig"

    def post(self, event: MachineEvent) -> None: ...


def bus_ports(devices: Sequence["DeviceSpec"], serial: "DeviceSpec") -> list["DeviceSpec"]:
    """The virtconsole/virtserialport lines on ``serial``'s bus: ``bus=ID.0`` names it; without ``bus=`` a
    port goes on the first virtio-serial-pci, as QEMU puts it on the first virtio-serial bus it finds."""
    serials = [d for d in devices if d.driver == "virtio-serial-pci"]
    mine = []
    for d in devices:
        if d.driver not in PORT_DRIVERS:
            continue
        bus = d.get("bus")
        if bus is None:
            owner = serials[0] if serials else None
        else:
            owner = next((s for s in serials if s.id is not None and bus == f"{s.id}.0"), None)
            if owner is None:
                raise ConfigError(f"{d.source or '-device ' + d.driver}: Bus '{bus}' not found")
        if owner is serial:
            mine.append(d)
    return mine


def virtio_serial_pci(board: SerialBoard, spec: "DeviceSpec") -> VirtioPci:
    """``-device virtio-serial-pci[,max_ports=N]`` with the ports its ``virtconsole``/``virtserialport`` lines
    put on its bus, each on its ``-chardev`` (opened here; the device closes it at teardown)."""
    where = spec.source or "-device virtio-serial-pci"
    max_ports = spec.get_number("max_ports", DEFAULT_MAX_PORTS, lo=1, hi=511)
    assert max_ports is not None
    chardevs = {c.id: c for c in board.config.chardevs}
    opened: list[CharBackend] = []

    def chardev(name: str) -> CharBackend:
        if name not in chardevs:
            raise ConfigError(f"{where}: chardev {name!r} not found")
        try:
            backend = open_chardev(chardevs[name])
        except ValueError as exc:
            raise ConfigError(str(exc)) from None
        opened.append(backend)
        return backend

    try:
        ports = ports_from_devices(bus_ports(board.config.devices, spec), chardev, max_ports)
        if spec.get("vectors") is None:  # QEMU's default for this device: one vector per port, plus config
            spec = replace(spec, props=spec.props + (("vectors", str(max_ports + 1)),))
        device = VirtioSerial(ports, max_ports, on_quit=lambda: board.post(MachineEvent("quit", 0, guest=False)))
        return virtio_pci(board, spec, device, device_props=frozenset({"max_ports"}))
    except BaseException:
        for backend in opened:  # nothing else will close what was opened for a device never built
            backend.close()
        raise
