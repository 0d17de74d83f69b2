"""The riscv64 ``virt`` board: QEMU's memory map, its device table, and the wiring to the CPU loop.

Memory map (facts from QEMU's hw/riscv/virt.c), one line each in ``device_table()``:
    0x00100000  sifive_test finisher
    0x02000000  CLINT (msip, mtimecmp, mtime)
    0x0c000000  PLIC (context 0 = hart 0 M-mode, context 1 = S-mode)
    0x10000000  ns16550a UART, reg-shift 0, PLIC source 10
    0x80000000  DRAM
plus HTIF tohost/fromhost when the kernel ELF defines those symbols.

The UART talks to a ``kvmpy.devices.chardev`` backend, the same console layer
as the PC board's serial port.  The backend's reader thread only queues typed
bytes; the CPU thread hands them to the UART when it polls devices, so no
device state is touched from two threads.
"""

from __future__ import annotations

import logging
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Protocol

from kvmpy.devices.bus import Bus
from kvmpy.devices.chardev import CharBackend, FileBackend, NullBackend
from kvmpy.devices.riscv import clint as clint_mod
from kvmpy.devices.riscv import plic as plic_mod
from kvmpy.devices.riscv import sifive_test
from kvmpy.devices.riscv.clint import Clint
from kvmpy.devices.riscv.htif import Htif
from kvmpy.devices.riscv.plic import Plic
from kvmpy.devices.riscv.sifive_test import SifiveTest
from kvmpy.devices.serial import Uart16550
from kvmpy.loader.elf import ElfImage
from kvmpy.loader.errors import LoaderError
from kvmpy.tcg.backend_py import StateLayout, runtime_namespace
from kvmpy.tcg.cpu_loop import CpuLoop
from kvmpy.tcg.errors import GuestTrap, MachineExit, TcgUserError
from kvmpy.tcg.softmmu import AccessFaults, SoftMmu
from kvmpy.tcg.target.riscv.cpu import MEIP, MSIP, MTIP, SEIP, RiscvCpu
from kvmpy.tcg.target.riscv.translate import INSTRET, N_SLOTS, PC, Translator
from kvmpy.tcg.tb_cache import TBCache

log = logging.getLogger(__name__)

SIFIVE_TEST_BASE = 0x100000
CLINT_BASE = 0x2000000
PLIC_BASE = 0xC000000
UART_BASE = 0x10000000
UART_SIZE = 0x100
UART_IRQ = 10
DRAM_BASE = 0x80000000
INPUT_QUEUE_LIMIT = 1 << 16     # bytes typed ahead of the guest; more are refused
IDLE_WAIT = 0.05                # seconds a WFI waits for console input before looking again


class BoardDevice(Protocol):
    """What the board asks of every device in its table."""

    def read(self, offset: int, size: int) -> int: ...

    def write(self, offset: int, size: int, value: int) -> None: ...

    def reset(self) -> None: ...


@dataclass(frozen=True)
class DeviceSlot:
    """One line of the device table: a device and where it sits on the MMIO bus."""

    name: str
    base: int
    size: int
    device: BoardDevice


class ConsoleInput:
    """Bytes typed on the console, handed from the backend's reader thread to the CPU thread."""

    def __init__(self, limit: int = INPUT_QUEUE_LIMIT) -> None:
        self.limit = limit
        self.ready = threading.Event()        # set while bytes (or a quit request) wait
        self.quit_requested = False
        self._lock = threading.Lock()
        self._buf = bytearray()

    def receive(self, data: bytes) -> int:
        """Called by the console backend; returns how many bytes were accepted."""
        with self._lock:
            room = max(self.limit - len(self._buf), 0)
            taken = data[:room]
            self._buf += taken
            if taken:
                self.ready.set()
        return len(taken)

    def request_quit(self) -> None:
        self.quit_requested = True
        self.ready.set()

    def take(self) -> bytes:
        with self._lock:
            data = bytes(self._buf)
            self._buf.clear()
            if not self.quit_requested:
                self.ready.clear()
        return data


class VirtBoard:
    def __init__(self, memory: int, console: CharBackend | None = None, trace: IO[str] | None = None,
                 trace_flags: set[str] | frozenset[str] = frozenset()) -> None:
        self.console = console if console is not None else NullBackend()
        self.trace = trace
        self.trace_flags = set(trace_flags)
        self.bus = Bus("mmio")
        self.mem = SoftMmu(DRAM_BASE, memory, self.bus, AccessFaults(read=5, write=7, fetch=1))
        self.cpu = RiscvCpu(self.mem)
        cpu = self.cpu
        self.mem.translate = cpu.mmu.translate
        self.plic = Plic([lambda lv: cpu.set_hw_irq(MEIP, lv), lambda lv: cpu.set_hw_irq(SEIP, lv)])
        self.clint = Clint(lambda: cpu.mtime, self._set_time,
                           lambda lv: cpu.set_hw_irq(MSIP, lv), self._set_mtip)
        self.uart = Uart16550(output=self.console.write, irq=self.plic.line(UART_IRQ))
        self.devices = self.device_table()
        for slot in self.devices:
            self.bus.map(slot.base, slot.size, slot.device, slot.name)
        self.htif: Htif | None = None
        # Null and file backends never deliver input: nothing to poll, and WFI cannot wait for it.
        self.interactive = not isinstance(self.console, (NullBackend, FileBackend))
        self.input = ConsoleInput()
        self._console_started = False

        tracer = self._trace if trace is not None else None
        self.translator = Translator(self.mem.fetch, disasm="in_asm" in self.trace_flags)
        ns = runtime_namespace()
        ns.update(self.mem.namespace())
        ns.update(cpu.helpers())
        ns["GuestTrap"] = GuestTrap
        ns["_UnitExit"] = (GuestTrap, MachineExit)
        chaining = not ({"exec", "nochain", "cpu"} & self.trace_flags)
        self.cache = TBCache(StateLayout(N_SLOTS, PC, INSTRET), ns, self.translator.translate,
                             self.mem.mark_code_page,
                             trace=tracer if {"in_asm", "op", "out_asm"} & self.trace_flags else None,
                             trace_ir="op" in self.trace_flags, chaining=chaining,
                             trace_out="out_asm" in self.trace_flags)
        self.mem.on_code_write = self._code_written
        cpu.on_tlb_flush = self._tlb_flushed
        cpu.poll_devices = self._poll
        cpu.idle = self._idle
        if "int" in self.trace_flags and tracer is not None:
            cpu.trace_int = lambda s: self._trace(s + "\n")
        exec_trace = self._trace_exec if {"exec", "cpu"} & self.trace_flags and tracer else None
        self.loop = CpuLoop(cpu, self.cache, exec_trace)
        self._mtip = False

    def device_table(self) -> tuple[DeviceSlot, ...]:
        """Every MMIO device of the board; reset walks this table, so none can be forgotten."""
        return (
            DeviceSlot("sifive_test", SIFIVE_TEST_BASE, sifive_test.SIZE, SifiveTest()),
            DeviceSlot("clint", CLINT_BASE, clint_mod.SIZE, self.clint),
            DeviceSlot("plic", PLIC_BASE, plic_mod.SIZE, self.plic),
            DeviceSlot("uart0", UART_BASE, UART_SIZE, self.uart),
        )

    # ---- loading ---------------------------------------------------------
    def load(self, img: ElfImage, path: Path | str) -> None:
        """Copy the program into RAM at its physical addresses and point the hart at its entry."""
        self._copy_segments(img, path)
        R = self.cpu.R
        R[PC] = img.entry
        R[10] = self.cpu.hartid        # a0 = hartid, as QEMU's reset vector sets it
        R[11] = 0                      # a1 = DTB address: no device tree is generated
        self._poll()
        try:
            symbols = img.symbols
        except LoaderError as exc:
            raise TcgUserError(str(exc)) from None
        tohost = symbols.get("tohost")
        if tohost is not None and self.mem.in_ram(tohost, 8):
            self.htif = Htif(self.mem, tohost, symbols.get("fromhost"), self.console.write)

    def _copy_segments(self, img: ElfImage, path: Path | str) -> None:
        """Every segment must lie in RAM; the error names the RAM size that would be needed."""
        ram = self.mem.ram
        for seg in img.segments:
            off = seg.paddr - DRAM_BASE
            if off < 0:
                raise TcgUserError(
                    f"{path}: segment at {seg.paddr:#x} is below RAM (RAM starts at {DRAM_BASE:#x})")
            if off + seg.memsz > len(ram):
                need = (seg.paddr + seg.memsz - DRAM_BASE + (1 << 20) - 1) >> 20
                raise TcgUserError(
                    f"{path}: segment at {seg.paddr:#x}+{seg.memsz:#x} does not fit in "
                    f"{len(ram) >> 20} MiB of RAM; use -m {need}M or more")
            ram[off:off + seg.filesz] = img.segment_bytes(seg)
            ram[off + seg.filesz:off + seg.memsz] = bytes(seg.memsz - seg.filesz)

    # ---- run ---------------------------------------------------------------
    def run(self) -> MachineExit:
        """Run until the guest (or the console's C-a x) ends the machine; the exit says how."""
        if not self._console_started:
            self._console_started = True
            self.console.start(self.input.receive, self.input.request_quit)
        try:
            self.loop.run()
        except MachineExit as ex:
            return ex
        raise AssertionError("unreachable: the CPU loop only ends with MachineExit")

    # ---- callbacks ---------------------------------------------------------
    def _code_written(self, page: int) -> None:
        self.cache.invalidate_page(page)
        self.mem.code_pages.discard(page)

    def _tlb_flushed(self, all_contexts: bool) -> None:
        if all_contexts:
            self.cache.flush_jump_caches(lambda ctx: False)
        else:
            self.cache.flush_jump_caches(lambda ctx: not self.cpu.paged(ctx))

    def _set_time(self, value: int) -> None:
        self.cpu.time_skew = value - self.cpu.R[INSTRET]

    def _set_mtip(self, level: bool) -> None:
        self._mtip = level
        self.cpu.set_hw_irq(MTIP, level)

    def _poll(self) -> None:
        cpu = self.cpu
        mtip = cpu.R[INSTRET] + cpu.time_skew >= self.clint.mtimecmp
        if mtip != self._mtip:
            self._set_mtip(mtip)
        if self.interactive and self.input.ready.is_set():   # no lock, no syscall: cheap
            self._take_input()

    def _take_input(self) -> bool:
        """Hand queued console bytes to the UART (CPU thread only); True if there were any."""
        if self.input.quit_requested:
            raise MachineExit(0, "console: C-a x")
        data = self.input.take()
        if data:
            self.uart.receive(data)
        return bool(data)

    def _idle(self) -> bool:
        """WFI with nothing pending: let time pass until something can happen."""
        cpu = self.cpu
        if cpu.mie & MTIP and self.clint.mtimecmp != (1 << 64) - 1 and not cpu.hw_ip & MTIP:
            if cpu.mtime < self.clint.mtimecmp:
                cpu.time_skew += self.clint.mtimecmp - cpu.mtime
            self._poll()
            return True
        if self.interactive:
            self.input.ready.wait(IDLE_WAIT)
            self._take_input()
            return True
        return False

    # ---- tracing -------------------------------------------------------------
    def _trace(self, text: str) -> None:
        assert self.trace is not None
        self.trace.write(text)

    def _trace_exec(self, pc: int) -> None:
        cpu = self.cpu
        self._trace(f"Trace 0: [{pc:016x}] priv={cpu.priv} instret={cpu.R[INSTRET]}\n")
        if "cpu" in self.trace_flags:
            regs = " ".join(f"x{i}={cpu.R[i]:016x}" + ("\n" if i % 4 == 3 else "") for i in range(1, 32))
            self._trace(f" pc={cpu.R[PC]:016x} {regs}\n")

    def reset(self, img: ElfImage, path: Path | str) -> None:
        """Guest-requested reset: fresh CPU, devices and RAM contents, then reload the program."""
        self.cache.flush_all()
        self.mem.flush()
        self.mem.code_pages.clear()
        self.mem.ram[:] = bytes(len(self.mem.ram))
        self.cpu.reset()
        for slot in self.devices:
            slot.device.reset()
        self.load(img, path)
