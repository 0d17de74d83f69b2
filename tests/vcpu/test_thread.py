"""The vCPU loop: real guests drive port I/O, MMIO and fatal exits through a VcpuThread on its own buses.

Each test builds a real PC board (for the VM, the loaded kernel and vCPU 0)
but runs vCPU 0 in a VcpuThread of its own, wired to a bus the test made,
so what the loop dispatches is seen directly.
"""

from __future__ import annotations

import threading
import time

import pytest

from kvmpy.boards.pc import PcBoard
from kvmpy.config import DebugExitConfig, MachineConfig
from kvmpy.devices.bus import Bus
from kvmpy.devices.chardev import BufferBackend
from kvmpy.devices.debug_exit import DebugExit
from kvmpy.devices.serial import Uart16550
from kvmpy.kvm import abi
from kvmpy.kvm.system import Kvm
from kvmpy.machine import Machine
from kvmpy.vcpu.thread import StopReason, VcpuEvent, VcpuThread
from tests.guests.build import build_guest
from tests.guests.runner import GuestRun, run_inprocess

pytestmark = pytest.mark.kvm_host

EXIT_PASS_STATUS = 33


class Harness:
    """A board for guest ``name`` and a VcpuThread for its vCPU 0 on a bus with a UART and isa-debug-exit."""

    def __init__(self, name: str, append: str = "", mmio_value: int | None = None) -> None:
        cfg = MachineConfig(kernel=build_guest(name), memory=32 << 20, append=append, serial="stdio",
                            no_reboot=True, debug_exit=DebugExitConfig(0xF4, 4)).validate()
        self.board = PcBoard(cfg, lambda ev: None, lambda ev: None, BufferBackend())
        self.output = bytearray()
        self.uart = Uart16550(output=self.output.extend)
        self.exited = threading.Event()
        self.status: list[int] = []
        self.events: list[VcpuEvent] = []
        self.mmio: list[tuple] = []
        self.pio = Bus("test-pio")
        self.pio.map(0x3F8, 8, self.uart, "uart")
        self.pio.map(0xF4, 4, DebugExit(on_exit=self._exit), "exit")
        self.mmio_value = mmio_value
        self.thread = VcpuThread(self.board.vcpus[0], self.pio, self._mmio_read, self._mmio_write,
                                 self._event)

    def _exit(self, status: int) -> None:
        self.status.append(status)
        self.exited.set()

    def _event(self, ev: VcpuEvent) -> None:
        self.events.append(ev)
        self.exited.set()

    def _mmio_read(self, addr: int, size: int) -> int:
        self.mmio.append(("r", addr, size))
        return self.mmio_value if self.mmio_value is not None else (1 << (8 * size)) - 1

    def _mmio_write(self, addr: int, size: int, value: int) -> None:
        self.mmio.append(("w", addr, size, value))

    def run(self, timeout: float = 30) -> None:
        self.thread.start()
        self.thread.resume()
        assert self.exited.wait(timeout), bytes(self.output)

    def close(self) -> None:
        self.thread.stop()
        self.board.close()


@pytest.fixture
def harness():
    made: list[Harness] = []

    def make(*args, **kw) -> Harness:
        h = Harness(*args, **kw)
        made.append(h)
        return h

    yield make
    for h in made:
        h.close()


def test_port_io_reaches_the_devices_and_fills_the_port_cache(harness) -> None:
    h = harness("hello", append="x=1")
    h.run()
    assert h.status == [EXIT_PASS_STATUS]
    assert bytes(h.output).startswith(b"hello from kvmpy test guest\n")
    assert h.thread.exits > len(h.output)  # at least one exit per byte written, plus LSR polls
    lsr = h.pio.cache.get(0x3FD)
    assert lsr is not None and lsr.name == "uart"  # looked up once through Bus.lookup()


def test_an_unmapped_port_reads_all_ones_and_is_cached_as_unmapped(harness) -> None:
    h = harness("pio_loop", append="n=200 mode=0")  # port 0x80 is not on this bus
    h.run()
    assert h.status == [EXIT_PASS_STATUS]
    assert b"pio_loop done" in bytes(h.output)
    assert 0x80 not in h.pio.cache or h.pio.cache[0x80] is None


def test_mmio_exits_reach_the_mmio_callbacks_with_their_sizes(harness) -> None:
    h = harness("mmio", mmio_value=0x12345678)
    h.run()
    assert h.status == [EXIT_PASS_STATUS]
    reads = [(a, s) for kind, a, s, *_ in h.mmio if kind == "r"]
    assert (0xD0000000, 4) in reads and (0xD0000002, 2) in reads and (0xD0000001, 1) in reads
    assert any(kind == "w" for kind, *_ in h.mmio)
    out = bytes(h.output).decode()
    assert "read32 0x12345678" in out and "read16 0x00005678" in out and "read8 0x00000078" in out


def test_a_triple_fault_is_reported_and_the_vcpu_parks_itself(harness, caplog) -> None:
    h = harness("triplefault")
    h.run()
    assert [(e.reason, e.message) for e in h.events] == [(StopReason.RESET, "triple fault")]
    assert "the guest triple-faulted (rip=0x" in caplog.text  # one line on stderr says where
    deadline = time.monotonic() + 10
    while not h.thread.paused and time.monotonic() < deadline:
        time.sleep(0.01)
    assert h.thread.paused  # it does not re-enter the guest until someone decides


def test_pause_resume_and_stop_from_another_thread(harness) -> None:
    h = harness("pio_loop", append="n=100000000 mode=2")  # scratch-register writes, for a long time
    h.thread.start()
    h.thread.resume()
    deadline = time.monotonic() + 20
    while h.thread.exits < 1000 and time.monotonic() < deadline:
        time.sleep(0.01)
    h.thread.pause()
    assert h.thread.paused
    exits = h.thread.exits
    time.sleep(0.2)
    assert h.thread.exits == exits  # parked: no guest progress
    h.thread.resume()
    while h.thread.exits == exits and time.monotonic() < deadline:
        time.sleep(0.01)
    assert h.thread.exits > exits
    h.thread.stop()
    h.thread.pause()  # a pause after the stop neither parks nor hangs
    assert not h.thread.paused


def test_a_thread_that_never_started_stops_at_once(harness) -> None:
    h = harness("hello")
    t0 = time.monotonic()
    h.thread.stop()
    assert time.monotonic() - t0 < 1


def test_coalesced_config_address_writes_land_before_the_config_data_access() -> None:
    """On the PC, KVM batches 0xCF8 writes in the ring (one exit per PCI config access, as under QEMU);
    the loop replays the ring at every exit, so each 0xCFC read sees the address written just before."""
    n = 2000
    exits: list[int] = []

    def hook(machine: Machine, console: BufferBackend) -> GuestRun:
        status = machine.run(timeout=60)
        exits.append(sum(t.exits for t in machine.board.threads))
        return GuestRun(status, console.output.decode("latin-1"))

    run = run_inprocess("pio_loop", append=f"n={n} mode=3", machine_hook=hook)
    assert run.status == EXIT_PASS_STATUS, run.output
    i440fx, piix3 = 0x1237_8086, 0x7000_8086  # vendor 8086, devices 1237 and 7000
    assert f"pio_loop sum 0x{(n * (i440fx + piix3)) & 0xFFFFFFFF:08x}" in run.output
    if Kvm.open().check_extension(abi.CAP_COALESCED_PIO):
        # 2n config reads: 2n exits at 0xCFC and none at 0xCF8, plus a few hundred for the serial output.
        assert exits[0] < 2 * n + 1000, exits
    else:
        assert exits[0] >= 4 * n, exits
