"""The riscv64 ``virt`` board: QEMU's memory map, its device table, and the wiring to the CPU loop.

Memory map (facts from QEMU's hw/riscv/virt.c), one line each in ``device_table()``:
    0x00001000  MROM: QEMU's reset vector words and OpenSBI's fw_dynamic_info
    0x00100000  sifive_test finisher
    0x02000000  CLINT (msip and mtimecmp per hart, mtime)
    0x0c000000  PLIC (context 2N = hart N's M-mode, 2N+1 = its S-mode)
    0x10000000  ns16550a UART, reg-shift 0, PLIC source 10
    0x10001000  eight virtio-mmio transports, 0x1000 apart, PLIC sources 1-8
    0x80000000  DRAM
plus HTIF tohost/fromhost when the kernel ELF defines those symbols.

Booting follows QEMU 7.2's hw/riscv/boot.c: ``-bios FILE`` (an ELF by its
addresses, or a raw image at DRAM base) and ``-kernel`` (an ELF by its
addresses, or a raw image at the next 2 MiB boundary after the firmware, so
0x80200000 after OpenSBI).  The device tree (kvmpy.boards.riscv_fdt) goes at
the highest 2 MiB-aligned address below the end of RAM it fits under, and every
hart starts with a0 = its hartid, a1 = the DTB, a2 = fw_dynamic_info in the MROM.

Harts (``-smp N``): each has its own engine (kvmpy.boards.riscv_hart) and they
take turns on the one CPU thread, round-robin, ``SLICE`` retired instructions
each (deterministic under -icount).  A hart waiting in WFI gives its turn to one
that can run; when none can, time skips (or, in real time, passes) to the
earliest timer deadline of any hart.  A hart's LR reservation does not survive
its turn: another hart may have stored to the address meanwhile, so the SC fails.
One hart runs exactly as before, without the scheduler.

The UART talks to a ``kvmpy.devices.chardev`` backend, the same console layer
as the PC board's serial port.  The backend's reader thread only queues typed
bytes; the CPU thread hands them to the UART when it polls devices, so no
device state is touched from two threads.
"""

from __future__ import annotations

import logging
import os
import platform
import struct
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Callable, Protocol

from kvmpy.boards import riscv_virtio
from kvmpy.boards.riscv_fdt import VirtFdtParams, virt_fdt
from kvmpy.boards.riscv_hart import Hart, SharedMemory
from kvmpy.boards.riscv_virtio import CpuThreadLines, TcgRam
from kvmpy.devices.bus import Bus
from kvmpy.devices.chardev import CharBackend, FileBackend, NullBackend
from kvmpy.devices.riscv import clint as clint_mod
from kvmpy.devices.riscv import plic as plic_mod
from kvmpy.devices.riscv import sifive_test
from kvmpy.devices.riscv.clint import Clint
from kvmpy.devices.riscv.htif import Htif
from kvmpy.devices.riscv.mrom import Mrom
from kvmpy.devices.riscv.plic import Plic
from kvmpy.devices.riscv.sifive_test import SifiveTest
from kvmpy.devices.serial import Uart16550
from kvmpy.devices.virtio.device import VirtioDevice
from kvmpy.devices.virtio.mmio import VirtioMmio
from kvmpy.loader.elf import ElfImage
from kvmpy.loader.errors import LoaderError
from kvmpy.tcg.errors import HartYield, MachineExit, TcgUserError
from kvmpy.tcg.target.riscv.cpu import (ISA_STRING, MEIP, MMU_TYPE, MSIP, MTIP, NO_DEADLINE, NS_PER_TICK, SEIP, STIP,
                                       RiscvCpu)
from kvmpy.tcg.target.riscv.translate import INSTRET, PC

log = logging.getLogger(__name__)

# The TCG tier when none is asked for (-accel tcg,tier=...): machine code on x86-64 hosts,
# where it passes every differential test the Python tier does; generated Python elsewhere.
DEFAULT_TIER = "native" if platform.machine() in ("x86_64", "AMD64") else "py"
SIFIVE_TEST_BASE = 0x100000
CLINT_BASE = 0x2000000
PLIC_BASE = 0xC000000
UART_BASE = 0x10000000
UART_SIZE = 0x100
UART_IRQ = 10
DRAM_BASE = 0x80000000
MROM_BASE = 0x1000
MROM_SIZE = 0xF000
PLATFORM_BUS = (0x4000000, 0x2000000)   # QEMU's dynamic sysbus window: described, empty
UART_CLOCK_HZ = 3686400
TIMEBASE_HZ = 1_000_000_000 // NS_PER_TICK   # CLINT mtime frequency in the device tree: 10 MHz
KERNEL_ALIGN = 2 << 20                  # a raw -kernel goes at the next 2 MiB boundary after the firmware
FDT_ALIGN = 2 << 20
FDT_LIMIT = 3 << 30                     # QEMU keeps the DTB below 3 GiB for 32-bit kernels
RNG_SEED_BYTES = 32
FW_DYNAMIC_INFO_MAGIC = 0x4942534F      # "OSBI"
FW_DYNAMIC_INFO_VERSION = 2
FW_DYNAMIC_NEXT_MODE_S = 1
RESET_VEC_BYTES = 40                    # six instructions and two dwords; fw_dynamic_info follows
INPUT_QUEUE_LIMIT = 1 << 16     # bytes typed ahead of the guest; more are refused
IDLE_WAIT = 0.05                # seconds a WFI waits for console input before looking again
MAX_HARTS = 8                   # -smp limit: every hart carries a whole TCG engine (QEMU's virt allows 512)
SLICE = 10_000                  # retired instructions a hart runs before the next one's turn


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


@dataclass(frozen=True)
class BootImage:
    """One file to load: an ELF (copied by its physical addresses) or a raw image."""

    path: Path | str
    elf: ElfImage | None = None
    raw: bytes = b""


@dataclass(frozen=True)
class BootSpec:
    """What the board boots: ``-bios``, ``-kernel`` and ``-append``."""

    kernel: BootImage | None
    firmware: BootImage | None = None
    bootargs: str = ""


@dataclass(frozen=True)
class BootInfo:
    """Where booting put things (what the hart finds in a0/a1/a2 and pc)."""

    start: int
    next_addr: int        # the next stage's address given to fw_dynamic (0 without -kernel)
    fdt_addr: int
    fdt_size: int


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
                 trace_flags: set[str] | frozenset[str] = frozenset(), ns_per_insn: int | None = None,
                 tier: str = DEFAULT_TIER, native_eager: bool = False, harts: int = 1) -> None:
        """``ns_per_insn`` None: mtime is real time; a number: each retired instruction is that many
        ns of mtime (``-icount shift=N`` gives 2**N), so runs are deterministic.
        ``tier``: the TCG backend, ``py`` (generated Python) or ``native`` (x86-64 code for hot
        code where it can); ``native_eager``: every TB to machine code at once (for tests).
        ``harts``: how many (``-smp``), 1 to ``MAX_HARTS``."""
        if not 1 <= harts <= MAX_HARTS:
            raise TcgUserError(f"Invalid SMP CPUs {harts}. The max CPUs supported by machine 'virt' "
                               f"(kvmpy) is {MAX_HARTS}")
        self.console = console if console is not None else NullBackend()
        self.trace = trace
        self.trace_flags = set(trace_flags)
        self.bus = Bus("mmio")
        tracer = self._trace if trace is not None else None
        shared = SharedMemory(DRAM_BASE, bytearray(memory), set(), self.bus)
        smp = harts > 1
        self.harts = [Hart(i, shared, ns_per_insn, tier, native_eager, self.trace_flags, tracer,
                           self._mark_code_page if smp else None) for i in range(harts)]
        self.current = hart0 = self.harts[0]
        # Hart 0's engine under the names one-hart code and tests know.
        self.mem, self.cpu, self.cache, self.loop = hart0.mem, hart0.cpu, hart0.cache, hart0.loop
        self.translator, self.native = hart0.translator, hart0.native
        self._mtip = [False] * harts
        self.plic = Plic([out for h in self.harts for out in (
            lambda lv, c=h.cpu: c.set_hw_irq(MEIP, lv), lambda lv, c=h.cpu: c.set_hw_irq(SEIP, lv))])
        self.clint = Clint(lambda: self.current.cpu.mtime, self._set_time,
                           [lambda lv, c=h.cpu: c.set_hw_irq(MSIP, lv) for h in self.harts],
                           [lambda lv, i=i: self._set_mtip(i, lv) for i in range(harts)])
        self.uart = Uart16550(output=self.console.write, irq=self.plic.line(UART_IRQ))
        self.mrom = Mrom(MROM_SIZE)
        self.ram = TcgRam(self.mem)   # guest RAM as the virtio core sees it
        self.lines = CpuThreadLines(self.ram.sync)   # virtio interrupts raised on device threads (net receive)
        self.virtio = [VirtioMmio(f"virtio-mmio@{riscv_virtio.VIRTIO_BASE + riscv_virtio.VIRTIO_SIZE * i:x}",
                                  self.lines.line(self.plic.line(riscv_virtio.VIRTIO_IRQ + i).set_level),
                                  after_io=self.ram.sync)
                       for i in range(riscv_virtio.VIRTIO_COUNT)]
        self.boot_spec: BootSpec | None = None
        self.boot_info: BootInfo | None = None
        self.devices = self.device_table()
        for slot in self.devices:
            self.bus.map(slot.base, slot.size, slot.device, slot.name)
        self.htif: Htif | None = None
        # Null and file backends never deliver input: nothing to poll, and WFI cannot wait for it.
        self.interactive = not isinstance(self.console, (NullBackend, FileBackend))
        self.input = ConsoleInput()
        self._console_started = False
        self._slice_start = 0
        for h in self.harts:
            h.mem.on_code_write = self._code_written
            h.cpu.poll_devices = self._poll_smp if smp else self._poll
            h.cpu.idle = self._idle_smp if smp else self._idle
            h.cpu.follow_clock(hart0.cpu)

    def device_table(self) -> tuple[DeviceSlot, ...]:
        """Every MMIO device of the board; reset walks this table, so none can be forgotten."""
        return (
            DeviceSlot("mrom", MROM_BASE, MROM_SIZE, self.mrom),
            DeviceSlot("sifive_test", SIFIVE_TEST_BASE, sifive_test.SIZE, SifiveTest()),
            DeviceSlot("clint", CLINT_BASE, clint_mod.SIZE, self.clint),
            DeviceSlot("plic", PLIC_BASE, plic_mod.SIZE, self.plic),
            DeviceSlot("uart0", UART_BASE, UART_SIZE, self.uart),
            *(DeviceSlot(t.name, riscv_virtio.VIRTIO_BASE + riscv_virtio.VIRTIO_SIZE * i, riscv_virtio.VIRTIO_SIZE, t)
              for i, t in enumerate(self.virtio)),
        )

    def plug_virtio(self, device: VirtioDevice) -> VirtioMmio:
        """Give ``device`` the highest free virtio-mmio transport, as QEMU's virt does (before booting)."""
        for t in reversed(self.virtio):
            if t.device is None:
                t.plug(device, self.ram.memory)
                return t
        raise TcgUserError(f"No 'virtio-bus' bus found for device '{device.name}'")

    def close(self) -> None:
        """Release the devices' host resources (images, threads)."""
        for t in self.virtio:
            t.close()

    # ---- loading ---------------------------------------------------------
    def device_tree(self, bootargs: str = "", rng_seed: bytes | None = None) -> bytes:
        """The DTB that describes this board (QEMU 7.2's ``virt`` tree for the devices kvmpy has)."""
        return virt_fdt(VirtFdtParams(
            memory_base=DRAM_BASE, memory_size=self.mem.ram_size, isa=ISA_STRING, mmu_type=MMU_TYPE,
            timebase_hz=TIMEBASE_HZ, clint=(CLINT_BASE, clint_mod.SIZE), plic=(PLIC_BASE, plic_mod.SIZE),
            plic_ndev=plic_mod.NUM_SOURCES, uart=(UART_BASE, UART_SIZE), uart_irq=UART_IRQ,
            uart_clock_hz=UART_CLOCK_HZ, test=(SIFIVE_TEST_BASE, sifive_test.SIZE), platform_bus=PLATFORM_BUS,
            rng_seed=os.urandom(RNG_SEED_BYTES) if rng_seed is None else rng_seed, bootargs=bootargs,
            hartid=self.cpu.hartid, harts=len(self.harts),
            virtio=tuple((riscv_virtio.VIRTIO_BASE + riscv_virtio.VIRTIO_SIZE * i, riscv_virtio.VIRTIO_SIZE,
                          riscv_virtio.VIRTIO_IRQ + i) for i in range(riscv_virtio.VIRTIO_COUNT))))

    def load(self, img: ElfImage, path: Path | str) -> None:
        """Boot an ELF program without firmware (``-bios none``)."""
        self.boot(BootSpec(kernel=BootImage(path, elf=img)))

    def boot(self, spec: BootSpec) -> BootInfo:
        """Load firmware, kernel and device tree as QEMU's virt does, and point the hart at the start.

        Without firmware an ELF kernel starts at its entry (kvmpy's bare-metal
        programs; QEMU jumps to DRAM base, where they begin).
        """
        loaded: list[tuple[int, int, str]] = []
        start = fw_end = DRAM_BASE
        if spec.firmware is not None:
            fw_end = self._load_image(spec.firmware, DRAM_BASE, loaded)
        next_addr = 0
        kernel = spec.kernel
        if kernel is not None:
            if kernel.elf is not None:
                self._load_image(kernel, 0, loaded)
                next_addr = kernel.elf.low
                if spec.firmware is None:
                    start = kernel.elf.entry
            else:
                next_addr = -(-fw_end // KERNEL_ALIGN) * KERNEL_ALIGN
                self._load_image(kernel, next_addr, loaded)
        dtb = self.device_tree(spec.bootargs if kernel is not None else "")
        top = min(DRAM_BASE + self.mem.ram_size, FDT_LIMIT) if DRAM_BASE < FDT_LIMIT \
            else DRAM_BASE + self.mem.ram_size
        fdt_addr = (top - len(dtb)) // FDT_ALIGN * FDT_ALIGN
        try:
            self._place(fdt_addr, dtb, "the device tree", loaded)
        except TcgUserError:
            if spec.firmware is not None:
                raise
            # A bare-metal program in a RAM too small for both: it runs without a DTB (a1 = 0),
            # as kvmpy always ran them; QEMU refuses to start instead.
            log.debug("no room for the device tree below %#x", top)
            fdt_addr, dtb = 0, b""
        self.mrom.load(self._mrom_image(start, fdt_addr, next_addr))
        for hart in self.harts:                       # what QEMU's reset vector leaves in each hart
            R = hart.cpu.R
            R[PC] = start
            R[10] = hart.cpu.hartid                   # a0 = hartid
            R[11] = fdt_addr                          # a1 = device tree
            R[12] = MROM_BASE + RESET_VEC_BYTES      # a2 = fw_dynamic_info
        self.boot_spec = spec
        self.boot_info = BootInfo(start, next_addr, fdt_addr, len(dtb))
        if len(self.harts) == 1:
            self._poll()
        else:
            self._update_lines()
        if kernel is not None and kernel.elf is not None and spec.firmware is None:
            self._attach_htif(kernel)
        return self.boot_info

    @staticmethod
    def _mrom_image(start: int, fdt_addr: int, next_addr: int) -> bytes:
        """QEMU's reset vector (it loads a1 and the start address from the two dwords after it)
        followed by OpenSBI's fw_dynamic_info (magic, version, next_addr, next_mode, options, boot_hart)."""
        words = (0x00000297,     # auipc t0, 0
                 0x02828613,     # addi  a2, t0, 40     (fw_dynamic_info)
                 0xF1402573,     # csrr  a0, mhartid
                 0x0202B583,     # ld    a1, 32(t0)     (device tree)
                 0x0182B283,     # ld    t0, 24(t0)     (start address)
                 0x00028067)     # jr    t0
        vec = struct.pack("<6I2Q", *words, start, fdt_addr)
        info = struct.pack("<6Q", FW_DYNAMIC_INFO_MAGIC, FW_DYNAMIC_INFO_VERSION, next_addr,
                           FW_DYNAMIC_NEXT_MODE_S, 0, 0)
        return vec + info

    def _attach_htif(self, kernel: BootImage) -> None:
        assert kernel.elf is not None
        try:
            symbols = kernel.elf.symbols
        except LoaderError as exc:
            raise TcgUserError(str(exc)) from None
        tohost = symbols.get("tohost")
        if tohost is not None and self.mem.in_ram(tohost, 8):
            self.htif = Htif(self.mem, tohost, symbols.get("fromhost"), self.console.write,
                             [h.mem for h in self.harts[1:]])

    def _load_image(self, image: BootImage, raw_addr: int, loaded: list[tuple[int, int, str]]) -> int:
        """Copy an ELF by its segments, or a raw image at ``raw_addr``; return the end address."""
        if image.elf is None:
            self._place(raw_addr, image.raw, str(image.path), loaded)
            return raw_addr + len(image.raw)
        for seg in image.elf.segments:
            self._check_fits(seg.paddr, seg.memsz, str(image.path))
            off = seg.paddr - DRAM_BASE
            ram = self.mem.ram
            ram[off:off + seg.filesz] = image.elf.segment_bytes(seg)
            ram[off + seg.filesz:off + seg.memsz] = bytes(seg.memsz - seg.filesz)
            self._claim(seg.paddr, seg.memsz, str(image.path), loaded)
        return image.elf.high

    def _place(self, addr: int, data: bytes, what: str, loaded: list[tuple[int, int, str]]) -> None:
        self._check_fits(addr, len(data), what)
        self._claim(addr, len(data), what, loaded)
        off = addr - DRAM_BASE
        self.mem.ram[off:off + len(data)] = data

    @staticmethod
    def _claim(addr: int, size: int, what: str, loaded: list[tuple[int, int, str]]) -> None:
        """Two images in the same bytes is an error, as QEMU's "rom: requested regions overlap"."""
        for base, length, other in loaded:
            if addr < base + length and base < addr + size:
                raise TcgUserError(f"{what} at {addr:#x}+{size:#x} overlaps {other} at {base:#x}+{length:#x}")
        if size:
            loaded.append((addr, size, what))

    def _check_fits(self, addr: int, size: int, what: str) -> None:
        """Every image must lie in RAM; the error names the RAM size that would be needed."""
        off = addr - DRAM_BASE
        if off < 0:
            raise TcgUserError(f"{what}: segment at {addr:#x} is below RAM (RAM starts at {DRAM_BASE:#x})")
        if off + size > self.mem.ram_size:
            need = (addr + size - DRAM_BASE + (1 << 20) - 1) >> 20
            raise TcgUserError(
                f"{what}: segment at {addr:#x}+{size:#x} does not fit in "
                f"{self.mem.ram_size >> 20} MiB of RAM; use -m {need}M or more")

    # ---- run ---------------------------------------------------------------
    def run(self) -> MachineExit:
        """Run until the guest (or the console's C-a x) ends the machine; the exit says how."""
        if not self._console_started:
            self._console_started = True
            self.console.start(self.input.receive, self.input.request_quit)
        try:
            if len(self.harts) == 1:
                self.loop.run()
            else:
                self._run_harts()
        except MachineExit as ex:
            return ex
        raise AssertionError("unreachable: the CPU loop only ends with MachineExit")

    def _run_harts(self) -> None:
        """Round-robin: each hart runs until its slice ends or it waits while another can run."""
        harts = self.harts
        n = len(harts)
        while True:
            hart = self.current
            self._slice_start = hart.cpu.R[INSTRET]
            try:
                hart.loop.run()
            except HartYield:
                pass
            # Other harts run now and may store to the reserved address: the SC must fail.
            hart.cpu.reservation = None
            nxt = hart
            for k in range(1, n + 1):
                cand = harts[(hart.hartid + k) % n]
                if cand.cpu.runnable:
                    nxt = cand
                    break
            if nxt is not hart:
                nxt.cpu.follow_clock(hart.cpu)
                self.current = nxt

    # ---- callbacks ---------------------------------------------------------
    def _code_written(self, page: int) -> None:
        for hart in self.harts:
            hart.code_written(page)
        self.mem.code_pages.discard(page)

    def _mark_code_page(self, page: int) -> None:
        """A hart translated code from ``page``: no hart may keep a write-TLB entry onto it."""
        code_pages = self.mem.code_pages
        if page in code_pages:
            return
        code_pages.add(page)
        for hart in self.harts:
            hart.mem.drop_write_page(page)

    def _set_time(self, value: int) -> None:
        self.current.cpu.set_mtime(value)

    def _set_mtip(self, hart: int, level: bool) -> None:
        self._mtip[hart] = level
        self.harts[hart].cpu.set_hw_irq(MTIP, level)

    def _poll(self) -> None:
        """Devices and timers between TBs, for one hart."""
        cpu = self.cpu
        mtip = cpu.mtime >= self.clint.mtimecmp[0]
        if mtip != self._mtip[0]:
            self._set_mtip(0, mtip)
        if cpu.sstc_enabled:
            cpu.update_sstc()
        if self.interactive and self.input.ready.is_set():   # no lock, no syscall: cheap
            self._take_input()
        if self.lines.pending:                              # a device thread raised an interrupt
            self.lines.apply()

    def _update_lines(self) -> None:
        """Every hart's timer lines at the running hart's mtime, console input, device interrupts."""
        now = self.current.cpu.mtime
        mtimecmp, mtips = self.clint.mtimecmp, self._mtip
        for i, hart in enumerate(self.harts):
            mtip = now >= mtimecmp[i]
            if mtip != mtips[i]:
                self._set_mtip(i, mtip)
            if hart.cpu.sstc_enabled:
                hart.cpu.update_sstc(now)
        if self.interactive and self.input.ready.is_set():
            self._take_input()
        if self.lines.pending:
            self.lines.apply()

    def _poll_smp(self) -> None:
        """Devices and timers between TBs, for several harts; ends the running hart's turn when its
        slice is up, or when it executed WFI and another hart can run."""
        self._update_lines()
        current = self.current
        cpu = current.cpu
        ran = cpu.R[INSTRET] - self._slice_start
        if not 0 <= ran < SLICE:          # (< 0: the guest wrote minstret)
            raise HartYield
        if cpu.halted and ran and any(h is not current and h.cpu.runnable for h in self.harts):
            # A WFI that an interrupt pending in mie ends at once (interrupts off globally: a guest
            # polling a flag around WFI, as OpenSBI's parked harts do) completes, but the hart waits
            # for its next turn; a WFI with nothing pending keeps the hart halted until there is.
            # (Not at the start of a turn: a hart just woken runs at least until its next WFI.)
            if cpu.runnable:
                cpu.halted = False
            raise HartYield

    def _take_input(self) -> bool:
        """Hand queued console bytes to the UART (CPU thread only); True if there were any."""
        if self.input.quit_requested:
            raise MachineExit(0, "console: C-a x")
        data = self.input.take()
        if data:
            self.uart.receive(data)
        return bool(data)

    @staticmethod
    def _deadlines(cpu: RiscvCpu, mtimecmp: int) -> list[int]:
        """The mtime values at which a timer would wake ``cpu`` from WFI."""
        deadlines = []
        if cpu.mie & MTIP and mtimecmp != NO_DEADLINE and not cpu.hw_ip & MTIP:
            deadlines.append(mtimecmp)
        if cpu.mie & STIP and cpu.sstc_enabled and cpu.stimecmp != NO_DEADLINE and not cpu.hw_ip & STIP:
            deadlines.append(cpu.stimecmp)                # Sstc: S-mode's own timer
        return deadlines

    def _idle(self) -> bool:
        """WFI with nothing pending: let time pass until something can happen."""
        return self._wait(self.cpu, self._deadlines(self.cpu, self.clint.mtimecmp[0]), self._poll)

    def _idle_smp(self) -> bool:
        """WFI with nothing pending on the running hart: another hart's turn if one can run,
        else let time pass until the earliest timer of any hart."""
        current = self.current
        if any(h is not current and h.cpu.runnable for h in self.harts):
            raise HartYield
        deadlines = [d for h, cmp in zip(self.harts, self.clint.mtimecmp) for d in self._deadlines(h.cpu, cmp)]
        return self._wait(current.cpu, deadlines, self._update_lines)

    def _wait(self, cpu: RiscvCpu, deadlines: list[int], poll: Callable[[], None]) -> bool:
        """Until the first deadline (mtime) or console input; False if nothing can ever come."""
        if deadlines:
            deadline = min(deadlines)
            if cpu.ns_per_insn is not None:               # virtual time: skip to the deadline
                if cpu.mtime < deadline:
                    cpu.time_skew += deadline - cpu.mtime
            else:                                         # real time: wait for it (or for input)
                wait = min(cpu.seconds_until(deadline), IDLE_WAIT)
                if self.interactive:
                    if self.input.ready.wait(wait):
                        self._take_input()
                elif wait > 0:
                    time.sleep(wait)
            poll()
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

    def reset(self) -> None:
        """Guest-requested reset: fresh CPU, devices and RAM contents, then boot the same images again."""
        assert self.boot_spec is not None, "reset before boot"
        self.mem.code_pages.clear()
        self.mem.ram[:] = bytes(len(self.mem.ram))
        for hart in self.harts:
            hart.reset()
            hart.cpu.follow_clock(self.cpu)
        self.current = self.harts[0]
        for slot in self.devices:
            slot.device.reset()
        self.boot(self.boot_spec)
