"""The riscv64 ``virt`` board: QEMU's memory map, devices, and the wiring to the CPU loop.

Memory map (facts from QEMU's hw/riscv/virt.c):
    0x00100000  sifive_test finisher
    0x02000000  CLINT (msip, mtimecmp, mtime)
    0x0c000000  PLIC (context 0 = hart 0 M-mode, context 1 = S-mode)
    0x10000000  ns16550a UART, reg-shift 0, PLIC source 10
    0x80000000  DRAM
plus HTIF tohost/fromhost when the kernel ELF defines those symbols.
"""

from __future__ import annotations

import logging
import os
import select
from dataclasses import dataclass
from typing import IO, Callable

from kvmpy.devices.bus import Bus
from kvmpy.devices.serial import Uart16550
from kvmpy.tcg_fallback.backend_py import StateLayout, runtime_namespace
from kvmpy.tcg_fallback.boards import clint as clint_mod
from kvmpy.tcg_fallback.boards import plic as plic_mod
from kvmpy.tcg_fallback.boards import sifive_test
from kvmpy.tcg_fallback.boards.clint import Clint
from kvmpy.tcg_fallback.boards.htif import Htif
from kvmpy.tcg_fallback.boards.plic import Plic
from kvmpy.tcg_fallback.boards.sifive_test import SifiveTest
from kvmpy.tcg_fallback.cpu_loop import CpuLoop
from kvmpy.tcg_fallback.elf import ElfImage, load_into
from kvmpy.tcg_fallback.errors import GuestTrap, MachineExit
from kvmpy.tcg_fallback.riscv.cpu import MEIP, MSIP, MTIP, SEIP, RiscvCpu
from kvmpy.tcg_fallback.riscv.translate import INSTRET, N_SLOTS, PC, Translator
from kvmpy.tcg_fallback.softmmu import AccessFaults, SoftMmu
from kvmpy.tcg_fallback.tb_cache import TBCache

log = logging.getLogger(__name__)

SIFIVE_TEST_BASE = 0x100000
CLINT_BASE = 0x2000000
PLIC_BASE = 0xC000000
UART_BASE = 0x10000000
UART_SIZE = 0x100
UART_IRQ = 10
DRAM_BASE = 0x80000000
INPUT_POLL_PERIOD = 1024


@dataclass
class BoardIO:
    """Where the UART's bytes go and come from, and where traces are written."""

    output: Callable[[bytes], None]
    input_fd: int | None = None          # polled for bytes typed by the user
    trace: IO[str] | None = None


class VirtBoard:
    def __init__(self, memory: int, io: BoardIO, trace_flags: set[str] = frozenset()) -> None:
        self.io = io
        self.trace_flags = set(trace_flags)
        self.bus = Bus("mmio")
        self.mem = SoftMmu(DRAM_BASE, memory, self.bus, AccessFaults(read=5, write=7, fetch=1))
        self.cpu = RiscvCpu(self.mem)
        cpu = self.cpu
        self.mem.translate = cpu.mmu.translate
        self.plic = Plic([lambda lv: cpu.set_hw_irq(MEIP, lv), lambda lv: cpu.set_hw_irq(SEIP, lv)])
        self.clint = Clint(lambda: cpu.mtime, self._set_time,
                           lambda lv: cpu.set_hw_irq(MSIP, lv), self._set_mtip)
        self.uart = Uart16550(output=io.output, irq=self.plic.line(UART_IRQ))
        self.bus.map(SIFIVE_TEST_BASE, sifive_test.SIZE, SifiveTest(), "sifive_test")
        self.bus.map(CLINT_BASE, clint_mod.SIZE, self.clint, "clint")
        self.bus.map(PLIC_BASE, plic_mod.SIZE, self.plic, "plic")
        self.bus.map(UART_BASE, UART_SIZE, self.uart, "uart0")
        self.htif: Htif | None = None

        trace = self._trace if io.trace is not None else None
        self.translator = Translator(self.mem.fetch, disasm="in_asm" in self.trace_flags)
        ns = runtime_namespace()
        ns.update(self.mem.namespace())
        ns.update(cpu.helpers())
        ns["GuestTrap"] = GuestTrap
        ns["_UnitExit"] = (GuestTrap, MachineExit)
        chaining = not ({"exec", "nochain", "cpu"} & self.trace_flags)
        self.cache = TBCache(StateLayout(N_SLOTS, PC, INSTRET), ns, self.translator.translate,
                             self.mem.mark_code_page,
                             trace=trace if {"in_asm", "op", "out_asm"} & self.trace_flags else None,
                             trace_ir="op" in self.trace_flags, chaining=chaining,
                             trace_out="out_asm" in self.trace_flags)
        self.mem.on_code_write = self._code_written
        cpu.on_tlb_flush = self._tlb_flushed
        cpu.poll_devices = self._poll
        cpu.idle = self._idle
        if "int" in self.trace_flags and trace is not None:
            cpu.trace_int = lambda s: self._trace(s + "\n")
        exec_trace = self._trace_exec if {"exec", "cpu"} & self.trace_flags and trace else None
        self.loop = CpuLoop(cpu, self.cache, exec_trace)
        self._mtip = False
        self._input_countdown = INPUT_POLL_PERIOD

    # ---- loading ---------------------------------------------------------
    def load(self, img: ElfImage, path) -> None:
        load_into(img, self.mem.ram, DRAM_BASE, path)
        R = self.cpu.R
        R[PC] = img.entry
        R[10] = self.cpu.hartid        # a0 = hartid, as QEMU's reset vector sets it
        R[11] = 0                      # a1 = DTB address: no device tree is generated
        self._poll()
        if "tohost" in img.symbols and self.mem.in_ram(img.symbols["tohost"], 8):
            self.htif = Htif(self.mem, img.symbols["tohost"], img.symbols.get("fromhost"), self.io.output)

    # ---- run ---------------------------------------------------------------
    def run(self) -> MachineExit:
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
        if self.io.input_fd is not None:
            self._input_countdown -= 1
            if self._input_countdown <= 0:
                self._input_countdown = INPUT_POLL_PERIOD
                self._read_input(0)

    def _read_input(self, timeout: float) -> bool:
        fd = self.io.input_fd
        if fd is None:
            return False
        try:
            ready, _, _ = select.select([fd], [], [], timeout)
            if not ready:
                return False
            data = os.read(fd, 4096)
        except OSError:
            data = b""
        if not data:
            self.io.input_fd = None          # EOF: stop polling
            return False
        self.uart.receive(data)
        return True

    def _idle(self) -> bool:
        """WFI with nothing pending: let time pass until something can happen."""
        cpu = self.cpu
        if cpu.mie & MTIP and self.clint.mtimecmp != (1 << 64) - 1 and not cpu.hw_ip & MTIP:
            if cpu.mtime < self.clint.mtimecmp:
                cpu.time_skew += self.clint.mtimecmp - cpu.mtime
            self._poll()
            return True
        if self.io.input_fd is not None:
            self._read_input(0.05)
            return True
        return False

    # ---- tracing -------------------------------------------------------------
    def _trace(self, text: str) -> None:
        assert self.io.trace is not None
        self.io.trace.write(text)

    def _trace_exec(self, pc: int) -> None:
        cpu = self.cpu
        self._trace(f"Trace 0: [{pc:016x}] priv={cpu.priv} instret={cpu.R[INSTRET]}\n")
        if "cpu" in self.trace_flags:
            regs = " ".join(f"x{i}={cpu.R[i]:016x}" + ("\n" if i % 4 == 3 else "") for i in range(1, 32))
            self._trace(f" pc={cpu.R[PC]:016x} {regs}\n")

    def reset(self, img: ElfImage, path) -> None:
        """Guest-requested reset: fresh CPU, devices and RAM contents, then reload the kernel."""
        self.cache.flush_all()
        self.mem.flush()
        self.mem.code_pages.clear()
        self.mem.ram[:] = bytes(len(self.mem.ram))
        self.cpu.reset()
        self.uart.reset()
        self.clint.mtimecmp = 0
        self.load(img, path)
