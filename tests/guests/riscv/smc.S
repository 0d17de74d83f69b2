# Self-modifying code with fence.i: patch an immediate in a function that has been
# run often enough to be cached, chained and compiled into a hot region; patch the
# next instruction of the running block; and copy fresh code into a buffer.
    .section .text.init
    .globl _start
_start:
    la sp, _stack_top
    # 1: hot loop calling patchme, then patch its addi immediate, run again
    li s0, 0
    li s1, 0
1:  call patchme
    add s0, s0, a0
    addi s1, s1, 1
    li t0, 200
    blt s1, t0, 1b
    mv a0, s0
    call rt_show
    la t0, patchme
    lw t1, 0(t0)
    li t2, 0xfff00000
    and t1, t1, t2               # clear imm... keep only the imm field? no: rebuild
    lw t1, 0(t0)
    li t2, 0x000fffff
    and t1, t1, t2
    li t2, 7 << 20
    or t1, t1, t2                # addi a0, zero, 7
    sw t1, 0(t0)
    fence.i
    li s0, 0
    li s1, 0
2:  call patchme
    add s0, s0, a0
    addi s1, s1, 1
    li t0, 200
    blt s1, t0, 2b
    mv a0, s0
    call rt_show
    # 2: patch the instruction right after the store, inside the running block
    la t0, next
    la t1, new_insn
    lw t1, 0(t1)
    sw t1, 0(t0)
    fence.i
    .option push
    .option norvc
next:
    addi a0, zero, 1             # replaced by: li a0, 99
    .option pop
    call rt_show
    # 3: copy code into a data buffer and run it, twice with different code
    la a0, buf
    la a1, code_a
    li a2, 8
    call copy
    fence.i
    la t0, buf
    jalr ra, 0(t0)
    call rt_show
    la a0, buf
    la a1, code_b
    li a2, 8
    call copy
    fence.i
    la t0, buf
    jalr ra, 0(t0)
    call rt_show
    call rt_pass

    .option push
    .option norvc
patchme:
    addi a0, zero, 3
    ret
code_a:
    addi a0, zero, 0x123
    ret
code_b:
    addi a0, zero, 0x456
    ret
new_insn:
    addi a0, zero, 99
    .option pop

copy:
    beqz a2, 2f
1:  lbu t0, 0(a1)
    sb t0, 0(a0)
    addi a0, a0, 1
    addi a1, a1, 1
    addi a2, a2, -1
    bnez a2, 1b
2:  ret

    .data
    .balign 8
buf: .zero 64
