# Conformance points of issue 16 compared with QEMU: a register written just
# before a trapping instruction reaches the handler (faulting load/store in
# M-mode, illegal CSR in U-mode), misa is WARL (writes are accepted), and the
# debug trigger CSRs (tselect, tdata1-3, tinfo) read and write as QEMU 7.2's.
# The handler prints mcause and a0, then skips the instruction (or, with s1 set,
# continues at s1 in M-mode).
    .section .text.init
    .globl _start
_start:
    la sp, _stack_top
    la t0, handler
    csrw mtvec, t0
    li s1, 0
    # a write before a faulting load / store / illegal instruction
    li t1, 0x88000000
    li a0, 255
    ld a0, 0(t1)
    li a0, 254
    sd a1, 0(t1)
    li a0, 253
    lw a0, 1(t1)
    li a0, 252
    csrr a0, 0x7c0
    # misa is WARL: the write is accepted, the value stays
    csrr s2, misa
    csrw misa, zero
    csrr s3, misa
    xor a0, s2, s3
    call rt_show
    li t0, -1
    csrw misa, t0
    csrr s3, misa
    xor a0, s2, s3
    call rt_show
    # the trigger module
    csrr a0, tselect
    call rt_show
    csrr a0, tdata1
    call rt_show
    csrr a0, tdata2
    call rt_show
    csrr a0, tdata3
    call rt_show
    csrr a0, tinfo
    call rt_show
    li t0, 1
    csrw tselect, t0
    csrr a0, tselect
    call rt_show
    csrr a0, tdata1
    call rt_show
    li t0, 7
    csrw tselect, t0            # out of range: ignored
    csrr a0, tselect
    call rt_show
    li t0, -1
    csrw tselect, t0
    csrr a0, tselect
    call rt_show
    csrw tselect, zero
    la s4, tdata1_values
1:  ld t0, 0(s4)
    beqz t0, 2f
    csrw tdata1, t0
    csrr a0, tdata1
    call rt_show
    csrr a0, tinfo
    call rt_show
    addi s4, s4, 8
    j 1b
2:  csrw tdata1, zero           # type 0: ignored
    csrr a0, tdata1
    call rt_show
    li t0, 0x12345678
    csrw tdata2, t0
    csrr a0, tdata2
    call rt_show
    li t0, -1
    csrw tdata3, t0
    csrr a0, tdata3
    call rt_show
    li t0, 1
    csrw tselect, t0
    csrr a0, tdata2             # per-trigger state
    call rt_show
    li t0, 0x2000000000000000
    csrw tdata1, t0
    csrw tselect, zero
    csrr a0, tdata1
    call rt_show
    # a write before an illegal CSR access in U-mode
    li t0, -1
    csrw pmpaddr0, t0
    li t0, 0x1f
    csrw pmpcfg0, t0
    li t0, 3 << 11
    csrc mstatus, t0
    la t0, umode
    csrw mepc, t0
    la s1, done
    mret
umode:
    li a0, 251
    csrr a0, mstatus
    j umode
done:
    call rt_pass

    .balign 4
handler:
    mv s5, a0
    csrr a0, mcause
    call rt_show
    mv a0, s5
    call rt_show
    beqz s1, 1f
    jr s1
1:  csrr t0, mepc
    addi t0, t0, 4
    csrw mepc, t0
    mret

    .section .data
    .balign 8
tdata1_values:
    .dword 0x2000000000000000 | 0x5f | (1 << 16)                       # type 2: M,S,U,X,W,R, size 1
    .dword 0x2000000000000000 | (1 << 59) | (0xf << 7) | (1 << 11) | (0xf << 12) | (1 << 18) | (1 << 19) | (1 << 20) | 0x4
    .dword 0x2000000000000000 | (3 << 16) | (3 << 21) | 1             # size 15: unsupported
    .dword 0x2000000000000000 | (1 << 21) | 2                         # size 8
    .dword 0x2000000000000000 | (3 << 16) | 2                         # size 4 (sizelo 3)
    .dword 0x6000000000000000 | 0x5f | (3 << 16) | (1 << 23) | (1 << 24) | (0xf << 7)   # type 6
    .dword 0x6000000000000000 | (5 << 16) | 1                         # type 6, size 5: unsupported
    .dword 0x3000000000000000 | 0x7ff                                 # type 3 (icount)
    .dword 0x4000000000000000 | 0x7ff                                 # type 4 (interrupt)
    .dword 0xf000000000000000 | 0x41                                  # type 15
    .dword 0x2000000000000000 | 0x41
    .dword 0
