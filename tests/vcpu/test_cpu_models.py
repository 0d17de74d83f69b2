"""The -cpu models: qemu64 (the default) shows QEMU's baseline features of what KVM supports; host shows all."""

from __future__ import annotations

import pytest

from kvmpy.kvm.system import CpuidEntry, Kvm
from kvmpy.vcpu import cpu_models
from kvmpy.vcpu.cpu_models import DEFAULT_MODEL, MODELS, cpu_model

ALL = 0xFFFFFFFF
EVERYTHING = [  # a host that supports every bit: what a model lets through is then exactly its mask
    CpuidEntry(0, 0, 0, 0xD, 0x756E6547, 0x6C65746E, 0x49656E69),
    CpuidEntry(1, 0, 0, 0x906EA, 0x00100800, ALL, ALL),
    CpuidEntry(7, 0, 1, 2, ALL, ALL, ALL),
    CpuidEntry(7, 1, 1, ALL, ALL, ALL, ALL),
    CpuidEntry(0xD, 0, 1, 0x207, 0x340, 0x340, 0),
    CpuidEntry(0x40000001, 0, 0, 0x01007AFB, 0, 0, 0),
    CpuidEntry(0x80000001, 0, 0, 0, 0, ALL, ALL),
]


def leaf(entries, fn, idx=0):
    return next(e for e in entries if e.function == fn and e.index == idx)


def bits(value: int) -> set[int]:
    return {i for i in range(32) if value >> i & 1}


def test_the_default_is_qemus_and_other_qemu_names_mean_host(caplog) -> None:
    assert DEFAULT_MODEL == "qemu64" and cpu_model(None) is MODELS["qemu64"]
    assert cpu_model("kvm64") is MODELS["kvm64"] and not caplog.text
    assert cpu_model("Skylake-Client") is MODELS["host"]
    assert "-cpu 'Skylake-Client': kvmpy has no such model table" in caplog.text


def test_qemu64_keeps_the_baseline_and_drops_the_rest() -> None:
    out = MODELS["qemu64"].apply(EVERYTHING)
    l1 = leaf(out, 1)
    m = cpu_models
    assert bits(l1.ecx) == {m.SSE3, m.CX16, m.X2APIC, m.HYPERVISOR}  # no SSSE3/SSE4/AVX/PCID/XSAVE/AES
    assert {m.FPU, m.TSC, m.PAE, m.APIC, m.CMOV, m.PAT, m.CLFLUSH, m.SSE, m.SSE2, m.FXSR} <= bits(l1.edx)
    assert 28 not in bits(l1.edx)  # HTT is the topology's business (vcpu_cpuid), not the model's
    assert all(e.ebx == e.ecx == e.edx == 0 for e in out if e.function == 7)  # no leaf-7 features at all
    ext = leaf(out, 0x80000001)
    assert {m.SYSCALL, m.NX, m.LM} <= bits(ext.edx) and 27 not in bits(ext.edx)  # no RDTSCP, no 1 GiB pages
    assert bits(ext.edx) - {m.SYSCALL, m.NX, m.LM} <= bits(l1.edx & m.AMD_ALIASES)
    assert bits(ext.ecx) == {m.LAHF_LM, m.ABM, m.SSE4A}  # no SVM: nested is off by default, as in QEMU
    for fn in (0, 0xD, 0x40000001):  # identity, XSAVE sizes and KVM's paravirtual leaf stay the host's
        assert leaf(out, fn) == leaf(EVERYTHING, fn)
    assert leaf(out, 1).eax == leaf(EVERYTHING, 1).eax


def test_kvm64_is_qemu64_without_its_later_additions() -> None:
    q, k = (leaf(MODELS[n].apply(EVERYTHING), 1) for n in ("qemu64", "kvm64"))
    assert k.edx == q.edx and bits(q.ecx) - bits(k.ecx) == {cpu_models.SSE3, cpu_models.CX16}
    assert leaf(MODELS["kvm64"].apply(EVERYTHING), 0x80000001).ecx == 0


@pytest.mark.parametrize("name", ["host", "max"])
def test_host_and_max_pass_everything(name: str) -> None:
    assert MODELS[name].apply(EVERYTHING) == EVERYTHING


def test_a_model_never_adds_what_the_host_lacks() -> None:
    poor = [CpuidEntry(1, 0, 0, 0, 0, 0, 1 << cpu_models.FPU), CpuidEntry(0x80000001, 0, 0, 0, 0, 0, 0)]
    out = MODELS["qemu64"].apply(poor)
    assert leaf(out, 1).edx == 1 << cpu_models.FPU and leaf(out, 1).ecx == 0 and leaf(out, 0x80000001).edx == 0


@pytest.mark.kvm_host
def test_the_real_supported_cpuid_through_qemu64_is_accepted_by_a_vcpu() -> None:
    with Kvm.open() as kvm:
        supported = kvm.supported_cpuid()
        out = MODELS["qemu64"].apply(supported)
        assert bits(leaf(out, 1).ecx) <= bits(leaf(supported, 1).ecx)
        vm = kvm.create_vm()
        try:
            vm.create_irqchip()
            vm.create_vcpu(0).set_cpuid(out)  # KVM takes it
        finally:
            vm.close()
