"""Our cffi layouts must match the system <linux/kvm.h> field for field."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest

from kvmpy.kvm import ioctls
from kvmpy.kvm.abi import ffi

STRUCTS = [
    "kvm_regs", "kvm_segment", "kvm_dtable", "kvm_sregs", "kvm_fpu", "kvm_msr_entry", "kvm_msrs",
    "kvm_msr_list", "kvm_cpuid_entry2", "kvm_cpuid2", "kvm_lapic_state", "kvm_pic_state",
    "kvm_ioapic_state", "kvm_irqchip", "kvm_irq_level", "kvm_pit_config", "kvm_pit_channel_state",
    "kvm_pit_state2", "kvm_userspace_memory_region", "kvm_dirty_log", "kvm_clock_data",
    "kvm_mp_state", "kvm_enable_cap", "kvm_coalesced_mmio_zone", "kvm_coalesced_mmio",
    "kvm_coalesced_mmio_ring", "kvm_vcpu_events", "kvm_debugregs", "kvm_xsave", "kvm_xcr",
    "kvm_xcrs", "kvm_irqfd", "kvm_ioeventfd", "kvm_irq_routing_irqchip", "kvm_irq_routing_msi",
    "kvm_irq_routing_entry", "kvm_irq_routing", "kvm_msi",
]


def _fields(ctype, prefix: str = "", base: int = 0):
    """Yield (dotted path, offset) for every named field, descending into nested structs."""
    for name, field in ctype.fields or []:
        path = f"{prefix}{name}"
        yield path, base + field.offset
        sub = field.type
        if sub.kind == "struct" and sub.cname.startswith("struct $"):  # anonymous nested struct
            yield from _fields(sub, path + ".", base + field.offset)


def _ours() -> dict[str, int]:
    out: dict[str, int] = {}
    for s in STRUCTS:
        t = ffi.typeof(f"struct {s}")
        out[f"sizeof {s}"] = ffi.sizeof(t)
        for path, off in _fields(t):
            out[f"offsetof {s} {path}"] = off
    return out


def _header_values(tmp_path: Path, exprs: dict[str, str]) -> dict[str, int]:
    """Compile a C program against the system <linux/kvm.h> that prints each expression; key -> value."""
    if shutil.which("cc") is None:
        pytest.skip("needs a C compiler")
    if not Path("/usr/include/linux/kvm.h").exists():
        pytest.skip("linux-libc-dev is not installed (/usr/include/linux/kvm.h missing)")
    lines = ["#include <stdio.h>", "#include <stddef.h>", "#include <linux/kvm.h>", "int main(void) {"]
    lines += [f'  printf("%s %lu\\n", "{key}", (unsigned long)({expr}));' for key, expr in exprs.items()]
    lines += ["  return 0;", "}"]
    src = tmp_path / "probe.c"
    src.write_text("\n".join(lines))
    exe = tmp_path / "probe"
    subprocess.run(["cc", "-o", str(exe), str(src)], check=True, capture_output=True)
    out = subprocess.run([str(exe)], check=True, capture_output=True, text=True).stdout
    return {line.rsplit(" ", 1)[0]: int(line.rsplit(" ", 1)[1]) for line in out.splitlines()}


def test_layouts_match_system_header(tmp_path: Path) -> None:
    ours = _ours()
    exprs = {}
    for key in ours:
        kind, struct_name, *rest = key.split(" ")
        exprs[key] = f"sizeof(struct {struct_name})" if kind == "sizeof" else \
            f"offsetof(struct {struct_name}, {rest[0]})"
    theirs = _header_values(tmp_path, exprs)
    mismatches = {k: (ours[k], theirs[k]) for k in ours if ours[k] != theirs[k]}
    assert not mismatches, f"layout differences (ours, kernel): {mismatches}"
    assert len(theirs) == len(ours) > 100


def test_ioctl_numbers_match_system_header(tmp_path: Path) -> None:
    """Every request number in kvmpy.kvm.ioctls equals the header's macro of the same name."""
    names = sorted(n for n in vars(ioctls) if n.startswith("KVM_") and isinstance(getattr(ioctls, n), int))
    theirs = _header_values(tmp_path, {n: n for n in names})
    assert {n: hex(getattr(ioctls, n)) for n in names} == {n: hex(theirs[n]) for n in names}
    assert len(names) > 50 and "KVM_SET_GSI_ROUTING" in names and "KVM_SIGNAL_MSI" in names
