# Interrupts: CLINT timer (mtimecmp, WFI), CLINT software interrupt (msip),
# an S-mode timer interrupt injected through mip.STIP and delegated with mideleg,
# and the UART's THRE interrupt routed through the PLIC (source 10, context 0).
    .equ CLINT_MSIP, 0x2000000
    .equ CLINT_MTIMECMP, 0x2004000
    .equ CLINT_MTIME, 0x200bff8
    .equ PLIC, 0xc000000
    .equ UART, 0x10000000
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
    li s0, 0                     # tick counter
    li t0, CLINT_MTIME
    ld t1, 0(t0)
    addi t1, t1, 1000
    li t0, CLINT_MTIMECMP
    sd t1, 0(t0)
    li t0, 1 << 7
    csrw mie, t0
    csrsi mstatus, 8
1:  wfi
    li t0, 3
    blt s0, t0, 1b
    csrw mie, zero
    la a0, s_ticks
    call rt_puts
    # software interrupt through the CLINT
    li t0, 1 << 3
    csrw mie, t0
    li t0, CLINT_MSIP
    li t1, 1
    sw t1, 0(t0)
    nop
    nop
    la a0, s_after_msip
    call rt_puts
    # PLIC: UART THRE interrupt
    li t0, PLIC + 4 * 10
    li t1, 1
    sw t1, 0(t0)                 # priority of source 10
    li t0, PLIC + 0x2000
    li t1, 1 << 10
    sw t1, 0(t0)                 # enable for context 0
    li t0, PLIC + 0x200000
    sw zero, 0(t0)               # threshold 0
    li t0, 1 << 11
    csrw mie, t0
    li t0, UART
    li t1, 2
    sb t1, 1(t0)                 # IER = THRE: fires at once, THR is empty
2:  beqz s1, 2b
    la a0, s_ext
    call rt_puts
    mv a0, s2
    call rt_putdec
    call rt_nl
    andi a0, s3, 0x0f
    call rt_puthex
    call rt_nl
    la a0, s_after_plic
    call rt_puts
    # S-mode timer interrupt injected by M
    csrci mstatus, 8
    csrw mie, zero
    li t0, 1 << 5
    csrw mideleg, t0
    csrw mie, t0
    la t0, s_handler
    csrw stvec, t0
    li t0, 3 << 11
    csrc mstatus, t0
    li t0, (1 << 11) | (1 << 5)  # MPP = S, MPIE
    csrs mstatus, t0
    la t0, s_code
    csrw mepc, t0
    li t0, 1 << 5
    csrs mip, t0                 # STIP pending, but S has SIE clear
    mret
s_code:
    la a0, s_in_s
    call rt_puts
    csrsi sstatus, 2             # SIE: the interrupt is taken here
    nop
    la a0, s_back
    call rt_puts
    ecall

    .balign 4
s_handler:
    addi sp, sp, -16
    sd ra, 0(sp)
    sd a0, 8(sp)
    la a0, s_stip
    call rt_puts
    csrr a0, scause
    call rt_puthex
    call rt_nl
    li a7, 1
    ecall                        # ask M to clear STIP
    ld ra, 0(sp)
    ld a0, 8(sp)
    addi sp, sp, 16
    sret

    .balign 4
m_handler:
    addi sp, sp, -64
    sd ra, 0(sp)
    sd a0, 8(sp)
    sd a2, 16(sp)
    sd a3, 24(sp)
    sd t0, 32(sp)
    sd t1, 40(sp)
    sd t2, 48(sp)
    csrr t0, mcause
    bgez t0, m_exception
    slli t0, t0, 1
    srli t0, t0, 1
    li t1, 7
    beq t0, t1, m_timer
    li t1, 3
    beq t0, t1, m_soft
    li t1, 11
    beq t0, t1, m_ext
    la a0, s_unexpected
    call rt_puts
    li a0, 1
    call rt_fail
m_timer:
    addi s0, s0, 1
    la a0, s_tick
    call rt_puts
    mv a0, s0
    call rt_putdec
    call rt_nl
    li t1, -1                    # after the third tick: no deadline, so a slow host cannot add a fourth
    li t0, 3
    bge s0, t0, 3f
    li t0, CLINT_MTIME
    ld t1, 0(t0)
    li t2, 200000                # 20 ms at QEMU's 10 MHz: far longer than the handler
    add t1, t1, t2
3:  li t0, CLINT_MTIMECMP
    sd t1, 0(t0)
    j m_ret
m_soft:
    la a0, s_msip
    call rt_puts
    li t0, CLINT_MSIP
    sw zero, 0(t0)
    j m_ret
m_ext:
    # Quiesce the UART before printing anything: THR writes would re-arm THRE.
    li t0, PLIC + 0x200004
    lw s2, 0(t0)                 # claim
    li t0, UART
    lbu s3, 2(t0)                # IIR: reading it acknowledges THRE
    sb zero, 1(t0)               # IER = 0
    li t0, PLIC + 0x200004
    sw s2, 0(t0)                 # complete
    li s1, 1
    j m_ret
m_exception:
    csrr t0, mepc
    addi t0, t0, 4
    csrw mepc, t0
    li t1, 1
    bne a7, t1, 1f
    li t0, 1 << 5
    csrc mip, t0
    li a7, 0
    j m_ret
1:  la a0, s_done
    call rt_puts
    call rt_pass

m_ret:
    ld ra, 0(sp)
    ld a0, 8(sp)
    ld a2, 16(sp)
    ld a3, 24(sp)
    ld t0, 32(sp)
    ld t1, 40(sp)
    ld t2, 48(sp)
    addi sp, sp, 64
    mret
    .section .rodata
s_tick: .asciz "tick "
s_ticks: .asciz "timer done\n"
s_msip: .asciz "msip\n"
s_after_msip: .asciz "after msip\n"
s_ext: .asciz "external irq "
s_after_plic: .asciz "after plic\n"
s_in_s: .asciz "in S\n"
s_stip: .asciz "S timer interrupt "
s_back: .asciz "back in S\n"
s_done: .asciz "done\n"
s_unexpected: .asciz "unexpected interrupt\n"
