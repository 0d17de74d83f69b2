"""The Machine end to end: every test guest boots and behaves, on the host KVM and on a complete one."""

from __future__ import annotations

import threading
import time

import numpy as np
import pytest

from tests.guests.runner import PASS, GuestRun, run_inprocess

# Guests that avoid what the PVM host KVM cannot do (32-bit iret, ...) run on any KVM;
# all of them run on a complete KVM (in the nested bed here).
ANY_KVM = [pytest.mark.kvm_host]
FULL_KVM = [pytest.mark.kvm_full]


def _both(fn):
    """Run a test on the host KVM and again in the complete-KVM bed."""
    return pytest.mark.parametrize("where", [pytest.param("host", marks=ANY_KVM),
                                             pytest.param("full", marks=FULL_KVM)])(fn)


@_both
def test_hello_prints_multiboot_info(where: str) -> None:
    run = run_inprocess("hello", append="alpha=1 beta")
    assert run.status == PASS
    lines = run.output.splitlines()
    assert lines[0] == "hello from kvmpy test guest"
    assert "mbi flags 0x0000024f" in lines
    assert any(line.startswith('cmdline "') and line.endswith(' alpha=1 beta"') for line in lines)
    assert "mem_upper 64384 KiB" in lines  # 64 MiB - 1 MiB - the 128 KiB firmware reservation
    assert lines[-1] == "bye"


@_both
@pytest.mark.parametrize("smp", [2, 4])
def test_smp_every_vcpu_reports_in(where: str, smp: int) -> None:
    run = run_inprocess("smp", append=f"cpus={smp}", smp=smp)
    assert run.status == PASS, run.output
    ups = sorted(line for line in run.output.splitlines() if line.startswith("cpu ") and line.endswith(" up"))
    assert ups == sorted(f"cpu {i} up" for i in range(1, smp))
    assert f"smp: {smp} of {smp} cpus up" in run.output


@_both
def test_timer_interrupts_through_the_idt(where: str) -> None:
    run = run_inprocess("timer", append="ticks=30 hz=200")
    assert run.status == PASS, run.output
    assert [l for l in run.output.splitlines() if l.startswith("tick")] == ["tick 10", "tick 20", "tick 30"]
    assert "timer done" in run.output


@pytest.mark.kvm_full
def test_timer_in_32bit_protected_mode_uses_iret() -> None:
    run = run_inprocess("timer", append="ticks=20 lm=0")
    assert run.status == PASS, run.output
    assert "mode=32" in run.output and "timer done" in run.output


@_both
def test_serial_rx_interrupts_echo_input(where: str) -> None:
    run = run_inprocess("serial_rx", replies=[(b"ready", b"hello, kvm\rq")])
    assert run.status == PASS, run.output
    assert "HELLO, KVM\n" in run.output
    assert "bye 11" in run.output


@pytest.mark.kvm_full
def test_serial_rx_in_32bit_mode() -> None:
    run = run_inprocess("serial_rx", append="lm=0", replies=[(b"ready", b"abcq")])
    assert run.status == PASS, run.output
    assert "ABC" in run.output and "bye 3" in run.output


@_both
def test_mmio_unassigned_reads_all_ones_and_lapic_is_in_kernel(where: str) -> None:
    run = run_inprocess("mmio")
    assert run.status == PASS, run.output
    values = dict(line.rsplit(" ", 1) for line in run.output.splitlines() if line.count(" ") >= 1 and "0x" in line)
    assert values["read16"] == "0x0000ffff"
    assert values["read8"] == "0x000000ff"
    assert values["readback32"] == "0xffffffff"  # writes to unassigned MMIO are dropped
    assert values["lapic version"].endswith("0014")  # answered by KVM's LAPIC, not by us


@_both
def test_dirty_log_sees_exactly_the_pages_the_guest_wrote(where: str) -> None:
    def hook(machine, console) -> GuestRun:
        machine.dirty_log.set_dirty_logging(True)
        machine.dirty_log.guest_bitmap(machine.board.address_space.flatview)  # start from a clean log
        status = machine.run(timeout=60)
        bitmap = machine.dirty_log.guest_bitmap(machine.board.address_space.flatview)
        written = np.flatnonzero(bitmap[0x400:0x500])  # pages in [4 MiB, 5 MiB)
        assert list(written) == list(range(0, 256, 2))
        # Check the pattern, too: every dword of page p is (p's address | 0xa5a).
        page = machine.board.memory.read(0x400000 + 2 * 4096, 4096)
        assert np.all(np.frombuffer(page, dtype="<u4") == (0x402000 | 0xA5A))
        return GuestRun(status, console.output.decode())

    run = run_inprocess("memwriter", machine_hook=hook)
    assert run.status == PASS, run.output
    assert "done 128" in run.output


@pytest.mark.kvm_host
def test_pause_freezes_the_guest_and_resume_continues() -> None:
    def hook(machine, console) -> GuestRun:
        machine.start()
        assert console.wait_for(b"counter: addr", 30)
        time.sleep(0.5)
        machine.lifecycle.pause()
        frozen = machine.board.memory.read_u32(0x200000)
        time.sleep(0.5)
        assert machine.board.memory.read_u32(0x200000) == frozen
        machine.lifecycle.resume()
        deadline = time.monotonic() + 20
        while machine.board.memory.read_u32(0x200000) == frozen and time.monotonic() < deadline:
            time.sleep(0.05)
        assert machine.board.memory.read_u32(0x200000) != frozen
        machine.shutdown()
        return GuestRun(0, console.output.decode())

    run_inprocess("counter", machine_hook=hook)


@pytest.mark.kvm_host
def test_cpu_state_round_trips_through_save_and_restore() -> None:
    def hook(machine, console) -> GuestRun:
        machine.start()
        assert console.wait_for(b"counter: addr", 30)
        machine.lifecycle.pause()
        state = machine.vmstate.capture(cpu_only=True)
        regs_before = bytes(machine.board.vcpus[0].get_raw("regs"))
        machine.vmstate.apply(state, cpu_only=True)
        assert machine.board.vcpus[0].get_raw("regs") == regs_before
        before = machine.board.memory.read_u32(0x200000)
        machine.lifecycle.resume()
        deadline = time.monotonic() + 20
        while machine.board.memory.read_u32(0x200000) == before and time.monotonic() < deadline:
            time.sleep(0.05)
        assert machine.board.memory.read_u32(0x200000) != before
        machine.shutdown()
        return GuestRun(0, "")

    run_inprocess("counter", machine_hook=hook)


@pytest.mark.kvm_host
def test_timeout_stops_a_guest_that_never_exits() -> None:
    with pytest.raises(TimeoutError):
        run_inprocess("counter", timeout=1.5)


@_both
def test_reset_reboots_the_guest_unless_no_reboot(where: str) -> None:
    def hook(machine, console) -> GuestRun:
        machine.lifecycle.no_reboot = False  # a reset now restarts the guest from its entry point
        result: list[int] = []
        runner = threading.Thread(target=lambda: result.append(machine.run(timeout=60)))
        runner.start()
        deadline = time.monotonic() + 60
        while console.output.count(b"done: resetting") < 2 and time.monotonic() < deadline:
            time.sleep(0.05)
        machine.lifecycle.request_quit(0)
        runner.join(30)
        assert result == [0]
        assert console.output.count(b"kvmpy demo guest") >= 2, console.output[-500:]
        return GuestRun(0, console.output.decode())

    run_inprocess("demo", append="cols=20 rows=5 iters=10", machine_hook=hook)


@_both
def test_triple_fault_resets_and_no_reboot_exits(where: str) -> None:
    run = run_inprocess("triplefault")  # the runner passes -no-reboot
    assert run.status == 0
    assert run.output == "triplefault: boot 1\n"

    def hook(machine, console) -> GuestRun:
        machine.lifecycle.no_reboot = False
        result: list[int] = []
        runner = threading.Thread(target=lambda: result.append(machine.run(timeout=60)))
        runner.start()
        assert console.wait_for(b"triplefault: boot 3\n", 30), console.output
        machine.lifecycle.request_quit(0)
        runner.join(30)
        return GuestRun(result[0], console.output.decode())

    rebooting = run_inprocess("triplefault", machine_hook=hook)
    assert rebooting.output.startswith("triplefault: boot 1\ntriplefault: boot 2\ntriplefault: boot 3\n")


@pytest.mark.kvm_host
def test_internal_error_stops_the_vm_with_a_register_dump(caplog) -> None:
    from kvmpy.kvm.flavor import KvmKind, host_kvm_kind

    if host_kvm_kind() is not KvmKind.PVM:
        pytest.skip("only the PVM KVM fails to emulate a 32-bit iret")
    run = run_inprocess("timer", append="lm=0")
    assert run.status == 1
    text = "\n".join(r.getMessage() for r in caplog.records)
    assert "KVM_EXIT_INTERNAL_ERROR: emulation failure" in text
    assert "RIP=" in text and "CR0=" in text


@pytest.mark.kvm_host
def test_rapid_pause_resume_neither_spins_nor_loses_the_guest() -> None:
    def hook(machine, console) -> GuestRun:
        machine.start()
        assert console.wait_for(b"counter: addr", 30)
        thread = machine.board.threads[0]
        for _ in range(20):
            machine.lifecycle.pause()
            machine.lifecycle.resume()
            time.sleep(0.02)  # back in the guest
            thread.pause(wait=False)  # a request withdrawn before the vCPU saw it
            thread.resume()
        time.sleep(0.2)
        interrupted = thread.interrupted
        time.sleep(1.0)
        # A stale kick would make KVM_RUN return EINTR over and over.
        assert thread.interrupted - interrupted < 10
        before = machine.board.memory.read_u32(0x200000)
        time.sleep(0.3)
        assert machine.board.memory.read_u32(0x200000) != before  # still running
        machine.shutdown()
        return GuestRun(0, "")

    run_inprocess("counter", machine_hook=hook)


@pytest.mark.kvm_host
def test_a_pause_after_stop_does_not_park_the_vcpu_again() -> None:
    # A guest event (a triple fault, say) posted while the machine shuts down pauses every
    # vCPU; that pause must not undo the stop, or shutdown waits on a parked thread.
    def hook(machine, console) -> GuestRun:
        machine.start()
        assert console.wait_for(b"counter: addr", 30)
        thread = machine.board.threads[0]
        thread.stop(wait=False)
        thread.pause(wait=False)
        thread._thread.join(5)  # what stop(wait=True) does after its request
        assert not thread._thread.is_alive()
        return GuestRun(0, "")

    run_inprocess("counter", machine_hook=hook)


@pytest.mark.kvm_host
def test_a_machine_can_be_closed_without_running() -> None:
    def hook(machine, console) -> GuestRun:
        return GuestRun(0, "")  # run_inprocess closes it

    assert run_inprocess("hello", machine_hook=hook).status == 0
