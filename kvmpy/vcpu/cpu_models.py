"""The x86 ``-cpu`` models: which of KVM's supported CPUID feature bits each model shows the guest.

QEMU's default model is ``qemu64``, a small baseline that every x86-64 host
can run (SSE2, SSE3, CX16, NX, LAHF; no AVX, no leaf-7 features, no PCID),
and kvmpy follows it: a guest sees the same features under both unless the
user asks for more. ``host`` and ``max`` pass everything KVM supports
(KVM_GET_SUPPORTED_CPUID), as QEMU's ``-cpu host`` does under KVM.
``kvm64`` is QEMU's older baseline (qemu64 without SSE3/CX16/LAHF/ABM).

A model only removes feature bits (leaves 1, 7 and 0x80000001); the vendor,
family/model, cache and topology leaves and KVM's paravirtual leaves stay
the host's, which differs from QEMU (its qemu64 names itself an AMD family 15
CPU). Any other model name QEMU knows is taken as ``host`` with a warning,
and feature flags after the model name (``qemu64,+avx``) are refused.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, replace

from kvmpy.errors import shown
from kvmpy.kvm.system import CpuidEntry

log = logging.getLogger(__name__)

# Leaf 1 EDX (bit numbers from the Intel SDM / AMD APM).
FPU, VME, DE, PSE, TSC, MSR, PAE, MCE, CX8, APIC = 0, 1, 2, 3, 4, 5, 6, 7, 8, 9
SEP, MTRR, PGE, MCA, CMOV, PAT, PSE36, CLFLUSH = 11, 12, 13, 14, 15, 16, 17, 19
MMX, FXSR, SSE, SSE2 = 23, 24, 25, 26
# Leaf 1 ECX.
SSE3, CX16, X2APIC, HYPERVISOR = 0, 13, 21, 31
# Leaf 0x80000001 EDX and ECX.
SYSCALL, NX, LM = 11, 20, 29
LAHF_LM, ABM, SSE4A = 0, 5, 6
AMD_ALIASES = 0x0183F3FF  # leaf-1 EDX bits AMD repeats in 0x80000001 EDX


def _bits(*numbers: int) -> int:
    out = 0
    for n in numbers:
        out |= 1 << n
    return out


PPRO_EDX = _bits(FPU, DE, PSE, TSC, MSR, MCE, CX8, PGE, CMOV, PAT, FXSR, MMX, SSE, SSE2, PAE, SEP, APIC)


@dataclass(frozen=True)
class CpuModel:
    """A model: masks for the feature registers it filters (None: the model passes everything)."""

    name: str
    description: str
    leaf1_edx: int | None = None
    leaf1_ecx: int | None = None
    ext_edx: int | None = None  # 0x80000001 EDX, before AMD's aliases of leaf 1 EDX are added back
    ext_ecx: int | None = None

    @property
    def passes_all(self) -> bool:
        return self.leaf1_edx is None

    def apply(self, supported: list[CpuidEntry]) -> list[CpuidEntry]:
        """``supported`` with this model's features only (KVM's paravirtual leaves untouched)."""
        if self.passes_all:
            return list(supported)
        out = []
        leaf1_edx = 0
        for e in supported:
            if e.function == 1:
                leaf1_edx = e.edx & self.leaf1_edx  # type: ignore[operator]
                e = replace(e, edx=leaf1_edx, ecx=e.ecx & self.leaf1_ecx)  # type: ignore[operator]
            out.append(e)
        for i, e in enumerate(out):
            if e.function == 7:  # structured extended features: none in the baseline models
                out[i] = replace(e, ebx=0, ecx=0, edx=0, eax=0)
            elif e.function == 0x80000001:
                edx = e.edx & (self.ext_edx | (leaf1_edx & AMD_ALIASES))  # type: ignore[operator]
                out[i] = replace(e, edx=edx, ecx=e.ecx & self.ext_ecx)  # type: ignore[operator]
        return out


_QEMU64_EDX = PPRO_EDX | _bits(MTRR, CLFLUSH, MCA, PSE36)
MODELS: dict[str, CpuModel] = {m.name: m for m in (
    CpuModel("qemu64", "QEMU's default baseline: SSE2/SSE3/CX16, NX, no AVX or leaf-7 features (kvmpy's default)",
             leaf1_edx=_QEMU64_EDX, leaf1_ecx=_bits(SSE3, CX16, X2APIC, HYPERVISOR),
             ext_edx=_bits(SYSCALL, NX, LM), ext_ecx=_bits(LAHF_LM, ABM, SSE4A)),
    CpuModel("kvm64", "QEMU's older baseline: qemu64 without SSE3, CX16, LAHF and ABM",
             leaf1_edx=_QEMU64_EDX, leaf1_ecx=_bits(X2APIC, HYPERVISOR),
             ext_edx=_bits(SYSCALL, NX, LM), ext_ecx=0),
    CpuModel("host", "every feature KVM supports on this host"),
    CpuModel("max", "every feature KVM supports (the same as host under KVM)"),
)}
DEFAULT_MODEL = "qemu64"


def cpu_model(name: str | None) -> CpuModel:
    """The model ``name`` (None: the default). QEMU's other named models (Skylake-Client, EPYC, ...) are
    accepted as ``host``, with a warning: kvmpy has no table of their features."""
    model = MODELS.get(DEFAULT_MODEL if name is None else name)
    if model is None:
        log.warning("-cpu %s: kvmpy has no such model table; the guest sees every feature KVM supports "
                    "(as -cpu host)", shown(name, 60))
        return MODELS["host"]
    return model
