# Shared runtime for the riscv64 test guests: UART output and sifive_test exits.
# All routines follow the standard calling convention (clobber only a0-a3, t0-t2).
    .equ UART, 0x10000000
    .equ FINISHER, 0x100000

    .section .text
    .globl rt_putc, rt_puts, rt_puthex, rt_putdec, rt_pass, rt_fail, rt_nl, rt_show

# rt_putc(a0 = byte)
rt_putc:
    li t0, UART
1:  lbu t1, 5(t0)            # wait for THR empty (LSR bit 5)
    andi t1, t1, 0x20
    beqz t1, 1b
    sb a0, 0(t0)
    ret

rt_nl:
    li a0, '\n'
    j rt_putc

# rt_puts(a0 = NUL-terminated string)
rt_puts:
    mv a2, a0
    li t0, UART
1:  lbu a0, 0(a2)
    beqz a0, 2f
    sb a0, 0(t0)
    addi a2, a2, 1
    j 1b
2:  ret

# rt_puthex(a0 = value): 16 hex digits
rt_puthex:
    mv a2, a0
    li a3, 60
    li t0, UART
1:  srl t1, a2, a3
    andi t1, t1, 15
    li t2, 10
    blt t1, t2, 2f
    addi t1, t1, 'a' - 10
    j 3f
2:  addi t1, t1, '0'
3:  sb t1, 0(t0)
    addi a3, a3, -4
    bgez a3, 1b
    ret

# rt_show(a0 = value): rt_puthex, then a newline
rt_show:
    addi sp, sp, -16
    sd ra, 0(sp)
    call rt_puthex
    call rt_nl
    ld ra, 0(sp)
    addi sp, sp, 16
    ret

# rt_putdec(a0 = unsigned value)
rt_putdec:
    addi sp, sp, -48
    sd ra, 40(sp)
    mv a2, a0
    addi a3, sp, 31
    sb zero, 0(a3)
    li t2, 10
1:  remu t1, a2, t2
    divu a2, a2, t2
    addi t1, t1, '0'
    addi a3, a3, -1
    sb t1, 0(a3)
    bnez a2, 1b
    mv a0, a3
    call rt_puts
    ld ra, 40(sp)
    addi sp, sp, 48
    ret

rt_pass:
    li t0, FINISHER
    li t1, 0x5555
    sw t1, 0(t0)
1:  j 1b

# rt_fail(a0 = code)
rt_fail:
    li t0, FINISHER
    slli a0, a0, 16
    li t1, 0x3333
    or a0, a0, t1
    sw a0, 0(t0)
1:  j 1b
