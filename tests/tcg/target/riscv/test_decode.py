"""Instruction fields and RVC expansion, checked against encodings from the GNU assembler."""

from __future__ import annotations

import pytest

from kvmpy.tcg.target.riscv.decode import expand_compressed, imm_b, imm_i, imm_j, imm_s, imm_u, sext
from tests.guests.riscv.asm import words

# Each compressed instruction and the 32-bit instruction the spec says it expands to.
RVC_PAIRS = [
    ("c.addi4spn a0, sp, 16", "addi a0, sp, 16"),
    ("c.addi4spn s1, sp, 1020", "addi s1, sp, 1020"),
    ("c.lw a1, 4(a0)", "lw a1, 4(a0)"),
    ("c.lw s0, 124(a5)", "lw s0, 124(a5)"),
    ("c.ld a2, 8(a3)", "ld a2, 8(a3)"),
    ("c.ld a2, 248(a3)", "ld a2, 248(a3)"),
    ("c.sw a4, 12(a5)", "sw a4, 12(a5)"),
    ("c.sd s0, 248(s1)", "sd s0, 248(s1)"),
    ("c.nop", "addi x0, x0, 0"),
    ("c.addi a0, -7", "addi a0, a0, -7"),
    ("c.addi t6, 31", "addi t6, t6, 31"),
    ("c.addiw a1, 31", "addiw a1, a1, 31"),
    ("c.addiw a1, 0", "addiw a1, a1, 0"),
    ("c.li t0, -32", "addi t0, x0, -32"),
    ("c.addi16sp sp, -64", "addi sp, sp, -64"),
    ("c.addi16sp sp, 496", "addi sp, sp, 496"),
    ("c.lui a3, 0x1f", "lui a3, 0x1f"),
    ("c.lui a3, 0xfffe0", "lui a3, 0xfffe0"),
    ("c.srli s0, 3", "srli s0, s0, 3"),
    ("c.srli s0, 63", "srli s0, s0, 63"),
    ("c.srai s1, 32", "srai s1, s1, 32"),
    ("c.andi a5, -1", "andi a5, a5, -1"),
    ("c.sub a0, a1", "sub a0, a0, a1"),
    ("c.xor a2, a3", "xor a2, a2, a3"),
    ("c.or a4, a5", "or a4, a4, a5"),
    ("c.and s0, s1", "and s0, s0, s1"),
    ("c.subw a0, s1", "subw a0, a0, s1"),
    ("c.addw a5, a4", "addw a5, a5, a4"),
    ("c.j .+2046", "jal x0, .+2046"),
    ("c.j .-2048", "jal x0, .-2048"),
    ("c.beqz a0, .-6", "beq a0, x0, .-6"),
    ("c.bnez a1, .+254", "bne a1, x0, .+254"),
    ("c.bnez s1, .-256", "bne s1, x0, .-256"),
    ("c.slli a0, 12", "slli a0, a0, 12"),
    ("c.slli t3, 63", "slli t3, t3, 63"),
    ("c.lwsp a0, 252(sp)", "lw a0, 252(sp)"),
    ("c.ldsp ra, 504(sp)", "ld ra, 504(sp)"),
    ("c.jr ra", "jalr x0, 0(ra)"),
    ("c.mv a0, a1", "add a0, x0, a1"),
    ("c.ebreak", "ebreak"),
    ("c.jalr t0", "jalr ra, 0(t0)"),
    ("c.add a2, a3", "add a2, a2, a3"),
    ("c.swsp a0, 124(sp)", "sw a0, 124(sp)"),
    ("c.sdsp s0, 8(sp)", "sd s0, 8(sp)"),
    ("c.sdsp t6, 504(sp)", "sd t6, 504(sp)"),
]


@pytest.fixture(scope="module")
def rvc_encodings() -> list[tuple[str, int, int]]:
    # One assembler run per side: a compressed stream and the equivalent 32-bit stream.
    # The jump and branch targets are relative (".+n"), so positions do not matter.
    short = words(".option rvc\n" + "\n".join(c for c, _ in RVC_PAIRS), 2)
    long = words(".option norvc\n" + "\n".join(e for _, e in RVC_PAIRS), 4)
    assert len(short) == len(long) == len(RVC_PAIRS)
    return [(text, c, e) for (text, _), c, e in zip(RVC_PAIRS, short, long)]


def test_every_compressed_instruction_expands_to_its_32_bit_form(rvc_encodings):
    wrong = [(text, f"{c:#06x}", f"{expand_compressed(c)!r}", f"{e:#010x}")
             for text, c, e in rvc_encodings if expand_compressed(c) != e]
    assert not wrong


@pytest.mark.parametrize("c,why", [
    (0x0000, "the all-zero parcel is defined illegal (c.addi4spn with imm 0)"),
    (0x4002, "c.lwsp with rd=x0 is reserved"),
    (0x6002, "c.ldsp with rd=x0 is reserved"),
    (0x8002, "c.jr with rs1=x0 is reserved"),
    (0x6101, "c.addi16sp with imm 0 is reserved"),
    (0x6081, "c.lui with imm 0 is reserved"),
    (0x2001 | (0 << 7), "c.addiw with rd=x0 is reserved"),
    (0x9C41, "funct2 0b10 under c.subw/c.addw is reserved"),
])
def test_reserved_and_unimplemented_encodings_are_illegal(c, why):
    assert expand_compressed(c) is None, why


def test_compressed_double_loads_and_stores_expand():
    pairs = [("c.fld f8, 8(a0)", "fld f8, 8(a0)"), ("c.fld f15, 248(s1)", "fld f15, 248(s1)"),
             ("c.fsd f9, 16(a5)", "fsd f9, 16(a5)"), ("c.fldsp f1, 504(sp)", "fld f1, 504(sp)"),
             ("c.fldsp f0, 0(sp)", "fld f0, 0(sp)"), ("c.fsdsp f31, 8(sp)", "fsd f31, 8(sp)")]
    short = words(".option rvc\n" + "\n".join(c for c, _ in pairs), 2, march="rv64imafdc")
    long = words(".option norvc\n" + "\n".join(e for _, e in pairs), 4, march="rv64imafdc")
    assert [expand_compressed(c) for c in short] == long


def test_immediates_of_assembled_instructions():
    code = words(".option norvc\n"
                 "addi a0, a1, -2048\naddi a0, a1, 2047\n"
                 "sd a0, -1(a1)\nsw a0, 2047(a1)\n"
                 "beq a0, a1, .-4096\nbne a0, a1, .+4094\n"
                 "jal x0, .-1048576\njal x0, .+1048574\n"
                 "lui a0, 0x80000\nlui a0, 0x7ffff\n", 4)
    assert [imm_i(code[0]), imm_i(code[1])] == [-2048, 2047]
    assert [imm_s(code[2]), imm_s(code[3])] == [-1, 2047]
    assert [imm_b(code[4]), imm_b(code[5])] == [-4096, 4094]
    assert [imm_j(code[6]), imm_j(code[7])] == [-1048576, 1048574]
    assert [imm_u(code[8]), imm_u(code[9])] == [-(1 << 31), 0x7FFFF000]


def test_sext():
    assert sext(0x800, 12) == -2048 and sext(0x7FF, 12) == 2047
    assert sext(0x1FFF, 12) == -1                # bits above the width are ignored
    assert sext(1 << 63, 64) == -(1 << 63)
