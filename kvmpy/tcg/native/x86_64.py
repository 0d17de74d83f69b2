"""A small x86-64 machine-code emitter: the instructions kvmpy's native TCG tier needs.

Only 64-bit general-purpose forms plus the narrow loads and stores of the softmmu
fast path.  Encodings follow the Intel SDM (REX.W, ModRM, SIB, disp8/disp32) and
pick the same forms GNU as does, so tests can compare byte for byte.

Jumps are rel32 to ``Label`` objects, patched when the label is bound (or at
``finish``).  Registers are numbers 0-15 (``RAX`` .. ``R15``).
"""

from __future__ import annotations

import struct

RAX, RCX, RDX, RBX, RSP, RBP, RSI, RDI = range(8)
R8, R9, R10, R11, R12, R13, R14, R15 = range(8, 16)
REG_NAMES = ["rax", "rcx", "rdx", "rbx", "rsp", "rbp", "rsi", "rdi",
             "r8", "r9", "r10", "r11", "r12", "r13", "r14", "r15"]

# Condition codes (the low nibble of Jcc/SETcc).
CC = {"o": 0, "no": 1, "b": 2, "ae": 3, "e": 4, "ne": 5, "be": 6, "a": 7,
      "s": 8, "ns": 9, "p": 10, "np": 11, "l": 12, "ge": 13, "le": 14, "g": 15}

# Group-1 ALU ops: (reg/mem <- reg opcode, /digit of the immediate forms).
ALU = {"add": (0x01, 0), "or": (0x09, 1), "and": (0x21, 4), "sub": (0x29, 5),
       "xor": (0x31, 6), "cmp": (0x39, 7)}
SHIFT = {"shl": 4, "shr": 5, "sar": 7}


def _fits8(v: int) -> bool:
    return -128 <= v <= 127


def _fits32(v: int) -> bool:
    return -(1 << 31) <= v < (1 << 31)


class Label:
    __slots__ = ("pos", "refs")

    def __init__(self) -> None:
        self.pos: int | None = None
        self.refs: list[int] = []      # offsets of rel32 fields that jump here


class Mem:
    """A memory operand [base + index*scale + disp]."""

    __slots__ = ("base", "index", "scale", "disp")

    def __init__(self, base: int, disp: int = 0, index: int | None = None, scale: int = 1) -> None:
        if index == RSP:
            raise ValueError("rsp cannot be an index")
        if not _fits32(disp):
            raise ValueError("displacement out of range")
        self.base, self.index, self.scale, self.disp = base, index, scale, disp


class Asm:
    def __init__(self) -> None:
        self.buf = bytearray()

    # ---- raw encoding -------------------------------------------------
    def _rex(self, w: bool, reg: int, index: int, base: int, force: bool = False) -> None:
        rex = 0x40 | (8 if w else 0) | ((reg >> 3) << 2) | ((index >> 3) << 1) | (base >> 3)
        if rex != 0x40 or force:
            self.buf.append(rex)

    def _op_rr(self, opcode: bytes, reg: int, rm: int, w: bool = True, byte_regs: bool = False,
               prefix: bytes = b"") -> None:
        """Register-direct form: ModRM mod=11; ``byte_regs``: rm is a byte register."""
        self.buf += prefix
        self._rex(w, reg, 0, rm, force=byte_regs and rm in (4, 5, 6, 7))
        self.buf += opcode
        self.buf.append(0xC0 | ((reg & 7) << 3) | (rm & 7))

    def _op_rm(self, opcode: bytes, reg: int, m: Mem, w: bool = True, byte_reg: bool = False,
               prefix: bytes = b"") -> None:
        """Memory form with ModRM (+SIB) and the shortest displacement."""
        self.buf += prefix
        index = m.index if m.index is not None else 0
        self._rex(w, reg, index, m.base, force=byte_reg and reg in (4, 5, 6, 7))
        self.buf += opcode
        base = m.base & 7
        if m.disp == 0 and base != RBP:
            mod, disp = 0, b""
        elif _fits8(m.disp):
            mod, disp = 1, struct.pack("<b", m.disp)
        else:
            mod, disp = 2, struct.pack("<i", m.disp)
        if m.index is not None or base == RSP:
            idx = (m.index & 7) if m.index is not None else 4
            ss = {1: 0, 2: 1, 4: 2, 8: 3}[m.scale] if m.index is not None else 0
            self.buf.append((mod << 6) | ((reg & 7) << 3) | 4)
            self.buf.append((ss << 6) | (idx << 3) | base)
        else:
            self.buf.append((mod << 6) | ((reg & 7) << 3) | base)
        self.buf += disp

    # ---- moves --------------------------------------------------------
    def mov_rr(self, dst: int, src: int) -> None:
        self._op_rr(b"\x89", src, dst)

    def mov_rr32(self, dst: int, src: int) -> None:
        """mov r32, r32: zero-extends into the full register."""
        self._op_rr(b"\x89", src, dst, w=False)

    def mov_ri(self, dst: int, imm: int) -> None:
        """Load any 64-bit constant (given signed or unsigned) in its shortest form."""
        imm &= (1 << 64) - 1
        if imm < (1 << 32):                       # mov r32, imm32 zero-extends
            self._rex(False, 0, 0, dst)
            self.buf.append(0xB8 | (dst & 7))
            self.buf += struct.pack("<I", imm)
        elif imm >= (1 << 64) - (1 << 31):        # sign-extended imm32
            self._rex(True, 0, 0, dst)
            self.buf += b"\xC7"
            self.buf.append(0xC0 | (dst & 7))
            self.buf += struct.pack("<i", imm - (1 << 64))
        else:                                     # movabs
            self._rex(True, 0, 0, dst)
            self.buf.append(0xB8 | (dst & 7))
            self.buf += struct.pack("<Q", imm)

    def load(self, dst: int, m: Mem) -> None:
        self._op_rm(b"\x8B", dst, m)

    def store(self, m: Mem, src: int) -> None:
        self._op_rm(b"\x89", src, m)

    def store_imm(self, m: Mem, imm: int) -> None:
        """mov qword [m], imm32 (sign-extended)."""
        if not _fits32(imm):
            raise ValueError("immediate out of range")
        self._op_rm(b"\xC7", 0, m)
        self.buf += struct.pack("<i", imm)

    def load_sized(self, dst: int, m: Mem, size: int, signed: bool) -> None:
        """Load 1/2/4/8 bytes, zero- or sign-extended to 64 bits."""
        if size == 8:
            self._op_rm(b"\x8B", dst, m)
        elif signed:
            self._op_rm({1: b"\x0F\xBE", 2: b"\x0F\xBF", 4: b"\x63"}[size], dst, m)
        elif size == 4:
            self._op_rm(b"\x8B", dst, m, w=False)
        else:
            self._op_rm({1: b"\x0F\xB6", 2: b"\x0F\xB7"}[size], dst, m, w=False)

    def store_sized(self, m: Mem, src: int, size: int) -> None:
        if size == 1:
            self._op_rm(b"\x88", src, m, w=False, byte_reg=True)
        elif size == 2:
            self._op_rm(b"\x89", src, m, w=False, prefix=b"\x66")
        else:
            self._op_rm(b"\x89", src, m, w=size == 8)

    def lea(self, dst: int, m: Mem) -> None:
        self._op_rm(b"\x8D", dst, m)

    def movsx_rr(self, dst: int, src: int, bits: int) -> None:
        """Sign-extend the low 8/16/32 bits of ``src`` into ``dst``."""
        if bits == 32:
            self._op_rr(b"\x63", dst, src)
        else:
            self._op_rr({8: b"\x0F\xBE", 16: b"\x0F\xBF"}[bits], dst, src, byte_regs=bits == 8)

    def movzx_rr(self, dst: int, src: int, bits: int) -> None:
        """Zero-extend the low 8/16/32 bits of ``src`` into ``dst``."""
        if bits == 32:
            self.mov_rr32(dst, src)
        else:
            self._op_rr({8: b"\x0F\xB6", 16: b"\x0F\xB7"}[bits], dst, src, w=False, byte_regs=bits == 8)

    # ---- arithmetic -----------------------------------------------------
    def alu_rr(self, op: str, dst: int, src: int) -> None:
        self._op_rr(bytes([ALU[op][0]]), src, dst)

    def alu_rm(self, op: str, dst: int, m: Mem) -> None:
        self._op_rm(bytes([ALU[op][0] + 2]), dst, m)

    def alu_mr(self, op: str, m: Mem, src: int) -> None:
        """[m] = [m] op src (cmp: compare [m] with src)."""
        self._op_rm(bytes([ALU[op][0]]), src, m)

    def alu_mi(self, op: str, m: Mem, imm: int) -> None:
        """op qword [m], imm (sign-extended imm8 or imm32)."""
        digit = ALU[op][1]
        if _fits8(imm):
            self._op_rm(b"\x83", digit, m)
            self.buf += struct.pack("<b", imm)
        elif _fits32(imm):
            self._op_rm(b"\x81", digit, m)
            self.buf += struct.pack("<i", imm)
        else:
            raise ValueError("immediate out of range")

    def alu_ri(self, op: str, dst: int, imm: int) -> None:
        """op r64, imm (sign-extended imm8 or imm32)."""
        digit = ALU[op][1]
        if _fits8(imm):
            self._op_rr(b"\x83", digit, dst)
            self.buf += struct.pack("<b", imm)
        elif _fits32(imm) and dst == RAX:          # the short rax form, as GNU as picks
            self.buf += bytes([0x48, (digit << 3) | 5])
            self.buf += struct.pack("<i", imm)
        elif _fits32(imm):
            self._op_rr(b"\x81", digit, dst)
            self.buf += struct.pack("<i", imm)
        else:
            raise ValueError("immediate out of range")

    def test_rr(self, a: int, b: int) -> None:
        self._op_rr(b"\x85", b, a)

    def shift_ri(self, op: str, dst: int, count: int) -> None:
        if count == 1:
            self._op_rr(b"\xD1", SHIFT[op], dst)
        else:
            self._op_rr(b"\xC1", SHIFT[op], dst)
            self.buf.append(count & 63)

    def shift_rcl(self, op: str, dst: int) -> None:
        """Shift ``dst`` by cl (the count is taken mod 64 by the CPU)."""
        self._op_rr(b"\xD3", SHIFT[op], dst)

    def imul_rr(self, dst: int, src: int) -> None:
        self._op_rr(b"\x0F\xAF", dst, src)

    def mul_r(self, src: int) -> None:
        """rdx:rax = rax * src, unsigned."""
        self._op_rr(b"\xF7", 4, src)

    def imul_r(self, src: int) -> None:
        """rdx:rax = rax * src, signed."""
        self._op_rr(b"\xF7", 5, src)

    def div_r(self, src: int) -> None:
        self._op_rr(b"\xF7", 6, src)

    def idiv_r(self, src: int) -> None:
        self._op_rr(b"\xF7", 7, src)

    def neg_r(self, dst: int) -> None:
        self._op_rr(b"\xF7", 3, dst)

    def cqo(self) -> None:
        self.buf += b"\x48\x99"

    def setcc(self, cc: str, dst: int) -> None:
        """Set the low byte of ``dst`` to the condition (the rest is untouched)."""
        self._op_rr(bytes([0x0F, 0x90 | CC[cc]]), 0, dst, w=False, byte_regs=True)

    # ---- control flow ---------------------------------------------------
    def push(self, r: int) -> None:
        self._rex(False, 0, 0, r)
        self.buf.append(0x50 | (r & 7))

    def pop(self, r: int) -> None:
        self._rex(False, 0, 0, r)
        self.buf.append(0x58 | (r & 7))

    def ret(self) -> None:
        self.buf.append(0xC3)

    def call_r(self, r: int) -> None:
        self._op_rr(b"\xFF", 2, r, w=False)

    def jmp_r(self, r: int) -> None:
        self._op_rr(b"\xFF", 4, r, w=False)

    def _rel32(self, label: Label) -> None:
        label.refs.append(len(self.buf))
        self.buf += b"\0\0\0\0"
        if label.pos is not None:
            self._patch(label.refs[-1], label.pos)

    def _patch(self, at: int, target: int) -> None:
        self.buf[at:at + 4] = struct.pack("<i", target - (at + 4))

    def jmp(self, label: Label) -> None:
        self.buf.append(0xE9)
        self._rel32(label)

    def jcc(self, cc: str, label: Label) -> None:
        self.buf += bytes([0x0F, 0x80 | CC[cc]])
        self._rel32(label)

    def bind(self, label: Label) -> None:
        if label.pos is not None:
            raise ValueError("label bound twice")
        label.pos = len(self.buf)
        for at in label.refs:
            self._patch(at, label.pos)

    def finish(self) -> bytes:
        return bytes(self.buf)
