"""Port 0x80, the POST-code/delay port: writes are discarded, reads return 0xff.

Because writes have no effect, the machine may let KVM coalesce them
(KVM_CAP_COALESCED_PIO) so that guests using it as an I/O delay do not pay an exit each time.
"""

from __future__ import annotations

from typing import Any

from kvmpy.devices.device import check_keys, int_field

PORT = 0x80


class Port80:
    def __init__(self) -> None:
        self.last = 0

    def read(self, offset: int, size: int) -> int:
        return (1 << (8 * size)) - 1

    def write(self, offset: int, size: int, value: int) -> None:
        self.last = value & 0xFF

    def save(self) -> dict[str, Any]:
        return {"last": self.last}

    def reset(self) -> None:
        self.last = 0

    def validate(self, state: dict[str, Any]) -> int:
        check_keys(state, set(), {"last"})
        return int_field(state, "last", 0, 0xFF) if "last" in state else 0

    def restore(self, state: dict[str, Any]) -> None:
        self.last = self.validate(state)
