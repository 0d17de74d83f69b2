"""vhost-net: the in-kernel virtio-net data plane, driven through /dev/vhost-net's ioctls as QEMU drives it.

``VhostNet.open()`` opens /dev/vhost-net (or takes ``vhostfd=``), claims it
(VHOST_SET_OWNER) and reads what the kernel offers (VHOST_GET_FEATURES); the
tap netdev does this when it is created, so ``vhost=on`` fails early.
``start()`` hands the rings over once the driver is running:
VHOST_SET_FEATURES (the guest's features that concern the rings; the tap
itself carries the 12-byte virtio-net header, so VHOST_NET_F_VIRTIO_NET_HDR is
never set), VHOST_SET_MEM_TABLE (every RAM range of the guest's FlatView, kept
current by a FlatView listener, so memory hotplug reaches the kernel), and per
queue VHOST_SET_VRING_NUM/BASE/ADDR/KICK/CALL, then VHOST_NET_SET_BACKEND with
the tap's fd. ``stop()`` detaches the tap and returns each queue's last
available index (VHOST_GET_VRING_BASE), so kvmpy's own queue code, a saved
state or a migration stream continue where the kernel stopped.

Kick and call: given eventfds (the transport's ioeventfd for the queue's
notify address, and the irqfd eventfd of its MSI-X vector) the guest and the
kernel talk without kvmpy in between. When the transport offers none, vhost
gets eventfds of its own: the device forwards each kick it is told of
(``kick``) and a thread turns each call into ``on_call(queue)``.

Dirty logging for migration (``log_start``/``log_sync``/``log_stop``, the
device passes them on as a ``KvmSlots`` dirty source): with VHOST_F_LOG_ALL
acked and a log buffer given by VHOST_SET_LOG_BASE (one bit per 4 KiB guest
page, in 64-bit words), the kernel marks every page it writes (RX buffers, and
the used rings with VHOST_VRING_F_LOG and each ring's log_guest_addr). Logging
is switched on and off while the rings run, as QEMU does (SET_LOG_BASE, then
SET_FEATURES and SET_VRING_ADDR per ring). The log is double-buffered: a sync
points the kernel at the other (clean) buffer first; the kernel changes a
ring's log base only under that ring's mutex, which its worker holds while
it writes, so once the ioctl returns the old buffer is complete and is read
and cleared without racing the kernel's atomic bit sets. The buffer covers
the guest's highest RAM address and grows with the memory map.
"""

from __future__ import annotations

import fcntl
import logging
import os
import select
import struct
import threading
from dataclasses import dataclass
from typing import TYPE_CHECKING, Callable

from ioctl_opt import IO, IOR, IOW, IOWR

if TYPE_CHECKING:
    import numpy as np

    from kvmpy.devices.virtio.queue import SplitQueue
    from kvmpy.memory.address_space import AddressSpace, FlatView

log = logging.getLogger(__name__)

VHOST_PATH = "/dev/vhost-net"
VHOST_VIRTIO = 0xAF
_U64 = struct.Struct("Q")
_STATE = struct.Struct("II")  # vhost_vring_state: index, num
_FILE = struct.Struct("Ii")  # vhost_vring_file: index, fd
_ADDR = struct.Struct("IIQQQQ")  # vhost_vring_addr: index, flags, desc, used, avail (user addresses), log_guest_addr
_MEMORY = struct.Struct("II")  # vhost_memory: nregions, padding; then the regions
_REGION = struct.Struct("QQQQ")  # vhost_memory_region: guest_phys_addr, memory_size, userspace_addr, flags_padding

VHOST_GET_FEATURES = IOR(VHOST_VIRTIO, 0x00, _U64)
VHOST_SET_FEATURES = IOW(VHOST_VIRTIO, 0x00, _U64)
VHOST_SET_OWNER = IO(VHOST_VIRTIO, 0x01)
VHOST_RESET_OWNER = IO(VHOST_VIRTIO, 0x02)
VHOST_SET_MEM_TABLE = IOW(VHOST_VIRTIO, 0x03, _MEMORY)
VHOST_SET_LOG_BASE = IOW(VHOST_VIRTIO, 0x04, _U64)
VHOST_SET_VRING_NUM = IOW(VHOST_VIRTIO, 0x10, _STATE)
VHOST_SET_VRING_ADDR = IOW(VHOST_VIRTIO, 0x11, _ADDR)
VHOST_SET_VRING_BASE = IOW(VHOST_VIRTIO, 0x12, _STATE)
VHOST_GET_VRING_BASE = IOWR(VHOST_VIRTIO, 0x12, _STATE)
VHOST_SET_VRING_KICK = IOW(VHOST_VIRTIO, 0x20, _FILE)
VHOST_SET_VRING_CALL = IOW(VHOST_VIRTIO, 0x21, _FILE)
VHOST_NET_SET_BACKEND = IOW(VHOST_VIRTIO, 0x30, _FILE)

VHOST_F_LOG_ALL = 26
VHOST_VRING_F_LOG = 1 << 0
F_NOTIFY_ON_EMPTY = 24
F_INDIRECT_DESC = 28
F_EVENT_IDX = 29
F_VERSION_1 = 32
F_ACCESS_PLATFORM = 33
F_MRG_RXBUF = 15
F_MTU = 3
# The guest features the kernel's vhost-net acts on (QEMU's kernel_feature_bits); the rest are the tap's.
RING_FEATURES = sum(1 << b for b in (F_NOTIFY_ON_EMPTY, F_INDIRECT_DESC, F_EVENT_IDX, F_MRG_RXBUF, F_VERSION_1,
                                     F_MTU))
MAX_REGIONS = 64  # vhost's default max_mem_regions
LOG_PAGE = 4096
RING_SIZES = (lambda n: 16 * n, lambda n: 6 + 2 * n, lambda n: 6 + 8 * n)  # desc, avail, used (with event idx)


class VhostError(Exception):
    """/dev/vhost-net is missing or refused a request; ``errno`` says why (0: not a system error)."""

    def __init__(self, errno: int | None, message: str) -> None:
        super().__init__(message)
        self.errno = errno or 0


def _ioctl(fd: int, request: int, arg: bytes | None, what: str) -> bytearray:
    """One vhost ioctl: ``arg`` is the struct (the kernel may write back into the returned copy), or None."""
    buf = bytearray(arg) if arg is not None else bytearray()
    try:
        if arg is None:
            fcntl.ioctl(fd, request, 0)
        else:
            fcntl.ioctl(fd, request, buf, True)
    except OSError as exc:
        raise VhostError(exc.errno, f"{what}: {exc.strerror}") from None
    return buf


@dataclass(frozen=True)
class Vring:
    """One queue as vhost needs it: guest-physical ring addresses, where to start, and its eventfds."""

    index: int
    num: int
    desc: int
    avail: int
    used: int
    base: int  # the next available index to take
    kick_fd: int | None = None  # None: vhost makes one, fed by ``kick``
    call_fd: int | None = None  # None: vhost makes one, read by a thread that calls ``on_call``


def host_address(view: "FlatView", gpa: int, length: int) -> int:
    """The host virtual address of guest range [gpa, gpa+length), which must lie inside one RAM range."""
    r = view.lookup(gpa)
    if r is None or not r.is_ram or gpa + length > r.end or r.region.ram is None:
        raise VhostError(0, f"guest range {gpa:#x}+{length:#x} is not inside one RAM range")
    return r.region.ram.host_addr + r.ram_offset + (gpa - r.addr)


def memory_table(view: "FlatView") -> bytes:
    """VHOST_SET_MEM_TABLE's argument for every RAM range of ``view``."""
    ram = [r for r in view.ram_ranges() if r.region.ram is not None]
    if len(ram) > MAX_REGIONS:
        raise VhostError(0, f"the guest has {len(ram)} RAM ranges; vhost takes at most {MAX_REGIONS}")
    out = bytearray(_MEMORY.pack(len(ram), 0))
    for r in ram:
        assert r.region.ram is not None
        out += _REGION.pack(r.addr, r.size, r.region.ram.host_addr + r.ram_offset, 0)
    return bytes(out)


def vring_from_queue(index: int, q: "SplitQueue", kick_fd: int | None = None, call_fd: int | None = None) -> Vring:
    """What vhost needs of a running split queue: its registers and the device's next available index."""
    return Vring(index, q.size, q.desc_addr, q.avail_addr, q.used_addr, q.next_avail, kick_fd, call_fd)


def _used_idx(q: "SplitQueue") -> int:
    return int.from_bytes(q.memory.read(q.used_addr + 2, 2), "little")


def sync_queue(q: "SplitQueue", next_avail: int) -> None:
    """After ``stop()``: the queue continues at the kernel's next available index and the ring's used index."""
    state = q.save()
    state.update(next_avail=next_avail & 0xFFFF, next_used=_used_idx(q), signalled_valid=False)
    q.restore(state)


def sync_used(q: "SplitQueue") -> None:
    """While vhost runs: take the used index the kernel wrote, for the interrupt suppression check."""
    state = q.save()
    state["next_used"] = _used_idx(q)
    q.restore(state)


def _own_eventfd(table: dict[int, int], index: int) -> int:
    """Ring ``index``'s eventfd in ``table``, made on first use."""
    if index not in table:
        table[index] = os.eventfd(0, os.EFD_CLOEXEC | os.EFD_NONBLOCK)
    return table[index]


class VhostNet:
    """One /dev/vhost-net instance serving one queue pair (RX 0, TX 1)."""

    def __init__(self, fd: int, features: int) -> None:
        self.fd = fd
        self.features = features  # what the kernel offers
        self.running = False
        self.acked = 0
        self._space: "AddressSpace | None" = None
        self._lock = threading.RLock()  # add_listener calls back at once, from inside start()
        self._own_kicks: dict[int, int] = {}
        self._own_calls: dict[int, int] = {}
        self._on_call: Callable[[int], None] | None = None
        self._call_thread: threading.Thread | None = None
        self._stop_calls = -1
        self._log: "np.ndarray | None" = None  # the buffer the kernel writes (uint64 words)
        self._log_spare: "np.ndarray | None" = None
        self._log_pending: "np.ndarray | None" = None  # bits taken from a buffer the log outgrew
        self._rings: list[int] = []
        self._vrings: list[Vring] = []

    @classmethod
    def open(cls, fd: int | None = None) -> "VhostNet":
        """Open (or adopt ``vhostfd``) /dev/vhost-net, VHOST_SET_OWNER and VHOST_GET_FEATURES."""
        own = fd is None
        if fd is None:
            try:
                fd = os.open(VHOST_PATH, os.O_RDWR | os.O_CLOEXEC)
            except OSError as exc:
                hint = " (modprobe vhost_net)" if exc.errno == 2 else ""
                raise VhostError(exc.errno, f"cannot open {VHOST_PATH}: {exc.strerror}{hint}") from None
        try:
            _ioctl(fd, VHOST_SET_OWNER, None, "VHOST_SET_OWNER")
            features = _U64.unpack(_ioctl(fd, VHOST_GET_FEATURES, bytes(8), "VHOST_GET_FEATURES"))[0]
        except VhostError:
            if own:
                os.close(fd)
            raise
        log.info("vhost-net open: features %#x", features)
        return cls(fd, features)

    # ---- start / stop ----------------------------------------------------------------
    def start(self, space: "AddressSpace", guest_features: int, rings: list[Vring], tap_fd: int,
              on_call: Callable[[int], None] | None = None) -> None:
        """Hand the rings to the kernel; the tap must not be read by anyone else until ``stop()``."""
        with self._lock:
            if self.running:
                return
            acked = guest_features & RING_FEATURES & self.features
            if self._log is not None:
                acked |= 1 << VHOST_F_LOG_ALL
            _ioctl(self.fd, VHOST_SET_FEATURES, _U64.pack(acked), "VHOST_SET_FEATURES")
            self.acked = acked
            view = space.flatview
            _ioctl(self.fd, VHOST_SET_MEM_TABLE, memory_table(view), "VHOST_SET_MEM_TABLE")
            if self._space is None:
                self._space = space
                space.add_listener(self._memory_changed)
            self._on_call = on_call
            try:
                for ring in rings:
                    self._set_vring(view, ring)
                for ring in rings:
                    _ioctl(self.fd, VHOST_NET_SET_BACKEND, _FILE.pack(ring.index, tap_fd), "VHOST_NET_SET_BACKEND")
            except VhostError:
                for ring in rings:
                    self._detach(ring.index)
                raise
            self.running = True
            self._rings = [r.index for r in rings]
            self._vrings = list(rings)
            if self._own_calls and self._call_thread is None:
                self._stop_calls = os.eventfd(0, os.EFD_CLOEXEC)
                self._call_thread = threading.Thread(target=self._call_loop, name="vhost-call", daemon=True)
                self._call_thread.start()
        log.info("vhost-net started: acked %#x, rings %s", acked, [(r.index, r.num, r.base) for r in rings])

    def _set_vring(self, view: "FlatView", ring: Vring) -> None:
        i = ring.index
        _ioctl(self.fd, VHOST_SET_VRING_NUM, _STATE.pack(i, ring.num), "VHOST_SET_VRING_NUM")
        _ioctl(self.fd, VHOST_SET_VRING_BASE, _STATE.pack(i, ring.base), "VHOST_SET_VRING_BASE")
        self._set_vring_addr(view, ring)
        kick = ring.kick_fd if ring.kick_fd is not None else _own_eventfd(self._own_kicks, i)
        _ioctl(self.fd, VHOST_SET_VRING_KICK, _FILE.pack(i, kick), "VHOST_SET_VRING_KICK")
        call = ring.call_fd if ring.call_fd is not None else _own_eventfd(self._own_calls, i)
        _ioctl(self.fd, VHOST_SET_VRING_CALL, _FILE.pack(i, call), "VHOST_SET_VRING_CALL")
        os.eventfd_write(kick, 1)  # look at the ring once: the driver may have queued work already

    def _set_vring_addr(self, view: "FlatView", ring: Vring) -> None:
        desc, avail, used = (size(ring.num) for size in RING_SIZES)
        flags = VHOST_VRING_F_LOG if self._log is not None else 0
        addr = _ADDR.pack(ring.index, flags, host_address(view, ring.desc, desc),
                          host_address(view, ring.used, used), host_address(view, ring.avail, avail), ring.used)
        _ioctl(self.fd, VHOST_SET_VRING_ADDR, addr, "VHOST_SET_VRING_ADDR")

    def _detach(self, index: int) -> None:
        try:
            _ioctl(self.fd, VHOST_NET_SET_BACKEND, _FILE.pack(index, -1), "VHOST_NET_SET_BACKEND")
        except VhostError as exc:
            log.debug("vhost-net: detaching ring %d: %s", index, exc)

    def stop(self) -> list[int]:
        """Detach the tap and return each ring's next available index (VHOST_GET_VRING_BASE)."""
        with self._lock:
            if not self.running:
                return []
            bases = []
            for i in self._rings:
                self._detach(i)
            for i in self._rings:
                state = _ioctl(self.fd, VHOST_GET_VRING_BASE, _STATE.pack(i, 0), "VHOST_GET_VRING_BASE")
                bases.append(_STATE.unpack(state)[1])
            self.running = False
        self._drain_calls()
        log.info("vhost-net stopped at %s", bases)
        return bases

    def kick(self, index: int) -> None:
        """Pass a guest kick on (only when vhost has its own kick eventfd for the ring)."""
        fd = self._own_kicks.get(index)
        if fd is not None:
            os.eventfd_write(fd, 1)

    # ---- memory map and dirty log -----------------------------------------------------
    def _memory_changed(self, view: "FlatView") -> None:
        with self._lock:
            if self._log is not None:
                try:
                    self._log_resize(max((r.end for r in view.ram_ranges()), default=0))
                except VhostError as exc:
                    log.error("vhost-net: the dirty log could not grow with the memory map: %s", exc)
            if not self.running:
                return
            try:
                _ioctl(self.fd, VHOST_SET_MEM_TABLE, memory_table(view), "VHOST_SET_MEM_TABLE")
            except VhostError as exc:
                log.error("vhost-net: the new memory map was refused: %s", exc)

    def log_start(self, top_gpa: int) -> None:
        """Start dirty logging of guest pages below ``top_gpa`` (the map's growth is followed); running or not."""
        with self._lock:
            if self._log is None:
                self._log_resize(top_gpa)
                if self.running:
                    self._apply_log_features()
                log.info("vhost-net: dirty logging on (%d pages)", 64 * len(self._log) if self._log is not None else 0)

    def log_stop(self) -> None:
        """Stop dirty logging (call ``log_sync`` before, or what is still logged is dropped)."""
        with self._lock:
            if self._log is None:
                return
            self._log = None
            if self.running:
                self._apply_log_features()
            self._log_spare = self._log_pending = None
            log.info("vhost-net: dirty logging off")

    def log_sync(self) -> "np.ndarray | None":
        """One bool per guest page frame the kernel wrote since the last sync (fetch and clear); None if off."""
        import numpy as np

        with self._lock:
            if self._log is None or self._log_spare is None:
                return None
            old = self._log
            self._log_spare[:] = 0
            self._set_log_base(self._log_spare)  # from here on the kernel writes the other buffer
            self._log, self._log_spare = self._log_spare, old
            bits = np.unpackbits(old.view(np.uint8), bitorder="little").astype(bool)
            old[:] = 0
            pending, self._log_pending = self._log_pending, None
        if pending is not None:
            bits[:len(pending)] |= pending
        return bits

    def _set_log_base(self, buf: "np.ndarray") -> None:
        _ioctl(self.fd, VHOST_SET_LOG_BASE, _U64.pack(buf.ctypes.data), "VHOST_SET_LOG_BASE")

    def _log_resize(self, top_gpa: int) -> None:
        """Give the kernel a (bigger) log covering [0, top_gpa); bits in the old one are kept (lock held)."""
        import numpy as np

        words = max((top_gpa // LOG_PAGE + 63) // 64, 1)
        old = self._log
        if old is not None and len(old) >= words:
            return
        new = np.zeros(words, dtype=np.uint64)
        self._set_log_base(new)
        if old is not None:  # quiescent now (see the module docstring): keep what it holds for the next sync
            bits = np.unpackbits(old.view(np.uint8), bitorder="little").astype(bool)
            if self._log_pending is not None:
                bits[:len(self._log_pending)] |= self._log_pending
            self._log_pending = bits
        self._log, self._log_spare = new, np.zeros(words, dtype=np.uint64)

    def _apply_log_features(self) -> None:
        """The running rings follow ``_log``: VHOST_F_LOG_ALL acked and used-ring logging, or neither."""
        acked = self.acked & ~(1 << VHOST_F_LOG_ALL)
        if self._log is not None:
            acked |= 1 << VHOST_F_LOG_ALL
        _ioctl(self.fd, VHOST_SET_FEATURES, _U64.pack(acked), "VHOST_SET_FEATURES")
        self.acked = acked
        if self._space is not None:
            view = self._space.flatview
            for ring in self._vrings:
                self._set_vring_addr(view, ring)

    # ---- own call eventfds --------------------------------------------------------------
    def _call_loop(self) -> None:
        poller = select.poll()
        fds = {fd: i for i, fd in self._own_calls.items()}
        for fd in fds:
            poller.register(fd, select.POLLIN)
        poller.register(self._stop_calls, select.POLLIN)
        while True:
            for fd, _ in poller.poll():
                if fd == self._stop_calls:
                    return
                try:
                    os.eventfd_read(fd)
                except BlockingIOError:
                    continue
                cb = self._on_call
                if cb is not None:
                    try:
                        cb(fds[fd])
                    except Exception:
                        log.exception("vhost-net: the call handler failed")

    def _drain_calls(self) -> None:
        for fd in self._own_calls.values():
            try:
                os.eventfd_read(fd)
            except BlockingIOError:
                pass

    def close(self) -> None:
        if self.running:
            self.stop()
        self._log = self._log_spare = self._log_pending = None
        if self._call_thread is not None:
            os.eventfd_write(self._stop_calls, 1)
            self._call_thread.join(timeout=5)
            self._call_thread = None
            os.close(self._stop_calls)
        for fd in (*self._own_kicks.values(), *self._own_calls.values()):
            os.close(fd)
        self._own_kicks.clear()
        self._own_calls.clear()
        if self.fd >= 0:
            os.close(self.fd)
            self.fd = -1
