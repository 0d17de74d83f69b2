# Several harts (-smp HARTS, built with -DHARTS=N): every hart starts here with a0 = its hartid.
# Each adds ITER to one shared counter with AMOADD and to another with an LR/SC loop, then
# waits in WFI for its own CLINT timer (its mtimecmp) and for an IPI from hart 0 (its msip).
# Hart 0 waits for all of them and prints what every hart saw; the output does not depend on
# how the harts interleave, so kvmpy's must equal QEMU's.  Between the counting and the
# timers, hart 1 stores to an address hart 0 holds an LR reservation on: hart 0's SC must fail.
    .equ CLINT_MSIP, 0x2000000
    .equ CLINT_MTIMECMP, 0x2004000
    .equ CLINT_MTIME, 0x200bff8
    .equ ITER, 3000
    .equ MIP_MSIP, 1 << 3
    .equ MIP_MTIP, 1 << 7
#ifndef HARTS
#define HARTS 2
#endif
#ifndef STORE_VALUE
#define STORE_VALUE 42                  /* what hart 1 stores at the reserved address (it holds 5) */
#endif

    .section .text.init
    .globl _start
_start:
    csrr s0, mhartid
    la sp, _stack_top
    slli t0, s0, 11                  # 2 KiB of stack each
    sub sp, sp, t0
    li t0, HARTS
    bgeu s0, t0, park                # harts the test does not count
    la t0, seen                      # what a0 and mhartid said
    slli t1, s0, 3
    add t0, t0, t1
    slli t1, a0, 32
    or t1, t1, s0
    sd t1, 0(t0)

    li s1, ITER
    la s2, amo_count
    la s3, lrsc_count
    li t2, 1
1:  amoadd.d zero, t2, (s2)
2:  lr.d t0, (s3)
    addi t0, t0, 1
    sc.d t1, t0, (s3)
    bnez t1, 2b
    addi s1, s1, -1
    bnez s1, 1b

    beqz s0, boot_hart
    li t0, 1
    bne s0, t0, timer
    la t0, flag                      # hart 1: wait for hart 0's LR, then store to its address
11: ld t1, 0(t0)
    li t2, 1
    bne t1, t2, 11b
    la t1, reserved
    li t2, STORE_VALUE
    sd t2, 0(t1)
    li t2, 2
    amoswap.d zero, t2, (t0)

timer:
    # secondary: a timer of its own, 5000 ticks per hartid ahead
    li t0, CLINT_MTIME
    ld t1, 0(t0)
    li t2, 5000
    mul t2, t2, s0
    add t1, t1, t2
    li t0, CLINT_MTIMECMP
    slli t3, s0, 3
    add t0, t0, t3
    sd t1, 0(t0)
    li t1, MIP_MTIP
    csrw mie, t1                     # interrupts stay off in mstatus: WFI only wakes
3:  wfi
    csrr t1, mip
    andi t1, t1, MIP_MTIP
    beqz t1, 3b
    li t1, -1
    sd t1, 0(t0)                     # no further timer
    la t0, timers
    li t1, 1
    amoadd.d zero, t1, (t0)
    la t0, done
    amoadd.d zero, t1, (t0)

    # then an IPI from hart 0
    li t1, MIP_MSIP
    csrw mie, t1
4:  wfi
    csrr t1, mip
    andi t1, t1, MIP_MSIP
    beqz t1, 4b
    li t0, CLINT_MSIP
    slli t1, s0, 2
    add t0, t0, t1
    sw zero, 0(t0)                   # clear own msip
    la t0, woken
    li t1, 1
    amoadd.d zero, t1, (t0)
park:
    csrw mie, zero
5:  wfi
    j 5b

boot_hart:
    la s6, reserved
    la s7, flag
    lr.d t0, (s6)                    # reserve, then let hart 1 store there
    li t1, 1
    amoswap.d zero, t1, (s7)
12: ld t1, 0(s7)
    li t2, 2
    bne t1, t2, 12b
    li t2, 7
    sc.d s8, t2, (s6)                # must fail: another hart wrote the reserved address
    la s4, done
6:  ld t0, 0(s4)                     # all secondaries finished their timer wait
    li t1, HARTS - 1
    bne t0, t1, 6b
    li s1, 1                         # IPI each of them
    li s5, CLINT_MSIP
7:  li t0, HARTS
    bgeu s1, t0, 8f
    slli t1, s1, 2
    add t1, t1, s5
    li t2, 1
    sw t2, 0(t1)
    addi s1, s1, 1
    j 7b
8:  la s4, woken
9:  ld t0, 0(s4)
    li t1, HARTS - 1
    bne t0, t1, 9b

    la a0, msg_sc
    call rt_puts
    snez a0, s8
    call rt_show
    ld a0, reserved
    call rt_show
    la a0, msg_amo
    call rt_puts
    ld a0, amo_count
    call rt_show
    la a0, msg_lrsc
    call rt_puts
    ld a0, lrsc_count
    call rt_show
    la a0, msg_timers
    call rt_puts
    ld a0, timers
    call rt_show
    la a0, msg_woken
    call rt_puts
    ld a0, woken
    call rt_show
    li s1, 0                         # a0 << 32 | mhartid of every hart
    la s2, seen
10: la a0, msg_hart
    call rt_puts
    ld a0, 0(s2)
    call rt_show
    addi s2, s2, 8
    addi s1, s1, 1
    li t0, HARTS
    bltu s1, t0, 10b
    # the CLINT registers of a hart that does not exist read zero and ignore writes
    li t0, CLINT_MSIP + 4 * HARTS
    li t1, 1
    sw t1, 0(t0)
    lw a0, 0(t0)
    call rt_show
    li t0, CLINT_MTIMECMP + 8 * HARTS
    li t1, 1234
    sd t1, 0(t0)
    ld a0, 0(t0)
    call rt_show
    call rt_pass

    .section .rodata
msg_sc:     .asciz "sc after another hart's store: "
msg_amo:    .asciz "amoadd: "
msg_lrsc:   .asciz "lr/sc:  "
msg_timers: .asciz "timers: "
msg_woken:  .asciz "ipis:   "
msg_hart:   .asciz "hart:   "

    .section .data
    .balign 64
amo_count:  .dword 0
    .balign 64
lrsc_count: .dword 0
done:       .dword 0
timers:     .dword 0
woken:      .dword 0
seen:       .fill 8, 8, 0
flag:       .dword 0
    .balign 64
reserved:   .dword 5
