"""HTIF: the tohost/fromhost mailbox of riscv-tests and spike, found by ELF symbol.

A write to ``tohost`` is a command: device 0 with bit 0 set ends the run with
exit status ``value >> 1`` (1 means pass); device 0 with bit 0 clear points at a
proxy-kernel syscall block (only ``write`` to fd 1/2 is served); device 1 command
1 prints one character.
"""

from __future__ import annotations

import logging
from typing import Callable, Sequence

from kvmpy.tcg.errors import MachineExit
from kvmpy.tcg.softmmu import SoftMmu

log = logging.getLogger(__name__)

SYS_WRITE = 64
MAX_WRITE = 1 << 20
MASK64 = (1 << 64) - 1


class Htif:
    def __init__(self, mem: SoftMmu, tohost: int, fromhost: int | None,
                 output: Callable[[bytes], None], other_cpus: Sequence[SoftMmu] = ()) -> None:
        """``other_cpus``: the softmmus of the machine's other harts, whose stores to tohost count too."""
        self.mem = mem
        self.tohost = tohost
        self.fromhost = fromhost
        self.output = output
        for m in (mem, *other_cpus):
            m.watch_page(tohost >> 12, self._written)

    def _written(self, paddr: int, size: int, value: int) -> None:
        if not (paddr <= self.tohost < paddr + size or self.tohost <= paddr < self.tohost + 8):
            return
        cmd = self.mem.phys_read(self.tohost, 8)
        if cmd == 0:
            return
        self.mem.phys_write(self.tohost, 8, 0)
        device, command, payload = cmd >> 56, (cmd >> 48) & 0xFF, cmd & ((1 << 48) - 1)
        if device == 0 and command == 0:
            if payload & 1:
                code = payload >> 1
                raise MachineExit(code, f"htif: exit {code}")
            self._syscall(payload)
        elif device == 1 and command == 1:
            self.output(bytes((payload & 0xFF,)))
            self._reply((1 << 56) | (1 << 48))
        else:
            log.debug("htif: ignored command %#x", cmd)

    def _syscall(self, block: int) -> None:
        try:
            args = [self.mem.phys_read(block + 8 * i, 8) for i in range(4)]
        except Exception:
            log.debug("htif: syscall block %#x outside memory", block)
            return
        num, fd, buf, length = args
        ret = (-38) & MASK64                     # -ENOSYS
        if num == SYS_WRITE and fd in (1, 2) and length <= MAX_WRITE and self.mem.in_ram(buf, length):
            off = buf - self.mem.ram_base
            self.output(bytes(self.mem.ram[off:off + length]))
            ret = length
        self.mem.phys_write(block, 8, ret)
        self._reply(1)

    def _reply(self, value: int) -> None:
        if self.fromhost is not None and self.mem.in_ram(self.fromhost, 8):
            self.mem.phys_write(self.fromhost, 8, value)
