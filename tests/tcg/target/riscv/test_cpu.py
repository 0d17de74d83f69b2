"""The RV64 hart: CSR read/write rules, trap and interrupt entry, xRET, WFI and the atomics helpers."""

from __future__ import annotations

import pytest

from kvmpy.devices.bus import Bus
from kvmpy.tcg.errors import GuestTrap
from kvmpy.tcg.softmmu import AccessFaults, SoftMmu
from kvmpy.tcg.target.riscv.cpu import (MEIP, MIE, MPIE, MPP, MPRV, MSIP, MSTATUS_WMASK, MTIP, SEIP, SIE,
                                        SPIE, SPP, SSIP, STIP, TSR, TVM, TW, UXL_SXL, RiscvCpu)
from kvmpy.tcg.target.riscv.mmu import PRV_M, PRV_S, PRV_U
from kvmpy.tcg.target.riscv.translate import INSTRET, PC
from tests.guests.riscv.asm import assemble

RAM = 0x80000000
MSTATUS, SSTATUS, MISA, MEDELEG, MIDELEG, MIE_CSR, SIE_CSR = 0x300, 0x100, 0x301, 0x302, 0x303, 0x304, 0x104
MTVEC, STVEC, MEPC, SEPC, MIP, SIP, SATP = 0x305, 0x105, 0x341, 0x141, 0x344, 0x144, 0x180
MCOUNTEREN, SCOUNTEREN, MINSTRET, CYCLE, TIME, INSTRET_CSR, MHARTID = 0x306, 0x106, 0xB02, 0xC00, 0xC01, 0xC02, 0xF14


@pytest.fixture
def cpu() -> RiscvCpu:
    mem = SoftMmu(RAM, 1 << 20, Bus("mmio"), AccessFaults(read=5, write=7, fetch=1))
    hart = RiscvCpu(mem, hartid=3)
    mem.translate = hart.mmu.translate
    hart.csr_write(0x3B0, (1 << 54) - 1)     # PMP: all memory RWX for S and U, as firmware sets it
    hart.csr_write(0x3A0, 0x18 | 7)
    return hart


def csr(cpu: RiscvCpu, kind: int, number: int, src: int = 0, writes: int = 1, reads: int = 1) -> int:
    """What a csrrw (kind 1) / csrrs (2) / csrrc (3) at RAM does, through the translated-code helper."""
    return cpu.h_csr(kind, number, src, writes, reads, 0, RAM, 0)


def trap_of(fn, *args) -> GuestTrap:
    with pytest.raises(GuestTrap) as exc:
        fn(*args)
    return exc.value


def test_reset_state(cpu):
    assert cpu.priv == PRV_M and cpu.mstatus == UXL_SXL and cpu.R[PC] == 0
    misa = cpu.csr_read(MISA)
    assert misa >> 62 == 2                                   # MXL = 64
    assert {chr(ord("A") + b) for b in range(26) if misa >> b & 1} == set("ACDFIMSU")
    assert cpu.csr_read(MHARTID) == 3


def test_mstatus_is_warl_and_sstatus_is_a_view_of_it(cpu):
    csr(cpu, 1, MSTATUS, (1 << 64) - 1)
    assert cpu.csr_read(MSTATUS) == MSTATUS_WMASK | UXL_SXL | 1 << 63   # FS Dirty (no XS): SD set
    csr(cpu, 1, MSTATUS, (cpu.mstatus & ~MPP) | (2 << 11))  # MPP=2 is reserved: MPP keeps 3
    assert cpu.mstatus & MPP == MPP
    csr(cpu, 1, MSTATUS, 0)
    csr(cpu, 1, SSTATUS, (1 << 64) - 1)
    assert cpu.mstatus & (MIE | MPIE | MPP | MPRV | TVM | TW | TSR) == 0   # M-only bits untouched
    assert cpu.csr_read(SSTATUS) & (SIE | SPIE | SPP) == SIE | SPIE | SPP
    assert cpu.csr_read(SSTATUS) >> 32 & 3 == 2              # UXL reads as 64-bit


def test_delegation_and_the_s_mode_interrupt_views(cpu):
    csr(cpu, 1, MIDELEG, (1 << 64) - 1)
    assert cpu.mideleg == SSIP | STIP | SEIP                 # only S interrupts are delegable
    csr(cpu, 1, MEDELEG, (1 << 64) - 1)
    assert cpu.medeleg >> 11 & 1 == 0                        # ecall from M never delegates
    csr(cpu, 1, MIE_CSR, (1 << 64) - 1)
    assert cpu.mie == SSIP | MSIP | STIP | MTIP | SEIP | MEIP
    csr(cpu, 1, MIDELEG, STIP)
    assert cpu.csr_read(SIE_CSR) == STIP                     # sie shows only delegated bits
    csr(cpu, 1, SIE_CSR, 0)
    assert cpu.mie == SSIP | MSIP | MTIP | SEIP | MEIP       # writing sie clears only STIP
    csr(cpu, 1, MIP, (1 << 64) - 1)                          # software can set SSIP/STIP/SEIP only
    assert cpu.csr_read(MIP) == SSIP | STIP | SEIP
    cpu.set_hw_irq(MTIP, True)
    assert cpu.csr_read(MIP) & MTIP and cpu.csr_read(SIP) == STIP


def test_tvec_modes_and_epc_alignment(cpu):
    csr(cpu, 1, MTVEC, RAM + 0x101)
    assert cpu.mtvec == RAM + 0x101                          # vectored
    csr(cpu, 1, MTVEC, RAM + 0x202)                          # mode 2 is reserved: ignored
    assert cpu.mtvec == RAM + 0x101
    csr(cpu, 1, MEPC, RAM + 3)
    assert cpu.csr_read(MEPC) == RAM + 2                     # bit 0 always clear (IALIGN 16)


def test_csr_privilege_and_read_only_checks_report_the_instruction(cpu):
    code = assemble(".option norvc\ncsrr a0, mstatus\ncsrw cycle, a0\n")
    cpu.mmu_mem.ram[:len(code)] = code
    cpu.priv = PRV_U
    t = trap_of(cpu.h_csr, 2, MSTATUS, 0, 0, 1, 0, RAM, 2)
    assert (t.cause, t.tval, t.pc, t.back) == (2, int.from_bytes(code[:4], "little"), RAM, 2)
    cpu.priv = PRV_M
    t = trap_of(cpu.h_csr, 1, CYCLE, 5, 1, 0, 0, RAM + 4, 0)
    assert (t.cause, t.tval) == (2, int.from_bytes(code[4:8], "little"))
    assert trap_of(csr, cpu, 2, 0x7C0, 0, 0).cause == 2    # unimplemented CSR


def test_counters_need_counteren_below_machine_mode(cpu):
    cpu.R[INSTRET] = 1000
    cpu.time_skew = 500
    assert csr(cpu, 2, TIME, 0, 0) == 1500 and csr(cpu, 2, INSTRET_CSR, 0, 0) == 1000
    cpu.priv = PRV_S
    assert trap_of(csr, cpu, 2, TIME, 0, 0).cause == 2
    cpu.mcounteren = 1 << 1
    assert csr(cpu, 2, TIME, 0, 0) == 1500
    cpu.priv = PRV_U
    assert trap_of(csr, cpu, 2, TIME, 0, 0).cause == 2        # U also needs scounteren
    cpu.scounteren = 1 << 1
    assert csr(cpu, 2, TIME, 0, 0) == 1500
    cpu.priv = PRV_M
    csr(cpu, 1, MINSTRET, 7)
    assert cpu.R[INSTRET] == 6            # + the writing instruction, added by the caller
    assert cpu.mtime == 1500              # mtime does not jump with minstret


def test_satp_accepts_bare_and_sv39_only_and_tvm_traps_s_mode(cpu):
    csr(cpu, 1, SATP, (8 << 60) | 0x80123)
    assert cpu.satp == (8 << 60) | 0x80123
    csr(cpu, 1, SATP, (9 << 60) | 0x1)                      # Sv48 is not implemented: no change
    assert cpu.satp == (8 << 60) | 0x80123
    csr(cpu, 1, MSTATUS, cpu.mstatus | TVM)
    cpu.priv = PRV_S
    assert trap_of(csr, cpu, 2, SATP, 0, 0).cause == 2


def test_exception_from_u_mode_goes_to_m_unless_delegated(cpu):
    cpu.mtvec, cpu.stvec = RAM + 0x100, RAM + 0x200
    cpu.priv = PRV_U
    cpu.mstatus |= MIE
    cpu.enter_trap(GuestTrap(8, 0, RAM + 0x40))
    assert (cpu.priv, cpu.R[PC], cpu.mcause, cpu.mepc) == (PRV_M, RAM + 0x100, 8, RAM + 0x40)
    assert cpu.mstatus & (MIE | MPIE | MPP) == MPIE          # MPP = U, MIE saved in MPIE
    cpu.medeleg = 1 << 13
    cpu.priv = PRV_U
    cpu.mstatus |= SIE
    cpu.enter_trap(GuestTrap(13, 0xDEAD000, RAM + 0x80))
    assert (cpu.priv, cpu.R[PC], cpu.scause, cpu.sepc, cpu.stval) == (PRV_S, RAM + 0x200, 13, RAM + 0x80,
                                                                      0xDEAD000)
    assert cpu.mstatus & (SIE | SPIE | SPP) == SPIE
    cpu.priv = PRV_M                                         # delegation never lowers the mode
    cpu.enter_trap(GuestTrap(13, 0, RAM))
    assert cpu.priv == PRV_M and cpu.mcause == 13


def test_interrupts_priority_vectoring_and_enables(cpu):
    cpu.mtvec = RAM + 0x101                                  # vectored
    cpu.mie = MSIP | MTIP | MEIP
    cpu.set_hw_irq(MTIP, True)
    cpu.set_hw_irq(MSIP, True)
    assert cpu.irq_pending
    assert not cpu.take_interrupt()                          # M-mode with MIE clear: masked
    cpu.priv = PRV_S                                         # below M, M interrupts always fire
    assert cpu.take_interrupt()
    assert cpu.mcause == (1 << 63) | 3 and cpu.R[PC] == RAM + 0x100 + 4 * 3   # MSI beats MTI
    cpu.set_hw_irq(MEIP, True)
    cpu.mstatus |= MIE
    assert cpu.take_interrupt()
    assert cpu.mcause == (1 << 63) | 11                      # MEI beats both


def test_delegated_supervisor_interrupt(cpu):
    cpu.stvec = RAM + 0x300
    cpu.mideleg = STIP
    cpu.mie = STIP
    csr(cpu, 1, MIP, STIP)
    cpu.priv = PRV_S
    assert not cpu.take_interrupt()                          # S-mode with SIE clear
    cpu.priv = PRV_U
    assert cpu.take_interrupt()
    assert (cpu.priv, cpu.scause, cpu.R[PC]) == (PRV_S, (1 << 63) | 5, RAM + 0x300)


def test_mret_and_sret(cpu):
    cpu.mepc, cpu.sepc = RAM + 0x10, RAM + 0x20
    cpu.mstatus = UXL_SXL | MPIE | (PRV_S << 11) | MPRV
    assert cpu.h_mret(RAM, 0) == RAM + 0x10
    assert cpu.priv == PRV_S and cpu.mstatus & (MIE | MPIE | MPP | MPRV) == MIE | MPIE
    cpu.mstatus |= SPIE                                      # SPP = U
    assert cpu.h_sret(RAM, 0) == RAM + 0x20
    assert cpu.priv == PRV_U and cpu.mstatus & (SIE | SPIE | SPP) == SIE | SPIE
    assert trap_of(cpu.h_sret, RAM, 0).cause == 2            # sret from U
    assert trap_of(cpu.h_mret, RAM, 0).cause == 2
    cpu.priv = PRV_S
    cpu.mstatus |= TSR
    assert trap_of(cpu.h_sret, RAM, 0).cause == 2


def test_wfi_ecall_ebreak(cpu):
    cpu.h_wfi(RAM, 0)
    assert cpu.halted
    cpu.halted = False
    cpu.priv = PRV_S
    cpu.mstatus |= TW
    assert trap_of(cpu.h_wfi, RAM, 0).cause == 2
    cpu.priv = PRV_U
    assert trap_of(cpu.h_wfi, RAM, 0).cause == 2
    assert trap_of(cpu.h_ecall, RAM, 0).cause == 8
    cpu.priv = PRV_S
    assert trap_of(cpu.h_ecall, RAM, 0).cause == 9
    assert trap_of(cpu.h_ebreak, RAM, 0).cause == 3


def test_wfi_waits_through_the_board_until_an_interrupt_is_pending(cpu):
    calls = []

    def idle() -> bool:
        calls.append(1)
        if len(calls) == 3:
            cpu.set_hw_irq(MTIP, True)
        return True

    cpu.idle = idle
    cpu.mie = MTIP
    cpu.halted = True
    cpu.wait_for_interrupt()
    assert len(calls) == 3 and not cpu.halted
    cpu.mie = 0                                             # nothing can wake it: WFI resumes
    cpu.idle = lambda: False
    cpu.halted = True
    cpu.wait_for_interrupt()
    assert not cpu.halted


def test_lr_sc_and_amos(cpu):
    mem = cpu.mmu_mem
    a = RAM + 0x1000
    mem.phys_write(a, 8, 0xFFFFFFFF_80000000)
    assert cpu.h_sc(a, 1, 8, RAM, 0) == 1                   # no reservation: fails, no store
    assert cpu.h_lr(a, 4, RAM, 0) == 0xFFFFFFFF_80000000     # lr.w sign-extends
    assert cpu.h_sc(a + 8, 5, 4, RAM, 0) == 1               # other address: fails
    assert cpu.h_lr(a, 8, RAM, 0) == 0xFFFFFFFF_80000000
    assert cpu.h_sc(a, 0x1234, 8, RAM, 0) == 0 and mem.phys_read(a, 8) == 0x1234
    assert cpu.h_sc(a, 0x5678, 8, RAM, 0) == 1               # the reservation was used up
    mem.phys_write(a, 8, 5)
    assert cpu.h_amo(0x10, a, (1 << 64) - 3, 8, RAM, 0) == 5    # amomin: signed
    assert mem.phys_read(a, 8) == (1 << 64) - 3
    assert cpu.h_amo(0x18, a, 7, 8, RAM, 0) == (1 << 64) - 3    # amominu: unsigned
    assert mem.phys_read(a, 8) == 7
    assert cpu.h_amo(0x00, a, 0xFFFFFFFF, 4, RAM, 0) == 7       # amoadd.w wraps at 32 bits
    assert mem.phys_read(a, 4) == 6
    t = trap_of(cpu.h_amo, 0x01, a + 2, 0, 4, RAM, 1)
    assert (t.cause, t.tval, t.back) == (4, a + 2, 1)        # misaligned, as QEMU 7.2 reports it
    t = trap_of(cpu.h_amo, 0x01, 0x1000, 0, 4, RAM, 0)
    assert (t.cause, t.tval) == (7, 0x1000)                   # outside RAM: store/AMO access fault


def test_misa_is_warl_writes_are_accepted_and_ignored(cpu):
    before = cpu.csr_read(MISA)
    for value in (0, (1 << 64) - 1, before & ~(1 << 2)):
        assert csr(cpu, 1, MISA, value) == before              # no illegal-instruction trap
        assert cpu.csr_read(MISA) == before


def test_trigger_csrs_read_and_write_like_qemu(cpu):
    TSELECT, TDATA1, TDATA2, TDATA3, TINFO = 0x7A0, 0x7A1, 0x7A2, 0x7A3, 0x7A4
    assert [cpu.csr_read(c) for c in (TSELECT, TDATA1, TDATA2, TDATA3, TINFO)] == [0, 2 << 60, 0, 0, 0x44]
    csr(cpu, 1, TSELECT, 5)
    assert cpu.csr_read(TSELECT) == 0                           # only triggers 0 and 1 exist
    csr(cpu, 1, TDATA1, (2 << 60) | (1 << 59) | (0xF << 7) | (1 << 20) | (3 << 16) | 0x5F)
    assert cpu.csr_read(TDATA1) == (2 << 60) | (3 << 16) | 0x5F  # dmode/match/hit drop, size 4 stays
    csr(cpu, 1, TDATA1, (3 << 60) | 1)                          # icount: not supported, ignored
    assert cpu.csr_read(TDATA1) == (2 << 60) | (3 << 16) | 0x5F
    csr(cpu, 1, TDATA1, (6 << 60) | (4 << 16) | (1 << 23) | 1)  # mcontrol6; size 6 bytes dropped
    assert cpu.csr_read(TDATA1) == (6 << 60) | (1 << 23) | 1
    csr(cpu, 1, TDATA2, 0x1234)
    csr(cpu, 1, TDATA3, 99)
    csr(cpu, 1, TSELECT, 1)
    assert [cpu.csr_read(c) for c in (TSELECT, TDATA1, TDATA2, TDATA3)] == [1, 2 << 60, 0, 0]
    cpu.priv = PRV_S
    assert trap_of(csr, cpu, 2, TSELECT, 0, 0).cause == 2       # M-mode only


def test_trigger_writes_hand_the_engine_breakpoints_and_watchpoints(cpu):
    TSELECT, TDATA1, TDATA2 = 0x7A0, 0x7A1, 0x7A2
    told = []
    cpu.on_breakpoints = told.append
    csr(cpu, 1, TDATA2, RAM + 0x100)
    csr(cpu, 1, TDATA1, (2 << 60) | 0x40 | 0x08 | 4)           # execute, M and U
    assert told[-1] == {RAM + 0x100}
    assert cpu.mmu_mem.watch_vpages == frozenset()
    csr(cpu, 1, TSELECT, 1)
    csr(cpu, 1, TDATA2, RAM + 0x2000)
    csr(cpu, 1, TDATA1, (2 << 60) | 0x40 | 2)                  # store, M, any size (8 bytes)
    assert cpu.mmu_mem.watch_vpages == {(RAM + 0x2000) >> 12}
    cpu.h_breakpoint(RAM + 0x104, 1)                             # another pc: nothing
    trap = trap_of(cpu.h_breakpoint, RAM + 0x100, 1)
    assert (trap.cause, trap.tval, trap.pc, trap.back) == (3, 0, RAM + 0x100, 1)
    cpu.priv = PRV_S
    cpu.h_breakpoint(RAM + 0x100, 1)                             # S is not named
    cpu.priv = PRV_M
    mem = cpu.mmu_mem
    trap = trap_of(mem.store, RAM + 0x2004, 4, 0x77, RAM + 0x30, 2)
    assert (trap.cause, trap.tval, trap.pc, trap.back) == (3, 0, RAM + 0x30, 2)
    assert mem.load(RAM + 0x2004, 4, False, 0, 0) == 0           # not written; loads do not fire
    mem.store(RAM + 0x2008, 8, 0x77, 0, 0)                       # past the 8 bytes
    cpu.h_lr(RAM + 0x2000, 8, RAM, 0)                            # LR is a load only
    assert trap_of(cpu.h_sc, RAM + 0x2000, 1, 8, RAM, 0).cause == 3
    assert trap_of(cpu.h_amo, 0x00, RAM + 0x2000, 1, 8, RAM, 0).cause == 3
    cpu.reset()
    assert told[-1] == frozenset() and mem.watch_vpages == frozenset()


def test_sstc_stimecmp_drives_stip_once_menvcfg_stce_is_set(cpu):
    """Sstc as QEMU 7.2 exposes it: stimecmp (0x14D) needs mcounteren.TM and menvcfg.STCE below M;
    with STCE set, mip.STIP is time >= stimecmp and a CSR write cannot change it."""
    MENVCFG, STIMECMP = 0x30A, 0x14D
    cpu.R[INSTRET] = 1000
    cpu.priv = PRV_S
    assert trap_of(csr, cpu, 2, STIMECMP, 0, 0).cause == 2      # STCE and TM both clear
    cpu.priv = PRV_M
    csr(cpu, 1, MIP, STIP)
    assert cpu.mip & STIP                                        # without STCE, M-mode software owns STIP
    csr(cpu, 1, MENVCFG, (1 << 63) | (1 << 62) | 1)
    assert csr(cpu, 2, MENVCFG, 0, 0) == (1 << 63) | 1           # no Svpbmt: PBMTE stays 0
    assert cpu.mip & STIP                                        # stimecmp is 0 at reset: time >= 0
    csr(cpu, 1, STIMECMP, 1100)
    assert not cpu.mip & STIP
    csr(cpu, 1, MIP, STIP)
    assert not cpu.mip & STIP                                    # read-only while STCE is set
    cpu.priv = PRV_S
    assert trap_of(csr, cpu, 2, STIMECMP, 0, 0).cause == 2      # still needs mcounteren.TM
    cpu.mcounteren = 1 << 1
    assert csr(cpu, 2, STIMECMP, 0, 0) == 1100
    cpu.R[INSTRET] = 1100
    cpu.update_sstc()
    assert cpu.mip & STIP
    csr(cpu, 1, STIMECMP, (1 << 64) - 1)
    assert not cpu.mip & STIP
    cpu.priv = PRV_M
    csr(cpu, 1, MENVCFG, 0)
    assert not cpu.mip & STIP and cpu.stimecmp == (1 << 64) - 1


def test_a_hart_follows_another_harts_clock():
    """Harts share mtime: under -icount the follower reads what the other reads, and keeps counting
    its own instructions from there; in real time both read the same host clock."""
    mem = SoftMmu(RAM, 1 << 20, Bus("mmio"), AccessFaults(read=5, write=7, fetch=1))
    a, b = RiscvCpu(mem, hartid=0, ns_per_insn=100), RiscvCpu(mem, hartid=1, ns_per_insn=100)
    a.R[INSTRET] = 5000
    b.R[INSTRET] = 70
    b.follow_clock(a)
    assert b.mtime == a.mtime == 5000
    b.R[INSTRET] += 30
    assert b.mtime == 5030
    r1, r2 = RiscvCpu(mem, ns_per_insn=None), RiscvCpu(mem, ns_per_insn=None)
    r1.set_mtime(1 << 40)
    r2.follow_clock(r1)
    assert abs(r2.mtime - r1.mtime) < 10_000_000         # the same clock (read a moment apart)


def test_runnable_means_not_in_wfi_or_woken(cpu):
    assert cpu.runnable
    cpu.h_wfi(RAM, 0)
    assert not cpu.runnable
    cpu.set_hw_irq(MSIP, True)
    assert not cpu.runnable                               # pending, but not enabled in mie
    csr(cpu, 1, MIE_CSR, MSIP)
    assert cpu.runnable                                   # mie & mip ends the wait, mstatus.MIE or not


def test_sstc_line_follows_the_time_it_is_given(cpu):
    csr(cpu, 1, 0x30A, 1 << 63)                           # menvcfg.STCE
    csr(cpu, 1, 0x14D, 1000)                              # stimecmp
    cpu.update_sstc(now=999)
    assert not cpu.mip & STIP
    cpu.update_sstc(now=1000)
    assert cpu.mip & STIP
