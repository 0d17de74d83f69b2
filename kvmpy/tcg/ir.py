"""The architecture-neutral intermediate representation (IR) of one translation block.

A frontend turns guest instructions into a flat list of ``Insn``; the optimizer
rewrites the list; a backend (today: Python source, later maybe native x86-64)
turns it into something executable.  Frontends never see the backend.

Values are either ``Temp`` (a guest-state slot, ``is_global``, or a block-local
temporary) or plain ``int`` constants.  Every integer op works on unsigned 64-bit
values and yields a 64-bit result.

Op reference (``d`` = destination, ``a``/``b`` = operands):

=============  ==========================================================
mov d a        copy
add sub mul    wrap-around arithmetic
and or xor     bitwise
shl shr sar    shift by ``b`` (0..63; frontends mask the count)
mulh mulhu     high 64 bits of the signed*signed / unsigned*unsigned /
mulhsu         signed*unsigned 128-bit product
divs divu      division; x/0 = all ones, MIN/-1 = MIN
rems remu      remainder; x%0 = x, MIN%-1 = 0
sext d a bits  sign-extend the low ``bits`` bits (attr ``bits``)
zext d a bits  zero-extend the low ``bits`` bits
setcond d a b  1 if ``cond`` holds else 0 (attr ``cond``: eq ne lt ge ltu geu)
ld d addr      load ``size`` bytes (attr ``size``, ``signed``) through the softmmu
st addr val    store ``size`` bytes
call d args    helper ``helper`` (attrs: ``raises`` may raise GuestTrap,
               ``sync`` needs exact instret in guest state before the call)
insn_start     marks a guest instruction (attr ``pc``); used for precise traps
goto_tb        end of block, jump to constant ``pc`` (chainable)
brcond a b     end of block: to ``taken`` if ``cond`` else to ``fall`` (chainable)
exit_tb a      end of block, jump to the pc in ``a``; attr ``lookup``: True when
               the dispatcher may look the target up directly (indirect jump),
               False when machine state changed and it must re-evaluate the
               context (privilege, MMU) first
=============  ==========================================================

Optional hint set by the optimizer: ``low32`` on add/sub/mul/shl/ld means only
the low 32 bits of the result are ever read, so a backend may skip wrapping it.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, NamedTuple, Union

MASK64 = (1 << 64) - 1
SIGN64 = 1 << 63


class Temp(NamedTuple):
    """Immutable and hashed in C: the optimizer and backend use temps as dict keys a lot."""

    index: int
    is_global: bool

    def __repr__(self) -> str:
        return f"g{self.index}" if self.is_global else f"t{self.index}"


Value = Union[Temp, int]

PURE_OPS = frozenset({
    "mov", "add", "sub", "mul", "and", "or", "xor", "shl", "shr", "sar",
    "mulh", "mulhu", "mulhsu", "divs", "divu", "rems", "remu", "sext", "zext", "setcond",
})
TERMINATORS = frozenset({"goto_tb", "brcond", "exit_tb"})
CONDS = frozenset({"eq", "ne", "lt", "ge", "ltu", "geu"})


@dataclass(slots=True)
class Insn:
    op: str
    dst: Temp | None
    args: list[Value]
    attrs: dict[str, Any] = field(default_factory=dict)

    def __repr__(self) -> str:
        parts = [self.op]
        if self.dst is not None:
            parts.append(f"{self.dst!r} =")
        parts.append(", ".join(hex(a) if isinstance(a, int) else repr(a) for a in self.args))
        if self.attrs:
            parts.append(" ".join(
                f"{k}={hex(v) if isinstance(v, int) and not isinstance(v, bool) else v}"
                for k, v in self.attrs.items()))
        return " ".join(p for p in parts if p)


@dataclass
class Block:
    """The IR of one translation block plus what the TB cache needs to know about it."""

    pc: int
    insns: list[Insn] = field(default_factory=list)
    n_guest: int = 0          # guest instructions in the block
    size: int = 0             # bytes of guest code
    disasm: list[str] = field(default_factory=list)  # filled when in_asm tracing is on

    def successors(self) -> list[int]:
        """Constant jump targets of the terminator, in exit order."""
        last = self.insns[-1]
        if last.op == "goto_tb":
            return [last.attrs["pc"]]
        if last.op == "brcond":
            return [last.attrs["taken"], last.attrs["fall"]]
        return []


class Builder:
    """Emits IR for one block; the frontend's only way to produce IR."""

    def __init__(self, pc: int) -> None:
        self.block = Block(pc)
        self._ntemps = 0
        self.closed = False

    def temp(self) -> Temp:
        self._ntemps += 1
        return Temp(self._ntemps, False)

    @staticmethod
    def glob(index: int) -> Temp:
        return Temp(index, True)

    def emit(self, op: str, dst: Temp | None, *args: Value, **attrs: Any) -> Temp | None:
        if self.closed:
            raise RuntimeError("block already terminated")
        self.block.insns.append(Insn(op, dst, list(args), attrs))
        if op in TERMINATORS:
            self.closed = True
        return dst

    def op(self, op: str, *args: Value, **attrs: Any) -> Temp:
        """Emit a pure op into a fresh temporary and return it."""
        t = self.temp()
        self.emit(op, t, *args, **attrs)
        return t

    def insn_start(self, pc: int) -> None:
        self.block.insns.append(Insn("insn_start", None, [], {"pc": pc}))
        self.block.n_guest += 1
