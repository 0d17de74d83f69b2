"""kvmpy.VM end to end, in-process and as a child process, on the host KVM with the tiny test guests.

Every behaviour is checked in both modes (the ``mode`` parameter); snapshot/restore and
direct memory access exist in-process only, and the child mode must refuse them clearly.
"""

from __future__ import annotations

import re
import struct
import time

import pytest

import kvmpy
from kvmpy.api import (ConfigError, ConsoleClosed, ExpectTimeout, GuestVanished, QMPError, UnsupportedError, VMError,
                       WaitTimeout)
from tests.guests.build import build_guest

COUNTER_ADDR = 0x200000  # the counter guest's 32-bit counter
PASS = 33  # isa-debug-exit value 0x10: (0x10 << 1) | 1
MODES = [pytest.param(False, id="in-process"), pytest.param(True, id="process")]
kvm = pytest.mark.kvm_host  # the tiny guests run on any KVM, the host's PVM one included


def guest_vm(name: str, process: bool, **options) -> kvmpy.VM:
    return kvmpy.VM(build_guest(name), memory="32M", debug_exit=(0xF4, 4), process=process, **options)


def counter(vm: kvmpy.VM) -> int:
    """The counter guest's count, read through the monitor (works in both modes)."""
    text = vm.hmp(f"xp /1xw {COUNTER_ADDR:#x}")
    return int(text.split(":")[1], 16)


@kvm
@pytest.mark.parametrize("process", MODES)
def test_console_expect_send_and_exit_status(process: bool) -> None:
    with guest_vm("serial_rx", process) as vm:
        assert vm.mode == ("process" if process else "in-process")
        vm.console.expect("ready", timeout=60)
        vm.console.send("hello, kvm\r")
        assert vm.console.expect("HELLO, KVM\n").group(0) == "HELLO, KVM\n"
        vm.console.send(b"q")
        assert vm.wait(timeout=60) == PASS
        assert vm.console.expect(re.compile(r"bye (\d+)")).group(1) == "11"  # all output is in once it ended
        assert not vm.running
        assert vm.console.output.startswith("serial_rx: mode=long")
        assert [e.name for e in vm.events] == ["RESUME"]  # isa-debug-exit ends without SHUTDOWN, as in QEMU


@kvm
@pytest.mark.parametrize("process", MODES)
def test_qmp_pause_resume_and_events(process: bool) -> None:
    with guest_vm("counter", process) as vm:
        vm.console.expect("counter: addr", timeout=60)
        assert vm.qmp("query-status") == {"status": "running", "singlestep": False, "running": True}
        vm.pause()
        assert vm.wait_event("STOP").name == "STOP"
        assert vm.status == "paused"
        frozen = counter(vm)
        time.sleep(0.3)
        assert counter(vm) == frozen, "a paused guest kept running"
        vm.resume()
        vm.wait_event("RESUME")
        deadline = time.monotonic() + 30
        while counter(vm) == frozen:
            assert time.monotonic() < deadline, "the guest did not run again after resume()"
            time.sleep(0.05)
        with pytest.raises(QMPError) as err:
            vm.qmp("no-such-command")
        assert (err.value.error_class, err.value.desc) == ("CommandNotFound",
                                                          "The command no-such-command has not been found")
        with pytest.raises(QMPError) as err:
            vm.qmp("human-monitor-command", {"command-line": 5})
        assert err.value.error_class == "GenericError" and isinstance(err.value, VMError)
        assert vm.qmp("query-name") == {}
        assert vm.shutdown() == 0
        assert vm.wait_event("SHUTDOWN").data == {"guest": False, "reason": "host-qmp-quit"}


@kvm
@pytest.mark.parametrize("process", MODES)
def test_timeouts_and_the_end_are_clear_errors(process: bool) -> None:
    with guest_vm("counter", process) as vm:
        vm.console.expect("counter: addr", timeout=60)
        with pytest.raises(ExpectTimeout) as err:
            vm.console.expect("never printed", timeout=0.3)
        assert isinstance(err.value, TimeoutError)
        assert "'never printed' did not appear" in str(err.value) and "counter: addr" in str(err.value)
        with pytest.raises(WaitTimeout):
            vm.wait(timeout=0.2)
        with pytest.raises(WaitTimeout, match="no RESET event"):
            vm.wait_event("RESET", timeout=0.2)
        vm.kill()
        with pytest.raises(ConsoleClosed) as closed:
            vm.console.expect("never printed", timeout=30)
        assert isinstance(closed.value, EOFError)
        if process:  # a child's end says how it ended, so a crash in CI explains itself
            assert "the VM has exited (status -9)" in str(closed.value)
        assert not vm.running
        with pytest.raises(VMError):
            vm.qmp("query-status", timeout=10)
    assert vm.wait() == (-9 if process else 0)  # a child dies of SIGKILL; in-process is a host quit


@kvm
@pytest.mark.parametrize("process", MODES)
def test_reset_reboots_the_guest(process: bool) -> None:
    with guest_vm("counter", process) as vm:
        vm.console.expect("counter: addr", timeout=60)
        vm.reset()
        assert vm.wait_event("RESET").data["guest"] is False
        vm.console.expect("counter: addr", timeout=60)  # printed again: the guest booted a second time
        assert vm.console.output.count("counter: addr") == 2


@kvm
@pytest.mark.parametrize("process", MODES)
def test_paused_start_runs_nothing_until_resume(process: bool) -> None:
    with guest_vm("serial_rx", process, paused=True) as vm:
        assert vm.status == "prelaunch"
        time.sleep(0.3)
        assert vm.console.output == ""
        vm.resume()
        vm.console.expect("ready", timeout=60)
        vm.console.send("q")
        assert vm.wait(60) == PASS


@kvm
def test_snapshot_restore_reverts_memory_cpu_and_counter() -> None:
    with guest_vm("counter", process=False) as vm:
        vm.console.expect("counter: addr", timeout=60)
        vm.pause()
        vm.snapshot()
        before = counter(vm)
        scribble = 0x300000
        original = vm.read_memory(scribble, 4096)
        vm.write_memory(scribble, b"\xab" * 4096)
        vm.resume()
        time.sleep(0.3)
        vm.pause()
        assert counter(vm) > before
        pages = vm.restore()
        assert pages >= 2  # the counter's page and the one the host wrote
        assert counter(vm) == before
        assert vm.read_memory(scribble, 4096) == original
        assert struct.unpack("<I", vm.read_memory(COUNTER_ADDR, 4))[0] == before
        vm.resume()  # the vCPU state came back too: the guest counts on from the snapshot
        time.sleep(0.2)
        assert counter(vm) > before
        for _ in range(50):  # restoring while it runs is the fuzzing loop's case
            vm.restore()
        assert vm.status == "running"


@kvm
def test_child_mode_refuses_snapshot_and_memory_access_clearly() -> None:
    with guest_vm("counter", process=True) as vm:
        vm.console.expect("counter: addr", timeout=60)
        with pytest.raises(UnsupportedError, match=r"in-process VM \(kvmpy.VM\(..., process=False\)\)"):
            vm.snapshot()
        with pytest.raises(UnsupportedError, match="xp"):
            vm.read_memory(COUNTER_ADDR, 4)
        with pytest.raises(VMError, match="call vm.snapshot"):
            vm.restore()


@kvm
@pytest.mark.parametrize("process", MODES)
def test_bad_options_are_config_errors_before_anything_runs(process: bool, tmp_path) -> None:
    with pytest.raises(ConfigError, match="does not exist"):
        kvmpy.VM(tmp_path / "missing", process=process)
    with pytest.raises(ConfigError, match="invalid memory size"):
        kvmpy.VM(build_guest("hello"), memory="lots", process=process)
    with pytest.raises(ConfigError, match="debug_exit must be"):
        kvmpy.VM(build_guest("hello"), debug_exit="yes", process=process)
    junk = tmp_path / "kernel.bin"
    junk.write_bytes(b"\x7fELG not a kernel\n" * 300)
    with pytest.raises(ConfigError, match="not a kernel kvmpy can boot"):
        with kvmpy.VM(junk, process=process):
            pass


@kvm
def test_a_vm_must_be_started_and_cannot_restart() -> None:
    vm = guest_vm("hello", process=False)
    with pytest.raises(VMError, match="not started"):
        vm.qmp("query-status")
    with vm:
        vm.console.expect("bye", timeout=60)
        assert vm.wait(60) == PASS
    with pytest.raises(VMError, match="closed"):
        vm.start()


def test_lazy_export_keeps_import_kvmpy_lean() -> None:
    import subprocess
    import sys

    code = "import sys, kvmpy; print(sorted(m for m in sys.modules if m.startswith('kvmpy')))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "['kvmpy', 'kvmpy.version']"
    assert kvmpy.VM is kvmpy.api.VM


@kvm
def test_the_documented_fuzzing_loop_runs(capsys) -> None:
    from pathlib import Path

    doc = (Path(__file__).parents[1] / "docs" / "python-api.md").read_text()
    section = doc.split("## Snapshots", 1)[1]
    code = section.split("```python\n", 1)[1].split("```", 1)[0]
    assert "SECONDS = 3.0" in code
    exec(compile(code.replace("SECONDS = 3.0", "SECONDS = 0.5"), "docs/python-api.md", "exec"), {})
    runs, rate = re.fullmatch(r"(\d+) restores, (\d+) per second\n", capsys.readouterr().out).groups()
    assert int(runs) > 10 and int(rate) > 20


@kvm
def test_a_guest_that_triple_faults_under_no_reboot_is_said_to_have_vanished() -> None:
    with guest_vm("triplefault", True, no_reboot=True) as vm:
        vm.console.expect("triplefault: boot 1", timeout=60)
        with pytest.raises(GuestVanished) as gone:  # a ConsoleClosed: scripts that catch that still do
            vm.console.expect("boot 2", timeout=60)
        assert "the VM has exited (status 0): the guest triple-faulted and reset (-no-reboot)" in str(gone.value)
        assert "vCPU 0: the guest triple-faulted (rip=" in str(gone.value)  # kvmpy's warning, from its stderr
    with guest_vm("hello", True) as vm:  # an ordinary end is not a vanished guest
        with pytest.raises(ConsoleClosed) as closed:
            vm.console.expect("never printed", timeout=60)
        assert not isinstance(closed.value, GuestVanished)


@kvm
def test_an_in_process_guest_that_triple_faults_under_no_reboot_has_vanished_too() -> None:
    with guest_vm("triplefault", False, no_reboot=True) as vm:
        vm.console.expect("triplefault: boot 1", timeout=60)
        with pytest.raises(GuestVanished, match="the guest triple-faulted and reset"):
            vm.console.expect("boot 2", timeout=60)
    with guest_vm("hello", False) as vm:
        with pytest.raises(ConsoleClosed) as closed:
            vm.console.expect("never printed", timeout=60)
        assert not isinstance(closed.value, GuestVanished)


@kvm
@pytest.mark.parametrize("process", MODES)
def test_control_after_the_guest_ended_says_so(process: bool) -> None:
    with guest_vm("hello", process) as vm:
        assert vm.wait(60) == PASS
        for call in (vm.pause, vm.resume, vm.reset, lambda: vm.qmp("query-status")):
            with pytest.raises(VMError, match="exited"):
                call()
        if not process:
            assert vm.read_memory(0x100000, 4) != b"\0\0\0\0"  # a post-mortem look is allowed until close
    with pytest.raises(VMError):
        vm.read_memory(0x100000, 4)


@kvm
def test_a_vm_closed_without_starting_frees_at_once() -> None:
    vm = guest_vm("hello", process=False)
    started = time.monotonic()
    vm.close()
    assert time.monotonic() - started < 5
    assert not vm.running


# ---- the pieces that need no VM ---------------------------------------------------------

def test_console_expect_walks_forward_literal_or_regex() -> None:
    from kvmpy.api.console import Console

    c = Console()
    c.feed(b"a.b one\nstep 1\nstep 2\n")
    assert c.expect("a.b").group(0) == "a.b"  # a str is literal: '.' matches only a dot
    assert c.expect(re.compile(r"step (\d)")).group(1) == "1"
    assert c.expect(re.compile(r"step (\d)")).group(1) == "2"  # the cursor moved past the first
    with pytest.raises(ExpectTimeout, match="'step' did not appear"):
        c.expect("step", timeout=0.05)
    c.feed("caf\u00e9 ".encode()[:4])  # a UTF-8 sequence split across two writes
    c.feed("caf\u00e9 ".encode()[4:] + b"\xff!")
    assert c.expect("caf\u00e9 \ufffd!")
    c.close("the VM has stopped")
    with pytest.raises(ConsoleClosed, match="the VM has stopped before 'more'"):
        c.expect("more")


def test_console_keeps_a_bounded_tail_and_send_waits_for_room() -> None:
    from kvmpy.api.console import Console

    c = Console(max_output=1000)
    c.feed(b"x" * 900)
    c.expect("x" * 900)
    c.feed(b"y" * 300 + b"END")
    assert len(c.output) <= 1000 and c.output.endswith("END")
    assert c.expect("END")  # the cursor followed the trim
    taken: list[bytes] = []

    def uart(data: bytes) -> int:  # takes at most 4 bytes a call, like a full input buffer draining
        taken.append(data[:4])
        return min(4, len(data))

    c.attach_input(uart)
    c.send("0123456789")
    assert b"".join(taken) == b"0123456789" and len(taken) == 3


def test_event_log_waits_with_a_cursor_and_matches_data() -> None:
    import threading

    from kvmpy.api.events import Event, EventLog

    log = EventLog()
    log.add(Event("STOP"))
    log.add(Event("RESET", {"guest": True}))
    log.add(Event("RESET", {"guest": False}))
    assert log.wait("RESET", guest=False).data == {"guest": False}
    with pytest.raises(WaitTimeout, match="no STOP event"):
        log.wait("STOP", timeout=0.05)  # the STOP before the cursor does not count again
    threading.Timer(0.05, log.add, [Event.from_qmp({"event": "SHUTDOWN", "data": {"reason": "x"},
                                                    "timestamp": {"seconds": 5, "microseconds": 500000}})]).start()
    ev = log.wait("SHUTDOWN", timeout=10)
    assert (ev.data, ev.timestamp) == ({"reason": "x"}, 5.5)
    log.close()
    with pytest.raises(EOFError):
        log.wait("RESUME")
    assert [e.name for e in log.all()] == ["STOP", "RESET", "RESET", "SHUTDOWN"]


def test_options_become_the_same_config_and_argv(tmp_path) -> None:
    from kvmpy.api.options import VMOptions

    kernel = build_guest("hello")
    opts = VMOptions.build(kernel, memory=64, smp=2, append="a=1", debug_exit=True, name="t", no_reboot=True)
    cfg = opts.to_config()
    assert (cfg.memory, cfg.smp, cfg.append, cfg.name, cfg.no_reboot) == (64 << 20, 2, "a=1", "t", True)
    assert (cfg.debug_exit.iobase, cfg.debug_exit.iosize) == (0x501, 2)
    argv = opts.to_argv(tmp_path / "q.sock")
    from kvmpy.cli import parse_qemu_args

    parsed = parse_qemu_args(argv)  # the child's argv means the same machine, plus -S and the QMP socket
    assert (parsed.memory, parsed.smp, parsed.append, parsed.name, parsed.no_reboot) == (64 << 20, 2, "a=1", "t", True)
    assert parsed.start_paused and list(parsed.qmp) == [f"unix:{tmp_path / 'q.sock'},server=on,wait=on"]
    assert parsed.serial == "stdio" and parsed.debug_exit == cfg.debug_exit


@kvm
def test_in_process_vm_takes_device_options_from_extra_args(tmp_path) -> None:
    """extra_args's device options build the same devices in-process as in a child; other flags are refused."""
    import subprocess

    disk = tmp_path / "d.qcow2"
    subprocess.run(["qemu-img", "create", "-f", "qcow2", str(disk), "16M"], check=True, capture_output=True)
    drive = ["-drive", f"file={disk},if=virtio,readonly=on"]
    with guest_vm("counter", process=False, extra_args=drive) as vm:
        vm.console.expect("counter: addr", timeout=60)
        block, = vm.qmp("query-block")
        assert (block["device"], block["inserted"]["ro"], block["inserted"]["file"]) == ("virtio0", True, str(disk))
        vm.snapshot()
        vm.restore()  # the virtio-blk-pci function's state is captured and applied with the rest
        assert vm.qmp("query-block")[0]["device"] == "virtio0" and vm.status == "running"
    with pytest.raises(ConfigError, match="in-process VM takes only device options.*'-incoming'"):
        guest_vm("counter", process=False, extra_args=[*drive, "-incoming", "defer"])
    with pytest.raises(ConfigError, match="-device needs a value"):
        guest_vm("counter", process=False, extra_args=["-device"])
