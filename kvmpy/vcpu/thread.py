"""VcpuThread: one host thread per vCPU running KVM_RUN and dispatching its exits.

The loop handles port I/O (including string I/O), MMIO, HLT, shutdown, system
events and fatal exits. Control from other threads (pause, resume, stop) works
by setting a request flag, then kicking: ``immediate_exit`` covers the race
before entry and a signal interrupts a running or halted vCPU. Nothing spins.
"""

from __future__ import annotations

import enum
import errno
import os
import logging
import signal
import struct
import threading
from dataclasses import dataclass
from typing import Callable

from kvmpy.devices.bus import Bus
from kvmpy.kvm import abi, ioctls
from kvmpy.kvm.abi import ffi
from kvmpy.kvm.errors import KvmError, KvmIoctlError
from kvmpy.kvm.vcpu import VcpuFd, libc_ioctl
from kvmpy.vcpu.x86 import register_dump

log = logging.getLogger(__name__)

KICK_SIGNAL = signal.SIGUSR1

# struct kvm_coalesced_mmio_ring: u32 first, last; then entries of
# {u64 phys_addr; u32 len; u32 pio; u8 data[8]} filling the rest of the page.
RING_HDR = struct.Struct("<II")
RING_FIRST = struct.Struct("<I")
RING_ENTRY = struct.Struct("<QII8s")
RING_SLOTS = (4096 - RING_HDR.size) // RING_ENTRY.size


class StopReason(enum.Enum):
    POWEROFF = "poweroff"  # guest asked to power off (ACPI, KVM system event)
    RESET = "reset"  # guest asked for a reset (i8042, triple fault, system event)
    ERROR = "error"  # the vCPU cannot continue
    CRASH = "crash"  # guest reported a panic


@dataclass(frozen=True)
class VcpuEvent:
    vcpu_id: int
    reason: StopReason
    message: str = ""


EventSink = Callable[[VcpuEvent], None]


def install_kick_handler() -> None:
    """A no-op handler so the kick signal interrupts KVM_RUN instead of killing the process."""
    current = signal.getsignal(KICK_SIGNAL)
    if callable(current):
        return
    if threading.current_thread() is not threading.main_thread():
        raise RuntimeError("kvmpy must create its first VM from the main thread (it installs a SIGUSR1 handler)")
    signal.signal(KICK_SIGNAL, lambda signum, frame: None)


class _State(enum.Enum):
    RUNNING = 1
    PAUSED = 2
    STOPPED = 3


class VcpuThread:
    """Runs one vCPU. Construct, then ``start()``; ``pause()``/``resume()``/``stop()`` from any thread."""

    def __init__(self, vcpu: VcpuFd, pio: Bus, mmio_read: Callable[[int, int], int],
                 mmio_write: Callable[[int, int, int], None], events: EventSink,
                 trace_io: bool = False) -> None:
        self.vcpu = vcpu
        # Ports whose writes KVM batches into the ring page (set by the VM, may grow).
        self.coalesced_ports = vcpu.coalesced_pio if vcpu.coalesced_ring_offset else set()
        self.ring_offset = vcpu.coalesced_ring_offset
        self.coalesced_lock = vcpu.coalesced_lock
        self.pio = pio
        self.mmio_read = mmio_read
        self.mmio_write = mmio_write
        self.events = events
        self.trace_io = trace_io
        self.exits = 0
        self.interrupted = 0  # KVM_RUN calls that returned EINTR/EAGAIN
        self._cond = threading.Condition()
        self._want = _State.PAUSED  # threads start parked until the machine resumes them
        self._state = _State.PAUSED
        self._thread = threading.Thread(target=self._main, name=f"vcpu{vcpu.vcpu_id}", daemon=True)

    # ---- control (any thread) -------------------------------------------------
    def start(self) -> None:
        self._thread.start()

    @property
    def native_id(self) -> int | None:
        return self._thread.native_id

    def _request(self, want: _State) -> bool:
        """Ask the thread for ``want``; False (and nothing changes) once a stop was requested."""
        with self._cond:
            # A stop is final: a late pause from another vCPU's event must not park
            # the thread again, or stop() would wait for it in vain.
            if self._want is _State.STOPPED and want is not _State.STOPPED:
                return False
            self._want = want
            self._cond.notify_all()
        if self._thread.is_alive() and threading.current_thread() is not self._thread:
            self._kick()
        return True

    def _kick(self) -> None:
        self.vcpu.set_immediate_exit(True)
        ident = self._thread.ident
        if ident is not None:
            try:
                signal.pthread_kill(ident, KICK_SIGNAL)
            except ProcessLookupError:
                pass

    def pause(self, wait: bool = True) -> None:
        with self._cond:
            if self._state is _State.STOPPED:
                return
        if not self._request(_State.PAUSED):
            return
        if wait:
            self._wait_for(lambda: self._state in (_State.PAUSED, _State.STOPPED))

    def resume(self) -> None:
        with self._cond:
            if self._state is _State.STOPPED:
                return
        self._request(_State.RUNNING)

    def stop(self, wait: bool = True) -> None:
        self._request(_State.STOPPED)
        # A machine closed before it ever ran has threads that never started.
        if wait and self._thread.ident is not None and threading.current_thread() is not self._thread:
            self._thread.join(timeout=10)

    def _wait_for(self, predicate: Callable[[], bool]) -> None:
        with self._cond:
            while not predicate():
                if not self._thread.is_alive():
                    return
                if not self._cond.wait(timeout=0.5):
                    # A kick can be lost if it raced with the thread re-entering the guest.
                    self._kick()

    @property
    def paused(self) -> bool:
        with self._cond:
            return self._state is _State.PAUSED

    # ---- the vCPU thread -------------------------------------------------
    def _park(self) -> bool:
        """Honour pause/stop requests; returns False when the thread must exit."""
        if self.coalesced_ports:
            self.drain_coalesced()  # device state must be complete while we are paused
        with self._cond:
            while self._want is _State.PAUSED:
                if self._state is not _State.PAUSED:
                    self._state = _State.PAUSED
                    self._cond.notify_all()
                self._cond.wait()
            if self._want is _State.STOPPED:
                self._state = _State.STOPPED
                self._cond.notify_all()
                return False
            self._state = _State.RUNNING
            self.vcpu.set_immediate_exit(False)
            return True

    def _main(self) -> None:
        try:
            self._loop()
        except Exception as exc:  # a bug or a broken vCPU: stop the VM with a readable report
            log.exception("vCPU %d thread failed", self.vcpu.vcpu_id)
            self.events(VcpuEvent(self.vcpu.vcpu_id, StopReason.ERROR, f"vCPU {self.vcpu.vcpu_id}: {exc}"))
        finally:
            with self._cond:
                self._state = _State.STOPPED
                self._cond.notify_all()

    def drain_coalesced(self) -> None:
        """Replay, in order, the writes KVM batched in the coalesced ring, then empty it.

        Every vCPU thread shares the one ring; the lock keeps two threads from replaying the same entry."""
        mm, base = self.vcpu.run_mm, self.ring_offset
        with self.coalesced_lock:
            first, last = RING_HDR.unpack_from(mm, base)
            slots = RING_SLOTS
            while first != last:
                addr, length, pio_flag, data = RING_ENTRY.unpack_from(mm, base + 8 + first * RING_ENTRY.size)
                length = min(length, 8)
                value = int.from_bytes(data[:length], "little")
                if pio_flag:
                    self.pio.write(addr, length, value)
                else:
                    self.mmio_write(addr, length, value)
                first = (first + 1) % slots
                # One 4-byte store (not struct.pack_into, which clears its target first: KVM, adding an entry
                # on another vCPU, could read first as 0 and take a full ring for an empty one).
                mm[base:base + RING_FIRST.size] = RING_FIRST.pack(first)
                if first == last:
                    last = RING_HDR.unpack_from(mm, base)[1]  # entries KVM added meanwhile go too

    def _loop(self) -> None:
        vcpu = self.vcpu
        mm = vcpu.run_mm
        fd = vcpu.fd
        ioctl = libc_ioctl
        KVM_RUN = ioctls.KVM_RUN
        zero = ffi.cast("unsigned long", 0)
        pio = self.pio
        port_cache = pio.cache
        # The ring holds writes that happened before this exit (QEMU: 0xCF8 before a 0xCFC access), so
        # it is replayed first, at every exit. An empty ring costs one compare.
        ring = self.ring_offset if self.coalesced_ports else 0
        ring_hdr = RING_HDR.unpack_from
        u32 = struct.Struct("<I").unpack_from
        io_hdr = abi.RUN_IO.unpack_from
        mmio_hdr = abi.RUN_MMIO.unpack_from
        EXIT_IO, EXIT_MMIO = abi.EXIT_IO, abi.EXIT_MMIO
        IO_OUT = abi.IO_OUT
        REASON, UNION = abi.RUN_EXIT_REASON, abi.RUN_UNION
        IMMEDIATE_EXIT = abi.RUN_IMMEDIATE_EXIT
        RUNNING = _State.RUNNING
        while True:
            if (self._want is not RUNNING or self._state is not RUNNING) and not self._park():
                return
            if ioctl(fd, KVM_RUN, zero) < 0:
                err = ffi.errno
                if err == errno.EINTR or err == errno.EAGAIN:
                    # Kicked (EINTR) or an AP woken by INIT/SIPI (EAGAIN). Clear the
                    # kick before looking at the requests: a kick whose request was
                    # already withdrawn (pause then resume) must not make us spin.
                    mm[IMMEDIATE_EXIT] = 0
                    self.interrupted += 1
                    continue
                raise KvmIoctlError("KVM_RUN", err, os.strerror(err))
            self.exits += 1
            if ring:
                first, last = ring_hdr(mm, ring)
                if first != last:
                    self.drain_coalesced()
            reason = u32(mm, REASON)[0]
            if reason == EXIT_IO:
                direction, size, port, count, off = io_hdr(mm, UNION)
                if count == 1 and size == 1:
                    # The common case, with the port's device looked up once and cached.
                    hit = port_cache.get(port, pio)
                    if hit is pio:
                        hit = pio.lookup(port)
                    if hit is None:
                        if direction == IO_OUT:
                            pio.write(port, 1, mm[off])
                        else:
                            mm[off] = pio.read(port, 1) & 0xFF
                    elif direction == IO_OUT:
                        hit.device.write(port - hit.base, 1, mm[off])
                    else:
                        mm[off] = hit.device.read(port - hit.base, 1) & 0xFF
                elif direction == IO_OUT:
                    for i in range(count):
                        p = off + i * size
                        pio.write(port, size, int.from_bytes(mm[p:p + size], "little"))
                else:
                    mm[off:off + size * count] = pio.read_string(port, size, count)
                if self.trace_io:
                    log.debug("vcpu%d pio %s port %#x size %d count %d", vcpu.vcpu_id,
                              "out" if direction else "in", port, size, count)
            elif reason == EXIT_MMIO:
                addr, data, length, is_write = mmio_hdr(mm, abi.RUN_UNION)
                if length not in (1, 2, 4, 8):
                    self._fatal(f"MMIO access of {length} bytes at {addr:#x}")
                    return
                if is_write:
                    self.mmio_write(addr, length, int.from_bytes(data[:length], "little"))
                else:
                    value = self.mmio_read(addr, length) & ((1 << (8 * length)) - 1)
                    base = abi.RUN_UNION + 8
                    mm[base:base + length] = value.to_bytes(length, "little")
            elif not self._other_exit(reason):
                return

    def _other_exit(self, reason: int) -> bool:
        """Handle the rare exits; returns False when this vCPU must stop running."""
        vid = self.vcpu.vcpu_id
        mm = self.vcpu.run_mm
        if reason in (abi.EXIT_INTR, abi.EXIT_IRQ_WINDOW_OPEN):
            return True
        if reason == abi.EXIT_HLT:
            # Only seen without an in-kernel LAPIC: nothing can wake us but a control request.
            with self._cond:
                while self._want is _State.RUNNING:
                    self._cond.wait()
            return True
        if reason == abi.EXIT_SHUTDOWN:
            # Rare, and the guest says nothing of it: one line with where it happened (QEMU has -d guest_errors)
            r, sr = self.vcpu.regs(), self.vcpu.sregs()
            log.warning("vCPU %d: the guest triple-faulted (rip=%#x rsp=%#x cr0=%#x cr2=%#x cr3=%#x cr4=%#x "
                        "efer=%#x); a reset follows", vid, r.rip, r.rsp, sr.cr0, sr.cr2, sr.cr3, sr.cr4, sr.efer)
            self.events(VcpuEvent(vid, StopReason.RESET, "triple fault"))
            return self._after_event()
        if reason == abi.EXIT_SYSTEM_EVENT:
            kind = abi.RUN_SYSTEM_EVENT.unpack_from(mm, abi.RUN_UNION)[0]
            mapping = {abi.SYSTEM_EVENT_SHUTDOWN: StopReason.POWEROFF, abi.SYSTEM_EVENT_RESET: StopReason.RESET,
                       abi.SYSTEM_EVENT_CRASH: StopReason.CRASH}
            self.events(VcpuEvent(vid, mapping.get(kind, StopReason.ERROR), f"system event {kind}"))
            return self._after_event()
        if reason == abi.EXIT_FAIL_ENTRY:
            hw, cpu = abi.RUN_FAIL_ENTRY.unpack_from(mm, abi.RUN_UNION)
            self._fatal(f"KVM_EXIT_FAIL_ENTRY: hardware entry failure reason {hw:#x} on cpu {cpu}")
            return False
        if reason == abi.EXIT_INTERNAL_ERROR:
            sub, ndata = abi.RUN_INTERNAL.unpack_from(mm, abi.RUN_UNION)
            ndata = min(ndata, 16)
            data = struct.unpack_from(f"<{ndata}Q", mm, abi.RUN_UNION + 8) if ndata else ()
            words = " ".join(f"{d:#x}" for d in data)
            self._fatal(f"KVM_EXIT_INTERNAL_ERROR: {abi.INTERNAL_ERROR_NAMES.get(sub, 'suberror')} ({sub})"
                        + (f", data {words}" if words else ""))
            return False
        self._fatal(f"unexpected exit {abi.EXIT_NAMES.get(reason, reason)}")
        return False

    def _after_event(self) -> bool:
        # The machine reacts by pausing or stopping us; until it does, do not re-enter the guest.
        with self._cond:
            if self._want is _State.RUNNING:
                self._want = _State.PAUSED
        return True

    def _fatal(self, what: str) -> None:
        dump = register_dump(self.vcpu)
        msg = f"vCPU {self.vcpu.vcpu_id}: {what}\n{dump}"
        self.events(VcpuEvent(self.vcpu.vcpu_id, StopReason.ERROR, msg))
