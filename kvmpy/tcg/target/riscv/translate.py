"""RV64GC (IMAFDC + Zicsr + Zifencei) frontend: guest instructions -> IR blocks.

State slots: 0..31 are x0..x31 (x0 is never read or written: it folds to the
constant 0), ``PC`` and ``INSTRET`` follow, then f0..f31 from ``FREG``.
F/D so far: loads, stores, moves, sign injection, FCLASS, compares, min/max,
add/sub/mul/div/sqrt, fused multiply-add and conversions;
each such instruction first calls the ``fp`` helper, which traps when
mstatus.FS is Off and marks FS Dirty when the instruction writes FP state.  A block ends at a branch or jump,
at an instruction that may change how later instructions are fetched or
privileged (CSR writes, xRET, SFENCE.VMA, FENCE.I, WFI), at a page boundary, or
after ``MAX_INSNS`` instructions.  Everything a frontend needs from the machine
is ``fetch(vaddr, size) -> (value, paddr)``.
"""

from __future__ import annotations

from typing import Callable

from kvmpy.tcg.errors import GuestTrap
from kvmpy.tcg.ir import MASK64, Block, Builder, Temp, Value
from kvmpy.tcg.target.riscv.decode import expand_compressed, imm_b, imm_i, imm_j, imm_s, imm_u
from kvmpy.tcg.target.riscv.fpu import BOX, SIGN_D

PC = 32
INSTRET = 33
FREG = 34           # f0..f31 are slots FREG..FREG+31 (64-bit patterns, singles NaN-boxed)
N_SLOTS = FREG + 32
MAX_INSNS = 48
PAGE = 4096

ABI = ("zero ra sp gp tp t0 t1 t2 s0 s1 a0 a1 a2 a3 a4 a5 a6 a7 "
       "s2 s3 s4 s5 s6 s7 s8 s9 s10 s11 t3 t4 t5 t6").split()

_BRANCH = {0: "eq", 1: "ne", 4: "lt", 5: "ge", 6: "ltu", 7: "geu"}
_BRANCH_NAME = {0: "beq", 1: "bne", 4: "blt", 5: "bge", 6: "bltu", 7: "bgeu"}
_LOADS = {0: (1, True, "lb"), 1: (2, True, "lh"), 2: (4, True, "lw"), 3: (8, False, "ld"),
          4: (1, False, "lbu"), 5: (2, False, "lhu"), 6: (4, False, "lwu")}
_STORES = {0: (1, "sb"), 1: (2, "sh"), 2: (4, "sw"), 3: (8, "sd")}
_OP = {(0, 0): "add", (0, 0x20): "sub", (1, 0): "shl", (2, 0): "slt", (3, 0): "sltu",
       (4, 0): "xor", (5, 0): "shr", (5, 0x20): "sar", (6, 0): "or", (7, 0): "and"}
_OP_NAME = {"add": "add", "sub": "sub", "shl": "sll", "slt": "slt", "sltu": "sltu", "xor": "xor",
            "shr": "srl", "sar": "sra", "or": "or", "and": "and"}
_MUL = {0: "mul", 1: "mulh", 2: "mulhsu", 3: "mulhu", 4: "divs", 5: "divu", 6: "rems", 7: "remu"}
_MUL_NAME = ("mul", "mulh", "mulhsu", "mulhu", "div", "divu", "rem", "remu")
AMO_NAMES = {0x00: "amoadd", 0x01: "amoswap", 0x02: "lr", 0x03: "sc", 0x04: "amoxor",
             0x08: "amoor", 0x0C: "amoand", 0x10: "amomin", 0x14: "amomax",
             0x18: "amominu", 0x1C: "amomaxu"}
CSR_OPS = {1: "csrrw", 2: "csrrs", 3: "csrrc", 5: "csrrwi", 6: "csrrsi", 7: "csrrci"}


class Translator:
    def __init__(self, fetch: Callable[[int, int], tuple[int, int]], disasm: bool = False) -> None:
        self.fetch = fetch
        self.want_disasm = disasm

    def translate(self, pc: int) -> tuple[Block, int, tuple[int, ...]]:
        """Translate the block at ``pc``; fetch faults on its first instruction propagate."""
        b = Builder(pc)
        start_page = pc // PAGE
        pages: list[int] = []
        ppc = None
        cur = pc
        while True:
            try:
                lo, paddr = self.fetch(cur, 2)
                if lo & 3 == 3:
                    if (cur + 2) // PAGE != cur // PAGE:
                        hi, paddr2 = self.fetch(cur + 2, 2)
                        if paddr2 // PAGE not in pages:
                            pages.append(paddr2 // PAGE)
                    else:
                        hi = self.fetch(cur + 2, 2)[0]
                    insn, length = lo | (hi << 16), 4
                else:
                    insn, length = lo, 2
            except GuestTrap:
                if cur == pc:
                    raise
                b.emit("goto_tb", None, pc=cur)        # the fault is taken when we get there
                break
            if ppc is None:
                ppc = paddr
            if paddr // PAGE not in pages:
                pages.insert(0, paddr // PAGE)
            b.insn_start(cur)
            self._insn(b, insn, cur, length)
            cur = (cur + length) & MASK64
            if b.closed:
                break
            if cur // PAGE != start_page or b.block.n_guest >= MAX_INSNS:
                b.emit("goto_tb", None, pc=cur)
                break
        b.block.size = (cur - pc) & MASK64
        return b.block, ppc, tuple(pages)

    # ---- helpers ---------------------------------------------------------
    def _d(self, b: Builder, pc: int, insn: int, length: int, text: str) -> None:
        if self.want_disasm:
            raw = f"{insn:08x}" if length == 4 else f"{insn:04x}    "
            b.block.disasm.append(f"0x{pc:016x}:  {raw}  {text}")

    @staticmethod
    def _r(n: int) -> Value:
        return 0 if n == 0 else Temp(n, True)

    @staticmethod
    def _dst(b: Builder, rd: int) -> Temp:
        return Temp(rd, True) if rd else b.temp()

    def _illegal(self, b: Builder, insn: int, pc: int, length: int) -> None:
        self._d(b, pc, insn, length, "illegal")
        b.emit("call", None, insn, helper="illegal", raises=True)
        b.emit("exit_tb", None, pc, lookup=False)

    # ---- the decoder -----------------------------------------------------
    def _insn(self, b: Builder, raw: int, pc: int, length: int) -> None:
        insn = raw
        if length == 2:
            exp = expand_compressed(raw)
            if exp is None:
                self._illegal(b, raw, pc, length)
                return
            insn = exp
        op = insn & 0x7F
        rd = (insn >> 7) & 31
        f3 = (insn >> 12) & 7
        rs1 = (insn >> 15) & 31
        rs2 = (insn >> 20) & 31
        f7 = insn >> 25
        r = self._r
        nxt = (pc + length) & MASK64
        n = ABI

        def setrd(value: Value) -> None:
            if rd:
                b.emit("mov", Temp(rd, True), value)

        if op == 0x37:      # LUI
            imm = imm_u(insn)
            self._d(b, pc, raw, length, f"lui {n[rd]},{(imm >> 12) & 0xFFFFF:#x}")
            setrd(imm & MASK64)
        elif op == 0x17:    # AUIPC
            imm = imm_u(insn)
            self._d(b, pc, raw, length, f"auipc {n[rd]},{(imm >> 12) & 0xFFFFF:#x}")
            setrd((pc + imm) & MASK64)
        elif op == 0x6F:    # JAL
            target = (pc + imm_j(insn)) & MASK64
            self._d(b, pc, raw, length, f"jal {n[rd]},{target:#x}")
            setrd(nxt)
            b.emit("goto_tb", None, pc=target)
        elif op == 0x67 and f3 == 0:    # JALR
            imm = imm_i(insn)
            self._d(b, pc, raw, length, f"jalr {n[rd]},{imm}({n[rs1]})")
            t = b.op("and", b.op("add", r(rs1), imm & MASK64), MASK64 ^ 1)
            setrd(nxt)
            b.emit("exit_tb", None, t, lookup=True)
        elif op == 0x63 and f3 in _BRANCH:
            target = (pc + imm_b(insn)) & MASK64
            self._d(b, pc, raw, length, f"{_BRANCH_NAME[f3]} {n[rs1]},{n[rs2]},{target:#x}")
            b.emit("brcond", None, r(rs1), r(rs2), cond=_BRANCH[f3], taken=target, fall=nxt)
        elif op == 0x03 and f3 in _LOADS:
            size, signed, name = _LOADS[f3]
            imm = imm_i(insn)
            self._d(b, pc, raw, length, f"{name} {n[rd]},{imm}({n[rs1]})")
            addr = b.op("add", r(rs1), imm & MASK64)
            b.emit("ld", self._dst(b, rd), addr, size=size, signed=signed)
        elif op == 0x23 and f3 in _STORES:
            size, name = _STORES[f3]
            imm = imm_s(insn)
            self._d(b, pc, raw, length, f"{name} {n[rs2]},{imm}({n[rs1]})")
            addr = b.op("add", r(rs1), imm & MASK64)
            b.emit("st", None, addr, r(rs2), size=size)
        elif op == 0x13:    # OP-IMM
            imm = imm_i(insn)
            if f3 == 0:
                self._d(b, pc, raw, length, f"addi {n[rd]},{n[rs1]},{imm}")
                if rd:
                    b.emit("add", Temp(rd, True), r(rs1), imm & MASK64)
            elif f3 in (2, 3):
                name = "slti" if f3 == 2 else "sltiu"
                self._d(b, pc, raw, length, f"{name} {n[rd]},{n[rs1]},{imm}")
                if rd:
                    b.emit("setcond", Temp(rd, True), r(rs1), imm & MASK64,
                           cond="lt" if f3 == 2 else "ltu")
            elif f3 in (4, 6, 7):
                opn = {4: "xor", 6: "or", 7: "and"}[f3]
                self._d(b, pc, raw, length, f"{opn}i {n[rd]},{n[rs1]},{imm}")
                if rd:
                    b.emit(opn, Temp(rd, True), r(rs1), imm & MASK64)
            elif f3 == 1 and (insn >> 26) == 0:
                sh = (insn >> 20) & 63
                self._d(b, pc, raw, length, f"slli {n[rd]},{n[rs1]},{sh}")
                if rd:
                    b.emit("shl", Temp(rd, True), r(rs1), sh)
            elif f3 == 5 and (insn >> 26) in (0, 0x10):
                sh = (insn >> 20) & 63
                opn = "sar" if insn >> 30 & 1 else "shr"
                self._d(b, pc, raw, length, f"{'srai' if opn == 'sar' else 'srli'} {n[rd]},{n[rs1]},{sh}")
                if rd:
                    b.emit(opn, Temp(rd, True), r(rs1), sh)
            else:
                self._illegal(b, raw, pc, length)
        elif op == 0x1B:    # OP-IMM-32
            if f3 == 0:
                imm = imm_i(insn)
                self._d(b, pc, raw, length, f"addiw {n[rd]},{n[rs1]},{imm}")
                if rd:
                    b.emit("sext", Temp(rd, True), b.op("add", r(rs1), imm & MASK64), bits=32)
            elif f3 == 1 and f7 == 0:
                self._d(b, pc, raw, length, f"slliw {n[rd]},{n[rs1]},{rs2}")
                if rd:
                    b.emit("sext", Temp(rd, True), b.op("shl", r(rs1), rs2), bits=32)
            elif f3 == 5 and f7 in (0, 0x20):
                self._d(b, pc, raw, length, f"{'sraiw' if f7 else 'srliw'} {n[rd]},{n[rs1]},{rs2}")
                if rd:
                    if f7:
                        b.emit("sar", Temp(rd, True), b.op("sext", r(rs1), bits=32), rs2)
                    else:
                        b.emit("sext", Temp(rd, True), b.op("shr", b.op("zext", r(rs1), bits=32), rs2),
                               bits=32)
            else:
                self._illegal(b, raw, pc, length)
        elif op == 0x33:    # OP
            if f7 == 1:
                self._d(b, pc, raw, length, f"{_MUL_NAME[f3]} {n[rd]},{n[rs1]},{n[rs2]}")
                if rd:
                    b.emit(_MUL[f3], Temp(rd, True), r(rs1), r(rs2))
            elif (f3, f7) in _OP:
                opn = _OP[(f3, f7)]
                self._d(b, pc, raw, length, f"{_OP_NAME[opn]} {n[rd]},{n[rs1]},{n[rs2]}")
                if not rd:
                    pass
                elif opn in ("shl", "shr", "sar"):
                    b.emit(opn, Temp(rd, True), r(rs1), b.op("and", r(rs2), 63))
                elif opn in ("slt", "sltu"):
                    b.emit("setcond", Temp(rd, True), r(rs1), r(rs2), cond="lt" if opn == "slt" else "ltu")
                else:
                    b.emit(opn, Temp(rd, True), r(rs1), r(rs2))
            else:
                self._illegal(b, raw, pc, length)
        elif op == 0x3B:    # OP-32
            self._op32(b, raw, pc, length, rd, f3, rs1, rs2, f7)
        elif op == 0x0F:    # MISC-MEM
            if f3 == 0:
                self._d(b, pc, raw, length, "fence")
            elif f3 == 1:
                self._d(b, pc, raw, length, "fence.i")
                b.emit("exit_tb", None, nxt, lookup=False)
            else:
                self._illegal(b, raw, pc, length)
        elif op == 0x73:
            self._system(b, raw, insn, pc, length, rd, f3, rs1, rs2, f7)
        elif op == 0x2F and f3 in (2, 3):
            self._amo(b, raw, insn, pc, length, rd, f3, rs1, rs2)
        elif op in (0x07, 0x27, 0x53) or (op in (0x43, 0x47, 0x4B, 0x4F) and f7 & 3 < 2):
            self._fp(b, raw, insn, pc, length, op, rd, f3, rs1, rs2, f7)
        else:
            self._illegal(b, raw, pc, length)

    def _fp(self, b: Builder, raw: int, insn: int, pc: int, length: int,
            op: int, rd: int, f3: int, rs1: int, rs2: int, f7: int) -> None:
        r, n = self._r, ABI

        def f(i: int) -> Temp:
            return Temp(FREG + i, True)

        def fp_on(writes_f: bool) -> None:
            b.emit("call", None, int(writes_f), helper="fp", raises=True)

        if op == 0x07 and f3 in (2, 3):             # FLW, FLD
            imm = imm_i(insn)
            self._d(b, pc, raw, length, f"{'flw' if f3 == 2 else 'fld'} f{rd},{imm}({n[rs1]})")
            fp_on(True)
            addr = b.op("add", r(rs1), imm & MASK64)
            if f3 == 3:
                b.emit("ld", f(rd), addr, size=8, signed=False)
            else:
                b.emit("or", f(rd), b.op("ld", addr, size=4, signed=False), BOX)
        elif op == 0x27 and f3 in (2, 3):           # FSW, FSD
            imm = imm_s(insn)
            self._d(b, pc, raw, length, f"{'fsw' if f3 == 2 else 'fsd'} f{rs2},{imm}({n[rs1]})")
            fp_on(False)
            b.emit("st", None, b.op("add", r(rs1), imm & MASK64), f(rs2), size=4 if f3 == 2 else 8)
        elif op == 0x53 and f7 in (0x10, 0x11) and f3 < 3:
            name = ("fsgnj", "fsgnjn", "fsgnjx")[f3] + (".s" if f7 == 0x10 else ".d")
            self._d(b, pc, raw, length, f"{name} f{rd},f{rs1},f{rs2}")
            fp_on(True)
            if f7 == 0x10:
                b.emit("call", f(rd), f3, f(rs1), f(rs2), helper="fsgnj_s")
            else:
                mag = b.op("and", f(rs1), MASK64 ^ SIGN_D)
                if f3 == 0:
                    sign = b.op("and", f(rs2), SIGN_D)
                elif f3 == 1:
                    sign = b.op("and", b.op("xor", f(rs2), MASK64), SIGN_D)
                else:
                    sign = b.op("and", b.op("xor", f(rs1), f(rs2)), SIGN_D)
                b.emit("or", f(rd), mag, sign)
        elif op == 0x53 and (f7 >> 1 in (0x00, 0x02, 0x04, 0x06) or (f7 >> 1 == 0x16 and rs2 == 0)):
            double = f7 & 1
            kind = {0x00: 0, 0x02: 1, 0x04: 2, 0x06: 3, 0x16: 4}[f7 >> 1]
            name = ("fadd", "fsub", "fmul", "fdiv", "fsqrt")[kind] + (".d" if double else ".s")
            operands = f"f{rd},f{rs1}" if kind == 4 else f"f{rd},f{rs1},f{rs2}"
            self._d(b, pc, raw, length, f"{name} {operands}")
            fp_on(True)
            b.emit("call", f(rd), kind, f(rs1), f(rs2), double, f3, helper="farith", raises=True)
        elif op in (0x43, 0x47, 0x4B, 0x4F):          # FMADD FMSUB FNMSUB FNMADD
            kind = (op - 0x43) >> 2
            double = f7 & 1
            rs3 = f7 >> 2
            name = ("fmadd", "fmsub", "fnmsub", "fnmadd")[kind] + (".d" if double else ".s")
            self._d(b, pc, raw, length, f"{name} f{rd},f{rs1},f{rs2},f{rs3}")
            fp_on(True)
            b.emit("call", f(rd), kind, f(rs1), f(rs2), f(rs3), double, f3, helper="ffma", raises=True)
        elif op == 0x53 and f7 in (0x60, 0x61) and rs2 < 4:     # FCVT.{W,WU,L,LU}.{S,D}
            self._d(b, pc, raw, length, f"fcvt.{('w', 'wu', 'l', 'lu')[rs2]}.{'d' if f7 & 1 else 's'} {n[rd]},f{rs1}")
            fp_on(False)
            b.emit("call", self._dst(b, rd), 0, f(rs1), f7 & 1, rs2, f3, helper="fcvt", raises=True)
        elif op == 0x53 and f7 in (0x68, 0x69) and rs2 < 4:     # FCVT.{S,D}.{W,WU,L,LU}
            self._d(b, pc, raw, length, f"fcvt.{'d' if f7 & 1 else 's'}.{('w', 'wu', 'l', 'lu')[rs2]} f{rd},{n[rs1]}")
            fp_on(True)
            b.emit("call", f(rd), 1, r(rs1), f7 & 1, rs2, f3, helper="fcvt", raises=True)
        elif op == 0x53 and (f7, rs2) in ((0x20, 1), (0x21, 0)):  # FCVT.S.D, FCVT.D.S
            double = f7 & 1
            self._d(b, pc, raw, length, f"fcvt.{'d.s' if double else 's.d'} f{rd},f{rs1}")
            fp_on(True)
            b.emit("call", f(rd), 2, f(rs1), double, 0, f3, helper="fcvt", raises=True)
        elif op == 0x53 and f7 in (0x14, 0x15) and f3 < 2:
            double = f7 & 1
            self._d(b, pc, raw, length, f"{('fmin', 'fmax')[f3]}.{'d' if double else 's'} f{rd},f{rs1},f{rs2}")
            fp_on(True)
            b.emit("call", f(rd), f3, f(rs1), f(rs2), double, helper="fminmax")
        elif op == 0x53 and f7 in (0x50, 0x51) and f3 < 3:
            double = f7 & 1
            self._d(b, pc, raw, length, f"{('fle', 'flt', 'feq')[f3]}.{'d' if double else 's'} {n[rd]},f{rs1},f{rs2}")
            fp_on(False)
            b.emit("call", self._dst(b, rd), f3, f(rs1), f(rs2), double, helper="fcmp")
        elif op == 0x53 and f7 in (0x70, 0x71) and rs2 == 0 and f3 in (0, 1):
            double = f7 == 0x71
            if f3 == 0:
                self._d(b, pc, raw, length, f"fmv.x.{'d' if double else 'w'} {n[rd]},f{rs1}")
                fp_on(False)
                if rd:
                    if double:
                        b.emit("mov", Temp(rd, True), f(rs1))
                    else:
                        b.emit("sext", Temp(rd, True), f(rs1), bits=32)
            else:
                self._d(b, pc, raw, length, f"fclass.{'d' if double else 's'} {n[rd]},f{rs1}")
                fp_on(False)
                b.emit("call", self._dst(b, rd), f(rs1), int(double), helper="fclass")
        elif op == 0x53 and f7 in (0x78, 0x79) and rs2 == 0 and f3 == 0:
            double = f7 == 0x79
            self._d(b, pc, raw, length, f"fmv.{'d' if double else 'w'}.x f{rd},{n[rs1]}")
            fp_on(True)
            if double:
                b.emit("mov", f(rd), r(rs1))
            else:
                b.emit("or", f(rd), b.op("zext", r(rs1), bits=32), BOX)
        else:
            self._illegal(b, raw, pc, length)

    def _op32(self, b: Builder, raw: int, pc: int, length: int,
              rd: int, f3: int, rs1: int, rs2: int, f7: int) -> None:
        r, n = self._r, ABI
        names = {(0, 0): "addw", (0, 0x20): "subw", (1, 0): "sllw", (5, 0): "srlw", (5, 0x20): "sraw",
                 (0, 1): "mulw", (4, 1): "divw", (5, 1): "divuw", (6, 1): "remw", (7, 1): "remuw"}
        name = names.get((f3, f7))
        if name is None:
            self._illegal(b, raw, pc, length)
            return
        self._d(b, pc, raw, length, f"{name} {n[rd]},{n[rs1]},{n[rs2]}")
        if not rd:
            return
        d = Temp(rd, True)
        a, c = r(rs1), r(rs2)
        if name == "addw":
            v = b.op("add", a, c)
        elif name == "subw":
            v = b.op("sub", a, c)
        elif name == "mulw":
            v = b.op("mul", a, c)
        elif name == "sllw":
            v = b.op("shl", a, b.op("and", c, 31))
        elif name == "srlw":
            v = b.op("shr", b.op("zext", a, bits=32), b.op("and", c, 31))
        elif name == "sraw":
            b.emit("sar", d, b.op("sext", a, bits=32), b.op("and", c, 31))
            return
        elif name in ("divw", "remw"):
            v = b.op("divs" if name == "divw" else "rems", b.op("sext", a, bits=32), b.op("sext", c, bits=32))
        else:
            v = b.op("divu" if name == "divuw" else "remu", b.op("zext", a, bits=32), b.op("zext", c, bits=32))
        b.emit("sext", d, v, bits=32)

    def _system(self, b: Builder, raw: int, insn: int, pc: int, length: int,
                rd: int, f3: int, rs1: int, rs2: int, f7: int) -> None:
        nxt = (pc + length) & MASK64
        if f3 == 0:
            if insn == 0x00000073:
                self._d(b, pc, raw, length, "ecall")
                b.emit("call", None, helper="ecall", raises=True)
                b.emit("exit_tb", None, nxt, lookup=False)
            elif insn == 0x00100073:
                self._d(b, pc, raw, length, "ebreak")
                b.emit("call", None, helper="ebreak", raises=True)
                b.emit("exit_tb", None, nxt, lookup=False)
            elif insn in (0x30200073, 0x10200073):
                name = "mret" if insn == 0x30200073 else "sret"
                self._d(b, pc, raw, length, name)
                t = b.temp()
                b.emit("call", t, helper=name, raises=True, sync=True)
                b.emit("exit_tb", None, t, lookup=False)
            elif insn == 0x10500073:
                self._d(b, pc, raw, length, "wfi")
                b.emit("call", None, helper="wfi", raises=True, sync=True)
                b.emit("exit_tb", None, nxt, lookup=False)
            elif f7 == 0x09 and rd == 0:
                self._d(b, pc, raw, length, f"sfence.vma {ABI[rs1]},{ABI[rs2]}")
                b.emit("call", None, helper="sfence_vma", raises=True)
                b.emit("exit_tb", None, nxt, lookup=False)
            else:
                self._illegal(b, raw, pc, length)
            return
        if f3 not in CSR_OPS:
            self._illegal(b, raw, pc, length)
            return
        csr = insn >> 20
        kind = f3 & 3                       # 1 write, 2 set, 3 clear
        src: Value = rs1 if f3 & 4 else self._r(rs1)
        writes = kind == 1 or rs1 != 0
        reads = kind != 1 or rd != 0
        self._d(b, pc, raw, length,
                f"{CSR_OPS[f3]} {ABI[rd]},{csr:#x},{rs1 if f3 & 4 else ABI[rs1]}")
        b.emit("call", self._dst(b, rd), kind, csr, src, int(writes), int(reads), pc,
               helper="csr", raises=True, sync=True)
        if writes:
            b.emit("exit_tb", None, nxt, lookup=False)

    def _amo(self, b: Builder, raw: int, insn: int, pc: int, length: int,
             rd: int, f3: int, rs1: int, rs2: int) -> None:
        f5 = insn >> 27
        name = AMO_NAMES.get(f5)
        if name is None or (f5 == 0x02 and rs2 != 0):
            self._illegal(b, raw, pc, length)
            return
        size = 4 if f3 == 2 else 8
        sfx = ".w" if size == 4 else ".d"
        r = self._r
        if f5 == 0x02:
            self._d(b, pc, raw, length, f"lr{sfx} {ABI[rd]},({ABI[rs1]})")
            b.emit("call", self._dst(b, rd), r(rs1), size, helper="lr", raises=True)
        elif f5 == 0x03:
            self._d(b, pc, raw, length, f"sc{sfx} {ABI[rd]},{ABI[rs2]},({ABI[rs1]})")
            b.emit("call", self._dst(b, rd), r(rs1), r(rs2), size, helper="sc", raises=True)
        else:
            self._d(b, pc, raw, length, f"{name}{sfx} {ABI[rd]},{ABI[rs2]},({ABI[rs1]})")
            b.emit("call", self._dst(b, rd), f5, r(rs1), r(rs2), size, helper="amo", raises=True)
