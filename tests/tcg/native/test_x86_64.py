"""The x86-64 emitter's encodings against GNU as: every form, over all 16 registers,
the base/index/displacement cases of ModRM and SIB, and immediates at their edges."""

from __future__ import annotations

import random
import shutil
import subprocess
from pathlib import Path

import pytest

from kvmpy.tcg.native import x86_64 as x
from kvmpy.tcg.native.x86_64 import REG_NAMES, Asm, Label, Mem

pytestmark = pytest.mark.skipif(shutil.which("as") is None or shutil.which("objcopy") is None,
                                reason="binutils (as, objcopy) not installed")

R8N = ["al", "cl", "dl", "bl", "spl", "bpl", "sil", "dil"] + [f"r{i}b" for i in range(8, 16)]
R16N = ["ax", "cx", "dx", "bx", "sp", "bp", "si", "di"] + [f"r{i}w" for i in range(8, 16)]
R32N = ["eax", "ecx", "edx", "ebx", "esp", "ebp", "esi", "edi"] + [f"r{i}d" for i in range(8, 16)]
DISPS = [0, 8, -8, 127, -128, 128, -129, 0x1234, -0x7fffffff]
IMMS = [0, 1, -1, 127, -128, 128, -129, 0x7fffffff, -0x80000000]


def _gas(lines: list[str], tmp: Path) -> bytes:
    src = tmp / "t.s"
    src.write_text(".intel_syntax noprefix\n.text\n" + "\n".join(lines) + "\n")
    obj, raw = tmp / "t.o", tmp / "t.bin"
    subprocess.run(["as", "--64", "-o", str(obj), str(src)], check=True, capture_output=True)
    subprocess.run(["objcopy", "-O", "binary", "-j", ".text", str(obj), str(raw)], check=True)
    return raw.read_bytes()


def _mem_text(m: Mem) -> str:
    s = REG_NAMES[m.base]
    if m.index is not None:
        s += f" + {REG_NAMES[m.index]}*{m.scale}"
    if m.disp:
        s += f" + {m.disp}" if m.disp > 0 else f" - {-m.disp}"
    return f"[{s}]"


def _cases(rng: random.Random):
    """(emit on an Asm, intel text) pairs."""
    regs = range(16)

    def mem() -> Mem:
        base = rng.choice(regs)
        index = rng.choice([None, None] + [r for r in regs if r != x.RSP])
        return Mem(base, rng.choice(DISPS), index, rng.choice([1, 2, 4, 8]))

    for d in regs:
        for s in regs:
            yield (lambda a, d=d, s=s: a.mov_rr(d, s)), f"mov {REG_NAMES[d]}, {REG_NAMES[s]}"
            op = rng.choice(list(x.ALU))
            yield (lambda a, d=d, s=s, op=op: a.alu_rr(op, d, s)), f"{op} {REG_NAMES[d]}, {REG_NAMES[s]}"
            yield (lambda a, d=d, s=s: a.imul_rr(d, s)), f"imul {REG_NAMES[d]}, {REG_NAMES[s]}"
            yield (lambda a, d=d, s=s: a.test_rr(d, s)), f"test {REG_NAMES[d]}, {REG_NAMES[s]}"
            yield (lambda a, d=d, s=s: a.mov_rr32(d, s)), f"mov {R32N[d]}, {R32N[s]}"
            yield (lambda a, d=d, s=s: a.movsx_rr(d, s, 8)), f"movsx {REG_NAMES[d]}, {R8N[s]}"
            yield (lambda a, d=d, s=s: a.movsx_rr(d, s, 16)), f"movsx {REG_NAMES[d]}, {R16N[s]}"
            yield (lambda a, d=d, s=s: a.movsx_rr(d, s, 32)), f"movsxd {REG_NAMES[d]}, {R32N[s]}"
            yield (lambda a, d=d, s=s: a.movzx_rr(d, s, 8)), f"movzx {R32N[d]}, {R8N[s]}"
            yield (lambda a, d=d, s=s: a.movzx_rr(d, s, 16)), f"movzx {R32N[d]}, {R16N[s]}"
        for op in x.ALU:
            for imm in IMMS:
                yield (lambda a, d=d, op=op, imm=imm: a.alu_ri(op, d, imm)), f"{op} {REG_NAMES[d]}, {imm}"
        for op in x.SHIFT:
            for c in (1, 2, 31, 63):
                yield (lambda a, d=d, op=op, c=c: a.shift_ri(op, d, c)), f"{op} {REG_NAMES[d]}, {c}"
            yield (lambda a, d=d, op=op: a.shift_rcl(op, d)), f"{op} {REG_NAMES[d]}, cl"
        for name in ("mul", "imul", "div", "idiv", "neg"):
            yield (lambda a, d=d, name=name: getattr(a, f"{name}_r")(d)), f"{name} {REG_NAMES[d]}"
        for cc in x.CC:
            yield (lambda a, d=d, cc=cc: a.setcc(cc, d)), f"set{cc} {R8N[d]}"
        yield (lambda a, d=d: a.push(d)), f"push {REG_NAMES[d]}"
        yield (lambda a, d=d: a.pop(d)), f"pop {REG_NAMES[d]}"
        yield (lambda a, d=d: a.call_r(d)), f"call {REG_NAMES[d]}"
        yield (lambda a, d=d: a.jmp_r(d)), f"jmp {REG_NAMES[d]}"
        for imm in (0, 1, 0xFFFFFFFF, 0x100000000, -1, -0x80000000, -0x80000001, 0x123456789ABCDEF0):
            u = imm & ((1 << 64) - 1)
            if u < (1 << 32):
                text = f"mov {R32N[d]}, {u}"
            elif u >= (1 << 64) - (1 << 31):
                text = f"mov {REG_NAMES[d]}, {u - (1 << 64)}"
            else:
                text = f"movabs {REG_NAMES[d]}, {u}"
            yield (lambda a, d=d, imm=imm: a.mov_ri(d, imm)), text
        for _ in range(6):
            m = mem()
            yield (lambda a, d=d, m=m: a.load(d, m)), f"mov {REG_NAMES[d]}, qword ptr {_mem_text(m)}"
            yield (lambda a, d=d, m=m: a.store(m, d)), f"mov qword ptr {_mem_text(m)}, {REG_NAMES[d]}"
            yield (lambda a, d=d, m=m: a.lea(d, m)), f"lea {REG_NAMES[d]}, {_mem_text(m)}"
            op = rng.choice(list(x.ALU))
            yield (lambda a, d=d, m=m, op=op: a.alu_rm(op, d, m)), f"{op} {REG_NAMES[d]}, qword ptr {_mem_text(m)}"
            yield (lambda a, d=d, m=m, op=op: a.alu_mr(op, m, d)), f"{op} qword ptr {_mem_text(m)}, {REG_NAMES[d]}"
            imm = rng.choice(IMMS)
            yield (lambda a, m=m, imm=imm: a.store_imm(m, imm)), f"mov qword ptr {_mem_text(m)}, {imm}"
            yield (lambda a, m=m, imm=imm, op=op: a.alu_mi(op, m, imm)), f"{op} qword ptr {_mem_text(m)}, {imm}"
            for size, signed, text in [
                    (1, False, f"movzx {R32N[d]}, byte ptr"), (2, False, f"movzx {R32N[d]}, word ptr"),
                    (4, False, f"mov {R32N[d]}, dword ptr"), (8, False, f"mov {REG_NAMES[d]}, qword ptr"),
                    (1, True, f"movsx {REG_NAMES[d]}, byte ptr"), (2, True, f"movsx {REG_NAMES[d]}, word ptr"),
                    (4, True, f"movsxd {REG_NAMES[d]}, dword ptr")]:
                yield (lambda a, d=d, m=m, s=size, sg=signed: a.load_sized(d, m, s, sg)), f"{text} {_mem_text(m)}"
            for size, names, ptr in [(1, R8N, "byte"), (2, R16N, "word"), (4, R32N, "dword"),
                                     (8, REG_NAMES, "qword")]:
                yield (lambda a, d=d, m=m, s=size: a.store_sized(m, d, s)), f"mov {ptr} ptr {_mem_text(m)}, {names[d]}"
    yield (lambda a: a.cqo()), "cqo"
    yield (lambda a: a.ret()), "ret"


def test_every_form_matches_gnu_as(tmp_path):
    cases = list(_cases(random.Random(1)))
    asm = Asm()
    for emit, _ in cases:
        emit(asm)
    if asm.finish() == _gas([t for _, t in cases], tmp_path):
        return
    for emit, text in cases:        # locate the first difference
        a = Asm()
        emit(a)
        assert a.finish().hex() == _gas([text], tmp_path).hex(), text


def test_jumps_reach_their_labels_forward_and_backward(tmp_path):
    a = Asm()
    top, end = Label(), Label()
    a.bind(top)
    a.jcc("ne", end)          # forward, patched at bind
    a.alu_ri("add", x.RAX, 1)
    a.jmp(top)                # backward, patched at once
    for cc in x.CC:
        a.jcc(cc, top)
    a.bind(end)
    a.ret()
    lines = ["1:", "jne.d32 2f", "add rax, 1", "jmp.d32 1b"] + [f"j{cc}.d32 1b" for cc in x.CC] + ["2:", "ret"]
    assert a.finish().hex() == _gas(lines, tmp_path).hex()
