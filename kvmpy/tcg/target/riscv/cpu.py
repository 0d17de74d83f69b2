"""The RV64 hart: privilege, CSRs, trap and interrupt entry, and the helpers that
translated code calls (CSR access, xRET, WFI, SFENCE.VMA, atomics, ECALL...).

Registers and the pc live in the state list ``R`` shared with generated code;
everything else is plain attributes here.  Time: ``mtime`` ticks at 10 MHz
(``NS_PER_TICK``).  With ``ns_per_insn`` None it follows the host's monotonic
clock (real time, as QEMU); with a number it is virtual and counts retired
instructions, each that many nanoseconds, plus whatever WFI skips while waiting
for the timer, which makes runs deterministic (QEMU's ``-icount``).  mcycle and
minstret are one counter; a CSR write to it replaces the writing instruction's
own increment (the next instruction reads the written value), and does not move mtime.
The harts of one machine share mtime: a board running several hands the clock on
with ``follow_clock`` when it switches from one to the next.
"""

from __future__ import annotations

import logging
import time
from typing import Callable

from kvmpy.tcg.errors import GuestTrap
from kvmpy.tcg.ir import MASK64
from kvmpy.tcg.target.riscv.fpu import (farith, fclass, fcompare, fcvt_float, fcvt_from_int, fcvt_to_int,
                                       ffma, fminmax, fsgnj_s)
from kvmpy.tcg.target.riscv.mmu import PRV_M, PRV_S, PRV_U, RiscvMmu
from kvmpy.tcg.target.riscv.translate import INSTRET, N_SLOTS, PC
from kvmpy.tcg.target.riscv.triggers import CSRS as TRIGGER_CSRS, LOAD, STORE, TriggerModule
from kvmpy.tcg.softmmu import EXEC, READ, WRITE, SoftMmu

log = logging.getLogger(__name__)

# mstatus bits
SIE, MIE, SPIE, MPIE, SPP = 1 << 1, 1 << 3, 1 << 5, 1 << 7, 1 << 8
MPP_SHIFT = 11
MPP = 3 << MPP_SHIFT
MPRV, SUM, MXR, TVM, TW, TSR = 1 << 17, 1 << 18, 1 << 19, 1 << 20, 1 << 21, 1 << 22
FS_SHIFT = 13
FS = 3 << FS_SHIFT                # floating-point unit state: Off, Initial, Clean, Dirty
UXL_SXL = (2 << 32) | (2 << 34)
MSTATUS_WMASK = SIE | MIE | SPIE | MPIE | SPP | MPP | MPRV | SUM | MXR | TVM | TW | TSR | FS
SSTATUS_MASK = SIE | SPIE | SPP | SUM | MXR | FS | (3 << 32) | (1 << 63)

# menvcfg bits: FIOM (kept, no effect on a single in-order hart) and Sstc's STCE
ENVCFG_FIOM = 1
MENVCFG_STCE = 1 << 63
MENVCFG_WMASK = ENVCFG_FIOM | MENVCFG_STCE
COUNTEREN_TM = 1 << 1
CSR_STIMECMP = 0x14D
NO_DEADLINE = (1 << 64) - 1

# interrupt bits
SSIP, MSIP, STIP, MTIP, SEIP, MEIP = 1 << 1, 1 << 3, 1 << 5, 1 << 7, 1 << 9, 1 << 11
S_INTS = SSIP | STIP | SEIP
ALL_INTS = S_INTS | MSIP | MTIP | MEIP
IRQ_PRIORITY = (11, 3, 7, 9, 1, 5)

MISA = (2 << 62) | sum(1 << (ord(c) - ord("A")) for c in "ACDFIMSU")
# The device tree's riscv,isa for this hart: exactly what the translator implements
# (Zihintpause's PAUSE is a FENCE hint, which runs as a FENCE); Sv39 is the only paging mode.
ISA_STRING = "rv64imafdc_zicsr_zifencei_zihintpause_sstc"
MMU_TYPE = "riscv,sv39"
NS_PER_TICK = 100                 # mtime and the time CSR run at 10 MHz
DEFAULT_NS_PER_INSN = NS_PER_TICK  # deterministic time: one tick per retired instruction
DELEGABLE_EXC = 0xB3FF        # everything but ecall-from-M and reserved causes

CAUSE_ILLEGAL = 2
CAUSE_BREAKPOINT = 3
CAUSE_LOAD_MISALIGNED = 4
CAUSE_STORE_MISALIGNED = 6
CAUSE_ECALL_U = 8


class RiscvCpu:
    pc_slot = PC

    def __init__(self, mem: SoftMmu, hartid: int = 0, ns_per_insn: int | None = DEFAULT_NS_PER_INSN) -> None:
        self.R = [0] * N_SLOTS
        self.mmu_mem = mem
        self.mmu = RiscvMmu(self)
        self.hartid = hartid
        self.ns_per_insn = ns_per_insn   # None: mtime is real time
        self.time_skew = 0            # mtime = the clock's ticks + time_skew
        self.epoch_ns = time.monotonic_ns()
        self.on_context_change: Callable[[], None] = lambda: None
        self.on_tlb_flush: Callable[[bool], None] = lambda all_contexts: None
        self.on_breakpoints: Callable[[frozenset[int]], None] = lambda pcs: None
        self.poll_devices: Callable[[], None] = lambda: None
        self.idle: Callable[[], bool] = lambda: False     # board waits for an event
        self.trace_int: Callable[[str], None] | None = None
        self.reset()

    def reset(self) -> None:
        self.R[:] = [0] * N_SLOTS
        if self.ns_per_insn is None:
            self.time_skew = 0
            self.epoch_ns = time.monotonic_ns()      # real time: mtime starts from 0 at power-on
        self.priv = PRV_M
        self.mstatus = UXL_SXL
        self.medeleg = self.mideleg = 0
        self.mie = 0
        self.sw_ip = 0        # software-writable mip bits
        self.hw_ip = 0        # lines driven by CLINT/PLIC
        self.mtvec = self.stvec = 0
        self.mscratch = self.sscratch = 0
        self.mepc = self.sepc = 0
        self.mcause = self.scause = 0
        self.mtval = self.stval = 0
        self.mcounteren = self.scounteren = 0
        self.menvcfg = self.senvcfg = 0
        self.stimecmp = 0
        self.mcountinhibit = 0
        self.satp = 0
        self.pmpcfg = [0, 0]
        self.pmpaddr = [0] * 16
        self.pmp_active = False
        self.triggers = TriggerModule()
        self._triggers_changed()
        self.fflags = self.frm = 0
        self.reservation: tuple[int, int] | None = None
        self.halted = False
        self.irq_pending = False
        self.ctx: tuple[int, int] = (PRV_M, 0)

    # ---- derived state -------------------------------------------------
    @property
    def mip(self) -> int:
        return self.sw_ip | self.hw_ip

    @property
    def mtime(self) -> int:
        if self.ns_per_insn is None:
            ticks = (time.monotonic_ns() - self.epoch_ns) // NS_PER_TICK
        elif self.ns_per_insn == NS_PER_TICK:
            ticks = self.R[INSTRET]
        else:
            ticks = self.R[INSTRET] * self.ns_per_insn // NS_PER_TICK
        return (ticks + self.time_skew) & MASK64

    @property
    def sstc_enabled(self) -> bool:
        return bool(self.menvcfg & MENVCFG_STCE)

    def update_sstc(self, now: int | None = None) -> None:
        """Sstc: with menvcfg.STCE set, mip.STIP is (time >= stimecmp) and software cannot write it.
        ``now``: the machine's mtime when this hart is not the one running (its own clock lags)."""
        self.set_hw_irq(STIP, self.sstc_enabled and (self.mtime if now is None else now) >= self.stimecmp)

    def follow_clock(self, other: "RiscvCpu") -> None:
        """Make this hart's mtime the one ``other`` reads now (the board runs its harts in turn)."""
        if self.ns_per_insn is None:
            self.epoch_ns, self.time_skew = other.epoch_ns, other.time_skew
        else:
            self.set_mtime(other.mtime)

    @property
    def runnable(self) -> bool:
        """Not waiting in WFI, or waiting with an interrupt pending that ends the wait."""
        return not self.halted or bool((self.sw_ip | self.hw_ip) & self.mie)

    def set_mtime(self, value: int) -> None:
        """A CLINT write to mtime: the clock keeps running from ``value``."""
        self.time_skew += value - self.mtime

    def seconds_until(self, mtime: int) -> float:
        """Real seconds until mtime reaches ``mtime`` (0 if it has); real-time clock only."""
        return max(mtime - self.mtime, 0) * NS_PER_TICK / 1e9

    def _update_irq(self) -> None:
        self.irq_pending = bool((self.sw_ip | self.hw_ip) & self.mie)

    def set_hw_irq(self, bit: int, level: bool) -> None:
        if level:
            self.hw_ip |= bit
        else:
            self.hw_ip &= ~bit
        self._update_irq()

    def _context_changed(self) -> None:
        paged = self.priv != PRV_M and self.satp >> 60 != 0
        self.ctx = (self.priv, self.satp if paged else 0)
        self.mmu_mem.flush()
        self.on_context_change()

    def paged(self, ctx: tuple[int, int]) -> bool:
        return ctx[1] != 0

    def fetch_translate(self, pc: int) -> int:
        return self.mmu.translate(pc, EXEC)[0]

    def poll(self) -> None:
        self.poll_devices()

    # ---- traps and interrupts -----------------------------------------
    def enter_trap(self, trap: GuestTrap, interrupt: bool = False) -> None:
        cause, tval, pc = trap.cause, trap.tval & MASK64, trap.pc
        if self.trace_int is not None:
            self.trace_int(f"{'interrupt' if interrupt else 'exception'} cause={cause} "
                           f"tval={tval:#x} pc={pc:#x} priv={self.priv}")
        self.reservation = None
        deleg = self.mideleg if interrupt else self.medeleg
        xcause = cause | ((1 << 63) if interrupt else 0)
        st = self.mstatus
        if self.priv <= PRV_S and (deleg >> cause) & 1:
            self.scause, self.sepc, self.stval = xcause, pc, tval
            st = (st & ~(SPIE | SIE | SPP)) | (SPIE if st & SIE else 0) | (SPP if self.priv else 0)
            vec = self.stvec
            self.priv = PRV_S
        else:
            self.mcause, self.mepc, self.mtval = xcause, pc, tval
            st = (st & ~(MPIE | MIE | MPP)) | (MPIE if st & MIE else 0) | (self.priv << MPP_SHIFT)
            vec = self.mtvec
            self.priv = PRV_M
        self.mstatus = st
        base = vec & ~3
        self.R[PC] = base + 4 * cause if interrupt and vec & 1 else base
        self._context_changed()

    def take_interrupt(self) -> bool:
        pending = (self.sw_ip | self.hw_ip) & self.mie
        if not pending:
            return False
        m_on = self.priv < PRV_M or self.mstatus & MIE
        s_on = self.priv < PRV_S or (self.priv == PRV_S and self.mstatus & SIE)
        m_pend = pending & ~self.mideleg if m_on else 0
        s_pend = pending & self.mideleg if s_on else 0
        for bits in (m_pend, s_pend):
            if bits:
                for cause in IRQ_PRIORITY:
                    if bits >> cause & 1:
                        self.enter_trap(GuestTrap(cause, 0, self.R[PC]), interrupt=True)
                        return True
        return False

    def wait_for_interrupt(self) -> None:
        """WFI: return once an interrupt is pending in mip & mie (enabled or not globally)."""
        while True:
            self.poll_devices()
            if (self.sw_ip | self.hw_ip) & self.mie:
                break
            if not self.idle():
                break        # nothing can ever wake the hart; resume like a NOP-ish WFI
        self.halted = False

    # ---- CSRs ----------------------------------------------------------
    def _counter_ok(self, csr: int) -> bool:
        bit = 1 << (csr & 31)
        if self.priv < PRV_M and not self.mcounteren & bit:
            return False
        if self.priv < PRV_S and not self.scounteren & bit:
            return False
        return True

    def csr_read(self, csr: int) -> int:
        if csr == 0x300:
            return self._mstatus_sd()
        if csr == 0x100:
            return self._mstatus_sd() & SSTATUS_MASK
        if csr in (0x001, 0x002, 0x003):
            if not self.mstatus & FS:
                raise GuestTrap(CAUSE_ILLEGAL, 0)
            return (self.fflags, self.frm, self.frm << 5 | self.fflags)[csr - 1]
        if csr == 0x301:
            return MISA
        if csr == 0x302:
            return self.medeleg
        if csr == 0x303:
            return self.mideleg
        if csr == 0x304:
            return self.mie
        if csr == 0x104:
            return self.mie & self.mideleg
        if csr == 0x344:
            return self.mip
        if csr == 0x144:
            return self.mip & self.mideleg
        simple = {0x305: "mtvec", 0x105: "stvec", 0x340: "mscratch", 0x140: "sscratch",
                  0x341: "mepc", 0x141: "sepc", 0x342: "mcause", 0x142: "scause",
                  0x343: "mtval", 0x143: "stval", 0x306: "mcounteren", 0x106: "scounteren",
                  0x30A: "menvcfg", 0x10A: "senvcfg", 0x320: "mcountinhibit"}
        if csr in simple:
            return getattr(self, simple[csr])
        if csr == 0x180:
            if self.priv == PRV_S and self.mstatus & TVM:
                raise GuestTrap(CAUSE_ILLEGAL, 0)
            return self.satp
        if csr in (0xB00, 0xB02):
            return self.R[INSTRET]
        if csr in (0xC00, 0xC01, 0xC02):
            if not self._counter_ok(csr):
                raise GuestTrap(CAUSE_ILLEGAL, 0)
            return self.mtime if csr == 0xC01 else self.R[INSTRET]
        if 0xB03 <= csr <= 0xB1F or 0x323 <= csr <= 0x33F:
            return 0
        if 0xC03 <= csr <= 0xC1F:
            if not self._counter_ok(csr):
                raise GuestTrap(CAUSE_ILLEGAL, 0)
            return 0
        if csr == CSR_STIMECMP:
            self._check_sstc()
            return self.stimecmp
        if csr == 0xF14:
            return self.hartid
        if csr in (0xF11, 0xF12, 0xF13, 0xF15):
            return 0
        if csr in (0x3A0, 0x3A2):
            return self.pmpcfg[(csr - 0x3A0) // 2]
        if csr in TRIGGER_CSRS:
            return self.triggers.read(csr)
        if 0x3B0 <= csr <= 0x3BF:
            return self.pmpaddr[csr - 0x3B0]
        raise GuestTrap(CAUSE_ILLEGAL, 0)

    def _check_sstc(self) -> None:
        """stimecmp below M-mode needs mcounteren.TM and menvcfg.STCE (as QEMU 7.2's predicate)."""
        if self.priv < PRV_M and not (self.mcounteren & COUNTEREN_TM and self.sstc_enabled):
            raise GuestTrap(CAUSE_ILLEGAL, 0)

    def _mstatus_sd(self) -> int:
        return self.mstatus | (1 << 63 if self.mstatus & FS == FS else 0)

    def csr_write(self, csr: int, v: int) -> None:
        if csr == 0x300:
            old = self.mstatus
            self.mstatus = (old & ~MSTATUS_WMASK) | (v & MSTATUS_WMASK)
            if (self.mstatus >> MPP_SHIFT) & 3 == 2:          # reserved: keep the old MPP
                self.mstatus = (self.mstatus & ~MPP) | (old & MPP)
            self._context_changed()
        elif csr in (0x001, 0x002, 0x003):
            if not self.mstatus & FS:
                raise GuestTrap(CAUSE_ILLEGAL, 0)
            if csr == 0x001:
                self.fflags = v & 0x1F
            elif csr == 0x002:
                self.frm = v & 7
            else:
                self.fflags, self.frm = v & 0x1F, (v >> 5) & 7
            self.mstatus |= FS
        elif csr == 0x100:
            mask = SIE | SPIE | SPP | SUM | MXR | FS
            self.mstatus = (self.mstatus & ~mask) | (v & mask)
            self._context_changed()
        elif csr == 0x301:
            pass                      # misa is WARL; the extensions are fixed, so writes are ignored
        elif csr == 0x302:
            self.medeleg = v & DELEGABLE_EXC
        elif csr == 0x303:
            self.mideleg = v & S_INTS
        elif csr == 0x304:
            self.mie = v & ALL_INTS
        elif csr == 0x104:
            self.mie = (self.mie & ~self.mideleg) | (v & self.mideleg)
        elif csr == 0x344:
            m = S_INTS & ~STIP if self.sstc_enabled else S_INTS
            self.sw_ip = (self.sw_ip & ~m) | (v & m)
        elif csr == 0x144:
            m = SSIP & self.mideleg
            self.sw_ip = (self.sw_ip & ~m) | (v & m)
        elif csr in (0x305, 0x105):
            if v & 3 < 2:
                setattr(self, "mtvec" if csr == 0x305 else "stvec", v)
        elif csr in (0x341, 0x141):
            setattr(self, "mepc" if csr == 0x341 else "sepc", v & ~1)
        elif csr in (0x340, 0x140, 0x342, 0x142, 0x343, 0x143):
            name = {0x340: "mscratch", 0x140: "sscratch", 0x342: "mcause", 0x142: "scause",
                    0x343: "mtval", 0x143: "stval"}[csr]
            setattr(self, name, v)
        elif csr in (0x306, 0x106):
            setattr(self, "mcounteren" if csr == 0x306 else "scounteren", v & 0xFFFFFFFF)
        elif csr == 0x30A:
            self.menvcfg = v & MENVCFG_WMASK
            if self.sstc_enabled:
                self.sw_ip &= ~STIP               # STIP now follows stimecmp
            self.update_sstc()
        elif csr == 0x10A:
            self.senvcfg = v & ENVCFG_FIOM
        elif csr == CSR_STIMECMP:
            self._check_sstc()
            self.stimecmp = v
            self.update_sstc()
        elif csr == 0x320:
            pass                      # counters are never inhibited here
        elif csr == 0x180:
            if self.priv == PRV_S and self.mstatus & TVM:
                raise GuestTrap(CAUSE_ILLEGAL, 0)
            mode = v >> 60
            if mode in (0, 8):
                self.satp = v & ((0xF << 60) | (0xFFFF << 44) | ((1 << 44) - 1))
                self._context_changed()
        elif csr in (0xB00, 0xB02):
            self._write_instret(v)
        elif 0xB03 <= csr <= 0xB1F or 0x323 <= csr <= 0x33F:
            pass
        elif csr in (0x3A0, 0x3A2):
            i = (csr - 0x3A0) // 2
            old = self.pmpcfg[i]
            new = 0
            for k in range(8):
                b_old = (old >> (8 * k)) & 0xFF
                b_new = (v >> (8 * k)) & 0xFF
                if b_old & 0x80:
                    b_new = b_old                       # locked entries are frozen
                elif b_new & 3 == 2:
                    b_new &= ~3                         # W without R is reserved
                new |= b_new << (8 * k)
            self.pmpcfg[i] = new
            self._pmp_changed()
        elif csr in TRIGGER_CSRS:
            self.triggers.write(csr, v)
            self._triggers_changed()
        elif 0x3B0 <= csr <= 0x3BF:
            i = csr - 0x3B0
            cfg = (self.pmpcfg[i // 8] >> (8 * (i % 8))) & 0xFF
            if not cfg & 0x80:
                self.pmpaddr[i] = v & ((1 << 54) - 1)
                self._pmp_changed()
        else:
            raise GuestTrap(CAUSE_ILLEGAL, 0)
        self._update_irq()

    def _write_instret(self, v: int) -> None:
        """mcycle/minstret (one counter here) written by the current CSR instruction.

        The write replaces that instruction's own increment, as the Zicsr chapter
        of the unprivileged spec says: the next instruction reads exactly ``v``.
        Helpers run with ``R[INSTRET]`` counting the instructions retired before
        the current one, which the translated code adds after the helper returns,
        so the slot gets ``v - 1``.  mtime does not jump: it is a separate clock.
        """
        old_time = self.mtime
        self.R[INSTRET] = (v - 1) & MASK64
        self.time_skew += old_time - self.mtime

    def _triggers_changed(self) -> None:
        """Tell the engine which pcs and data addresses the armed triggers watch."""
        self.on_breakpoints(self.triggers.execute_addresses())
        self.mmu_mem.set_watchpoints(self.triggers.data_ranges(), self._check_watch)

    def _check_watch(self, vaddr: int, size: int, access: int) -> None:
        """The softmmu's watchpoint check before an access (the caller sets pc and back)."""
        if self.triggers.fires_data(vaddr, size, STORE if access == WRITE else LOAD, self.priv):
            raise GuestTrap(CAUSE_BREAKPOINT, 0)

    def _pmp_changed(self) -> None:
        self.pmp_active = any(((c >> (8 * k)) >> 3) & 3 for c in self.pmpcfg for k in range(8))
        self.mmu_mem.flush()
        self.on_tlb_flush(True)

    # ---- helpers called by translated code -----------------------------
    def h_csr(self, kind: int, csr: int, src: int, writes: int, reads: int, _pc: int,
              pc: int, back: int) -> int:
        try:
            if (csr >> 8) & 3 > self.priv:
                raise GuestTrap(CAUSE_ILLEGAL, 0)
            if writes and csr >> 10 == 3:
                raise GuestTrap(CAUSE_ILLEGAL, 0)
            old = self.csr_read(csr) if reads or kind != 1 else 0
            if writes:
                new = src if kind == 1 else (old | src if kind == 2 else old & ~src)
                self.csr_write(csr, new & MASK64)
            return old & MASK64
        except GuestTrap as e:
            raise GuestTrap(e.cause, self._insn_bits(pc), pc, back) from None

    def _insn_bits(self, pc: int) -> int:
        try:
            lo, _ = self.mmu_mem.fetch(pc, 2)
            if lo & 3 != 3:
                return lo
            hi, _ = self.mmu_mem.fetch(pc + 2, 2)
            return lo | hi << 16
        except GuestTrap:
            return 0

    def h_fp(self, writes_f: int, pc: int, back: int) -> None:
        """Every F/D instruction: illegal while mstatus.FS is Off; FP writes make it Dirty."""
        if not self.mstatus & FS:
            raise GuestTrap(CAUSE_ILLEGAL, self._insn_bits(pc), pc, back)
        if writes_f:
            self.mstatus |= FS

    @staticmethod
    def h_fsgnj_s(kind: int, a: int, b: int) -> int:
        return fsgnj_s(kind, a, b)

    @staticmethod
    def h_fclass(v: int, double: int) -> int:
        return fclass(v, double)

    def _raise_flags(self, flags: int) -> None:
        if flags:
            self.fflags |= flags
            self.mstatus |= FS                     # fcsr changed: FS Dirty

    def h_fcmp(self, op: int, a: int, b: int, double: int) -> int:
        r, flags = fcompare(op, a, b, double)
        self._raise_flags(flags)
        return r

    def _rm(self, rm: int, pc: int, back: int) -> int:
        """The rounding mode an instruction uses: rm 7 takes frm; reserved modes are illegal."""
        if rm == 7:
            rm = self.frm
        if rm > 4:
            raise GuestTrap(CAUSE_ILLEGAL, self._insn_bits(pc), pc, back)
        return rm

    def h_farith(self, op: int, a: int, b: int, double: int, rm: int, pc: int, back: int) -> int:
        """FADD/FSUB/FMUL/FDIV/FSQRT."""
        r, flags = farith(op, a, b, double, self._rm(rm, pc, back))
        self._raise_flags(flags)
        return r

    def h_ffma(self, kind: int, a: int, b: int, c: int, double: int, rm: int, pc: int, back: int) -> int:
        """FMADD (kind 0), FMSUB (1), FNMSUB (2), FNMADD (3)."""
        r, flags = ffma(kind >> 1, kind & 1, a, b, c, double, self._rm(rm, pc, back))
        self._raise_flags(flags)
        return r

    def h_fcvt(self, kind: int, v: int, double: int, itype: int, rm: int, pc: int, back: int) -> int:
        """FCVT: kind 0 float->int, 1 int->float (itype 0 W, 1 WU, 2 L, 3 LU), 2 between
        formats (``double`` is the destination format)."""
        rm = self._rm(rm, pc, back)
        if kind == 0:
            r, flags = fcvt_to_int(v, double, int(not itype & 1), 64 if itype & 2 else 32, rm)
        elif kind == 1:
            r, flags = fcvt_from_int(v, int(not itype & 1), 64 if itype & 2 else 32, double, rm)
        else:
            r, flags = fcvt_float(v, double, rm)
        self._raise_flags(flags)
        return r

    def h_fminmax(self, op: int, a: int, b: int, double: int) -> int:
        r, flags = fminmax(op, a, b, double)
        self._raise_flags(flags)
        return r

    def h_illegal(self, insn: int, pc: int, back: int) -> None:
        raise GuestTrap(CAUSE_ILLEGAL, insn, pc, back)

    def h_ecall(self, pc: int, back: int) -> None:
        raise GuestTrap(CAUSE_ECALL_U + self.priv, 0, pc, back)

    def check_breakpoint(self, pc: int, back: int = 0) -> None:
        """Before the instruction at ``pc``, which an execute trigger watches: fire if it applies now."""
        if self.triggers.fires_execute(pc, self.priv):
            raise GuestTrap(CAUSE_BREAKPOINT, 0, pc, back)       # QEMU 7.2: tval 0

    def h_breakpoint(self, pc: int, back: int) -> None:
        self.check_breakpoint(pc, back)

    def h_ebreak(self, pc: int, back: int) -> None:
        raise GuestTrap(CAUSE_BREAKPOINT, 0, pc, back)    # QEMU 7.2 leaves tval 0

    def h_mret(self, pc: int, back: int) -> int:
        if self.priv != PRV_M:
            raise GuestTrap(CAUSE_ILLEGAL, self._insn_bits(pc), pc, back)
        st = self.mstatus
        new = (st >> MPP_SHIFT) & 3
        st = (st & ~(MIE | MPP)) | (MIE if st & MPIE else 0) | MPIE
        if new != PRV_M:
            st &= ~MPRV
        self.mstatus, self.priv = st, new
        self._context_changed()
        self._update_irq()
        return self.mepc

    def h_sret(self, pc: int, back: int) -> int:
        if self.priv < PRV_S or (self.priv == PRV_S and self.mstatus & TSR):
            raise GuestTrap(CAUSE_ILLEGAL, self._insn_bits(pc), pc, back)
        st = self.mstatus
        new = PRV_S if st & SPP else PRV_U
        st = (st & ~(SIE | SPP | MPRV)) | (SIE if st & SPIE else 0) | SPIE
        self.mstatus, self.priv = st, new
        self._context_changed()
        self._update_irq()
        return self.sepc

    def h_wfi(self, pc: int, back: int) -> None:
        if self.priv < PRV_M and self.mstatus & TW or self.priv == PRV_U:
            raise GuestTrap(CAUSE_ILLEGAL, self._insn_bits(pc), pc, back)
        self.halted = True

    def h_sfence_vma(self, pc: int, back: int) -> None:
        if self.priv == PRV_U or (self.priv == PRV_S and self.mstatus & TVM):
            raise GuestTrap(CAUSE_ILLEGAL, self._insn_bits(pc), pc, back)
        self.mmu_mem.flush()
        self.on_tlb_flush(False)

    # atomics: translate with write permission so faults are store/AMO faults
    def _amo_addr(self, addr: int, size: int, access: int, pc: int, back: int) -> int:
        addr &= MASK64
        if addr & (size - 1):
            # QEMU 7.2 reports every misaligned LR/SC/AMO as a load-address-misaligned
            # exception (the spec says store/AMO for SC and AMOs); we match the oracle.
            raise GuestTrap(CAUSE_LOAD_MISALIGNED, addr, pc, back)
        try:
            paddr, _ = self.mmu.translate(addr, access)
            # LR is a load; SC and AMOs go through QEMU's atomic path, which checks both.
            if self.triggers.fires_data(addr, size, LOAD if access == READ else LOAD | STORE, self.priv):
                raise GuestTrap(CAUSE_BREAKPOINT, 0)
            if not self.mmu_mem.in_ram(paddr, size):
                raise GuestTrap(5 if access == READ else 7, addr)
        except GuestTrap as e:
            e.pc, e.back = pc, back
            raise
        return paddr

    @staticmethod
    def _sx(v: int, size: int) -> int:
        if size == 4 and v & 0x80000000:
            return v | 0xFFFFFFFF00000000
        return v

    def h_lr(self, addr: int, size: int, pc: int, back: int) -> int:
        paddr = self._amo_addr(addr, size, READ, pc, back)
        v = self.mmu_mem.phys_read(paddr, size)
        self.reservation = (addr & MASK64, v)
        return self._sx(v, size)

    def h_sc(self, addr: int, value: int, size: int, pc: int, back: int) -> int:
        # Like QEMU: a reservation mismatch fails without touching memory (no fault).
        res, self.reservation = self.reservation, None
        if res is None or res[0] != addr & MASK64:
            return 1
        paddr = self._amo_addr(addr, size, WRITE, pc, back)
        if self.mmu_mem.phys_read(paddr, size) != res[1]:
            return 1
        self.mmu_mem.phys_write(paddr, size, value)
        return 0

    def h_amo(self, f5: int, addr: int, value: int, size: int, pc: int, back: int) -> int:
        paddr = self._amo_addr(addr, size, WRITE, pc, back)
        mem = self.mmu_mem
        old = mem.phys_read(paddr, size)
        bits = 8 * size
        mask = (1 << bits) - 1
        v = value & mask

        def s(x: int) -> int:
            return x - (1 << bits) if x >> (bits - 1) else x

        if f5 == 0x01:
            new = v
        elif f5 == 0x00:
            new = old + v
        elif f5 == 0x04:
            new = old ^ v
        elif f5 == 0x08:
            new = old | v
        elif f5 == 0x0C:
            new = old & v
        elif f5 == 0x10:
            new = old if s(old) <= s(v) else v
        elif f5 == 0x14:
            new = old if s(old) >= s(v) else v
        elif f5 == 0x18:
            new = min(old, v)
        else:
            new = max(old, v)
        mem.phys_write(paddr, size, new & mask)
        return self._sx(old, size)

    def helpers(self) -> dict[str, Callable]:
        return {f"h_{n}": getattr(self, f"h_{n}") for n in (
            "csr", "illegal", "ecall", "ebreak", "breakpoint", "mret", "sret", "wfi", "sfence_vma", "lr", "sc", "amo",
            "fp", "fsgnj_s", "fclass", "fcmp", "fminmax", "farith", "ffma", "fcvt")}
