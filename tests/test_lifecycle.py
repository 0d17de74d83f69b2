"""The lifecycle: run-state transitions, events and listeners, the run loop's decisions, parking real vCPUs."""

from __future__ import annotations

import threading
import time

import pytest

from kvmpy.lifecycle import Lifecycle, MachineEvent, RunState
from kvmpy.vcpu.thread import StopReason, VcpuEvent
from tests.guests.runner import GuestRun, run_inprocess

COUNTER_ADDR = 0x200000


def _recording(lc: Lifecycle) -> list[tuple[str, object]]:
    seen: list[tuple[str, object]] = []
    lc.add_event_listener(lambda name, data: seen.append((name, data)))
    return seen


def test_resume_and_pause_change_state_and_emit_once() -> None:
    lc = Lifecycle()
    seen = _recording(lc)
    assert lc.state is RunState.PRELAUNCH
    assert lc.resume() and lc.state is RunState.RUNNING
    assert not lc.resume()  # already running: nothing happens
    assert lc.pause() and lc.state is RunState.PAUSED
    assert not lc.pause()  # not running: no second STOP
    assert lc.resume()
    assert lc.pause(RunState.FINISH_MIGRATE) and lc.state is RunState.FINISH_MIGRATE
    assert [n for n, _ in seen] == ["RESUME", "STOP", "RESUME", "STOP"]


@pytest.mark.parametrize("state", [RunState.SHUTDOWN, RunState.INTERNAL_ERROR, RunState.GUEST_PANICKED])
def test_a_state_that_needs_a_reset_refuses_cont(state: RunState) -> None:
    lc = Lifecycle()
    lc.set_state(state)
    with pytest.raises(RuntimeError, match="Resetting the Virtual Machine is required"):
        lc.resume()
    restored = []
    seen = _recording(lc)
    lc.reset(lambda: restored.append(1), guest=True, reason="guest-reset")
    assert restored == [1] and lc.state is RunState.PAUSED
    assert seen == [("RESET", {"guest": True, "reason": "guest-reset"})]
    assert lc.resume()


def test_set_state_emits_nothing_and_a_broken_listener_harms_no_one() -> None:
    lc = Lifecycle()

    def broken(name: str, data: object) -> None:
        raise ZeroDivisionError(name)

    lc.add_event_listener(broken)
    seen = _recording(lc)
    lc.set_state(RunState.INMIGRATE)
    assert seen == []
    lc.emit("X", {"a": 1})
    assert seen == [("X", {"a": 1})]
    lc.remove_event_listener(broken)
    lc.emit("Y")
    assert seen[-1] == ("Y", None)


def test_start_runs_only_a_prelaunch_machine_without_s() -> None:
    lc = Lifecycle(start_paused=True)
    lc.start()
    assert lc.state is RunState.PRELAUNCH
    lc = Lifecycle()
    lc.set_state(RunState.INMIGRATE)  # -incoming: the stream decides when it runs
    lc.start()
    assert lc.state is RunState.INMIGRATE
    lc = Lifecycle()
    lc.start()
    assert lc.state is RunState.RUNNING


def _serve(lc: Lifecycle, *events: MachineEvent, resets: list | None = None) -> int:
    for ev in events:
        lc.post(ev)
    return lc.serve(lambda guest, reason: (resets if resets is not None else []).append((guest, reason)),
                    timeout=5)


def test_debug_exit_ends_with_its_status_and_no_shutdown_event() -> None:
    lc = Lifecycle()
    seen = _recording(lc)
    assert _serve(lc, MachineEvent("exit", 7)) == 7
    assert lc.state is RunState.SHUTDOWN and seen == []


@pytest.mark.parametrize("event, reason", [
    (MachineEvent("poweroff", 0, "ACPI S5"), "guest-shutdown"),
    (MachineEvent("quit", 0, guest=False), "host-qmp-quit"),
    (MachineEvent("quit", 0, "host-signal", guest=False), "host-signal"),
    (MachineEvent("reset", message="host-qmp-system-reset", guest=False), "host-qmp-system-reset"),
])
def test_shutdown_events_carry_qemus_reasons(event: MachineEvent, reason: str) -> None:
    lc = Lifecycle(no_reboot=True)
    seen = _recording(lc)
    assert _serve(lc, event) == 0
    assert seen == [("SHUTDOWN", {"guest": event.guest, "reason": reason})]


def test_resets_are_performed_unless_no_reboot() -> None:
    lc = Lifecycle()
    resets: list = []
    status = _serve(lc, MachineEvent("reset", message="i8042 reset"),
                    MachineEvent("reset", message="host-qmp-system-reset", guest=False),
                    MachineEvent("exit", 3), resets=resets)
    assert status == 3
    assert resets == [(True, "guest-reset"), (False, "host-qmp-system-reset")]


def test_a_vcpu_error_or_crash_is_an_internal_error() -> None:
    lc = Lifecycle()
    lc.on_vcpu_event(VcpuEvent(0, StopReason.CRASH, "system event 3"))
    assert lc.serve(lambda g, r: None, timeout=5) == 1
    assert lc.state is RunState.INTERNAL_ERROR
    lc = Lifecycle()
    lc.on_vcpu_event(VcpuEvent(1, StopReason.POWEROFF, "system event 1"))
    assert lc.serve(lambda g, r: None, timeout=5) == 0
    assert lc.state is RunState.SHUTDOWN


def test_serve_times_out() -> None:
    t0 = time.monotonic()
    with pytest.raises(TimeoutError):
        Lifecycle().serve(lambda g, r: None, timeout=0.6)
    assert time.monotonic() - t0 < 5


def test_request_quit_from_another_thread_ends_serve() -> None:
    lc = Lifecycle()
    threading.Timer(0.2, lc.request_quit, args=(4, "host-signal")).start()
    assert lc.serve(lambda g, r: None, timeout=10) == 4


# ---- with real vCPU threads -----------------------------------------------------------
@pytest.mark.kvm_host
def test_vcpus_parked_freezes_a_running_guest_and_then_lets_it_run() -> None:
    def hook(machine, console) -> GuestRun:
        lc = machine.lifecycle
        machine.start()
        assert console.wait_for(b"counter: addr", 30)
        mem = machine.board.memory
        with lc.vcpus_parked():
            frozen = mem.read_u32(COUNTER_ADDR)
            time.sleep(0.3)
            assert mem.read_u32(COUNTER_ADDR) == frozen
            assert all(t.paused for t in machine.board.threads)
        assert lc.state is RunState.RUNNING
        deadline = time.monotonic() + 20
        while mem.read_u32(COUNTER_ADDR) == frozen and time.monotonic() < deadline:
            time.sleep(0.02)
        assert mem.read_u32(COUNTER_ADDR) != frozen
        # A paused machine stays paused after a parked section, and after a release.
        lc.pause()
        with lc.vcpus_parked():
            pass
        lc.hold_vcpus()
        lc.release_vcpus()
        frozen = mem.read_u32(COUNTER_ADDR)
        time.sleep(0.3)
        assert mem.read_u32(COUNTER_ADDR) == frozen
        machine.shutdown()
        return GuestRun(0, "")

    run_inprocess("counter", machine_hook=hook)
