"""MigrationSource: precopy live migration of a running VM (a MigratableVm) over one channel.

Rounds: dirty logging on, every page sent once, then repeatedly the pages
dirtied since the previous round (KVM's log merged with VMM writes). When the
pages left would take no longer than ``downtime-limit`` at the bandwidth just
measured, and another live round would not halve them (or ``x-max-rounds`` is
reached) the vCPUs stop, the last dirty pages and all device, vCPU and VM
state follow, then END with the checksum.

Disk images on shared storage change hands as in QEMU: once the vCPUs are
stopped the source inactivates its drives (flushed, image locks dropped), so
the destination can lock them and read their metadata afresh; a source that
ends POSTMIGRATE keeps them inactive (``cont`` takes them back).

Failure safety: until the destination has confirmed (ACK) that it holds the
complete, verified VM, any error or cancel leaves the source exactly as it was
(running if it was running, its drives active again). After the ACK the source
is POSTMIGRATE and is never resumed automatically; only then does the
destination get GO.
"""

from __future__ import annotations

import logging
import threading
import time
from typing import Any, Callable

import numpy as np

from kvmpy.block.drive import activate_drives, inactivate_drives
from kvmpy.block.errors import BlockError
from kvmpy.lifecycle import RunState
from kvmpy.memory.ramblock import PAGE_SIZE
from kvmpy.migration import stream
from kvmpy.migration.errors import CancelledError, MigrationError
from kvmpy.migration.interface import MigratableVm
from kvmpy.migration.params import MigrationParameters, MigrationStats
from kvmpy.migration.ram import RamCounters, RamSender
from kvmpy.migration.stream import RateLimiter, StreamWriter
from kvmpy.migration.throttle import CpuThrottle
from kvmpy.migration.transport import FileChannel, SocketChannel

log = logging.getLogger(__name__)

ACK_TIMEOUT = 60.0
MAX_EXTRA_ROUNDS = 4
SMALL_REMAINDER = 1 << 20  # bytes: sent at switchover without trying to shrink them further
PROBE_SECONDS = 0.010  # how long the dirty rate is sampled when a round's own figure saturated
EventSink = Callable[[str, "dict[str, Any] | None"], None]


class MigrationSource:
    """``start()`` runs the migration in a thread; ``cancel()``, ``wait()``, ``stats`` from any thread."""

    def __init__(self, vm: MigratableVm, channel: SocketChannel | FileChannel,
                 params: MigrationParameters | None = None, auto_converge: bool = False,
                 events: EventSink | None = None) -> None:
        self.vm = vm
        self.channel = channel
        self.params = params or MigrationParameters()
        self.auto_converge = auto_converge
        self.events = events or (lambda name, data: None)
        self.stats = MigrationStats()
        self.limiter = RateLimiter(self.params.max_bandwidth)
        self.writer = StreamWriter(channel, self.limiter)
        self.blocks = vm.ram_blocks
        self.counters = RamCounters()
        self.ram = RamSender(self.blocks, self.writer, self.counters, self._check)
        self.throttle = CpuThrottle(vm.lifecycle)
        self._cancel = threading.Event()
        self._done = threading.Event()
        self._thread: threading.Thread | None = None
        self.committed = False  # the source has handed the VM over and must never run it again
        self._inactivated = False  # the disk images were given up at switchover

    # ---- control ------------------------------------------------------------
    def start(self) -> None:
        self.stats.start = time.monotonic()
        self._set_status("setup")
        self._thread = threading.Thread(target=self._main, name="migration-out", daemon=True)
        self._thread.start()

    def run(self) -> MigrationStats:
        """Migrate in the calling thread; returns the final stats (status completed, failed or cancelled)."""
        self.stats.start = time.monotonic()
        self._set_status("setup")
        self._main()
        return self.stats

    def cancel(self) -> None:
        if self._done.is_set() or self.committed:
            return
        self._cancel.set()
        if self.stats.status in ("setup", "active"):
            self._set_status("cancelling")
        self.channel.abort()

    def wait(self, timeout: float | None = None) -> bool:
        return self._done.wait(timeout)

    @property
    def finished(self) -> bool:
        return self._done.is_set()

    def set_max_bandwidth(self, rate: int) -> None:
        self.limiter.rate = rate

    def _check(self) -> None:
        """Called between records: abort on cancel, and keep query-migrate's counters live."""
        if self._cancel.is_set():
            raise CancelledError("migration was cancelled")
        self._update_counters()
        if self.stats.rounds == 0:
            self.stats.remaining = max(0, self.stats.total - (self.counters.duplicate + self.counters.normal) * PAGE_SIZE)

    def _set_status(self, status: str) -> None:
        self.stats.status = status
        self.events("MIGRATION", {"status": status})

    def _elapsed_ms(self) -> int:
        return int((time.monotonic() - self.stats.start) * 1000)

    # ---- the migration ----------------------------------------------------------
    def _main(self) -> None:
        vm = self.vm
        stopped_by_us = False
        was_running = False
        slots = vm.dirty_log
        logging_was_on = slots.log_dirty
        try:
            self.stats.total = self.stats.remaining = sum(b.size for b in self.blocks)
            slots.set_dirty_logging(True)
            self._sync()  # from here on every write is seen
            self.writer.header(vm.vmstate.describe())
            self.stats.setup_time_ms = self._elapsed_ms()
            self._set_status("active")
            t0, sent0, busy0 = time.monotonic(), self.writer.bytes, self.writer.busy
            normal0 = self.counters.normal
            for i in range(len(self.blocks)):
                self.ram.send_all(i)
            log.info("migration round 1: %d bytes in %.1f ms", self.writer.bytes - sent0,
                     (time.monotonic() - t0) * 1e3)
            self.stats.rounds = 1
            self.writer.round(1)
            extra = 0  # rounds run although the downtime limit was already met
            while True:
                self._check()
                dirty = self._sync()
                now = time.monotonic()
                elapsed = max(now - t0, 1e-3)
                rate = (self.writer.bytes - sent0) / elapsed  # bytes/s over the last round
                pending = sum(int(d.sum()) for d in dirty)
                sent_pages = self.counters.normal - normal0
                self.stats.remaining = pending * PAGE_SIZE
                self.stats.dirty_pages_rate = int(pending / elapsed)
                self.stats.mbps = rate * 8 / 1e6
                # What the link took while we were writing to it: scanning and copying are not the link.
                link = (self.writer.bytes - sent0) / max(self.writer.busy - busy0, 1e-3)
                if self.limiter.rate > 0:
                    link = min(link, self.limiter.rate)
                bandwidth = max(rate, link, 1.0)
                self.stats.expected_downtime_ms = int(self.stats.remaining / bandwidth * 1000)
                self._update_counters()
                self.events("MIGRATION_PASS", {"pass": self.stats.dirty_sync_count})
                log.info("after round %d: %d pages dirty in %.1f ms, bandwidth %.0f MB/s (link %.0f)",
                         self.stats.rounds, pending, elapsed * 1e3, bandwidth / 1e6, link / 1e6)
                if self.params.x_max_rounds and self.stats.rounds >= self.params.x_max_rounds:
                    break
                if self.stats.remaining <= bandwidth * self.params.downtime_limit / 1000:
                    if extra >= MAX_EXTRA_ROUNDS or pending * PAGE_SIZE <= SMALL_REMAINDER:
                        break
                    dirty_rate = pending / elapsed  # pages/s
                    if pending >= 0.9 * sent_pages:
                        # Nearly all of it is dirty again: the rate the round saw is only a floor.
                        dirty, dirty_rate = self._probe_dirty_rate(dirty)
                        pending = sum(int(d.sum()) for d in dirty)
                        self.stats.remaining = pending * PAGE_SIZE
                        log.info("dirty rate probe: %.0f pages/s", dirty_rate)
                    # Later rounds go to a destination whose RAM is already in place: expect the full rate.
                    expect = max(bandwidth, self.limiter.rate)
                    if not self._worth_another_round(pending, dirty_rate, expect):
                        break
                    extra += 1
                if self.auto_converge:
                    self._maybe_throttle(pending * PAGE_SIZE, self.writer.bytes - sent0)
                t0, sent0, busy0, normal0 = now, self.writer.bytes, self.writer.busy, self.counters.normal
                for i, d in enumerate(dirty):
                    self.ram.send_pages(i, d)
                self.stats.rounds += 1
                self.writer.round(self.stats.rounds)
                log.info("migration round %d: %d pages in %.1f ms, previous round %.1f MB/s", self.stats.rounds,
                         pending, (time.monotonic() - now) * 1e3, rate / 1e6)
            # ---- switchover: the guest stops here ----
            self._check()
            stop_t = time.monotonic()
            was_running = vm.lifecycle.pause(RunState.FINISH_MIGRATE)  # True: it was running
            stopped_by_us = True
            self._hand_over_drives()
            self.throttle.close()
            self.limiter.rate = 0  # the guest is down: send as fast as the link allows
            t_paused = time.monotonic()
            last = self._sync()
            self.ram.stable = True  # the vCPUs are stopped: RAM goes out without a copy
            sent_before = self.writer.bytes
            for i, (d, d2) in enumerate(zip(dirty, last)):
                self.ram.send_pages(i, d | d2)
            t_ram = time.monotonic()
            for name, state in vm.vmstate.capture().items():
                self.writer.section(name, state)
            self.writer.end()
            t_end = time.monotonic()
            self._check()
            self._handover(stop_t)
            log.info("switchover: pause %.1f ms, last RAM %d bytes in %.1f ms, state %.1f ms, "
                     "handover %.1f ms", (t_paused - stop_t) * 1e3, self.writer.bytes - sent_before,
                     (t_ram - t_paused) * 1e3, (t_end - t_ram) * 1e3, (time.monotonic() - t_end) * 1e3)
        except Exception as exc:
            self._fail(exc, stopped_by_us, was_running)
        finally:
            self.throttle.close()
            if not logging_was_on:
                try:
                    slots.set_dirty_logging(False)
                except Exception:
                    log.exception("turning dirty logging off failed")
            try:
                self.channel.close()
            except Exception:
                pass
            self.stats.total_time_ms = self._elapsed_ms()
            self._update_counters()
            self._done.set()

    def _handover(self, stop_t: float) -> None:
        """Get the destination's confirmation, then give the VM up for good."""
        ch = self.channel
        if ch.duplex:
            ch.set_timeout(ACK_TIMEOUT)
            try:
                reply = stream.read_reply(ch, len(stream.ACK))
            except OSError as exc:
                raise MigrationError(f"the destination did not confirm the switchover: {exc}") from None
            if reply == stream.NAK:
                raise MigrationError("the destination rejected the migration stream")
            if reply == stream.NAK_BLOCK:
                raise MigrationError("the destination could not take over the disk images "
                                     "(is another process using them?)")
            if reply != stream.ACK:
                raise MigrationError("the destination did not confirm the switchover (connection lost)")
        else:
            ch.finish()  # every byte is in the file / the exec child consumed it all
        self.vm.lifecycle.set_state(RunState.POSTMIGRATE)
        self.committed = True
        if ch.duplex:
            try:
                ch.write(stream.GO)
            except OSError as exc:
                # The destination holds the VM but may not start it: say so plainly, never resume here.
                self.stats.downtime_ms = int((time.monotonic() - stop_t) * 1000)
                raise MigrationError(f"the final GO to the destination failed ({exc}); the source stays "
                                     "paused: resume exactly one side with 'cont'") from None
        self.stats.downtime_ms = int((time.monotonic() - stop_t) * 1000)
        self.stats.remaining = 0
        self.stats.total_time_ms = self._elapsed_ms()
        self._update_counters()
        self._set_status("completed")

    def _hand_over_drives(self) -> None:
        """Switchover, vCPUs stopped (so no request is in flight): flush the disk images and drop
        their locks, so the destination can take them (QEMU's bdrv_inactivate_all)."""
        try:
            inactivate_drives(self.vm.drives)
        except BlockError as exc:
            raise MigrationError(f"could not hand the disk images over: {exc}") from None
        self._inactivated = True

    def _take_drives_back(self) -> str | None:
        """After a failure before the hand-over: lock the images again; None, or why it failed."""
        if not self._inactivated:
            return None
        try:
            activate_drives(self.vm.drives)
        except BlockError as exc:
            log.error("the source could not take its disk images back: %s", exc)
            return " ".join(str(exc).split("\n"))
        self._inactivated = False
        return None

    def _fail(self, exc: Exception, stopped_by_us: bool, was_running: bool) -> None:
        self.channel.abort()
        drives_lost = None if self.committed else self._take_drives_back()
        if not self.committed and stopped_by_us and was_running and drives_lost is None:
            try:
                self.vm.lifecycle.resume()  # nothing was handed over: carry on as if we never tried
            except Exception:
                log.exception("resuming the source after a failed migration failed")
        if drives_lost is not None:
            # Running without its disks would fail the guest's I/O: stay paused; 'cont' retries.
            if stopped_by_us and was_running:
                self.vm.lifecycle.set_state(RunState.PAUSED)
            self.stats.error = f"the source stays paused: it could not take its disk images back: {drives_lost}"
            self._set_status("failed")
            return
        if isinstance(exc, CancelledError) or self._cancel.is_set():
            self._set_status("cancelled")
            return
        msg = str(exc) if isinstance(exc, MigrationError) else f"{type(exc).__name__}: {exc}"
        if isinstance(exc, OSError):
            msg = f"the connection to the destination failed: {exc.strerror or exc}"
        log.warning("migration failed: %s", msg)
        self.stats.error = msg
        self._set_status("failed")

    def _sync(self) -> list[np.ndarray]:
        per_block = self.vm.dirty_log.collect(self.blocks)
        self.stats.dirty_sync_count += 1
        return [per_block[b] for b in self.blocks]

    def _update_counters(self) -> None:
        self.stats.transferred = self.writer.bytes
        self.stats.duplicate = self.counters.duplicate
        self.stats.normal = self.counters.normal

    @staticmethod
    def _worth_another_round(pending: int, dirty_rate: float, bandwidth: float) -> bool:
        """The downtime limit is met; would one more live round at least halve the stop-time work?

        A round sending ``pending`` pages takes pending / bandwidth; the guest dirties
        ``dirty_rate`` pages/s meanwhile. A guest that dirties faster than half the
        link gets no extra round; one that dirties slowly gets a shorter downtime.
        """
        return dirty_rate * (pending * PAGE_SIZE / bandwidth) < pending / 2

    def _probe_dirty_rate(self, dirty: list[np.ndarray]) -> tuple[list[np.ndarray], float]:
        """Measure the dirty rate over a short interval; returns the merged dirty sets and pages/s."""
        t = time.monotonic()
        time.sleep(PROBE_SECONDS)
        more = self._sync()
        rate = sum(int(d.sum()) for d in more) / max(time.monotonic() - t, 1e-3)
        return [d | d2 for d, d2 in zip(dirty, more)], rate

    def _maybe_throttle(self, dirtied: int, sent: int) -> None:
        """QEMU's rule: throttle when a round dirties more than the threshold share of what it sent."""
        if dirtied * 100 <= sent * self.params.throttle_trigger_threshold:
            return
        p = self.params
        pct = p.cpu_throttle_initial if not self.throttle.percentage else \
            self.throttle.percentage + p.cpu_throttle_increment
        self.throttle.set(min(pct, p.max_cpu_throttle))
        self.stats.throttle_percentage = self.throttle.percentage
        log.info("auto-converge: guest throttled to %d%%", self.throttle.percentage)
