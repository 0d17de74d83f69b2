"""Random-instruction differential test of the riscv64 frontend against unicorn.

Random RV64IM(C via the assembler-free encoders) ALU and memory sequences run from
random register states under kvmpy and unicorn; all registers and the scratch
memory must agree.  The default run is short (fixed seed); a long run:

    KVMPY_RANDOM_CASES=20000 KVMPY_RANDOM_SEED=7 pytest tests/tcg/target/riscv/test_translate.py
"""

from __future__ import annotations

import os
import random
import struct

import pytest

from kvmpy.boards.riscv_virt import VirtBoard
from kvmpy.tcg.errors import MachineExit
from kvmpy.tcg.target.riscv.translate import PC

unicorn = pytest.importorskip("unicorn")
from unicorn import riscv_const as rc  # noqa: E402

BASE = 0x80000000
SCRATCH = 0x80100000          # x29 points here: loads and stores stay inside
CASES = int(os.environ.get("KVMPY_RANDOM_CASES", "60"))
SEED = int(os.environ.get("KVMPY_RANDOM_SEED", "1"))
LENGTH = 40

R_OPS = [(0, 0), (0, 0x20), (1, 0), (2, 0), (3, 0), (4, 0), (5, 0), (5, 0x20), (6, 0), (7, 0)] + \
        [(f3, 1) for f3 in range(8)]
R32_OPS = [(0, 0), (0, 0x20), (1, 0), (5, 0), (5, 0x20), (0, 1), (4, 1), (5, 1), (6, 1), (7, 1)]


def _rand_insn(rng: random.Random) -> int:
    rd = rng.randint(1, 28)
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
    board = VirtBoard(4 << 20)
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
