"""Random-instruction differential test of the riscv64 frontend against unicorn.

Random RV64IM(C via the assembler-free encoders) ALU and memory sequences run from
random register states under kvmpy and unicorn; all registers and the scratch
memory must agree.  A second test ends each sequence with a trapping instruction
(faulting load/store, illegal CSR, misaligned AMO, ecall/ebreak, and Sv39 page
faults from S-mode): the cause and every register at the trap must agree.  The default run is short (fixed seed); a long run:

    KVMPY_RANDOM_CASES=20000 KVMPY_RANDOM_SEED=7 pytest tests/tcg/target/riscv/test_translate.py
"""

from __future__ import annotations

import os
import platform
import random
import struct

import pytest

from kvmpy.boards.riscv_virt import VirtBoard
from kvmpy.tcg.errors import MachineExit
from kvmpy.tcg.target.riscv.cpu import DEFAULT_NS_PER_INSN
from kvmpy.tcg.target.riscv.translate import PC

unicorn = pytest.importorskip("unicorn")
from unicorn import riscv_const as rc  # noqa: E402

# Every test runs on both TCG tiers where the native one exists (x86-64 hosts).
TIERS = ["py", "native"] if platform.machine() == "x86_64" else ["py"]
_tier = ["py"]


@pytest.fixture(autouse=True, params=TIERS)
def tier(request):
    _tier[0] = request.param
    yield request.param
    _tier[0] = "py"


def _board(**kw) -> VirtBoard:
    # Eager: these sequences run once, so every TB must be machine code at once.
    return VirtBoard(4 << 20, tier=_tier[0], native_eager=_tier[0] == "native", **kw)

BASE = 0x80000000
SCRATCH = 0x80100000          # x29 points here: loads and stores stay inside
CASES = int(os.environ.get("KVMPY_RANDOM_CASES", "60"))
SEED = int(os.environ.get("KVMPY_RANDOM_SEED", "1"))
LENGTH = 40

R_OPS = [(0, 0), (0, 0x20), (1, 0), (2, 0), (3, 0), (4, 0), (5, 0), (5, 0x20), (6, 0), (7, 0)] + \
        [(f3, 1) for f3 in range(8)]
R32_OPS = [(0, 0), (0, 0x20), (1, 0), (5, 0), (5, 0x20), (0, 1), (4, 1), (5, 1), (6, 1), (7, 1)]


def _rand_insn(rng: random.Random, max_rd: int = 28) -> int:
    rd = rng.randint(1, max_rd)
    rs1 = rng.randint(0, 28)
    rs2 = rng.randint(0, 28)
    kind = rng.random()
    if kind < 0.3:
        f3, f7 = rng.choice(R_OPS)
        return (f7 << 25) | (rs2 << 20) | (rs1 << 15) | (f3 << 12) | (rd << 7) | 0x33
    if kind < 0.45:
        f3, f7 = rng.choice(R32_OPS)
        return (f7 << 25) | (rs2 << 20) | (rs1 << 15) | (f3 << 12) | (rd << 7) | 0x3B
    if kind < 0.65:
        f3 = rng.choice([0, 1, 2, 3, 4, 5, 6, 7])
        imm = rng.randint(-2048, 2047) & 0xFFF
        if f3 == 1:
            imm = rng.randint(0, 63)
        elif f3 == 5:
            imm = rng.randint(0, 63) | rng.choice([0, 0x400])
        return (imm << 20) | (rs1 << 15) | (f3 << 12) | (rd << 7) | 0x13
    if kind < 0.72:
        f3 = rng.choice([0, 1, 5])
        imm = rng.randint(-2048, 2047) & 0xFFF if f3 == 0 else rng.randint(0, 31) | rng.choice([0, 0x400] if f3 == 5 else [0])
        return (imm << 20) | (rs1 << 15) | (f3 << 12) | (rd << 7) | 0x1B
    if kind < 0.78:
        return (rng.getrandbits(20) << 12) | (rd << 7) | rng.choice([0x37, 0x17])
    if kind < 0.9:          # load relative to x29, any alignment
        f3 = rng.choice([0, 1, 2, 3, 4, 5, 6])
        imm = rng.randint(0, 2000)
        return (imm << 20) | (29 << 15) | (f3 << 12) | (rd << 7) | 0x03
    f3 = rng.choice([0, 1, 2, 3])
    imm = rng.randint(0, 2000)
    return ((imm >> 5) << 25) | (rs2 << 20) | (29 << 15) | (f3 << 12) | ((imm & 31) << 7) | 0x23


def _program(rng: random.Random) -> bytes:
    insns = [_rand_insn(rng) for _ in range(LENGTH)]
    insns.append((0 << 25) | (30 << 20) | (31 << 15) | (2 << 12) | 0x23)   # sw x30, 0(x31): exit
    return b"".join(struct.pack("<I", i) for i in insns)


def _run_kvmpy(code: bytes, regs: list[int], scratch: bytes) -> tuple[list[int], bytes]:
    board = _board()
    ram = board.mem.ram
    ram[0:len(code)] = code
    ram[SCRATCH - BASE:SCRATCH - BASE + len(scratch)] = scratch
    board.cpu.R[1:32] = regs[1:32]
    board.cpu.R[PC] = BASE
    with pytest.raises(MachineExit):
        board.loop.run()
    return list(board.cpu.R[:32]), bytes(ram[SCRATCH - BASE:SCRATCH - BASE + len(scratch)])


def _run_unicorn(code: bytes, regs: list[int], scratch: bytes) -> tuple[list[int], bytes]:
    mu = unicorn.Uc(unicorn.UC_ARCH_RISCV, unicorn.UC_MODE_RISCV64)
    mu.mem_map(BASE, 4 << 20)
    mu.mem_map(0x100000, 0x1000)
    mu.mem_write(BASE, code)
    mu.mem_write(SCRATCH, scratch)
    for i in range(1, 32):
        mu.reg_write(rc.UC_RISCV_REG_X0 + i, regs[i])
    mu.emu_start(BASE, BASE + len(code), count=LENGTH + 1)
    return [0] + [mu.reg_read(rc.UC_RISCV_REG_X0 + i) for i in range(1, 32)], bytes(mu.mem_read(SCRATCH, len(scratch)))


def test_random_alu_and_memory_sequences_match_unicorn():
    rng = random.Random(SEED)
    specials = [0, 1, 0x7FFFFFFF, 0x80000000, 0xFFFFFFFF, (1 << 63) - 1, 1 << 63, (1 << 64) - 1]
    for case in range(CASES):
        code = _program(rng)
        regs = [0] + [rng.choice(specials) if rng.random() < 0.3 else rng.getrandbits(64) for _ in range(31)]
        regs[29], regs[30], regs[31] = SCRATCH, 0x5555, 0x100000
        scratch = bytes(rng.getrandbits(8) for _ in range(2048 + 8))
        got = _run_kvmpy(code, regs, scratch)
        want = _run_unicorn(code, regs, scratch)
        assert got[0] == want[0], f"case {case}: registers differ (seed {SEED})"
        assert got[1] == want[1], f"case {case}: memory differs (seed {SEED})"


def _run_asm(source: str, march: str | None = None) -> VirtBoard:
    """Assemble ``source`` at BASE and run it until it writes the sifive_test exit (x30 to (x31))."""
    from tests.guests.riscv.asm import MARCH, assemble
    board = _board(ns_per_insn=DEFAULT_NS_PER_INSN)    # deterministic: one mtime tick per instruction
    code = assemble(".option norvc\n" + source, march or MARCH)
    board.mem.ram[0:len(code)] = code
    board.cpu.R[30], board.cpu.R[31] = 0x5555, 0x100000
    board.cpu.R[PC] = BASE
    with pytest.raises(MachineExit):
        board.loop.run()
    return board


TRAP_TO_EXIT = """
    j 1f
handler:                        # at BASE + 4 (the snippet is not linked: no la)
    csrr t1, mcause
    csrr t2, mepc
    sw x30, 0(x31)
1:  li t0, 0x80000004
    csrw mtvec, t0
    {body}
    sw x30, 0(x31)
"""


@pytest.mark.parametrize("body, cause", [
    ("li a0, 255\n ld a0, 0(zero)", 5),                       # load access fault in M-mode
    ("li a0, 255\n sd a1, 0(zero)\n li a0, 3", 7),            # store access fault
    ("li a0, 255\n lw a0, 1(zero)", 5),
    ("li t1, -1\n csrw pmpaddr0, t1\n li t1, 0x1f\n csrw pmpcfg0, t1\n"      # PMP: U may run
     " li t1, 3 << 11\n csrc mstatus, t1\n auipc t1, 0\n addi t1, t1, 16\n csrw mepc, t1\n mret\n"
     " li a0, 255\n csrr a0, mstatus", 2),                    # illegal CSR in U-mode
])
def test_register_writes_before_a_trapping_instruction_reach_the_handler(body, cause):
    board = _run_asm(TRAP_TO_EXIT.format(body=body))
    R = board.cpu.R
    assert R[6] == cause
    assert R[10] == 255


@pytest.mark.parametrize("counter", ["minstret", "mcycle"])
def test_a_counter_write_is_what_the_next_instruction_reads(counter):
    # Unprivileged spec, Zicsr: a CSR write replaces the writing instruction's own
    # increment, so the next instruction reads the written value.  (QEMU 7.2 adds one.)
    board = _run_asm(f"""
    li t0, 1000
    csrw {counter}, t0
    csrr a0, {counter}
    csrrw a1, {counter}, t0
    nop
    nop
    csrr a2, {counter}
    csrr s0, time
    li t0, -1
    csrw {counter}, t0
    csrr a3, {counter}
    csrr s1, time
    sw x30, 0(x31)
    """)
    R = board.cpu.R
    assert (R[10], R[11], R[12], R[13]) == (1000, 1001, 1002, (1 << 64) - 1)
    assert R[9] - R[8] == 4                                     # mtime kept counting instructions


# ---- random sequences that end in a trap --------------------------------------------
HANDLER = BASE + 0x80000               # kvmpy's M-mode handler: the exit store, nothing else
PT_ROOT = BASE + 0x200000              # Sv39 tables for the S-mode cases
V, R_, W_, X_, A_, D_ = 1, 2, 4, 8, 0x40, 0x80
RO_PAGE, NO_PAGE, NO_MEGA = SCRATCH + 0x2000, SCRATCH + 0x3000, BASE + 0x400000
UNMAPPED_PHYS = 0x70000000             # nothing there on either machine


def _page_tables() -> list[tuple[int, int]]:
    """(physical address, pte) pairs: 0x80000000.. code pages RWX, scratch RW, one page
    read-only, the next page and every other megapage unmapped."""
    l1, l0 = PT_ROOT + 0x1000, PT_ROOT + 0x2000
    out = [(PT_ROOT + 8 * 2, (l1 >> 12) << 10 | V), (l1, (l0 >> 12) << 10 | V)]
    for i in range(0x100):
        out.append((l0 + 8 * i, ((BASE >> 12) + i) << 10 | V | R_ | W_ | X_ | A_ | D_))
    for i in (0x100, 0x101):
        out.append((l0 + 8 * i, ((BASE >> 12) + i) << 10 | V | R_ | W_ | A_ | D_))
    out.append((l0 + 8 * 0x102, (RO_PAGE >> 12) << 10 | V | R_ | A_))
    return out


SATP = (8 << 60) | (PT_ROOT >> 12)


def _trap_insn(rng: random.Random, smode: bool) -> tuple[int, int]:
    """A trapping instruction and the x28 value it needs."""
    rd, rs2 = rng.randint(1, 27), rng.randint(0, 27)
    imm = rng.randint(0, 64)
    load = (imm << 20) | (28 << 15) | (rng.choice([0, 1, 2, 3, 4, 5, 6]) << 12) | (rd << 7) | 0x03
    store = ((imm >> 5) << 25) | (rs2 << 20) | (28 << 15) | (rng.choice([0, 1, 2, 3]) << 12) | \
        ((imm & 31) << 7) | 0x23
    kinds = [
        (load, NO_PAGE if smode else UNMAPPED_PHYS),
        (store, NO_PAGE if smode else UNMAPPED_PHYS),
        ((rng.choice([0x7C0, 0x300 if smode else 0x7C1]) << 20) | (2 << 12) | (rd << 7) | 0x73, 0),
        ((0xC00 << 20) | (rng.randint(1, 27) << 15) | (1 << 12) | 0x73, 0),   # write read-only cycle
        (rng.choice([0x00000073, 0x00100073]), 0),                            # ecall, ebreak
        ((rng.choice([0, 1, 4, 8, 0xC]) << 27) | (rs2 << 20) | (28 << 15) | (2 << 12) | (rd << 7) | 0x2F,
         SCRATCH + rng.choice([1, 2, 3])),                                    # misaligned AMO
    ]
    if smode:
        kinds += [(load, NO_MEGA), (store, RO_PAGE), (store, NO_MEGA)]
    return rng.choice(kinds)


def _run_kvmpy_trap(code: bytes, regs: list[int], scratch: bytes, smode: bool) -> tuple[list[int], int, int]:
    board = _board()
    ram, cpu = board.mem.ram, board.cpu
    ram[0:len(code)] = code
    ram[SCRATCH - BASE:SCRATCH - BASE + len(scratch)] = scratch
    ram[HANDLER - BASE:HANDLER - BASE + 4] = struct.pack("<I", (30 << 20) | (31 << 15) | (2 << 12) | 0x23)
    cpu.R[1:32] = regs[1:32]
    cpu.R[PC] = BASE
    cpu.csr_write(0x305, HANDLER)
    if smode:
        for addr, pte in _page_tables():
            ram[addr - BASE:addr - BASE + 8] = struct.pack("<Q", pte)
        cpu.csr_write(0x3B0, (1 << 54) - 1)          # PMP: everything for S and U, as firmware does
        cpu.csr_write(0x3A0, 0x1F)
        cpu.csr_write(0x180, SATP)
        cpu.csr_write(0x300, 1 << 11)                # MPP = S; the program starts with mret
        cpu.csr_write(0x341, BASE + 4)
    with pytest.raises(MachineExit):
        board.loop.run()
    assert cpu.R[PC] in (HANDLER, HANDLER + 4), "the sequence did not trap"
    return list(cpu.R[:32]), cpu.mcause, cpu.mepc


def _run_unicorn_trap(code: bytes, regs: list[int], scratch: bytes, smode: bool) -> tuple[list[int], int, int]:
    mu = unicorn.Uc(unicorn.UC_ARCH_RISCV, unicorn.UC_MODE_RISCV64)
    mu.mem_map(BASE, 4 << 20)
    mu.mem_write(BASE, code)
    mu.mem_write(SCRATCH, scratch)
    for i in range(1, 32):
        mu.reg_write(rc.UC_RISCV_REG_X0 + i, regs[i])
    if smode:
        for addr, pte in _page_tables():
            mu.mem_write(addr, struct.pack("<Q", pte))
        mu.reg_write(rc.UC_RISCV_REG_SATP, SATP)
        mu.reg_write(rc.UC_RISCV_REG_MSTATUS, mu.reg_read(rc.UC_RISCV_REG_MSTATUS) | (1 << 11))
        mu.reg_write(rc.UC_RISCV_REG_MEPC, BASE + 4)
    seen: list[tuple[int, int]] = []

    def on_trap(uc, intno, _data):
        seen.append((intno, uc.reg_read(rc.UC_RISCV_REG_PC)))
        uc.emu_stop()

    def on_unmapped(uc, access, address, _size, _value, _data):
        seen.append((7 if access == unicorn.UC_MEM_WRITE_UNMAPPED else 5, uc.reg_read(rc.UC_RISCV_REG_PC)))
        return False

    mu.hook_add(unicorn.UC_HOOK_INTR, on_trap)
    mu.hook_add(unicorn.UC_HOOK_MEM_UNMAPPED, on_unmapped)
    try:
        mu.emu_start(BASE, BASE + len(code), count=LENGTH + 2)
    except unicorn.UcError as exc:
        pc = mu.reg_read(rc.UC_RISCV_REG_PC)
        if exc.errno == unicorn.UC_ERR_INSN_INVALID and code[pc - BASE:pc - BASE + 4] == struct.pack("<I", 0x00100073):
            seen.append((3, pc))    # unicorn stops at ebreak instead of raising the breakpoint
    assert seen, "unicorn ran the sequence without a trap"
    cause = seen[0][0]
    if cause == 8:              # QEMU raises every ecall as "from U" and adds the privilege on entry
        cause += 1 if smode else 3
    return [0] + [mu.reg_read(rc.UC_RISCV_REG_X0 + i) for i in range(1, 32)], cause, seen[0][1]


def test_random_sequences_ending_in_a_trap_match_unicorn():
    rng = random.Random(SEED + 1000)
    for case in range(CASES):
        smode = case % 2 == 1
        insns = [0x30200073] if smode else [0x00000013]            # mret into S-mode / nop
        insns += [_rand_insn(rng, max_rd=27) for _ in range(rng.randint(0, LENGTH))]
        trap, x28 = _trap_insn(rng, smode)
        insns.append(trap)
        code = b"".join(struct.pack("<I", i) for i in insns)
        regs = [0] + [rng.getrandbits(64) for _ in range(31)]
        regs[28], regs[29], regs[30], regs[31] = x28, SCRATCH, 0x5555, 0x100000
        scratch = bytes(rng.getrandbits(8) for _ in range(2048 + 8))
        got_regs, got_cause, got_epc = _run_kvmpy_trap(code, regs, scratch, smode)
        want_regs, want_cause, want_pc = _run_unicorn_trap(code, regs, scratch, smode)
        where = f"case {case} (seed {SEED}, {'S' if smode else 'M'}-mode, trap {trap:#010x})"
        assert got_cause == want_cause, where
        assert got_epc == BASE + 4 * (len(insns) - 1), where
        diff = [i for i in range(32) if got_regs[i] != want_regs[i]]
        assert not diff, f"{where}: x{diff} differ"


# ---- F/D: loads, stores, moves, sign injection, classify ------------------------------
FP_SPECIAL_S = [0, 0x80000000, 0x7F800000, 0xFF800000, 0x7FC00000, 0x7F800001, 0xFFC00001, 0x00000001,
                0x807FFFFF, 0x3F800000, 0xBF800000, 0x00800000]
FP_SPECIAL_D = [0, 1 << 63, 0x7FF0000000000000, 0xFFF0000000000000, 0x7FF8000000000000, 0x7FF0000000000001,
                0x0000000000000001, 0x800FFFFFFFFFFFFF, 0x3FF0000000000000, 0x0010000000000000]


def _rand_fp_insn(rng: random.Random, singles: bool = True) -> int:
    """A random F/D move/load/store/sign-injection/classify, or an integer op (never AUIPC:
    the qemu-riscv64 run has its code elsewhere).  ``singles=False`` leaves out what reads or
    writes a NaN-boxed single (FLW, FMV.W.X, FSGNJ*.S, FCLASS.S): unicorn (QEMU 5.0) predates
    NaN boxing; it also leaves out compares and min/max (checked against qemu-riscv64 only)."""
    rd, rs1, rs2 = rng.randint(0, 31), rng.randint(0, 31), rng.randint(0, 31)
    xd = rng.randint(1, 28)
    kind = rng.randrange(13 if singles else 7)
    if kind == 11:                                  # fmadd/fmsub/fnmsub/fnmadd .s/.d
        rs3 = rng.randint(0, 31)
        return (rs3 << 27) | (rng.randint(0, 1) << 25) | (rs2 << 20) | (rs1 << 15) | \
            (rng.choice([0, 1, 2, 3, 4, 7]) << 12) | (rd << 7) | rng.choice([0x43, 0x47, 0x4B, 0x4F])
    if kind == 12:                                  # fcvt between ints and floats and formats
        rm = rng.choice([0, 1, 2, 3, 4, 7])
        f7, src2 = rng.choice([(0x60, rng.randrange(4)), (0x61, rng.randrange(4)), (0x68, rng.randrange(4)),
                               (0x69, rng.randrange(4)), (0x20, 1), (0x21, 0)])
        dst = xd if f7 in (0x60, 0x61) else rd
        src = rng.randint(0, 28) if f7 in (0x68, 0x69) else rs1
        return (f7 << 25) | (src2 << 20) | (src << 15) | (rm << 12) | (dst << 7) | 0x53
    if kind in (9, 10):                             # fadd/fsub/fmul/fdiv/fsqrt .s/.d, static or dynamic rm
        f7 = rng.choice([0x00, 0x04, 0x08, 0x0C, 0x2C]) | rng.randint(0, 1)
        rm = rng.choice([0, 1, 2, 3, 4, 7])
        src2 = 0 if f7 >> 1 == 0x16 else rs2
        return (f7 << 25) | (src2 << 20) | (rs1 << 15) | (rm << 12) | (rd << 7) | 0x53
    if kind == 7:                                   # fmin / fmax .s / .d
        return (rng.choice([0x14, 0x15]) << 25) | (rs2 << 20) | (rs1 << 15) | (rng.randint(0, 1) << 12) | (rd << 7) | 0x53
    if kind == 8:                                   # fle / flt / feq .s / .d
        return (rng.choice([0x50, 0x51]) << 25) | (rs2 << 20) | (rs1 << 15) | (rng.randint(0, 2) << 12) | (xd << 7) | 0x53
    if kind == 0:                                   # flw / fld from scratch, any alignment
        f3 = rng.choice([2, 3]) if singles else 3
        return (rng.randint(0, 2000) << 20) | (29 << 15) | (f3 << 12) | (rd << 7) | 0x07
    if kind == 1:                                   # fsw / fsd
        imm = rng.randint(0, 2000)
        return ((imm >> 5) << 25) | (rs2 << 20) | (29 << 15) | (rng.choice([2, 3]) << 12) | ((imm & 31) << 7) | 0x27
    if kind == 2:                                   # fsgnj[n|x].s / .d
        f7 = rng.choice([0x10, 0x11]) if singles else 0x11
        return (f7 << 25) | (rs2 << 20) | (rs1 << 15) | (rng.randint(0, 2) << 12) | (rd << 7) | 0x53
    if kind == 3:                                   # fmv.x.w / fmv.x.d
        return (rng.choice([0x70, 0x71]) << 25) | (rs1 << 15) | (xd << 7) | 0x53
    if kind == 4:                                   # fclass.s / fclass.d
        f7 = rng.choice([0x70, 0x71]) if singles else 0x71
        return (f7 << 25) | (rs1 << 15) | (1 << 12) | (xd << 7) | 0x53
    if kind == 5:                                   # fmv.w.x / fmv.d.x
        f7 = rng.choice([0x78, 0x79]) if singles else 0x79
        return (f7 << 25) | (rng.randint(0, 28) << 15) | (rd << 7) | 0x53
    while True:
        insn = _rand_insn(rng)
        if insn & 0x7F != 0x17:
            return insn


def _fp_reg_value(rng: random.Random) -> int:
    k = rng.random()
    if k < 0.35:
        return 0xFFFFFFFF00000000 | (rng.choice(FP_SPECIAL_S) if rng.random() < 0.5 else rng.getrandbits(32))
    if k < 0.7:
        return rng.choice(FP_SPECIAL_D) ^ (rng.getrandbits(1) << 63)
    return rng.getrandbits(64)                       # often an improperly boxed single


def test_random_double_moves_loads_stores_sign_injection_and_classify_match_unicorn():
    from kvmpy.tcg.target.riscv.translate import FREG
    rng = random.Random(SEED + 2000)
    for case in range(CASES):
        insns = [_rand_fp_insn(rng, singles=False) for _ in range(LENGTH)]
        insns.append((30 << 20) | (31 << 15) | (2 << 12) | 0x23)
        code = b"".join(struct.pack("<I", i) for i in insns)
        regs = [0] + [rng.getrandbits(64) for _ in range(31)]
        regs[29], regs[30], regs[31] = SCRATCH, 0x5555, 0x100000
        fregs = [_fp_reg_value(rng) for _ in range(32)]
        scratch = bytes(rng.getrandbits(8) for _ in range(2048 + 8))

        board = _board()
        ram, cpu = board.mem.ram, board.cpu
        ram[0:len(code)] = code
        ram[SCRATCH - BASE:SCRATCH - BASE + len(scratch)] = scratch
        cpu.R[1:32] = regs[1:32]
        cpu.R[FREG:FREG + 32] = fregs
        cpu.R[PC] = BASE
        cpu.csr_write(0x300, 1 << 13)                           # FS = Initial
        with pytest.raises(MachineExit):
            board.loop.run()
        got = (list(cpu.R[:32]), list(cpu.R[FREG:FREG + 32]), cpu.csr_read(0x300) >> 13 & 3,
               bytes(ram[SCRATCH - BASE:SCRATCH - BASE + len(scratch)]))

        mu = unicorn.Uc(unicorn.UC_ARCH_RISCV, unicorn.UC_MODE_RISCV64)
        mu.mem_map(BASE, 4 << 20)
        mu.mem_map(0x100000, 0x1000)
        mu.mem_write(BASE, code)
        mu.mem_write(SCRATCH, scratch)
        for i in range(1, 32):
            mu.reg_write(rc.UC_RISCV_REG_X0 + i, regs[i])
        for i in range(32):
            mu.reg_write(rc.UC_RISCV_REG_F0 + i, fregs[i])
        mu.reg_write(rc.UC_RISCV_REG_MSTATUS, (mu.reg_read(rc.UC_RISCV_REG_MSTATUS) & ~(3 << 13)) | 1 << 13)
        mu.emu_start(BASE, BASE + len(code), count=LENGTH + 1)
        want = ([0] + [mu.reg_read(rc.UC_RISCV_REG_X0 + i) for i in range(1, 32)],
                [mu.reg_read(rc.UC_RISCV_REG_F0 + i) for i in range(32)],
                mu.reg_read(rc.UC_RISCV_REG_MSTATUS) >> 13 & 3,
                bytes(mu.mem_read(SCRATCH, len(scratch))))
        where = f"case {case} (seed {SEED})"
        assert got[0] == want[0], f"{where}: x registers differ"
        assert got[1] == want[1], f"{where}: f registers differ " + str(
            [(i, hex(got[1][i]), hex(want[1][i])) for i in range(32) if got[1][i] != want[1][i]])
        assert got[2] == want[2], f"{where}: mstatus.FS differs"
        assert got[3] == want[3], f"{where}: memory differs"


def _run_qemu_user_fp(words: list[int], regs: list[int], fregs: list[int], scratch: bytes,
                      tmp: "os.PathLike[str]") -> tuple[list[int], list[int], bytes]:
    """The same instruction words under qemu-riscv64 (user mode), registers loaded from and
    dumped to tables; x29 points at a copy of the scratch bytes."""
    from pathlib import Path

    from tests.guests.riscv.asm import run_user
    d = Path(tmp)
    lines = [".option norvc", ".text", ".globl _start", "_start:", "la x31, fin"]
    lines += [f"fld f{i}, {8 * i}(x31)" for i in range(32)]
    lines += ["la x31, xin"] + [f"ld x{i}, {8 * i}(x31)" for i in range(1, 29)] + ["la x29, scratch"]
    lines += [f".word {w:#x}" for w in words]
    lines += ["la x31, out"] + [f"sd x{i}, {8 * i}(x31)" for i in range(1, 29)]
    lines += ["csrr x1, fflags", "sd x1, 0(x31)"]
    lines += [f"fsd f{i}, {8 * (32 + i)}(x31)" for i in range(32)]
    lines += ["li a7, 64", "li a0, 1", "la a1, out", f"li a2, {64 * 8 + len(scratch)}", "ecall",
              "li a7, 93", "li a0, 0", "ecall", ".data", ".balign 8"]
    lines += ["fin:"] + [f".dword {v:#x}" for v in fregs]
    lines += ["xin:"] + [f".dword {v:#x}" for v in regs[:32]]
    lines += ["out:", f".zero {64 * 8}", "scratch:"] + [f".byte {b}" for b in scratch]
    out = run_user(lines, d)
    vals = list(struct.unpack("<64Q", out[:512]))
    return [vals[0]] + vals[1:29], vals[32:64], out[512:]


def test_random_single_and_double_fp_moves_match_qemu_user(tmp_path):
    """NaN boxing (FLW, FMV.W.X, and FSGNJ*.S / FCLASS.S of improperly boxed values), compares,
    min/max, arithmetic, FMA and conversions (NaN payloads, ±0, rounding, fflags) against
    qemu-riscv64 7.2."""
    from kvmpy.tcg.target.riscv.translate import FREG
    rng = random.Random(SEED + 3000)
    cases = max(1, CASES // 6)                        # each qemu run costs an assemble and a link
    words_all, inputs = [], []
    for case in range(cases):
        words = [_rand_fp_insn(rng) for _ in range(LENGTH)]
        regs = [0] + [rng.getrandbits(64) for _ in range(31)]
        fregs = [_fp_reg_value(rng) for _ in range(32)]
        scratch = bytes(rng.getrandbits(8) for _ in range(2048 + 8))
        words_all.append(words)
        inputs.append((regs, fregs, scratch))
    for case, (words, (regs, fregs, scratch)) in enumerate(zip(words_all, inputs)):
        code = b"".join(struct.pack("<I", w) for w in words) + struct.pack("<I", (30 << 20) | (31 << 15) | (2 << 12) | 0x23)
        board = _board()
        ram, cpu = board.mem.ram, board.cpu
        ram[0:len(code)] = code
        ram[SCRATCH - BASE:SCRATCH - BASE + len(scratch)] = scratch
        cpu.R[1:29] = regs[1:29]
        cpu.R[29], cpu.R[30], cpu.R[31] = SCRATCH, 0x5555, 0x100000
        cpu.R[FREG:FREG + 32] = fregs
        cpu.R[PC] = BASE
        cpu.csr_write(0x300, 1 << 13)
        with pytest.raises(MachineExit):
            board.loop.run()
        want_x, want_f, want_mem = _run_qemu_user_fp(words, regs, fregs, scratch, tmp_path)
        where = f"case {case} (seed {SEED})"
        assert cpu.fflags == want_x[0], f"{where}: fflags differ"
        assert list(cpu.R[1:29]) == want_x[1:], f"{where}: x registers differ"
        got_f = list(cpu.R[FREG:FREG + 32])
        assert got_f == want_f, f"{where}: f registers differ " + str(
            [(i, hex(got_f[i]), hex(want_f[i])) for i in range(32) if got_f[i] != want_f[i]])
        assert bytes(ram[SCRATCH - BASE:SCRATCH - BASE + len(scratch)]) == want_mem, f"{where}: memory differs"


def test_fp_instructions_and_fcsr_trap_while_fs_is_off_and_dirty_fs():
    board = _run_asm("""
    j 1f
    csrr t1, mcause             # BASE + 4: the handler counts traps in s1 and skips
    addi s1, s1, 1
    csrr t2, mepc
    addi t2, t2, 4
    csrw mepc, t2
    mret
1:  li t0, 0x80000004
    csrw mtvec, t0
    li t0, 3 << 13
    csrc mstatus, t0            # FS = Off: every F instruction and fcsr access is illegal
    fmv.d.x f1, t0
    csrr a0, fflags
    fsgnj.d f2, f1, f1
    li t0, 1 << 13
    csrs mstatus, t0            # FS = Initial
    csrr s2, mstatus
    fmv.x.d a1, f1              # reads only: FS stays Initial
    csrr s3, mstatus
    li t0, 0x3f800000
    fmv.w.x f3, t0              # writes an f register: FS becomes Dirty
    csrr s4, mstatus
    li t0, 0x1f | (3 << 5)
    csrw fcsr, t0
    csrr a2, frm
    csrr a3, fflags
    fclass.s a4, f3
    csrwi frm, 5                # a reserved rounding mode: dynamic-rm arithmetic is illegal
    fadd.s f4, f3, f3, dyn
    csrwi frm, 2
    fsub.s f5, f3, f3, dyn      # RDN: x - x = -0
    sw x30, 0(x31)
    """, march="rv64imafd")
    R = board.cpu.R
    from kvmpy.tcg.target.riscv.translate import FREG
    assert R[9] == 4                                           # four illegal instructions
    assert R[FREG + 5] == 0xFFFFFFFF80000000
    assert (R[18] >> 13 & 3, R[19] >> 13 & 3, R[20] >> 13 & 3) == (1, 1, 3)
    assert R[20] >> 63 == 1                                    # SD follows FS = Dirty
    assert R[FREG + 3] == 0xFFFFFFFF3F800000                   # NaN-boxed
    assert (R[12], R[13], R[14]) == (3, 0x1F, 1 << 6)          # frm, fflags, +normal
