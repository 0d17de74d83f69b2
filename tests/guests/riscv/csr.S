# CSR instruction semantics: csrrw/rs/rc and immediate forms, rd=x0 and rs1=x0
# variants, WARL masks of mstatus/mie/mip/medeleg/mideleg/mtvec/mepc/satp, sstatus,
# sie and sip as views of the M registers, and counters.
    .section .text.init
    .globl _start
_start:
    la sp, _stack_top
    li t0, 0x5a5a
    csrw mscratch, t0
    csrrw a0, mscratch, zero
    call rt_show
    csrr a0, mscratch
    call rt_show
    li t0, 0xf0
    csrrs a0, mscratch, t0
    call rt_show
    csrrc a0, mscratch, zero
    call rt_show
    li t0, 0x30
    csrrc a0, mscratch, t0
    call rt_show
    csrrwi a0, mscratch, 17
    call rt_show
    csrrsi a0, mscratch, 8
    call rt_show
    csrrci a0, mscratch, 1
    call rt_show
    csrr a0, mscratch
    call rt_show
    # WARL fields
    li t0, 0xaaa                 # the standard S and M interrupt bits (QEMU also has H's)
    csrw mie, t0
    csrr a0, mie
    call rt_show
    li t0, 0x222
    csrw mideleg, t0
    csrr a0, mideleg
    andi a0, a0, 0x222           # QEMU forces the H-extension VS bits on
    call rt_show
    csrr a0, sie
    call rt_show
    csrw sie, zero
    csrr a0, mie
    call rt_show
    li t0, 0xaaa
    csrw mip, t0                 # only SSIP/STIP/SEIP are writable
    csrr a0, mip
    call rt_show
    csrr a0, sip
    call rt_show
    csrw mip, zero
    csrw mie, zero
    li t0, 0x80000100
    csrw mtvec, t0
    csrr a0, mtvec
    call rt_show
    li t0, 0x80000203
    csrw mtvec, t0              # mode 3 is reserved: ignored
    csrr a0, mtvec
    call rt_show
    li t0, 0x80000124
    csrw mepc, t0
    csrr a0, mepc
    call rt_show
    li t0, 0x80000456
    csrw sepc, t0
    csrr a0, sepc
    call rt_show
    li t0, (1 << 18) | (1 << 19) | (1 << 1) | (1 << 8) | (1 << 5) | (1 << 7)
    csrs mstatus, t0
    csrr a0, mstatus
    li t1, 0x7e01ea              # everything except FS/XS/VS/SD (QEMU -cpu rv64 has F/D)
    and a0, a0, t1
    call rt_show
    csrr a0, sstatus
    li t1, 0xc01ea
    and a0, a0, t1
    call rt_show
    csrw mstatus, zero
    csrr a0, mstatus
    li t1, 0x7e01ea
    and a0, a0, t1
    call rt_show
    csrr a0, mstatus
    srli a0, a0, 32
    andi a0, a0, 0xf             # UXL/SXL = 64-bit
    call rt_show
    li t0, (8 << 60) | 0x12345
    csrw satp, t0
    csrr a0, satp
    call rt_show
    li t0, (5 << 60) | 0x12345   # unsupported mode: write ignored
    csrw satp, t0
    csrr a0, satp
    call rt_show
    csrw satp, zero
    csrr a0, mhartid
    call rt_show
    csrr a0, mvendorid
    call rt_show
    li t0, 0xb1ff
    csrw medeleg, t0
    csrr a0, medeleg
    call rt_show
    csrw medeleg, zero
    csrr t0, minstret
    csrr t1, minstret
    sub a0, t1, t0
    sltu a0, zero, a0
    call rt_show
    csrr t0, cycle
    csrr t1, time
    call rt_pass

