"""Every KVM ioctl request number kvmpy uses, in one table, built with ioctl_opt."""

from __future__ import annotations

import struct

from ioctl_opt import IO, IOR, IOW, IOWR

from kvmpy.kvm.abi import ffi

KVMIO = 0xAE


def _sized(ctype: str) -> struct.Struct:
    # ioctl_opt derives the size field from anything with a .size; pad bytes suffice.
    return struct.Struct(f"{ffi.sizeof(ctype)}x")


def _u64() -> struct.Struct:
    return struct.Struct("Q")


# System ioctls.
KVM_GET_API_VERSION = IO(KVMIO, 0x00)
KVM_CREATE_VM = IO(KVMIO, 0x01)
KVM_GET_MSR_INDEX_LIST = IOWR(KVMIO, 0x02, _sized("struct kvm_msr_list"))
KVM_CHECK_EXTENSION = IO(KVMIO, 0x03)
KVM_GET_VCPU_MMAP_SIZE = IO(KVMIO, 0x04)
KVM_GET_SUPPORTED_CPUID = IOWR(KVMIO, 0x05, _sized("struct kvm_cpuid2"))

# VM ioctls.
KVM_CREATE_VCPU = IO(KVMIO, 0x41)
KVM_GET_DIRTY_LOG = IOW(KVMIO, 0x42, _sized("struct kvm_dirty_log"))
KVM_SET_USER_MEMORY_REGION = IOW(KVMIO, 0x46, _sized("struct kvm_userspace_memory_region"))
KVM_SET_TSS_ADDR = IO(KVMIO, 0x47)
KVM_SET_IDENTITY_MAP_ADDR = IOW(KVMIO, 0x48, _u64())
KVM_CREATE_IRQCHIP = IO(KVMIO, 0x60)
KVM_IRQ_LINE = IOW(KVMIO, 0x61, _sized("struct kvm_irq_level"))
KVM_GET_IRQCHIP = IOWR(KVMIO, 0x62, _sized("struct kvm_irqchip"))
KVM_SET_IRQCHIP = IOR(KVMIO, 0x63, _sized("struct kvm_irqchip"))
KVM_REGISTER_COALESCED_MMIO = IOW(KVMIO, 0x67, _sized("struct kvm_coalesced_mmio_zone"))
KVM_UNREGISTER_COALESCED_MMIO = IOW(KVMIO, 0x68, _sized("struct kvm_coalesced_mmio_zone"))
KVM_SET_GSI_ROUTING = IOW(KVMIO, 0x6A, _sized("struct kvm_irq_routing"))  # the header only; entries follow
KVM_IRQFD = IOW(KVMIO, 0x76, _sized("struct kvm_irqfd"))
KVM_CREATE_PIT2 = IOW(KVMIO, 0x77, _sized("struct kvm_pit_config"))
KVM_REINJECT_CONTROL = IO(KVMIO, 0x71)  # takes a struct kvm_reinject_control * all the same
KVM_IOEVENTFD = IOW(KVMIO, 0x79, _sized("struct kvm_ioeventfd"))
KVM_SET_CLOCK = IOW(KVMIO, 0x7B, _sized("struct kvm_clock_data"))
KVM_GET_CLOCK = IOR(KVMIO, 0x7C, _sized("struct kvm_clock_data"))
KVM_GET_PIT2 = IOR(KVMIO, 0x9F, _sized("struct kvm_pit_state2"))
KVM_SET_PIT2 = IOW(KVMIO, 0xA0, _sized("struct kvm_pit_state2"))
KVM_ENABLE_CAP = IOW(KVMIO, 0xA3, _sized("struct kvm_enable_cap"))
KVM_SIGNAL_MSI = IOW(KVMIO, 0xA5, _sized("struct kvm_msi"))

# vCPU ioctls.
KVM_RUN = IO(KVMIO, 0x80)
KVM_GET_REGS = IOR(KVMIO, 0x81, _sized("struct kvm_regs"))
KVM_SET_REGS = IOW(KVMIO, 0x82, _sized("struct kvm_regs"))
KVM_GET_SREGS = IOR(KVMIO, 0x83, _sized("struct kvm_sregs"))
KVM_SET_SREGS = IOW(KVMIO, 0x84, _sized("struct kvm_sregs"))
KVM_GET_MSRS = IOWR(KVMIO, 0x88, _sized("struct kvm_msrs"))
KVM_SET_MSRS = IOW(KVMIO, 0x89, _sized("struct kvm_msrs"))
KVM_GET_FPU = IOR(KVMIO, 0x8C, _sized("struct kvm_fpu"))
KVM_SET_FPU = IOW(KVMIO, 0x8D, _sized("struct kvm_fpu"))
KVM_GET_LAPIC = IOR(KVMIO, 0x8E, _sized("struct kvm_lapic_state"))
KVM_SET_LAPIC = IOW(KVMIO, 0x8F, _sized("struct kvm_lapic_state"))
KVM_SET_CPUID2 = IOW(KVMIO, 0x90, _sized("struct kvm_cpuid2"))
KVM_GET_CPUID2 = IOWR(KVMIO, 0x91, _sized("struct kvm_cpuid2"))
KVM_GET_MP_STATE = IOR(KVMIO, 0x98, _sized("struct kvm_mp_state"))
KVM_SET_MP_STATE = IOW(KVMIO, 0x99, _sized("struct kvm_mp_state"))
KVM_GET_VCPU_EVENTS = IOR(KVMIO, 0x9F, _sized("struct kvm_vcpu_events"))
KVM_SET_VCPU_EVENTS = IOW(KVMIO, 0xA0, _sized("struct kvm_vcpu_events"))
KVM_GET_DEBUGREGS = IOR(KVMIO, 0xA1, _sized("struct kvm_debugregs"))
KVM_SET_DEBUGREGS = IOW(KVMIO, 0xA2, _sized("struct kvm_debugregs"))
KVM_SET_TSC_KHZ = IO(KVMIO, 0xA2)
KVM_GET_TSC_KHZ = IO(KVMIO, 0xA3)
KVM_GET_XSAVE = IOR(KVMIO, 0xA4, _sized("struct kvm_xsave"))
KVM_SET_XSAVE = IOW(KVMIO, 0xA5, _sized("struct kvm_xsave"))
KVM_GET_XCRS = IOR(KVMIO, 0xA6, _sized("struct kvm_xcrs"))
KVM_SET_XCRS = IOW(KVMIO, 0xA7, _sized("struct kvm_xcrs"))
KVM_KVMCLOCK_CTRL = IO(KVMIO, 0xAD)

NAMES = {v: k for k, v in list(globals().items()) if k.startswith("KVM_") and isinstance(v, int)}
