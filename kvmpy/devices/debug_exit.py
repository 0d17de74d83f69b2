"""isa-debug-exit: a guest write ends the VM with exit status ``(value << 1) | 1``, as in QEMU."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable

from kvmpy.devices.device import check_keys

DEFAULT_IOBASE = 0x501
DEFAULT_IOSIZE = 0x02


@dataclass
class DebugExit:
    """``on_exit(status)`` is called from the vCPU thread; the machine stops and exits with it."""

    on_exit: Callable[[int], None]
    iosize: int = DEFAULT_IOSIZE

    def read(self, offset: int, size: int) -> int:
        return (1 << (8 * size)) - 1

    def write(self, offset: int, size: int, value: int) -> None:
        # QEMU's device is iosize bytes wide; the written value is taken as is.
        value &= (1 << (8 * min(size, 4))) - 1
        self.on_exit(((value << 1) | 1) & 0xFF)

    def reset(self) -> None:
        pass  # no state

    def save(self) -> dict[str, Any]:
        return {}

    def validate(self, state: dict[str, Any]) -> None:
        check_keys(state, set())

    def restore(self, state: dict[str, Any]) -> None:
        self.validate(state)
