"""The ``virt`` board's mask ROM at 0x1000: QEMU's reset vector and OpenSBI's fw_dynamic_info.

Read-only: guest writes are ignored (QEMU maps it as ROM).  The board fills it
at every boot with ``load()``; bytes past the image read as zero.
"""

from __future__ import annotations

import logging

log = logging.getLogger(__name__)


class Mrom:
    def __init__(self, size: int) -> None:
        self.size = size
        self.data = bytes(size)

    def load(self, image: bytes) -> None:
        if len(image) > self.size:
            raise ValueError(f"mrom: {len(image)}-byte image does not fit in {self.size} bytes")
        self.data = image + bytes(self.size - len(image))

    def read(self, offset: int, size: int) -> int:
        return int.from_bytes(self.data[offset:offset + size], "little")

    def write(self, offset: int, size: int, value: int) -> None:
        log.debug("mrom: ignored write of %#x at %#x", value, offset)

    def reset(self) -> None:
        """The contents are the board's boot image; a reset keeps them (the board loads them again)."""
