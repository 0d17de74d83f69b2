"""Lifecycle: the machine's public control surface (RunState, events and listeners, run/pause/resume/reset/quit).

Devices and vCPU threads report through ``post()``, which only freezes the
vCPUs and enqueues a ``MachineEvent``; the thread that called ``run()`` acts
on it (reset, stop, exit). The monitor, migration and users change the run
state only through the methods here, all serialised by one lock:
``pause()``, ``resume()``, ``set_state()``, ``reset()``, ``request_quit()``,
``request_reset()``, ``vcpus_parked()`` and ``hold_vcpus()``/``release_vcpus()``.
QMP-style events (STOP, RESUME, RESET, SHUTDOWN, ...) go to listeners via ``emit()``.
"""

from __future__ import annotations

import enum
import logging
import queue
import threading
import time
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any, Callable, Iterator, Protocol, Sequence, runtime_checkable

from kvmpy.vcpu.thread import StopReason, VcpuEvent

log = logging.getLogger(__name__)


class RunState(enum.Enum):
    """QEMU's RunState names (query-status reports ``value``)."""
    PRELAUNCH = "prelaunch"  # built, vCPUs never started (-S)
    RUNNING = "running"
    PAUSED = "paused"  # stopped by the user (QMP stop)
    SHUTDOWN = "shutdown"  # the guest ended or quit was requested
    INTERNAL_ERROR = "internal-error"  # a vCPU cannot continue; needs a reset
    GUEST_PANICKED = "guest-panicked"
    INMIGRATE = "inmigrate"  # waiting for an incoming migration
    POSTMIGRATE = "postmigrate"  # migrated away; may not resume without a reset
    FINISH_MIGRATE = "finish-migrate"  # paused for the last migration pass
    SAVE_VM = "save-vm"  # stopped while savevm writes the snapshot
    RESTORE_VM = "restore-vm"  # stopped while loadvm loads one


# States from which "cont" must refuse, as QEMU's runstate_needs_reset().
NEEDS_RESET = frozenset({RunState.INTERNAL_ERROR, RunState.SHUTDOWN, RunState.GUEST_PANICKED})
# QEMU's SHUTDOWN/RESET event reasons (qapi ShutdownCause) for what ends or resets a kvmpy VM.
SHUTDOWN_REASONS = {"poweroff": "guest-shutdown", "reset": "guest-reset", "quit": "host-qmp-quit"}
EventListener = Callable[[str, "dict[str, Any] | None"], None]


@dataclass(frozen=True)
class MachineEvent:
    kind: str  # "exit", "reset", "poweroff", "error", "quit"
    status: int = 0
    message: str = ""
    guest: bool = True  # caused by the guest (False: by the host, e.g. a QMP command)


class VcpuControl(Protocol):
    """What the lifecycle needs from a vCPU thread."""

    def start(self) -> None: ...

    def pause(self, wait: bool = True) -> None: ...

    def resume(self) -> None: ...

    def stop(self, wait: bool = True) -> None: ...


@runtime_checkable
class DeviceControl(Protocol):
    """A device with work of its own (I/O threads): it stops touching guest memory while the VM is stopped."""

    def quiesce(self) -> None: ...

    def resume(self) -> None: ...


class Lifecycle:
    """Run state, events and the vCPU threads' start/park/stop; see the module docstring."""

    def __init__(self, no_reboot: bool = False, start_paused: bool = False) -> None:
        self.no_reboot = no_reboot
        self.stop_event: MachineEvent | None = None  # what ended run() (set before its SHUTDOWN event)
        self.start_paused = start_paused
        self.events: queue.Queue[MachineEvent] = queue.Queue()
        self._state = RunState.PRELAUNCH
        self._lock = threading.RLock()  # serialises run-state changes from every thread
        self._listeners: list[EventListener] = []
        self._vcpus: list[VcpuControl] = []
        self._devices: list[DeviceControl] = []

    def attach_vcpus(self, vcpus: Sequence[VcpuControl]) -> None:
        """The vCPU threads this lifecycle starts, parks and stops (set once, before ``start()``)."""
        self._vcpus = list(vcpus)

    def attach_devices(self, devices: Sequence[DeviceControl]) -> None:
        """Devices quiesced whenever the vCPUs are parked and resumed just before they run again."""
        self._devices = list(devices)

    # ---- state -----------------------------------------------------------------
    @property
    def state(self) -> RunState:
        return self._state

    def set_state(self, state: RunState) -> None:
        """Enter ``state`` without touching the vCPUs or emitting events (migration's INMIGRATE, ...)."""
        with self._lock:
            self._state = state

    @property
    def running(self) -> bool:
        return self._state is RunState.RUNNING

    # ---- events ------------------------------------------------------------------
    def post(self, event: MachineEvent) -> None:
        """Report from any thread (devices, vCPUs): freeze every vCPU at once, then let ``run()`` decide."""
        for t in self._vcpus:
            t.pause(wait=False)
        self.events.put(event)

    def on_vcpu_event(self, ev: VcpuEvent) -> None:
        kinds = {StopReason.POWEROFF: "poweroff", StopReason.RESET: "reset", StopReason.ERROR: "error",
                 StopReason.CRASH: "error"}
        msg = ev.message if ev.reason is not StopReason.CRASH else f"guest reported a crash ({ev.message})"
        self.post(MachineEvent(kinds[ev.reason], 1 if kinds[ev.reason] == "error" else 0, msg))

    def request_quit(self, status: int = 0, reason: str = "host-qmp-quit") -> None:
        """End the VM from the host; ``reason`` is the SHUTDOWN event's (QEMU's names: host-signal, ...)."""
        self.post(MachineEvent("quit", status, message=reason, guest=False))

    def request_reset(self) -> None:
        """A host-side reset (QMP system_reset): run() performs it and emits RESET."""
        self.post(MachineEvent("reset", message="host-qmp-system-reset", guest=False))

    def add_event_listener(self, listener: EventListener) -> None:
        """``listener(name, data)`` hears QMP-style events (STOP, RESUME, RESET, SHUTDOWN, POWERDOWN).

        It is called from whichever thread changed the state, so it must only enqueue.
        """
        self._listeners.append(listener)

    def remove_event_listener(self, listener: EventListener) -> None:
        if listener in self._listeners:
            self._listeners.remove(listener)

    def emit(self, name: str, data: dict[str, Any] | None = None) -> None:
        """Tell every listener about event ``name``; a broken listener is logged, never raised."""
        for listener in list(self._listeners):
            try:
                listener(name, data)
            except Exception:  # a broken listener must not take the VM down
                log.exception("event listener failed on %s", name)

    # ---- vCPU control -----------------------------------------------------------------
    def start(self) -> None:
        """Start the vCPU threads; they run unless -S or an incoming migration keeps them parked."""
        for t in self._vcpus:
            t.start()
        if not self.start_paused and self._state is RunState.PRELAUNCH:
            self.resume()

    def _park_vcpus(self) -> None:
        for t in self._vcpus:
            t.pause(wait=False)
        for t in self._vcpus:
            t.pause(wait=True)
        for d in self._devices:  # after the vCPUs: no kick can arrive any more
            d.quiesce()

    def _run_vcpus(self) -> None:
        for d in self._devices:
            d.resume()
        for t in self._vcpus:
            t.resume()

    def hold_vcpus(self) -> None:
        """Ask every vCPU to park, without waiting and without a run-state change (throttling)."""
        for t in self._vcpus:
            t.pause(wait=False)

    def release_vcpus(self) -> None:
        """Undo ``hold_vcpus()``, but only if the machine is still meant to run and no event is pending."""
        with self._lock:
            if self._state is RunState.RUNNING and self.events.empty():
                self._run_vcpus()

    @contextmanager
    def exclusive(self) -> Iterator[None]:
        """Hold the run-state lock without parking anything: a change to the machine (a DIMM plugged)
        then cannot interleave with a snapshot reset or a loadvm, which hold it while they work.
        Never from a vCPU thread: the holder of the lock may be waiting for that vCPU to park."""
        with self._lock:
            yield

    @contextmanager
    def vcpus_parked(self) -> Iterator[None]:
        """Hold every vCPU parked (to read or load their state) without a run-state change or events."""
        with self._lock:
            self._park_vcpus()
            try:
                yield
            finally:
                self.release_vcpus()

    def pause(self, state: RunState = RunState.PAUSED) -> bool:
        """Stop every vCPU (their state is kept) and enter ``state``; emits STOP if it was running."""
        with self._lock:
            self._park_vcpus()
            if self._state is not RunState.RUNNING:
                return False
            self._state = state
        self.emit("STOP")
        return True

    def resume(self) -> bool:
        """Run the vCPUs from where they stopped; emits RESUME. Raises RuntimeError if a reset is needed."""
        with self._lock:
            if self._state is RunState.RUNNING:
                return False
            if self._state in NEEDS_RESET:
                raise RuntimeError("Resetting the Virtual Machine is required")
            self._state = RunState.RUNNING
            self._run_vcpus()
        self.emit("RESUME")
        return True

    def reset(self, restore: Callable[[], None], guest: bool = False,
              reason: str = "host-qmp-system-reset") -> None:
        """Park the vCPUs, call ``restore()`` (back to power-on), carry on in the same state; emits RESET.

        A running VM runs again, a paused one stays paused; one that needed a reset becomes paused.
        """
        with self._lock:
            self._park_vcpus()
            restore()
            if self._state in NEEDS_RESET:
                self._state = RunState.PAUSED
            if self._state is RunState.RUNNING:
                self._run_vcpus()
        self.emit("RESET", {"guest": guest, "reason": reason})

    def stop_vcpus(self) -> None:
        """End every vCPU thread for good."""
        for t in self._vcpus:
            t.stop(wait=False)
        for t in self._vcpus:
            t.stop(wait=True)

    # ---- the run loop -------------------------------------------------------------------
    def serve(self, reset: Callable[[bool, str], None], timeout: float | None = None) -> int:
        """Act on posted events until the VM ends; returns the exit status.

        ``reset(guest, reason)`` performs a reset request (unless -no-reboot). With
        ``timeout`` (seconds), a VM still running by then raises TimeoutError.
        """
        deadline = None if timeout is None else time.monotonic() + timeout
        while True:
            try:
                ev = self.events.get(timeout=0.5)
            except queue.Empty:
                if deadline is not None and time.monotonic() > deadline:
                    raise TimeoutError(f"the VM was still running after {timeout} s") from None
                continue
            if ev.kind == "reset":
                why = ev.message or "reset request"
                if not self.no_reboot:
                    log.info("%s reset (%s)", "guest" if ev.guest else "host", why)
                    reset(ev.guest, "guest-reset" if ev.guest else ev.message)
                    continue
                log.info("%s reset (%s) under -no-reboot: the VM ends", "guest" if ev.guest else "host", why)
            if ev.kind == "error":
                self.set_state(RunState.INTERNAL_ERROR)
                log.error("%s", ev.message)
                return 1
            self.stop_event = ev
            self.set_state(RunState.SHUTDOWN)
            if ev.kind in SHUTDOWN_REASONS:  # isa-debug-exit ends the process without one, as in QEMU
                if ev.kind == "quit":
                    reason = ev.message or SHUTDOWN_REASONS["quit"]
                else:
                    reason = SHUTDOWN_REASONS[ev.kind] if ev.guest else ev.message
                self.emit("SHUTDOWN", {"guest": ev.guest, "reason": reason})
            return ev.status
