"""x86 vCPU set-up: a baseline of MSRs and the register state for 32-bit flat protected mode entry."""

from __future__ import annotations

import logging

from kvmpy.kvm.vcpu import VcpuFd

log = logging.getLogger(__name__)

MSR_IA32_TSC = 0x10
MSR_IA32_SYSENTER_CS = 0x174
MSR_IA32_SYSENTER_ESP = 0x175
MSR_IA32_SYSENTER_EIP = 0x176
MSR_IA32_MISC_ENABLE = 0x1A0
MSR_MTRR_DEF_TYPE = 0x2FF
MSR_STAR = 0xC0000081
MSR_LSTAR = 0xC0000082
MSR_CSTAR = 0xC0000083
MSR_SYSCALL_MASK = 0xC0000084
MSR_KERNEL_GS_BASE = 0xC0000102

MISC_ENABLE_FAST_STRING = 1
MTRR_ENABLE_WB = (1 << 11) | 6

CR0_PE = 1 << 0
CR0_ET = 1 << 4
CR0_PG = 1 << 31
CR4_PAE = 1 << 5
EFER_LME = 1 << 8
EFER_LMA = 1 << 10


def baseline_msrs(known: set[int]) -> dict[int, int]:
    """MSR values every vCPU starts with, limited to those the kernel lists (plus emulated ones)."""
    values = {
        MSR_IA32_SYSENTER_CS: 0, MSR_IA32_SYSENTER_ESP: 0, MSR_IA32_SYSENTER_EIP: 0,
        MSR_STAR: 0, MSR_LSTAR: 0, MSR_CSTAR: 0, MSR_SYSCALL_MASK: 0, MSR_KERNEL_GS_BASE: 0,
        MSR_IA32_TSC: 0,
    }
    values = {k: v for k, v in values.items() if k in known}
    # Emulated by KVM whether listed or not.
    values[MSR_IA32_MISC_ENABLE] = MISC_ENABLE_FAST_STRING
    values[MSR_MTRR_DEF_TYPE] = MTRR_ENABLE_WB
    return values


def apply_msrs(vcpu: VcpuFd, values: dict[int, int]) -> None:
    done = vcpu.set_msrs(values)
    if done != len(values):
        failed = list(values)[done]
        log.warning("vCPU %d: KVM accepted %d of %d MSRs (stopped at %#x)", vcpu.vcpu_id, done, len(values), failed)


def _segment(seg, selector: int, type_: int, code: bool, long_mode: bool = False) -> None:
    seg.base = 0
    seg.limit = 0xFFFFFFFF
    seg.selector = selector
    seg.type = type_
    seg.present = 1
    seg.dpl = 0
    seg.db = 0 if (code and long_mode) else 1
    seg.s = 1
    seg.l = 1 if (code and long_mode) else 0
    seg.g = 1
    seg.avl = 0
    seg.unusable = 0


GP_REGS = ("rax", "rbx", "rcx", "rdx", "rsi", "rdi", "rsp", "rbp",
           "r8", "r9", "r10", "r11", "r12", "r13", "r14", "r15")


def _enter(vcpu: VcpuFd, long_mode: bool, code_sel: int, data_sel: int, gdt_base: int, gdt_limit: int,
           cr0: int, cr3: int, cr4: int, efer: int, entry: int, **regs: int) -> None:
    """Flat segments, a usable TR, no IDT and the given control registers; every other GPR zero."""
    s = vcpu.sregs()
    _segment(s.cs, code_sel, 0xB, code=True, long_mode=long_mode)
    for seg in (s.ds, s.es, s.fs, s.gs, s.ss):
        _segment(seg, data_sel, 0x3, code=False)
    s.tr.base, s.tr.limit, s.tr.selector, s.tr.type = 0, 0xFFFF, 0, 0xB
    s.tr.present, s.tr.s, s.tr.g, s.tr.unusable = 1, 0, 0, 0
    s.ldt.selector, s.ldt.type, s.ldt.present, s.ldt.unusable = 0, 2, 1, 0
    s.gdt.base, s.gdt.limit = gdt_base, gdt_limit
    s.idt.base, s.idt.limit = 0, 0
    s.cr0, s.cr3, s.cr4, s.efer = cr0, cr3, cr4, efer
    vcpu.set_sregs(s)
    r = vcpu.regs()
    for name in GP_REGS:
        setattr(r, name, regs.get(name, 0))
    r.rip, r.rflags = entry, 0x2
    vcpu.set_regs(r)


def set_flat_protected_mode(vcpu: VcpuFd, entry: int, eax: int, ebx: int, code_sel: int = 0x10,
                            data_sel: int = 0x18, gdt_base: int = 0, gdt_limit: int = 0) -> None:
    """Paging off, flat 4 GiB segments, interrupts disabled: the multiboot hand-off state."""
    _enter(vcpu, False, code_sel, data_sel, gdt_base, gdt_limit, CR0_PE | CR0_ET, 0, 0, 0, entry,
           rax=eax, rbx=ebx)


def set_long_mode(vcpu: VcpuFd, entry: int, rsi: int, cr3: int, code_sel: int = 0x10,
                  data_sel: int = 0x18, gdt_base: int = 0, gdt_limit: int = 0, rsp: int = 0) -> None:
    """64-bit mode with identity paging at ``cr3``: the Linux 64-bit boot-protocol hand-off state."""
    _enter(vcpu, True, code_sel, data_sel, gdt_base, gdt_limit, CR0_PE | CR0_ET | CR0_PG, cr3, CR4_PAE,
           EFER_LME | EFER_LMA, entry, rsi=rsi, rsp=rsp)


def register_dump(vcpu: VcpuFd) -> str:
    """A short, readable dump of the vCPU registers for fatal-exit reports."""
    try:
        r = vcpu.regs()
        s = vcpu.sregs()
    except Exception as exc:  # the vCPU may be unusable after a failure
        return f"(registers unavailable: {exc})"
    gp = [("RAX", r.rax), ("RBX", r.rbx), ("RCX", r.rcx), ("RDX", r.rdx), ("RSI", r.rsi), ("RDI", r.rdi),
          ("RBP", r.rbp), ("RSP", r.rsp), ("R8", r.r8), ("R9", r.r9), ("R10", r.r10), ("R11", r.r11),
          ("R12", r.r12), ("R13", r.r13), ("R14", r.r14), ("R15", r.r15), ("RIP", r.rip), ("RFL", r.rflags)]
    lines = ["  " + " ".join(f"{n}={v:016x}" for n, v in gp[i:i + 4]) for i in range(0, len(gp), 4)]
    lines.append(f"  CS={s.cs.selector:04x} base={s.cs.base:x} l={s.cs.l} db={s.cs.db}  "
                 f"SS={s.ss.selector:04x}  CR0={s.cr0:x} CR2={s.cr2:x} CR3={s.cr3:x} CR4={s.cr4:x} EFER={s.efer:x}")
    lines.append(f"  GDT={s.gdt.base:x}/{s.gdt.limit:x} IDT={s.idt.base:x}/{s.idt.limit:x}")
    return "\n".join(lines)
