"""C layouts of the KVM structs we exchange with the kernel (x86-64), as cffi cdefs.

The layouts are facts from <linux/kvm.h> and <asm/kvm.h>; a test compiles a C
program against the system headers and checks every size and field offset
declared here. ``ffi`` is used in ABI mode: nothing is compiled. Parsing the
cdefs costs tens of milliseconds (seconds in the nested bed), so the parsed
form is kept as a generated pure-Python module in the user's cache
(cffi's out-of-line ABI mode) and reused while the cdefs are unchanged.
"""

from __future__ import annotations

import struct

import contextlib
import hashlib
import io
import importlib.util
import logging
import os
from pathlib import Path

KVM_NR_INTERRUPTS = 256
KVM_IOAPIC_NUM_PINS = 24
KVM_APIC_REG_SIZE = 0x400
KVM_MAX_XCRS = 16
KVM_MAX_CPUID_ENTRIES = 256

CDEF = """
struct kvm_regs {
    uint64_t rax, rbx, rcx, rdx;
    uint64_t rsi, rdi, rsp, rbp;
    uint64_t r8, r9, r10, r11;
    uint64_t r12, r13, r14, r15;
    uint64_t rip, rflags;
};
struct kvm_segment {
    uint64_t base;
    uint32_t limit;
    uint16_t selector;
    uint8_t type;
    uint8_t present, dpl, db, s, l, g, avl;
    uint8_t unusable;
    uint8_t padding;
};
struct kvm_dtable {
    uint64_t base;
    uint16_t limit;
    uint16_t padding[3];
};
struct kvm_sregs {
    struct kvm_segment cs, ds, es, fs, gs, ss;
    struct kvm_segment tr, ldt;
    struct kvm_dtable gdt, idt;
    uint64_t cr0, cr2, cr3, cr4, cr8;
    uint64_t efer;
    uint64_t apic_base;
    uint64_t interrupt_bitmap[4];
};
struct kvm_fpu {
    uint8_t fpr[8][16];
    uint16_t fcw;
    uint16_t fsw;
    uint8_t ftwx;
    uint8_t pad1;
    uint16_t last_opcode;
    uint64_t last_ip;
    uint64_t last_dp;
    uint8_t xmm[16][16];
    uint32_t mxcsr;
    uint32_t pad2;
};
struct kvm_msr_entry {
    uint32_t index;
    uint32_t reserved;
    uint64_t data;
};
struct kvm_msrs {
    uint32_t nmsrs;
    uint32_t pad;
    struct kvm_msr_entry entries[];
};
struct kvm_msr_list {
    uint32_t nmsrs;
    uint32_t indices[];
};
struct kvm_cpuid_entry2 {
    uint32_t function;
    uint32_t index;
    uint32_t flags;
    uint32_t eax;
    uint32_t ebx;
    uint32_t ecx;
    uint32_t edx;
    uint32_t padding[3];
};
struct kvm_cpuid2 {
    uint32_t nent;
    uint32_t padding;
    struct kvm_cpuid_entry2 entries[];
};
struct kvm_lapic_state {
    char regs[1024];
};
struct kvm_pic_state {
    uint8_t last_irr, irr, imr, isr, priority_add, irq_base, read_reg_select, poll;
    uint8_t special_mask, init_state, auto_eoi, rotate_on_auto_eoi;
    uint8_t special_fully_nested_mode, init4, elcr, elcr_mask;
};
struct kvm_ioapic_state {
    uint64_t base_address;
    uint32_t ioregsel;
    uint32_t id;
    uint32_t irr;
    uint32_t pad;
    uint64_t redirtbl[24];
};
struct kvm_irqchip {
    uint32_t chip_id;
    uint32_t pad;
    union {
        char dummy[512];
        struct kvm_pic_state pic;
        struct kvm_ioapic_state ioapic;
    } chip;
};
struct kvm_irq_level {
    union {
        uint32_t irq;
        int32_t status;
    };
    uint32_t level;
};
struct kvm_pit_config {
    uint32_t flags;
    uint32_t pad[15];
};
struct kvm_pit_channel_state {
    uint32_t count;
    uint16_t latched_count;
    uint8_t count_latched;
    uint8_t status_latched;
    uint8_t status;
    uint8_t read_state;
    uint8_t write_state;
    uint8_t write_latch;
    uint8_t rw_mode;
    uint8_t mode;
    uint8_t bcd;
    uint8_t gate;
    int64_t count_load_time;
};
struct kvm_pit_state2 {
    struct kvm_pit_channel_state channels[3];
    uint32_t flags;
    uint32_t reserved[9];
};
struct kvm_userspace_memory_region {
    uint32_t slot;
    uint32_t flags;
    uint64_t guest_phys_addr;
    uint64_t memory_size;
    uint64_t userspace_addr;
};
struct kvm_dirty_log {
    uint32_t slot;
    uint32_t padding1;
    uint64_t dirty_bitmap;
};
struct kvm_clock_data {
    uint64_t clock;
    uint32_t flags;
    uint32_t pad0;
    uint64_t realtime;
    uint64_t host_tsc;
    uint32_t pad[4];
};
struct kvm_mp_state {
    uint32_t mp_state;
};
struct kvm_enable_cap {
    uint32_t cap;
    uint32_t flags;
    uint64_t args[4];
    uint8_t pad[64];
};
struct kvm_coalesced_mmio_zone {
    uint64_t addr;
    uint32_t size;
    uint32_t pio;
};
struct kvm_coalesced_mmio {
    uint64_t phys_addr;
    uint32_t len;
    uint32_t pio;
    uint8_t data[8];
};
struct kvm_coalesced_mmio_ring {
    uint32_t first, last;
    struct kvm_coalesced_mmio coalesced_mmio[];
};
struct kvm_vcpu_events {
    struct {
        uint8_t injected;
        uint8_t nr;
        uint8_t has_error_code;
        uint8_t pending;
        uint32_t error_code;
    } exception;
    struct {
        uint8_t injected;
        uint8_t nr;
        uint8_t soft;
        uint8_t shadow;
    } interrupt;
    struct {
        uint8_t injected;
        uint8_t pending;
        uint8_t masked;
        uint8_t pad;
    } nmi;
    uint32_t sipi_vector;
    uint32_t flags;
    struct {
        uint8_t smm;
        uint8_t pending;
        uint8_t smm_inside_nmi;
        uint8_t latched_init;
    } smi;
    struct {
        uint8_t pending;
    } triple_fault;
    uint8_t reserved[26];
    uint8_t exception_has_payload;
    uint64_t exception_payload;
};
struct kvm_debugregs {
    uint64_t db[4];
    uint64_t dr6;
    uint64_t dr7;
    uint64_t flags;
    uint64_t reserved[9];
};
struct kvm_xsave {
    uint32_t region[1024];
};
struct kvm_xcr {
    uint32_t xcr;
    uint32_t reserved;
    uint64_t value;
};
struct kvm_xcrs {
    uint32_t nr_xcrs;
    uint32_t flags;
    struct kvm_xcr xcrs[16];
    uint64_t padding[16];
};
struct kvm_irqfd {
    uint32_t fd;
    uint32_t gsi;
    uint32_t flags;
    uint32_t resamplefd;
    uint8_t pad[16];
};
struct kvm_ioeventfd {
    uint64_t datamatch;
    uint64_t addr;
    uint32_t len;
    int32_t fd;
    uint32_t flags;
    uint8_t pad[36];
};
struct kvm_irq_routing_irqchip {
    uint32_t irqchip;
    uint32_t pin;
};
struct kvm_irq_routing_msi {
    uint32_t address_lo;
    uint32_t address_hi;
    uint32_t data;
    union {
        uint32_t pad;
        uint32_t devid;
    };
};
struct kvm_irq_routing_entry {
    uint32_t gsi;
    uint32_t type;
    uint32_t flags;
    uint32_t pad;
    union {
        struct kvm_irq_routing_irqchip irqchip;
        struct kvm_irq_routing_msi msi;
        uint32_t pad[8];
    } u;
};
struct kvm_irq_routing {
    uint32_t nr;
    uint32_t flags;
    struct kvm_irq_routing_entry entries[];
};
struct kvm_msi {
    uint32_t address_lo;
    uint32_t address_hi;
    uint32_t data;
    uint32_t flags;
    uint32_t devid;
    uint8_t pad[12];
};
int ioctl(int fd, unsigned long request, ...);
"""

log = logging.getLogger(__name__)


def _cache_dir() -> Path:
    base = os.environ.get("KVMPY_CACHE") or os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / ("kvmpy" if "KVMPY_CACHE" not in os.environ else "") / "cffi"


def _load_ffi():  # -> cffi FFI
    tag = hashlib.sha256(CDEF.encode()).hexdigest()[:16]
    name = f"_kvm_abi_{tag}"
    path = _cache_dir() / f"{name}.py"
    if path.exists():
        try:
            spec = importlib.util.spec_from_file_location(name, path)
            assert spec is not None and spec.loader is not None
            module = importlib.util.module_from_spec(spec)
            spec.loader.exec_module(module)
            return module.ffi
        except Exception as exc:  # a damaged cache entry: rebuild below
            log.debug("ignoring cached cffi module %s: %s", path, exc)
    from cffi import FFI

    builder = FFI()
    builder.cdef(CDEF)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        builder.set_source(name, None)
        tmp = path.with_name(f".{name}.{os.getpid()}.py")
        with contextlib.redirect_stdout(io.StringIO()):  # cffi announces the file on stdout
            builder.emit_python_code(str(tmp))
        os.replace(tmp, path)  # atomic: concurrent starters never see half a file
    except OSError as exc:
        log.debug("cannot cache the parsed cdefs in %s: %s", path.parent, exc)
    return builder


ffi = _load_ffi()

# struct kvm_run: only the header and the exit-specific members we read are
# needed, so they are described as byte offsets for struct.unpack_from on the
# mmapped page (faster than cffi attribute access on the hot exit path).
RUN_IMMEDIATE_EXIT = 1
RUN_EXIT_REASON = 8
RUN_IF_FLAG = 13
RUN_UNION = 32
RUN_IO = struct.Struct("<BBHIQ")  # direction, size, port, count, data_offset
RUN_MMIO = struct.Struct("<Q8sIB")  # phys_addr, data[8], len, is_write
RUN_FAIL_ENTRY = struct.Struct("<QI")  # hardware_entry_failure_reason, cpu
RUN_INTERNAL = struct.Struct("<II")  # suberror, ndata (u64 data[16] follows at +8)
RUN_SYSTEM_EVENT = struct.Struct("<II")  # type, ndata (data[] follows at +8)
RUN_COALESCED_RING_PAGE = 2  # KVM_COALESCED_MMIO_PAGE_OFFSET, in pages from kvm_run

# Exit reasons (<linux/kvm.h>).
EXIT_UNKNOWN = 0
EXIT_EXCEPTION = 1
EXIT_IO = 2
EXIT_HYPERCALL = 3
EXIT_DEBUG = 4
EXIT_HLT = 5
EXIT_MMIO = 6
EXIT_IRQ_WINDOW_OPEN = 7
EXIT_SHUTDOWN = 8
EXIT_FAIL_ENTRY = 9
EXIT_INTR = 10
EXIT_INTERNAL_ERROR = 17
EXIT_SYSTEM_EVENT = 24

EXIT_NAMES = {
    EXIT_UNKNOWN: "UNKNOWN", EXIT_EXCEPTION: "EXCEPTION", EXIT_IO: "IO",
    EXIT_HYPERCALL: "HYPERCALL", EXIT_DEBUG: "DEBUG", EXIT_HLT: "HLT", EXIT_MMIO: "MMIO",
    EXIT_IRQ_WINDOW_OPEN: "IRQ_WINDOW_OPEN", EXIT_SHUTDOWN: "SHUTDOWN",
    EXIT_FAIL_ENTRY: "FAIL_ENTRY", EXIT_INTR: "INTR", EXIT_INTERNAL_ERROR: "INTERNAL_ERROR",
    EXIT_SYSTEM_EVENT: "SYSTEM_EVENT",
}

IO_IN = 0
IO_OUT = 1

SYSTEM_EVENT_SHUTDOWN = 1
SYSTEM_EVENT_RESET = 2
SYSTEM_EVENT_CRASH = 3

INTERNAL_ERROR_NAMES = {1: "emulation failure", 2: "simultaneous exception", 3: "delivery event",
                        4: "unexpected exit reason"}

# Memory-slot flags.
MEM_LOG_DIRTY_PAGES = 1 << 0
MEM_READONLY = 1 << 1

# Irqchip ids for KVM_GET/SET_IRQCHIP.
IRQCHIP_PIC_MASTER = 0
IRQCHIP_PIC_SLAVE = 1
IRQCHIP_IOAPIC = 2

MP_STATE_RUNNABLE = 0
MP_STATE_UNINITIALIZED = 1
MP_STATE_INIT_RECEIVED = 2
MP_STATE_HALTED = 3
MP_STATE_SIPI_RECEIVED = 4

PIT_SPEAKER_DUMMY = 1

# KVM_IRQFD flags.
IRQFD_FLAG_DEASSIGN = 1 << 0
IRQFD_FLAG_RESAMPLE = 1 << 1

# KVM_IOEVENTFD flags.
IOEVENTFD_FLAG_DATAMATCH = 1 << 0
IOEVENTFD_FLAG_PIO = 1 << 1
IOEVENTFD_FLAG_DEASSIGN = 1 << 2
IOEVENTFD_LENGTHS = (0, 1, 2, 4, 8)  # 0: any access width, no datamatch (KVM_CAP_IOEVENTFD_NO_LENGTH)

# GSI routing entry types (KVM_SET_GSI_ROUTING).
IRQ_ROUTING_IRQCHIP = 1
IRQ_ROUTING_MSI = 2

# Capabilities (KVM_CAP_*).
CAP_IRQCHIP = 0
CAP_USER_MEMORY = 3
CAP_SET_TSS_ADDR = 4
CAP_EXT_CPUID = 7
CAP_NR_VCPUS = 9
CAP_NR_MEMSLOTS = 10
CAP_MP_STATE = 14
CAP_COALESCED_MMIO = 15
CAP_IRQ_ROUTING = 25  # the check returns the most routes a table may hold
CAP_IRQ_INJECT_STATUS = 26
CAP_IRQFD = 32
CAP_PIT2 = 33
CAP_PIT_STATE2 = 35
CAP_IOEVENTFD = 36
CAP_SET_IDENTITY_MAP_ADDR = 37
CAP_ADJUST_CLOCK = 39
CAP_VCPU_EVENTS = 41
CAP_DEBUGREGS = 50
CAP_XSAVE = 55
CAP_XCRS = 56
CAP_TSC_CONTROL = 60
CAP_GET_TSC_KHZ = 61
CAP_MAX_VCPUS = 66
CAP_SIGNAL_MSI = 77
CAP_READONLY_MEM = 81
CAP_IRQFD_RESAMPLE = 82
CAP_IOEVENTFD_NO_LENGTH = 100
CAP_IOEVENTFD_ANY_LENGTH = 122
CAP_IMMEDIATE_EXIT = 136
CAP_COALESCED_PIO = 162

CAP_NAMES = {v: k[4:] for k, v in list(globals().items()) if k.startswith("CAP_") and isinstance(v, int)}
