# Synchronous exceptions in M-mode: illegal instructions, ecall, ebreak, access
# faults on loads/stores/fetches outside RAM, misaligned accesses and atomics,
# and illegal CSR accesses. The handler prints cause, tval and the offset of
# mepc from _start, then skips the faulting instruction.
    .section .text.init
    .globl _start
_start:
    la sp, _stack_top
    la t0, handler
    csrw mtvec, t0
    la a0, s_begin
    call rt_puts

    .option push
    .option norvc
    .word 0xffffffff          # illegal 32-bit encoding
    .option pop
    .2byte 0x0000             # illegal compressed (all zero)
    .word 0x0000000b          # custom-0 opcode: illegal here
    ecall
    ebreak
    c.ebreak
    li t1, 0x88000000         # just past 128 MiB of RAM: nothing there
    .option push
    .option norvc
    ld t2, 0(t1)
    sd t2, 0(t1)
    lw t2, 0(t1)
    .option pop
    la t1, buf
    .option push
    .option norvc
    ld t2, 1(t1)              # misaligned load: QEMU handles it or traps
    sd t2, 3(t1)
    amoadd.w t2, t2, (t1)     # aligned: fine
    addi t3, t1, 2
    amoadd.w t2, t2, (t3)     # misaligned AMO
    lr.d t2, (t3)             # misaligned LR
    csrr t2, 0x7c0            # unimplemented CSR
    csrw mhartid, t2          # read-only CSR
    csrr t2, mhartid
    .option pop
    ld a0, 0(t1)
    call rt_puthex
    call rt_nl
    # fetch from outside RAM: the handler returns to ra
    li t1, 0x88000000
    jalr ra, 0(t1)
    # fetch from a misaligned target via jalr: bit 0 is cleared, so this works
    la t1, target
    addi t1, t1, 1
    jalr ra, 0(t1)
    la a0, s_end
    call rt_puts
    call rt_pass

target:
    ret

    .balign 4
handler:
    addi sp, sp, -64
    sd ra, 0(sp)
    sd a0, 8(sp)
    sd a2, 16(sp)
    sd a3, 24(sp)
    sd t0, 32(sp)
    sd t1, 40(sp)
    sd t2, 48(sp)
    la a0, s_cause
    call rt_puts
    csrr a0, mcause
    call rt_puthex
    la a0, s_tval
    call rt_puts
    csrr a0, mtval
    call rt_puthex
    la a0, s_epc
    call rt_puts
    csrr a0, mepc
    la t0, _start
    sub a0, a0, t0
    call rt_puthex
    call rt_nl
    csrr t0, mcause
    li t1, 1
    beq t0, t1, 2f            # fetch fault: return to the caller
    csrr t0, mepc
    lhu t1, 0(t0)
    andi t1, t1, 3
    li t2, 3
    addi t0, t0, 2
    bne t1, t2, 1f
    addi t0, t0, 2
1:  csrw mepc, t0
    j 3f
2:  ld t0, 0(sp)
    csrw mepc, t0
3:  ld ra, 0(sp)
    ld a0, 8(sp)
    ld a2, 16(sp)
    ld a3, 24(sp)
    ld t0, 32(sp)
    ld t1, 40(sp)
    ld t2, 48(sp)
    addi sp, sp, 64
    mret

    .section .rodata
s_begin: .asciz "traps: begin\n"
s_end:   .asciz "traps: end\n"
s_cause: .asciz "cause="
s_tval:  .asciz " tval="
s_epc:   .asciz " epc+"
    .data
    .balign 16
buf: .dword 0x1122334455667788, 0x99aabbccddeeff00
