# A extension: LR/SC success and failure cases, and every AMO in .w and .d forms,
# printing the old value returned and the memory result.
    .section .text.init
    .globl _start
_start:
    la sp, _stack_top
    la s0, mem
    # LR/SC pair succeeds
    lr.d t0, (s0)
    addi t0, t0, 1
    sc.d a0, t0, (s0)
    call rt_show
    ld a0, 0(s0)
    call rt_show
    # SC without a reservation fails
    sc.d a0, t0, (s0)
    call rt_show
    # SC to another address than the LR fails
    lr.w t0, (s0)
    addi t1, s0, 8
    sc.w a0, t0, (t1)
    call rt_show
    # LR.W sign-extends
    li t0, 0x80000000
    sw t0, 16(s0)
    addi s4, s0, 16
    lr.w a0, (s4)
    call rt_show
    li t2, 5
    sc.w a0, t2, (s4)            # the reservation survives the call: succeeds
    call rt_show
    lw a0, 16(s0)
    call rt_show
    # AMOs: value pattern chosen to exercise signed vs unsigned min/max
    la s1, vals
    li s2, 0
1:  ld t0, 0(s1)                 # operand
    li t1, 0x00000000fffffff0
    sd t1, 24(s0)
    li t1, 0x7ffffffffffffff0
    sd t1, 32(s0)
    addi t2, s0, 24
    addi t3, s0, 32
    beqz s2, 10f
    li t4, 1
    beq s2, t4, 11f
    li t4, 2
    beq s2, t4, 12f
    li t4, 3
    beq s2, t4, 13f
    li t4, 4
    beq s2, t4, 14f
    li t4, 5
    beq s2, t4, 15f
    li t4, 6
    beq s2, t4, 16f
    li t4, 7
    beq s2, t4, 17f
    amomaxu.w a0, t0, (t2)
    amomaxu.d a1, t0, (t3)
    j 2f
10: amoswap.w a0, t0, (t2)
    amoswap.d a1, t0, (t3)
    j 2f
11: amoadd.w a0, t0, (t2)
    amoadd.d a1, t0, (t3)
    j 2f
12: amoxor.w a0, t0, (t2)
    amoxor.d a1, t0, (t3)
    j 2f
13: amoand.w a0, t0, (t2)
    amoand.d a1, t0, (t3)
    j 2f
14: amoor.w a0, t0, (t2)
    amoor.d a1, t0, (t3)
    j 2f
15: amomin.w a0, t0, (t2)
    amomin.d a1, t0, (t3)
    j 2f
16: amomax.w a0, t0, (t2)
    amomax.d a1, t0, (t3)
    j 2f
17: amominu.w a0, t0, (t2)
    amominu.d a1, t0, (t3)
2:  mv s3, a1
    call rt_show
    mv a0, s3
    call rt_show
    ld a0, 24(s0)
    call rt_show
    ld a0, 32(s0)
    call rt_show
    addi s2, s2, 1
    li t4, 9
    blt s2, t4, 1b
    # amo with rd = x0 still writes memory
    li t0, 7
    amoadd.d zero, t0, (s0)
    ld a0, 0(s0)
    call rt_show
    call rt_pass

    .data
    .balign 8
mem: .dword 41, 0, 0, 0, 0
vals: .dword 0xffffffff80000005
