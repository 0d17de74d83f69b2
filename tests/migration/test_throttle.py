"""Auto-converge's CPU throttle, on a real running guest: it slows the guest, and never wakes a stopped one."""

from __future__ import annotations

import time

import pytest

from kvmpy.lifecycle import RunState
from kvmpy.migration.throttle import CpuThrottle
from tests.guests.runner import GuestRun, run_inprocess

pytestmark = pytest.mark.kvm_host

COUNTER_ADDR = 0x200000


def _rate(machine, seconds: float = 0.6) -> float:
    mem = machine.board.memory
    before, t0 = mem.read_u32(COUNTER_ADDR), time.monotonic()
    time.sleep(seconds)
    return ((mem.read_u32(COUNTER_ADDR) - before) & 0xFFFFFFFF) / (time.monotonic() - t0)


def test_throttle_slows_the_guest_and_close_restores_full_speed() -> None:
    def hook(machine, console) -> GuestRun:
        machine.start()
        assert console.wait_for(b"counter: addr", 30)
        full = _rate(machine)
        throttle = CpuThrottle(machine.lifecycle)
        throttle.set(90)
        slow = _rate(machine)
        throttle.close()
        assert throttle.percentage == 0
        again = _rate(machine)
        assert slow < 0.5 * full, (full, slow)
        assert again > 2 * slow, (slow, again)
        machine.shutdown()
        return GuestRun(0, "")

    run_inprocess("counter", machine_hook=hook)


def test_throttle_never_resumes_a_stopped_guest() -> None:
    def hook(machine, console) -> GuestRun:
        machine.start()
        assert console.wait_for(b"counter: addr", 30)
        throttle = CpuThrottle(machine.lifecycle)
        throttle.set(50)
        time.sleep(0.1)
        machine.lifecycle.pause()
        try:
            assert _rate(machine, 0.4) == 0
            assert machine.lifecycle.state is RunState.PAUSED
        finally:
            throttle.close()
        machine.shutdown()
        return GuestRun(0, "")

    run_inprocess("counter", machine_hook=hook)


def test_percentage_is_clamped() -> None:
    from kvmpy.lifecycle import Lifecycle

    throttle = CpuThrottle(Lifecycle())
    throttle.set(0)
    assert throttle.percentage == 0
    throttle.set(250)
    assert throttle.percentage == 99
    throttle.set(-5)
    assert throttle.percentage == 0
    throttle.close()
