"""VcpuState: everything KVM holds for one x86 vCPU, as versioned plain data.

Saved structs are the kernel's own layouts as bytes (their sizes are checked
on restore); MSRs are an index → value map. Restore order matters: special
registers before general ones, the LAPIC before pending events, and the MP
state last so that a halted or waiting AP stays that way.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from kvmpy.kvm.vcpu import VcpuFd

STATE_VERSION = 1
RAW_PARTS = ("sregs", "regs", "fpu", "xsave", "xcrs", "debugregs", "lapic", "events")


@dataclass
class VcpuState:
    vcpu_id: int
    raw: dict[str, bytes]
    msrs: dict[int, int]
    mp_state: int
    version: int = STATE_VERSION

    def to_data(self) -> dict[str, Any]:
        return {"version": self.version, "vcpu_id": self.vcpu_id, "raw": dict(self.raw),
                "msrs": {str(k): v for k, v in self.msrs.items()}, "mp_state": self.mp_state}

    @classmethod
    def from_data(cls, data: dict[str, Any]) -> "VcpuState":
        if data.get("version") != STATE_VERSION:
            raise ValueError(f"vCPU state version {data.get('version')!r} is not {STATE_VERSION}")
        raw_parts, msr_map = data["raw"], data["msrs"]
        if not isinstance(raw_parts, dict) or not isinstance(msr_map, dict):
            raise ValueError("vCPU state needs 'raw' and 'msrs' maps")
        # bytes() of an int would allocate that many zero bytes: only byte strings are accepted.
        if not all(isinstance(v, (bytes, bytearray)) for v in raw_parts.values()):
            raise ValueError("vCPU register state must be byte strings")
        if not all(type(v) is int for v in (*msr_map.values(), data["vcpu_id"], data["mp_state"])):
            raise ValueError("vCPU MSR values, id and MP state must be integers")
        raw = {k: bytes(v) for k, v in raw_parts.items() if k in RAW_PARTS}
        msrs = {int(k): v & (1 << 64) - 1 for k, v in msr_map.items()}
        return cls(data["vcpu_id"], raw, msrs, data["mp_state"])


@dataclass
class VcpuStateIO:
    """Knows which parts the kernel supports and which MSRs to carry."""

    msr_indices: list[int]
    parts: tuple[str, ...] = field(default=RAW_PARTS)

    def save(self, vcpu: VcpuFd) -> VcpuState:
        raw = {p: vcpu.get_raw(p) for p in self.parts}
        msrs = vcpu.get_msrs(self.msr_indices) if self.msr_indices else {}
        return VcpuState(vcpu.vcpu_id, raw, msrs, vcpu.get_mp_state())

    def restore(self, vcpu: VcpuFd, state: VcpuState) -> None:
        for part in self.parts:
            if part in state.raw:
                vcpu.set_raw(part, state.raw[part])
        if state.msrs:
            vcpu.set_msrs(state.msrs)
        vcpu.set_mp_state(state.mp_state)
