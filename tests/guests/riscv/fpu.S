# A freestanding floating-point workload: Newton square roots, a harmonic sum, FMA
# chains and conversions in every rounding mode; prints result bits and fflags, which
# must match QEMU bit for bit.  Also: F instructions trap while mstatus.FS is Off.
    .option arch, +f, +d
    .section .text.init
    .globl _start
_start:
    la sp, _stack_top
    la t0, handler
    csrw mtvec, t0
    fadd.d f0, f0, f0           # FS is Off at reset: illegal instruction
    li t0, 1 << 13
    csrs mstatus, t0            # FS = Initial
    # harmonic sum 1/1 + ... + 1/2000 in double and single, in each rounding mode
    li s2, 0
1:  fsrm s2
    fmv.d.x f1, zero
    fmv.w.x f2, zero
    li s3, 1
    li s4, 2000
2:  fcvt.d.l f3, s3
    li t0, 1
    fcvt.d.l f4, t0
    fdiv.d f5, f4, f3
    fadd.d f1, f1, f5
    fcvt.s.l f6, s3
    fcvt.s.l f7, t0
    fdiv.s f8, f7, f6
    fadd.s f2, f2, f8
    addi s3, s3, 1
    ble s3, s4, 2b
    fmv.x.d a0, f1
    call rt_show
    fmv.x.w a0, f2
    call rt_show
    frflags a0
    call rt_show
    fsflags zero
    # Newton iterations for sqrt(2) with FMA, against fsqrt
    li t0, 2
    fcvt.d.l f10, t0            # a = 2
    fmv.d f11, f10              # x = 2
    li t0, 0x3fe0000000000000
    fmv.d.x f12, t0             # 0.5
    li s5, 6
3:  fdiv.d f13, f10, f11
    fadd.d f13, f13, f11
    fmul.d f11, f13, f12
    addi s5, s5, -1
    bnez s5, 3b
    fmv.x.d a0, f11
    call rt_show
    fsqrt.d f14, f10
    fmv.x.d a0, f14
    call rt_show
    fnmsub.d f15, f14, f14, f10  # 2 - sqrt(2)^2: the rounding error
    fmv.x.d a0, f15
    call rt_show
    fcvt.s.d f16, f15
    fmv.x.w a0, f16
    call rt_show
    fcvt.w.d a0, f15, rup
    call rt_show
    li t0, 0x7ff0000000000000
    fmv.d.x f17, t0
    fcvt.l.d a0, f17            # +inf saturates: NV
    call rt_show
    fmin.d f18, f17, f15
    fmv.x.d a0, f18
    call rt_show
    frflags a0
    call rt_show
    addi s2, s2, 1
    li t0, 5
    blt s2, t0, 1b
    csrr a0, mstatus
    srli a0, a0, 13
    andi a0, a0, 3              # FS is Dirty
    call rt_show
    call rt_pass

    .balign 4
handler:
    csrr a0, mcause
    call rt_show
    csrr t0, mepc
    addi t0, t0, 4
    csrw mepc, t0
    mret
