# Console input: prints "ready", then echoes every byte received on the UART
# (polling LSR.DR) until it receives 'q', and exits through sifive_test with "pass".
    .equ UART, 0x10000000
    .section .text.init
    .globl _start
_start:
    la a0, msg
    call rt_puts
    li s0, UART
1:  lbu t2, 5(s0)            # LSR: bit 0 = data ready
    andi t2, t2, 1
    beqz t2, 1b
    lbu a0, 0(s0)            # RBR
    mv s1, a0
    call rt_putc             # echo
    li t4, 'q'
    bne s1, t4, 1b
    j rt_pass
    .section .rodata
msg: .asciz "ready\n"
