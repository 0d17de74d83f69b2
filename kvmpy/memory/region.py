"""MemoryRegion: the nodes of the guest-physical memory tree (RAM, alias, I/O, container).

As in QEMU's memory API, regions nest: a container holds subregions at offsets
with priorities, an alias shows a window of another region, RAM is backed by a
RAMBlock and I/O forwards accesses to a device. An AddressSpace flattens the
tree; regions themselves know nothing about KVM.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from kvmpy.devices.bus import Device
    from kvmpy.memory.ramblock import RAMBlock


class RegionKind(enum.Enum):
    CONTAINER = "container"
    RAM = "ram"
    ALIAS = "alias"
    IO = "io"


@dataclass(eq=False)
class Subregion:
    offset: int
    region: "MemoryRegion"
    priority: int


@dataclass(eq=False)
class MemoryRegion:
    name: str
    size: int
    kind: RegionKind
    ram: "RAMBlock | None" = None
    ram_offset: int = 0
    alias_of: "MemoryRegion | None" = None
    alias_offset: int = 0
    device: "Device | None" = None
    readonly: bool = False
    subregions: list[Subregion] = field(default_factory=list)

    @classmethod
    def container(cls, name: str, size: int) -> "MemoryRegion":
        return cls(name, size, RegionKind.CONTAINER)

    @classmethod
    def ram_region(cls, name: str, block: "RAMBlock", offset: int = 0, size: int | None = None,
                   readonly: bool = False) -> "MemoryRegion":
        size = block.size - offset if size is None else size
        if offset < 0 or size <= 0 or offset + size > block.size:
            raise ValueError(f"region {name!r}: [{offset:#x}, +{size:#x}) is outside RAM block {block.name!r}")
        return cls(name, size, RegionKind.RAM, ram=block, ram_offset=offset, readonly=readonly)

    @classmethod
    def alias(cls, name: str, target: "MemoryRegion", offset: int, size: int) -> "MemoryRegion":
        if offset < 0 or size <= 0 or offset + size > target.size:
            raise ValueError(f"alias {name!r}: [{offset:#x}, +{size:#x}) is outside {target.name!r}")
        return cls(name, size, RegionKind.ALIAS, alias_of=target, alias_offset=offset)

    @classmethod
    def io(cls, name: str, size: int, device: "Device") -> "MemoryRegion":
        return cls(name, size, RegionKind.IO, device=device)

    def add_subregion(self, offset: int, region: "MemoryRegion", priority: int = 0) -> None:
        if self.kind is not RegionKind.CONTAINER:
            raise TypeError(f"{self.name!r} is not a container")
        if offset < 0 or offset + region.size > self.size:
            raise ValueError(f"{region.name!r} at {offset:#x}+{region.size:#x} does not fit in {self.name!r}")
        if any(s.region is region for s in self.subregions):
            raise ValueError(f"{region.name!r} is already mapped in {self.name!r}")
        self.subregions.append(Subregion(offset, region, priority))

    def del_subregion(self, region: "MemoryRegion") -> None:
        before = len(self.subregions)
        self.subregions = [s for s in self.subregions if s.region is not region]
        if len(self.subregions) == before:
            raise KeyError(f"{region.name!r} is not mapped in {self.name!r}")
