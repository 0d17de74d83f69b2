# Sv39 paging from S-mode: gigapage identity maps for RAM and MMIO, 4 KiB pages
# with R/W/X/U permissions, A/D updates, SUM, MXR, non-canonical addresses,
# remapping with sfence.vma, and page faults delegated to S.
    .equ PTE_V, 1
    .equ PTE_R, 2
    .equ PTE_W, 4
    .equ PTE_X, 8
    .equ PTE_U, 16
    .equ PTE_A, 64
    .equ PTE_D, 128
    .equ VBASE, 0x40000000
    .section .text.init
    .globl _start
_start:
    la sp, _stack_top
    la t0, m_handler
    csrw mtvec, t0
    li t0, -1
    csrw pmpaddr0, t0
    li t0, 0x1f
    csrw pmpcfg0, t0
    # root[0]: gigapage 0x0 (MMIO) RW; root[2]: gigapage 0x80000000 RWX; root[1] -> l1
    la s0, root
    li t0, (0x0 >> 12 << 10) | PTE_V | PTE_R | PTE_W | PTE_A | PTE_D
    sd t0, 0(s0)
    li t0, (0x80000000 >> 12 << 10) | PTE_V | PTE_R | PTE_W | PTE_X | PTE_A | PTE_D
    sd t0, 16(s0)
    la t1, l1
    srli t1, t1, 12
    slli t1, t1, 10
    ori t1, t1, PTE_V
    sd t1, 8(s0)
    la t1, l0
    srli t1, t1, 12
    slli t1, t1, 10
    ori t1, t1, PTE_V
    la t2, l1
    sd t1, 0(t2)
    # l0[0]: data page RW (A/D clear), l0[1]: page1 R only, l0[2]: U page RW, l0[4]: X-only
    la s1, l0
    la t0, page0
    srli t0, t0, 12
    slli t0, t0, 10
    ori t1, t0, PTE_V | PTE_R | PTE_W
    sd t1, 0(s1)
    la t0, page1
    srli t0, t0, 12
    slli t0, t0, 10
    ori t1, t0, PTE_V | PTE_R | PTE_A
    sd t1, 8(s1)
    la t0, page2
    srli t0, t0, 12
    slli t0, t0, 10
    ori t1, t0, PTE_V | PTE_R | PTE_W | PTE_U | PTE_A | PTE_D
    sd t1, 16(s1)
    la t0, page1
    srli t0, t0, 12
    slli t0, t0, 10
    ori t1, t0, PTE_V | PTE_X | PTE_A
    sd t1, 32(s1)
    li t0, (1 << 12) | (1 << 13) | (1 << 15)
    csrw medeleg, t0
    la t0, s_handler
    csrw stvec, t0
    la t0, root
    srli t0, t0, 12
    li t1, 8 << 60
    or t0, t0, t1
    csrw satp, t0
    li t0, 3 << 11
    csrc mstatus, t0
    li t0, 1 << 11
    csrs mstatus, t0
    la t0, s_main
    csrw mepc, t0
    mret

    .option norvc
s_main:
    sfence.vma
    la a0, str_on
    call rt_puts
    li s2, VBASE
    li s3, VBASE + 0x1000
    li s4, VBASE + 0x2000
    li s5, VBASE + 0x3000
    li s6, VBASE + 0x4000
    li t0, 0x1234
    sd t0, 0(s2)                 # sets A and D of l0[0]
    ld a0, 0(s2)
    call rt_show
    la t0, l0
    ld a0, 0(t0)
    andi a0, a0, 0xff
    call rt_show                    # PTE flags now include A|D
    ld a0, 0(s3)              # read-only page: fine
    call rt_show
    li t0, 1
    sd t0, 0(s3)              # store page fault
    ld a0, 0(s4)              # U page from S without SUM: load page fault
    li t0, 1 << 18
    csrs sstatus, t0
    ld a0, 0(s4)              # with SUM
    call rt_show
    csrc sstatus, t0
    ld a0, 0(s5)             # invalid PTE: load page fault
    ld a0, 0(s6)             # execute-only page: load page fault...
    li t0, 1 << 19
    csrs sstatus, t0
    ld a0, 0(s6)             # ...but readable with MXR
    call rt_show
    csrc sstatus, t0
    li t1, 0x0000004000000000    # bit 38 set without sign extension
    ld a0, 0(t1)
    li t1, VBASE + 8192
    jalr ra, 0(t1)               # U page: S cannot execute it -> instruction page fault
    # remap VBASE to page2 and flush
    la t0, page2
    srli t0, t0, 12
    slli t0, t0, 10
    ori t1, t0, PTE_V | PTE_R | PTE_W | PTE_A | PTE_D
    la t2, l0
    sd t1, 0(t2)
    sfence.vma
    ld a0, 0(s2)
    call rt_show
    # code through a non-identity mapping: map VBASE+0x5000 to the page with vcode
    la t0, vcode
    srli t0, t0, 12
    slli t0, t0, 10
    ori t1, t0, PTE_V | PTE_R | PTE_X | PTE_A
    la t2, l0
    sd t1, 40(t2)
    sfence.vma
    la t0, vcode
    li t1, 0xfff
    and t0, t0, t1
    li t1, VBASE + 0x5000
    add t0, t0, t1
    jalr ra, 0(t0)
    call rt_show
    ecall

    .balign 4
s_handler:
    addi sp, sp, -32
    sd ra, 0(sp)
    sd a0, 8(sp)
    la a0, str_fault
    call rt_puts
    csrr a0, scause
    call rt_puthex
    li a0, ' '
    call rt_putc
    csrr a0, stval
    call rt_puthex
    call rt_nl
    csrr t0, scause
    li t1, 12
    bne t0, t1, 1f
    ld t0, 0(sp)                 # fetch fault: return to the caller
    csrw sepc, t0
    j 2f
1:  csrr t0, sepc
    addi t0, t0, 4
    csrw sepc, t0
2:  ld ra, 0(sp)
    ld a0, 8(sp)
    addi sp, sp, 32
    sret

    .balign 4
m_handler:
    la a0, str_m
    call rt_puts
    csrr a0, mcause
    call rt_puthex
    call rt_nl
    call rt_pass

    .balign 4096
vcode:
    li a0, 0x777
    ret
    .option rvc

    .section .rodata
str_on: .asciz "paging on\n"
str_fault: .asciz "S fault "
str_m: .asciz "M ecall "
    .data
    .balign 4096
root: .zero 4096
l1: .zero 4096
l0: .zero 4096
page0: .dword 0x1111
    .balign 4096
page1: .dword 0x2222
    .balign 4096
page2: .dword 0x3333
    .balign 4096
