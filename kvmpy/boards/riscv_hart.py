"""One hart of the riscv64 ``virt`` board with its own engine: CPU state, softmmu, TB cache, CPU loop.

Every hart gets a whole TCG engine of its own (its TLBs, its translated blocks and
jump caches, its native code tier), because translated code calls the helpers of
one ``RiscvCpu``.  What the harts share comes in from the board: the RAM, the
set of RAM pages holding translated code (so a store from any hart to code any hart
translated takes the slow path), and the MMIO bus.  The board wires the callbacks:
device polling, WFI idling, self-modifying code and TLB flushes.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import IO, TYPE_CHECKING, Callable

from kvmpy.devices.bus import Bus
from kvmpy.tcg.backend_py import StateLayout, compile_unit, runtime_namespace
from kvmpy.tcg.cpu_loop import CpuLoop
from kvmpy.tcg.errors import GuestTrap, MachineExit
from kvmpy.tcg.softmmu import AccessFaults, SoftMmu
from kvmpy.tcg.target.riscv.cpu import RiscvCpu
from kvmpy.tcg.target.riscv.translate import INSTRET, N_SLOTS, PC, Translator
from kvmpy.tcg.tb_cache import TBCache

if TYPE_CHECKING:
    from kvmpy.tcg.native.backend import NativeTier

log = logging.getLogger(__name__)

RISCV_FAULTS = AccessFaults(read=5, write=7, fetch=1)


@dataclass(frozen=True)
class SharedMemory:
    """What every hart's softmmu is built on: the RAM, its base, the code pages and the MMIO bus."""

    base: int
    ram: bytearray
    code_pages: set[int]
    bus: Bus


class Hart:
    def __init__(self, hartid: int, shared: SharedMemory, ns_per_insn: int | None, tier: str,
                 native_eager: bool, trace_flags: set[str], tracer: Callable[[str], None] | None,
                 mark_code_page: Callable[[int], None] | None = None) -> None:
        """``tier``: ``py`` or ``native``; ``tracer`` writes -d output (None: no tracing);
        ``mark_code_page``: called when this hart translates code from a RAM page (default: its softmmu's)."""
        self.hartid = hartid
        self.mem = SoftMmu(shared.base, len(shared.ram), shared.bus, RISCV_FAULTS, ram=shared.ram,
                           code_pages=shared.code_pages)
        self.cpu = RiscvCpu(self.mem, hartid=hartid, ns_per_insn=ns_per_insn)
        self.mem.translate = self.cpu.mmu.translate
        self.translator = Translator(self.mem.fetch, disasm="in_asm" in trace_flags)
        layout = StateLayout(N_SLOTS, PC, INSTRET)
        self.native: NativeTier | None = None
        compile_fn = compile_unit
        promote = None
        if tier == "native":
            from kvmpy.tcg.native.backend import NativeTier    # cffi and executable memory only when asked for
            self.native = NativeTier(layout, self.mem.ram, self.mem.load, self.mem.store, (GuestTrap, MachineExit),
                                     eager=native_eager)
            # The softmmu's TLB dicts become mirrors the machine code reads (same dict API).
            self.mem.tlb_read, self.mem.tlb_write = self.native.tlb_read, self.native.tlb_write
            compile_fn = self.native.compile_or_fallback
            promote = self.native.promote
        elif tier != "py":
            raise ValueError(f"unknown TCG tier {tier!r} (py or native)")
        ns = runtime_namespace()
        ns.update(self.mem.namespace())
        ns.update(self.cpu.helpers())
        ns["GuestTrap"] = GuestTrap
        ns["_UnitExit"] = (GuestTrap, MachineExit)
        chaining = not ({"exec", "nochain", "cpu"} & trace_flags)
        self.cache = TBCache(layout, ns, self.translator.translate,
                             mark_code_page or self.mem.mark_code_page,
                             trace=tracer if {"in_asm", "op", "out_asm"} & trace_flags else None,
                             trace_ir="op" in trace_flags, chaining=chaining,
                             trace_out="out_asm" in trace_flags, compile_fn=compile_fn, promote=promote,
                             observer=self.native)
        self.cpu.on_tlb_flush = self._tlb_flushed
        if "int" in trace_flags and tracer is not None:
            self.cpu.trace_int = lambda s: tracer(f"hart {hartid}: {s}\n" if hartid else s + "\n")
        exec_trace = self._trace_exec if {"exec", "cpu"} & trace_flags and tracer else None
        self._tracer = tracer
        self._trace_cpu = "cpu" in trace_flags
        self.loop = CpuLoop(self.cpu, self.cache, exec_trace)

    def _tlb_flushed(self, all_contexts: bool) -> None:
        if all_contexts:
            self.cache.flush_jump_caches(lambda ctx: False)
        else:
            self.cache.flush_jump_caches(lambda ctx: not self.cpu.paged(ctx))

    def code_written(self, page: int) -> None:
        """A store changed RAM page ``page``: the blocks translated from it are gone."""
        self.cache.invalidate_page(page)

    def reset(self) -> None:
        """Power-on state of the hart and an empty engine (no blocks, no TLB entries)."""
        self.cache.flush_all()
        self.mem.flush()
        self.cpu.reset()

    def _trace_exec(self, pc: int) -> None:
        assert self._tracer is not None
        cpu = self.cpu
        self._tracer(f"Trace {self.hartid}: [{pc:016x}] priv={cpu.priv} instret={cpu.R[INSTRET]}\n")
        if self._trace_cpu:
            regs = " ".join(f"x{i}={cpu.R[i]:016x}" + ("\n" if i % 4 == 3 else "") for i in range(1, 32))
            self._tracer(f" pc={cpu.R[PC]:016x} {regs}\n")
