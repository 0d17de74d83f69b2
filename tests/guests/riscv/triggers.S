# Debug triggers that fire: execute, load and store triggers (mcontrol, type 2,
# and mcontrol6, type 6) in M, S and U mode, checked against QEMU 7.2.
# Every case prints a line "name:" and then, when the breakpoint exception is
# taken, "C=mcause V=mtval E=mepc-_start P=previous-mode M=watched dword";
# the handler first disables both triggers, then reads the watched dword (so a
# store that should not have landed shows the old value) and returns to mepc,
# so the instruction then runs.  A case that must not fire prints nothing after
# its name.  ecall from S/U returns to M-mode just after the ecall.  One case
# sets a trigger inside the M-mode handler itself: it fires there too (no tcontrol).
    .equ FAR, 0x88000000         # just past 128 MiB of RAM: nothing to fetch there
    .equ T2, 2 << 60
    .equ T6, 6 << 60
    .equ LD, 1
    .equ ST, 2
    .equ EX, 4
    .equ U, 8
    .equ S, 16
    .equ M, 64
    .equ VU, 1 << 23
    .equ VS, 1 << 24
    # type 2 size: sizehi (22:21) and sizelo (17:16)
    .equ Z1, 1 << 16
    .equ Z2, 2 << 16
    .equ Z4, 3 << 16
    .equ Z8, (1 << 21) | (1 << 16)
    # type 6 size: 19:16
    .equ Y1, 1 << 16
    .equ Y2, 2 << 16
    .equ Y4, 3 << 16
    .equ Y8, 5 << 16

# set trigger \idx to watch \addr (plus \off) with tdata1 = \ctl
.macro TRIG idx, ctl, addr, off=0
    li t0, \idx
    csrw tselect, t0
    li t0, T2
    csrw tdata1, t0
    la t0, \addr
    addi t0, t0, \off
    csrw tdata2, t0
    li t0, \ctl
    csrw tdata1, t0
.endm

# a load/store case: trigger 0 = \ctl on wd + \off; t1 = wd, t2 = \val; then \access
.macro DCASE str, ctl, off, val, access:vararg
    NAME "\str"
    TRIG 0, \ctl, wd, \off
    la t1, wd
    li t2, \val
    \access
.endm

# an execute case: trigger 0 = \ctl on the addi that follows
.macro ECASE str, ctl
    NAME "\str"
    TRIG 0, \ctl, 9003f
9003: addi a5, a5, 1
.endm

# the registers the handlers and rt_* use, on the stack
.macro SAVE
    addi sp, sp, -80
    sd ra, 0(sp)
    sd t0, 8(sp)
    sd t1, 16(sp)
    sd t2, 24(sp)
    sd a0, 32(sp)
    sd a1, 40(sp)
    sd a2, 48(sp)
    sd a3, 56(sp)
.endm

.macro RESTORE
    ld ra, 0(sp)
    ld t0, 8(sp)
    ld t1, 16(sp)
    ld t2, 24(sp)
    ld a0, 32(sp)
    ld a1, 40(sp)
    ld a2, 48(sp)
    ld a3, 56(sp)
    addi sp, sp, 80
.endm

.macro NAME str
    la a0, 9001f
    call rt_puts
    .section .rodata
9001: .asciz "\n\str:"
    .previous
.endm

# run the code after this macro in mode \mode (0 U, 1 S) until an ecall
.macro ENTER mode
    li t0, 3 << 11
    csrc mstatus, t0
    li t0, \mode << 11
    csrs mstatus, t0
    la t0, 9002f
    csrw mepc, t0
    mret
9002:
.endm

    .section .text.init
    .globl _start
_start:
    la sp, _stack_top
    la t0, handler
    csrw mtvec, t0
    li t0, 0x3fffffffffffff      # PMP: everything RWX for S and U
    csrw pmpaddr0, t0
    li t0, 0x1f
    csrw pmpcfg0, t0
    la a0, s_begin
    call rt_puts

    # ---- execute triggers ----
    NAME "exec straight"
    TRIG 0, T2|EX|M, ex1
    nop
    nop
ex1: addi a5, a5, 1
    nop

    NAME "exec jump target"
    TRIG 0, T2|EX|M, ex2
    j ex2
    nop
ex2: addi a5, a5, 1

    NAME "exec compressed"
    TRIG 0, T2|EX|M, ex3
    nop
ex3: c.addi a5, 1
    c.nop

    NAME "exec after compressed"
    TRIG 0, T2|EX|M, ex3b
    c.nop
ex3b: c.addi a5, 1
    nop

    NAME "exec middle of 4-byte insn"
    TRIG 0, T2|EX|M, ex4, 2
    .option push
    .option norvc
ex4: addi a5, a5, 1
    .option pop
    nop

    ECASE "exec U only in M", T2|EX|U

    ECASE "exec S|U in M", T2|EX|U|S

    ECASE "exec no mode bit", T2|EX

    NAME "exec disabled again"
    TRIG 0, T2|EX|M, ex7
    li t0, T2|M
    csrw tdata1, t0
ex7: addi a5, a5, 1

    NAME "exec tdata1 before tdata2"
    li t0, 0
    csrw tselect, t0
    la t0, _start
    csrw tdata2, t0
    li t0, T2|EX|M
    csrw tdata1, t0
    la t0, ex8
    csrw tdata2, t0
    nop
ex8: addi a5, a5, 1

    NAME "exec on ecall"
    TRIG 0, T2|EX|M, ex9
ex9: ecall

    NAME "exec on illegal"
    TRIG 0, T2|EX|M, ex10
ex10: .word 0

    ECASE "exec type 6 M", T6|EX|M

    ECASE "exec type 6 VU|VS only", T6|EX|VU|VS

    NAME "exec trigger 1"
    TRIG 1, T2|EX|M, ex13
    TRIG 0, T2|EX|M, ex14
ex13: addi a5, a5, 1
ex14: addi a5, a5, 1
    NAME "exec trigger 0 of two"
    TRIG 1, T2|EX|M, ex16
    TRIG 0, T2|EX|M, ex15
ex15: addi a5, a5, 1
ex16: addi a5, a5, 1

    NAME "exec in a hot loop"
    li s1, 200
    call hotloop
    TRIG 0, T2|EX|M, hot
    li s1, 3
    call hotloop

    NAME "exec function in S"
    TRIG 0, T2|EX|S, ex17
    ENTER 1
    call func
    nop
ex17: nop
    ecall
    NAME "exec S trigger in U"
    TRIG 0, T2|EX|S, ex18
    ENTER 0
ex18: nop
    ecall
    NAME "exec U trigger in U"
    TRIG 0, T2|EX|U, ex19
    ENTER 0
    nop
ex19: nop
    ecall
    NAME "exec M trigger in S"
    TRIG 0, T2|EX|M, ex20
    ENTER 1
ex20: nop
    ecall

    NAME "exec delegated to S"
    li t0, 1 << 3
    csrw medeleg, t0
    la t0, shandler
    csrw stvec, t0
    TRIG 0, T2|EX|S|U, ex21
    ENTER 0
    .option push
    .option norvc
ex21: nop
    .option pop
    ecall
    csrw medeleg, zero

    # ---- load and store triggers ----
    DCASE "load any at", T2|LD|M, 0, 0, ld t2, 0(t1)
    DCASE "store any at", T2|ST|M, 0, 0x11, sd t2, 0(t1)
    DCASE "store any, byte at +1", T2|ST|M, 0, 0x22, sb t2, 1(t1)
    DCASE "store any, byte at +7", T2|ST|M, 0, 0x23, sb t2, 7(t1)
    DCASE "store any, byte at +8", T2|ST|M, 0, 0x24, sb t2, 8(t1)
    NAME "store any, dword at -4"
    TRIG 0, T2|ST|M, wd
    la t1, wd
    li t2, 0x25
    sd t2, -8(t1)
    sw t2, -4(t1)
    DCASE "store any, byte at -1", T2|ST|M, 0, 0x26, sb t2, -1(t1)
    DCASE "load 1, word at -2", T2|LD|M|Z1, 0, 0, lw t2, -2(t1)
    DCASE "load 1, word at", T2|LD|M|Z1, 1, 0, lw t2, 0(t1)
    DCASE "load 2, byte at +1", T2|LD|M|Z2, 0, 0, lb t2, 1(t1)
    DCASE "load 2, byte at +2", T2|LD|M|Z2, 0, 0, lb t2, 2(t1)
    DCASE "load 4, half at +2", T2|LD|M|Z4, 0, 0, lh t2, 2(t1)
    DCASE "load 4, half at +4", T2|LD|M|Z4, 0, 0, lh t2, 4(t1)
    DCASE "store 8, byte at +7", T2|ST|M|Z8, 0, 0x33, sb t2, 7(t1)
    DCASE "store 8 at +4, dword", T2|ST|M|Z8, 4, 0x34, sd t2, 0(t1)
    DCASE "store 2 at +1 (unaligned), byte +2", T2|ST|M|Z2, 1, 0x35, sb t2, 2(t1)
    DCASE "load 4, byte at +3", T2|LD|M|Z4, 0, 0, lb t2, 3(t1)
    DCASE "load 8, byte at +4", T2|LD|M|Z8, 0, 0, lb t2, 4(t1)
    DCASE "load 8, byte at +5", T2|LD|M|Z8, 0, 0, lb t2, 5(t1)
    DCASE "type 6 load 8, byte at +4", T6|LD|M|Y8, 0, 0, lb t2, 4(t1)
    DCASE "type 6 load 8, byte at +5", T6|LD|M|Y8, 0, 0, lb t2, 5(t1)
    DCASE "type 6 load any, byte at +7", T6|LD|M, 0, 0, lb t2, 7(t1)
    DCASE "type 6 load 2, byte at +2", T6|LD|M|Y2, 0, 0, lb t2, 2(t1)
    NAME "load trigger set between lr and sc"
    la t1, wd
    lr.d t2, (t1)
    TRIG 1, T2|LD|M, wd
    sc.d t3, t2, (t1)
    DCASE "misaligned load over", T2|LD|M|Z1, 9, 0, ld t2, 3(t1)
    DCASE "load trigger, store", T2|LD|M, 0, 0, sd t2, 0(t1)
    DCASE "store trigger, load", T2|ST|M, 0, 0, ld t2, 0(t1)
    DCASE "store, amoadd", T2|ST|M, 0, 1, amoadd.d t2, t2, (t1)
    DCASE "load, amoadd", T2|LD|M, 0, 1, amoadd.d t2, t2, (t1)
    DCASE "load, lr", T2|LD|M, 0, 0, lr.d t2, (t1)
    NAME "store, sc"
    TRIG 0, T2|ST|M, wd
    la t1, wd
    lr.d t2, (t1)
    sc.d t3, t2, (t1)
    DCASE "type 6 store 4", T6|ST|M|Y4, 0, 0x44, sw t2, 0(t1)
    NAME "store in U"
    TRIG 0, T2|ST|U, wd
    ENTER 0
    la t1, wd
    li t2, 0x55
    sd t2, 0(t1)
    ecall
    NAME "store U trigger in S"
    TRIG 0, T2|ST|U, wd
    ENTER 1
    la t1, wd
    li t2, 0x56
    sd t2, 0(t1)
    ecall
    NAME "store in a hot loop"
    la t1, wd
    li s1, 200
1:  sd s1, 8(t1)
    addi s1, s1, -1
    bnez s1, 1b
    TRIG 0, T2|ST|M, wd, 8
    li s1, 2
1:  sd s1, 8(t1)
    addi s1, s1, -1
    bnez s1, 1b
    NAME "exec and load on one insn"
    TRIG 0, T2|LD|M, wd
    TRIG 1, T2|EX|M, ex30
    la t1, wd
ex30: ld t2, 0(t1)
    NAME "exec trigger on a pc that cannot be fetched"
    li t0, 0
    csrw tselect, t0
    li t0, FAR
    csrw tdata2, t0
    li t0, T2|EX|M
    csrw tdata1, t0
    li t0, FAR
    jalr ra, 0(t0)

    NAME "exec trigger in the M-mode handler"
    TRIG 1, T2|EX|M, hx
    TRIG 0, T2|EX|M, ex31
ex31: nop
    NAME "never reached"
nested_done:
    NAME "tcontrol"
    csrr a0, 0x7a5
    call rt_puthex
    NAME "mcontext"
    csrr a0, 0x7a8
    call rt_puthex
    NAME "end"
    ld a0, wd
    call rt_puthex
    mv a0, a5
    call rt_puthex
    la a0, s_end
    call rt_puts
    call rt_pass

func:
    nop
    ret

hotloop:
1:  addi a5, a5, 1
hot: addi s1, s1, -1
    bnez s1, 1b
    ret

    .balign 4
handler:
    SAVE
    csrr t0, mepc
    la t1, hx
    beq t0, t1, nested
hx: csrr t0, mcause
    li t1, 8
    beq t0, t1, 1f
    li t1, 9
    beq t0, t1, 1f
    li t1, 11
    beq t0, t1, 3f
    li t1, 2
    beq t0, t1, 4f
    li t1, 1
    beq t0, t1, 5f
    call disable
    la a0, s_c
    call rt_puts
    csrr a0, mcause
    call rt_puthex
    la a0, s_v
    call rt_puts
    csrr a0, mtval
    call rt_puthex
    la a0, s_e
    call rt_puts
    csrr a0, mepc
    la t0, _start
    sub a0, a0, t0
    call rt_puthex
    la a0, s_p
    call rt_puts
    csrr a0, mstatus
    srli a0, a0, 11
    andi a0, a0, 3
    call rt_puthex
    la a0, s_m
    call rt_puts
    ld a0, wd
    call rt_puthex
    j 2f
1:  li t0, 3 << 11               # ecall from S/U: back to M after the ecall
    csrs mstatus, t0
3:  csrr t0, mepc                # ecall from M: skip it
    addi t0, t0, 4
    csrw mepc, t0
    j 2f
4:  la a0, s_ill                 # illegal: print and skip
    call rt_puts
    csrr t0, mepc
    addi t0, t0, 4
    csrw mepc, t0
    j 2f
5:  la a0, s_fetch               # fetch fault: print, return to ra
    call rt_puts
    ld t0, 0(sp)
    csrw mepc, t0
2:  RESTORE
    mret

# the trigger on hx fired inside the handler: print the second trap, drop both frames
nested:
    call disable
    la a0, s_nested
    call rt_puts
    csrr a0, mcause
    call rt_puthex
    la a0, s_e
    call rt_puts
    csrr a0, mepc
    la t0, _start
    sub a0, a0, t0
    call rt_puthex
    addi sp, sp, 160
    la t0, nested_done
    csrw mepc, t0
    mret

# S-mode handler for delegated breakpoints
    .balign 4
shandler:
    SAVE
    la a0, s_sc
    call rt_puts
    csrr a0, scause
    call rt_puthex
    la a0, s_v
    call rt_puts
    csrr a0, stval
    call rt_puthex
    la a0, s_e
    call rt_puts
    csrr a0, sepc
    la t0, _start
    sub a0, a0, t0
    call rt_puthex
    csrr t0, sepc                 # the trigger stays on (S cannot reach tdata1): skip the nop
    addi t0, t0, 4
    csrw sepc, t0
    RESTORE
    sret

disable:
    li t0, 1
    csrw tselect, t0
    li t0, T2
    csrw tdata1, t0
    csrw tselect, zero
    csrw tdata1, t0
    ret

    .section .rodata
s_begin: .asciz "triggers: begin"
s_end: .asciz "\ntriggers: end\n"
s_c: .asciz " C="
s_sc: .asciz " S-C="
s_v: .asciz " V="
s_e: .asciz " E="
s_p: .asciz " P="
s_m: .asciz " M="
s_ill: .asciz " illegal"
s_fetch: .asciz " fetch fault"
s_nested: .asciz " nested C="

    .data
    .balign 16
    .dword 0x0f0f0f0f0f0f0f0f
wd: .dword 0x0102030405060708
    .dword 0x1112131415161718
