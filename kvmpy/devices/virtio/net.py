"""virtio-net: the network device model (virtio 1.2, 5.1) over a -netdev backend, optionally with vhost-net.

Queues: 0 receive, 1 transmit (one pair; no control queue, so the guest
cannot filter, change its MAC or toggle offloads at run time: Linux works
without it, and every frame reaches the guest as if in promiscuous mode).

Features: MAC, STATUS (link up/down, a config-change interrupt on
``set_link``), MRG_RXBUF; and, only when the backend carries virtio-net
headers (a tap with IFF_VNET_HDR), the checksum and TSO offloads in both
directions (CSUM, GUEST_CSUM, HOST/GUEST_TSO4/6, HOST/GUEST_ECN). UFO is not
offered: Linux guests no longer use it. Every frame on the queues starts with
the 12-byte ``virtio_net_hdr_v1`` (VERSION_1 is always negotiated); with a
vnet_hdr backend the header passes through unchanged except ``num_buffers``,
otherwise it is stripped on transmit and a zero one is made on receive.

Receive runs on the backend's reader thread: a frame is placed whole, in one
buffer chain or, with MRG_RXBUF, in as many as it needs; when the guest has
not posted enough room the backend is told so (``receive`` returns False) and
is woken by ``rx_ready()`` on the guest's next RX kick. Transmit runs on the
transport's I/O thread: each chain is gathered (at most the header plus
``MAX_FRAME`` bytes) and sent. A chain the driver got wrong fails that frame
only; a broken ring marks the device NEEDS_RESET.

With ``-netdev tap,vhost=on`` the in-kernel vhost-net worker moves the
frames instead (:mod:`kvmpy.net.vhost`); this model then only hands over the
rings at DRIVER_OK and takes them back (the last available index) on reset,
quiesce or link down, when the Python path serves the queues again. The
guest's kick eventfds go to the kernel (the transport stops watching them,
``own_kick``) and its MSI-X irqfds become vhost's call eventfds, so no Python
runs per frame. During a migration the device is a dirty source of the
board's ``KvmSlots`` (``log_start``/``log_sync``/``log_stop``): vhost logs
every guest page it writes. Should the kernel refuse to log, the device
stops vhost and serves the queues itself until logging ends (its writes are
then dirty-tracked as every VMM write is).
"""

from __future__ import annotations

import logging
import struct
import threading
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Protocol

from kvmpy.devices.device import DeviceStateError, bool_field, bytes_field, check_keys
from kvmpy.devices.virtio.device import DeviceType, VirtioContext, VirtioDevice, bit
from kvmpy.devices.virtio.queue import VirtQueueError
from kvmpy.errors import ConfigError
from kvmpy.memory.guest_memory import GuestMemoryError
from kvmpy.net.backend import NetBackend

if TYPE_CHECKING:
    from kvmpy.config import MachineConfig
    from kvmpy.config_devices import DeviceSpec, NetdevSpec
    from kvmpy.devices.virtio.pci import VirtioPci
    from kvmpy.devices.virtio.queue import Chain, SplitQueue
    from kvmpy.kvm.vm import VmFd
    from kvmpy.memory.address_space import AddressSpace
    from kvmpy.net.vhost import VhostNet

log = logging.getLogger(__name__)

# Feature bits (virtio 1.2, 5.1.3).
F_CSUM = 0
F_GUEST_CSUM = 1
F_CTRL_GUEST_OFFLOADS = 2
F_MTU = 3
F_MAC = 5
F_GUEST_TSO4 = 7
F_GUEST_TSO6 = 8
F_GUEST_ECN = 9
F_GUEST_UFO = 10
F_HOST_TSO4 = 11
F_HOST_TSO6 = 12
F_HOST_ECN = 13
F_HOST_UFO = 14
F_MRG_RXBUF = 15
F_STATUS = 16
F_CTRL_VQ = 17

S_LINK_UP = 1  # virtio_net_config.status
OFFLOAD_FEATURES = (bit(F_CSUM) | bit(F_GUEST_CSUM) | bit(F_GUEST_TSO4) | bit(F_GUEST_TSO6) | bit(F_GUEST_ECN)
                    | bit(F_HOST_TSO4) | bit(F_HOST_TSO6) | bit(F_HOST_ECN))

HDR = struct.Struct("<BBHHHHH")  # flags, gso_type, hdr_len, gso_size, csum_start, csum_offset, num_buffers
HDR_LEN = HDR.size  # 12
NUM_BUFFERS_OFFSET = 10
MAX_FRAME = 65550  # the longest frame either way: a 64 KiB GSO packet plus Ethernet and VLAN headers
QUEUE_SIZE = 256  # QEMU's rx_queue_size / tx_queue_size defaults
RX, TX = 0, 1
TX_BURST = 256  # chains per TX pass before other work gets a turn
DEFAULT_MAC = bytes.fromhex("525400123456")
PCI_CLASS_ETHERNET = 0x0200


def default_mac(index: int) -> bytes:
    """QEMU's MAC for the ``index``-th NIC given no mac=: 52:54:00:12:34:56, then :57, ..."""
    return DEFAULT_MAC[:5] + bytes(((DEFAULT_MAC[5] + index) & 0xFF,))


def parse_mac(text: str) -> bytes:
    """``52:54:00:12:34:56`` (or with '-'): six hex octets, not multicast; ValueError with QEMU's wording."""
    parts = text.replace("-", ":").split(":")
    if len(parts) != 6 or not all(len(p) in (1, 2) and all(c in "0123456789abcdefABCDEF" for c in p)
                                  for p in parts):
        raise ValueError(f"Property 'mac' doesn't take value '{text[:40]}'")
    mac = bytes(int(p, 16) for p in parts)
    if mac[0] & 1:
        raise ValueError(f"mac={text}: a NIC's address must not be a multicast address")
    return mac


def format_mac(mac: bytes) -> str:
    return ":".join(f"{b:02x}" for b in mac)


@dataclass
class NetCounters:
    """What the device dropped and why (HMP ``info network`` prints it)."""

    rx_frames: int = 0
    tx_frames: int = 0
    rx_dropped: int = 0  # no buffer big enough, link down, a bad chain
    tx_dropped: int = 0  # too long, too short, a bad chain, link down
    bad_chains: int = 0


class VirtioNet(VirtioDevice):
    """One virtio-net NIC bound to one backend. ``address_space`` is needed only for vhost-net."""

    device_type = DeviceType.NET
    pci_class = PCI_CLASS_ETHERNET

    def __init__(self, backend: NetBackend, mac: bytes = DEFAULT_MAC, nic_id: str = "",
                 address_space: "AddressSpace | None" = None) -> None:
        if len(mac) != 6:
            raise ValueError("a MAC address has 6 bytes")
        self.name = "virtio-net"
        self.nic_id = nic_id
        self.backend = backend
        self.mac = bytes(mac)
        self.link_up = True
        self.address_space = address_space
        self.counters = NetCounters()
        self._lock = threading.RLock()  # the RX queue and activation state (reader thread vs I/O thread)
        self._ctx: VirtioContext | None = None
        self._features = 0
        self._rx_held: list["Chain"] = []  # popped RX chains not yet used for a frame
        self._held_are_last = True  # they are the queue's most recent pops (so undo_pop returns them)
        self._rx_waiting = False  # the backend holds a frame until rx_ready()
        self._quiesced = False
        self._broken = False
        self._backend_started = False
        self._vhost_running = False
        self._log_fallback = False  # vhost could not log dirty pages: the Python path serves during migration
        self._warned: set[str] = set()

    # ---- VirtioDevice: identity and configuration --------------------------------------
    @property
    def queue_max_sizes(self) -> tuple[int, ...]:
        return (QUEUE_SIZE, QUEUE_SIZE)

    @property
    def vhost(self) -> "VhostNet | None":
        return getattr(self.backend, "vhost", None)

    def device_features(self) -> int:
        features = bit(F_MAC) | bit(F_STATUS) | bit(F_MRG_RXBUF)
        if self.backend.vnet_hdr:
            features |= OFFLOAD_FEATURES
        vhost = self.vhost
        if vhost is not None:  # what the kernel's vhost-net cannot do is not offered (as QEMU masks it)
            features &= ~(bit(F_MRG_RXBUF) & ~vhost.features)
        return features

    def _config(self) -> bytes:
        status = S_LINK_UP if self.link_up else 0
        return self.mac + struct.pack("<HH", status, 1)  # mac, status, max_virtqueue_pairs

    def config_read(self, offset: int, size: int) -> int:
        cfg = self._config()
        if offset < 0 or size not in (1, 2, 4, 8) or offset + size > len(cfg):
            return 0
        return int.from_bytes(cfg[offset:offset + size], "little")

    def config_write(self, offset: int, size: int, value: int) -> None:
        # Without VERSION_1 the MAC is writable; a modern driver must use the control queue (which
        # this device does not offer), so writes are ignored as the spec allows.
        self._warn_once("config-write", "virtio-net: the driver wrote the config space; ignored")

    # ---- link state (QMP set_link) -----------------------------------------------------
    def set_link(self, up: bool) -> None:
        """Link up or down: status bit, a config-change interrupt, and the backend drops frames while down."""
        with self._lock:
            if up == self.link_up:
                return
            self.link_up = up
            self.backend.set_link(up)
            ctx = self._ctx
            if ctx is not None and not self._quiesced:
                if self._vhost_wanted():
                    self._start_vhost(ctx)
                else:
                    self._stop_vhost(ctx)
                if ctx.features & bit(F_STATUS):
                    ctx.config_changed()
        if up:
            self.backend.rx_ready()
        self._kick_tx()

    # ---- life cycle ----------------------------------------------------------------------
    def activate(self, ctx: VirtioContext) -> None:
        with self._lock:
            self._ctx = ctx
            self._features = ctx.features
            self._broken = False
            self._rx_held = []
            self._held_are_last = True
            g = ctx.features
            self.backend.set_offloads(csum=bool(g & bit(F_GUEST_CSUM)), tso4=bool(g & bit(F_GUEST_TSO4)),
                                      tso6=bool(g & bit(F_GUEST_TSO6)), ecn=bool(g & bit(F_GUEST_ECN)),
                                      ufo=bool(g & bit(F_GUEST_UFO)))
            if not self._backend_started:
                self.backend.start(self._receive)
                self._backend_started = True
            if not self._quiesced and self._vhost_wanted():
                self._start_vhost(ctx)
        self.backend.rx_ready()
        self._kick_tx()

    def reset(self) -> None:
        with self._lock:
            ctx = self._ctx
            if ctx is not None:
                self._stop_vhost(ctx)
            self._ctx = None
            self._features = 0
            self._rx_held = []
            self._rx_waiting = False
            self._broken = False

    def quiesce(self) -> None:
        with self._lock:
            self._quiesced = True
            ctx = self._ctx
            if ctx is not None:
                self._stop_vhost(ctx)
                self._give_back_held(ctx)

    def resume(self) -> None:
        with self._lock:
            self._quiesced = False
            ctx = self._ctx
            if ctx is not None and self._vhost_wanted():
                self._start_vhost(ctx)
        self.backend.rx_ready()
        self._kick_tx()

    def close(self) -> None:
        with self._lock:
            ctx = self._ctx
            if ctx is not None:
                self._stop_vhost(ctx)
            self._ctx = None
        self.backend.close()

    def save(self) -> dict[str, Any]:
        return {"mac": self.mac, "link_up": self.link_up}

    def validate(self, state: dict[str, Any]) -> Any:
        s = check_keys(state, {"mac", "link_up"})
        mac = bytes_field(s, "mac", 6, exact=True)
        if mac[0] & 1:
            raise DeviceStateError("mac must not be a multicast address")
        return mac, bool_field(s, "link_up")

    def restore(self, state: dict[str, Any]) -> None:
        mac, link_up = self.validate(state)
        self.mac = mac
        self.link_up = link_up  # the source's link state, as QEMU's post_load takes it
        self.backend.set_link(link_up)

    # ---- transmit (I/O thread) ----------------------------------------------------------------
    def queue_notify(self, index: int) -> None:
        if self._vhost_running:
            vhost = self.vhost
            if vhost is not None:
                vhost.kick(index)  # the transport still polls this kick: pass it on to the kernel
            return
        if index == TX:
            self._process_tx()
        elif index == RX:
            with self._lock:
                waiting, self._rx_waiting = self._rx_waiting, False
            if waiting:
                self.backend.rx_ready()

    def _kick_tx(self) -> None:
        try:
            self._process_tx()
        except Exception:  # pragma: no cover - a device bug must not take the caller down
            log.exception("virtio-net: transmit failed")

    def _process_tx(self) -> None:
        with self._lock:
            ctx = self._ctx
            if ctx is None or self._quiesced or self._broken or self._vhost_running:
                return
            q = ctx.queues[TX]
        sent = 0
        while True:
            try:
                chain = q.pop()
            except VirtQueueError as exc:
                if not self._bad_chain(ctx, q, exc, "transmit"):
                    break
                self.counters.tx_dropped += 1
                sent += 1
                continue
            if chain is None:
                break
            self._send_chain(q, chain)
            sent += 1
            if sent % TX_BURST == 0:
                ctx.interrupt(TX)
        if sent:
            ctx.interrupt(TX)

    def _send_chain(self, q: "SplitQueue", chain: "Chain") -> None:
        try:
            if chain.readable_len < HDR_LEN or chain.readable_len > HDR_LEN + MAX_FRAME:
                self.counters.tx_dropped += 1
                self._warn_once("tx-len", f"virtio-net: a transmit chain of {chain.readable_len} bytes "
                                          f"(not {HDR_LEN}..{HDR_LEN + MAX_FRAME}) was dropped")
            elif not self.link_up:
                self.counters.tx_dropped += 1
            else:
                data = q.read(chain)
                self.backend.send(data if self.backend.vnet_hdr else memoryview(data)[HDR_LEN:])
                self.counters.tx_frames += 1
        except (VirtQueueError, GuestMemoryError) as exc:
            self.counters.tx_dropped += 1
            self.counters.bad_chains += 1
            self._warn_once("tx-bad", f"virtio-net: a transmit chain was dropped: {exc}")
        q.push(chain, 0)

    # ---- receive (backend thread) ---------------------------------------------------------
    def _receive(self, frame: bytes) -> bool:
        """The backend's callback: True when the frame was taken (placed or dropped), False to hold it."""
        with self._lock:
            ctx = self._ctx
            if ctx is None or self._quiesced or self._vhost_running:
                return False  # no driver yet, or paused: the backend keeps it
            if self._broken:
                self.counters.rx_dropped += 1
                return True
            if not self.link_up:
                self.counters.rx_dropped += 1
                return True
            if self.backend.vnet_hdr:
                if len(frame) < HDR_LEN:
                    self.counters.rx_dropped += 1
                    return True
                packet = bytearray(frame)
            else:
                packet = bytearray(HDR_LEN) + frame
            if len(packet) > HDR_LEN + MAX_FRAME:
                self.counters.rx_dropped += 1
                return True
            placed = self._place(ctx, packet)
            if placed is None:
                return True  # the queue broke: dropped
            if not placed:
                self._rx_waiting = True
                return False
            self.counters.rx_frames += 1
            if not self._rx_held:
                self._held_are_last = True
        ctx.interrupt(RX)
        return True

    def _next_rx_chain(self, ctx: VirtioContext) -> "Chain | None":
        """The next RX chain; a bad one is given back unused and skipped (VirtQueueError if the ring broke)."""
        q = ctx.queues[RX]
        for attempt in range(q.size + 1):
            try:
                chain = q.pop()
                if chain is None and attempt == 0:
                    q.set_notification(True)  # then look again: the driver may have added buffers meanwhile
                    chain = q.pop()
                return chain
            except VirtQueueError as exc:
                if exc.head is None:
                    raise
                self.counters.bad_chains += 1
                self._warn_once("rx-chain", f"virtio-net: a bad receive chain was given back unused: {exc}")
                q.push_failed(exc.head, 0)
                self._held_are_last = False
                ctx.interrupt(RX)
        return None

    def _bad_chain(self, ctx: VirtioContext, q: "SplitQueue", exc: VirtQueueError, what: str) -> bool:
        """A chain ``pop`` refused: give it back unused and go on (True), or, when the ring itself broke, stop."""
        if exc.head is None:
            self._fail(ctx, f"{what} queue: {exc}")
            return False
        self.counters.bad_chains += 1
        self._warn_once(f"{what}-chain", f"virtio-net: a bad {what} chain was given back unused: {exc}")
        q.push_failed(exc.head, 0)
        return True

    def _place(self, ctx: VirtioContext, packet: bytearray) -> bool | None:
        """Write ``packet`` (header first) into RX chains; False when there is not room enough yet."""
        q = ctx.queues[RX]
        mergeable = bool(self._features & bit(F_MRG_RXBUF))
        need = len(packet)
        try:
            if not mergeable:
                while True:
                    chain = self._rx_held.pop(0) if self._rx_held else self._next_rx_chain(ctx)
                    if chain is None:
                        return False
                    if chain.writable_len > 0:
                        break
                    self._fail_chain(q, chain, "a receive chain with no writable buffer")
                if chain.writable_len < need:  # a buffer, just too small for this frame: keep it for the next
                    self._rx_held.insert(0, chain)
                    self.counters.rx_dropped += 1
                    self._warn_once("rx-small", f"virtio-net: a {need}-byte frame does not fit a "
                                                f"{chain.writable_len}-byte receive buffer; dropped")
                    return True
                struct.pack_into("<H", packet, NUM_BUFFERS_OFFSET, 1)
                q.write(chain, packet)
                q.push(chain, need)
                return True
            chains: list["Chain"] = []
            have = 0
            held = self._rx_held
            self._rx_held = []
            while have < need:
                chain = held.pop(0) if held else self._next_rx_chain(ctx)
                if chain is None:
                    self._rx_held = chains
                    return False
                if chain.writable_len < (HDR_LEN if not chains else 1):
                    self._fail_chain(q, chain, "a receive buffer with no room for the header")
                    continue
                chains.append(chain)
                have += chain.writable_len
            self._rx_held = held  # chains popped beyond what this frame needed wait for the next
            struct.pack_into("<H", packet, NUM_BUFFERS_OFFSET, len(chains))
            view = memoryview(packet)
            pos = 0
            parts = []
            for chain in chains:
                n = min(chain.writable_len, need - pos)
                q.write(chain, view[pos:pos + n])
                parts.append((chain, n))
                pos += n
            q.push_many(parts)  # the frame's buffers behind one used-index update: a guest takes them at once
            return True
        except VirtQueueError as exc:
            self._fail(ctx, f"receive queue: {exc}")
            return None
        except GuestMemoryError as exc:
            self.counters.rx_dropped += 1
            self.counters.bad_chains += 1
            self._warn_once("rx-bad", f"virtio-net: a receive chain was dropped: {exc}")
            return True

    def _fail_chain(self, q: "SplitQueue", chain: "Chain", why: str) -> None:
        """Give a chain the driver got wrong back unused (length 0)."""
        self._held_are_last = False
        self.counters.bad_chains += 1
        self._warn_once(why, f"virtio-net: {why}; returned unused")
        q.push(chain, 0)

    def _give_back_held(self, ctx: VirtioContext) -> None:
        """Popped but unused RX chains go back on the available ring, so none is lost across a save."""
        q = ctx.queues[RX]
        if self._held_are_last:
            for _ in self._rx_held:  # they are the most recent pops, so stepping back returns them all
                q.undo_pop()
        else:  # a bad chain was given back in between: return these used but empty
            for chain in self._rx_held:
                q.push(chain, 0)
            ctx.interrupt(RX)
        self._rx_held = []
        self._held_are_last = True

    def _fail(self, ctx: VirtioContext, why: str) -> None:
        self._broken = True
        log.warning("virtio-net: %s; the device needs a reset", why)
        ctx.needs_reset(why)

    def _warn_once(self, key: str, message: str) -> None:
        if key not in self._warned and len(self._warned) < 64:
            self._warned.add(key)
            log.warning("%s", message)

    # ---- vhost-net ---------------------------------------------------------------------------
    def _vhost_wanted(self) -> bool:
        return self.vhost is not None and self.link_up and not self._broken and not self._log_fallback

    # ---- dirty logging (a KvmSlots dirty source, registered when vhost-net is on) --------------
    def log_start(self) -> None:
        """Migration begins: vhost logs the guest pages it writes (or, if it cannot, stops until ``log_stop``)."""
        from kvmpy.net.vhost import VhostError

        vhost = self.vhost
        if vhost is None or self.address_space is None:
            return
        top = max((r.end for r in self.address_space.flatview.ram_ranges()), default=0)
        with self._lock:
            try:
                vhost.log_start(top)
            except VhostError as exc:
                log.error("virtio-net: vhost-net cannot log dirty pages (%s); kvmpy serves the queues "
                          "until the migration ends", exc)
                self._log_fallback = True
                ctx = self._ctx
                if ctx is not None:
                    self._stop_vhost(ctx)
        self.backend.rx_ready()
        self._kick_tx()

    def log_sync(self) -> "Any":
        """The guest page frames vhost wrote since the last sync (a bool array), or None."""
        vhost = self.vhost
        return vhost.log_sync() if vhost is not None else None

    def log_stop(self) -> None:
        vhost = self.vhost
        if vhost is None:
            return
        with self._lock:
            vhost.log_stop()
            fell_back, self._log_fallback = self._log_fallback, False
            ctx = self._ctx
            if fell_back and ctx is not None and not self._quiesced and self._vhost_wanted():
                self._start_vhost(ctx)

    def _start_vhost(self, ctx: VirtioContext) -> None:
        vhost = self.vhost
        if vhost is None or self._vhost_running:
            return
        if self.address_space is None:
            raise RuntimeError("virtio-net: vhost-net needs the guest address space")
        from kvmpy.net.vhost import VhostError, vring_from_queue

        pause = getattr(self.backend, "pause_reader", None)
        if pause is not None:
            pause()
        self._give_back_held(ctx)
        rings = []
        for i, q in enumerate(ctx.queues[:2]):
            kick = ctx.kick_fd(i) if ctx.kick_fd is not None else None
            call = ctx.call_fd(i) if ctx.call_fd is not None else None
            rings.append(vring_from_queue(i, q, kick, call))
        try:
            if ctx.own_kick is not None:
                for r in rings:
                    if r.kick_fd is not None:
                        ctx.own_kick(r.index, True)
            vhost.start(self.address_space, ctx.features, rings, getattr(self.backend, "fd"),
                        on_call=self._vhost_call)
        except VhostError as exc:
            log.error("virtio-net: vhost-net could not start (%s); frames go through kvmpy instead", exc)
            self._give_kicks_back(ctx)
            resume = getattr(self.backend, "resume_reader", None)
            if resume is not None:
                resume()
            return
        self._vhost_running = True

    def _give_kicks_back(self, ctx: VirtioContext) -> None:
        if ctx.own_kick is not None and ctx.kick_fd is not None:
            for i in range(2):
                if ctx.kick_fd(i) is not None:
                    ctx.own_kick(i, False)

    def _vhost_call(self, index: int) -> None:
        """vhost signalled through its own eventfd (the transport gave no irqfd): raise the interrupt."""
        from kvmpy.net.vhost import sync_used

        with self._lock:
            ctx = self._ctx
            if ctx is None or not self._vhost_running:
                return
            sync_used(ctx.queues[index])  # so the transport's suppression check sees what the kernel pushed
        ctx.interrupt(index)

    def _stop_vhost(self, ctx: VirtioContext) -> None:
        vhost = self.vhost
        if vhost is None or not self._vhost_running:
            return
        from kvmpy.net.vhost import sync_queue

        bases = vhost.stop()
        for q, base in zip(ctx.queues, bases):
            sync_queue(q, base)
        self._vhost_running = False
        self._give_kicks_back(ctx)
        resume = getattr(self.backend, "resume_reader", None)
        if resume is not None:
            resume()

    # ---- monitor -----------------------------------------------------------------------------
    def info(self) -> str:
        """One line for HMP ``info network``."""
        mode = "vhost" if self._vhost_running else "kvmpy"
        return (f"model=virtio-net-pci,macaddr={format_mac(self.mac)} link={'up' if self.link_up else 'down'} "
                f"rx={self.counters.rx_frames} tx={self.counters.tx_frames} "
                f"rx_dropped={self.counters.rx_dropped} tx_dropped={self.counters.tx_dropped} datapath={mode}")


# ---- -device virtio-net-pci ---------------------------------------------------------------------
NET_PROPS = frozenset({"netdev", "mac"})


class NetBoard(Protocol):
    """What the factory needs of a board: its configuration (netdevs, devices), RAM and KVM VM, MSI routes."""

    config: "MachineConfig"
    address_space: "AddressSpace"
    memory: Any
    vm: "VmFd"
    msi: Any


def _nics_before(config: "MachineConfig", spec: "DeviceSpec") -> list["DeviceSpec"]:
    out = []
    for other in getattr(config, "devices", ()):
        if other is spec:
            break
        if other.driver == spec.driver:
            out.append(other)
    return out


def nic_settings(config: "MachineConfig", spec: "DeviceSpec") -> tuple[bytes, "NetdevSpec"]:
    """(MAC, -netdev spec) of a NIC ``-device DRIVER,netdev=ID[,mac=MAC]``, whatever its transport.

    Without mac= the NIC gets QEMU's default, 52:54:00:12:34:56 plus the count of earlier NICs of
    the same driver that had none; a missing, unknown or already used netdev is refused in QEMU's words.
    """
    where = spec.source or f"-device {spec.driver}"
    earlier = _nics_before(config, spec)
    text = spec.get("mac")
    try:
        mac = parse_mac(text) if text is not None else default_mac(sum(1 for e in earlier if e.get("mac") is None))
    except ValueError as exc:
        raise ConfigError(f"{where}: {exc}") from None
    netdev_id = spec.get("netdev")
    if netdev_id is None:
        raise ConfigError(f"{where}: netdev= is required (kvmpy has no NIC without a -netdev backend)")
    netdev = next((n for n in getattr(config, "netdevs", ()) if n.id == netdev_id), None)
    if netdev is None:
        raise ConfigError(f"{where}: Property '{spec.driver}.netdev' can't find value '{netdev_id}'")
    if any(e.get("netdev") == netdev_id for e in earlier):
        raise ConfigError(f"{where}: Property '{spec.driver}.netdev' can't take value '{netdev_id}', it's in use")
    return mac, netdev


def virtio_net_pci(board: NetBoard, spec: "DeviceSpec") -> "VirtioPci":
    """``-device virtio-net-pci,netdev=ID[,mac=MAC][,id=NAME]``: a NIC on the -netdev named ``ID``
    (``nic_settings`` says which MAC and backend)."""
    from kvmpy.devices.virtio.pci import virtio_pci
    from kvmpy.net.netdev import make_netdev

    mac, netdev = nic_settings(board.config, spec)
    backend = make_netdev(netdev)
    try:
        nic = VirtioNet(backend, mac, spec.id or "", board.address_space)
        fn = virtio_pci(board, spec, nic, device_props=NET_PROPS)
    except BaseException:
        backend.close()
        raise
    slots = getattr(board, "slots", None)  # the board's KvmSlots: migration's dirty tracking
    if nic.vhost is not None and slots is not None:
        slots.add_dirty_source(nic)
    return fn
