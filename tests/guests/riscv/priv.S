# Privilege changes: M -> S -> U with mret/sret, ecall from each mode, delegation
# of U exceptions to S, privileged instructions and CSRs trapping in lower modes,
# MPRV loads, and TSR/TW/TVM.
    .equ SSTATUS_SPP, 0x100
    .section .text.init
    .globl _start
_start:
    la sp, _stack_top
    la t0, m_handler
    csrw mtvec, t0
    li t0, -1
    csrw pmpaddr0, t0           # one NAPOT region over everything, RWX for S/U
    li t0, 0x1f
    csrw pmpcfg0, t0
    li t0, (1 << 8) | (1 << 2)  # delegate ecall-from-U and illegal instruction to S
    csrw medeleg, t0
    csrr a0, medeleg
    call rt_show
    # mret into S
    li t0, 3 << 11
    csrc mstatus, t0
    li t0, 1 << 11
    csrs mstatus, t0
    la t0, s_entry
    csrw mepc, t0
    mret

s_entry:
    la t0, s_handler
    csrw stvec, t0
    la a0, str_s
    call rt_puts
    csrr a0, sstatus
    li t0, 0x1e0122             # SIE SPIE SPP SUM MXR UXL bits... masked view
    and a0, a0, t0
    call rt_show
    li a7, 1
    ecall                       # to M (cause 9)
    # S-mode CSR access to an M CSR: illegal, not delegated from S? It is: medeleg bit 2
    # applies to exceptions raised in S too, so S handles its own illegal instruction.
    csrr t0, mscratch
    # sret into U
    li t0, SSTATUS_SPP
    csrc sstatus, t0
    la t0, u_entry
    csrw sepc, t0
    sret

u_entry:
    la a0, str_u
    call rt_puts
    li a7, 2
    ecall                       # cause 8, delegated to S
    csrr t0, sstatus            # illegal in U -> S
    mret                        # illegal in U -> S
    sret                        # illegal in U -> S
    wfi                         # illegal in U -> S
    sfence.vma                  # illegal in U -> S
    li a7, 3
    ecall                       # S handler escalates: back to S mode code
    j u_entry

# ---- S-mode trap handler ----
    .balign 4
s_handler:
    csrr t0, scause
    li t1, 8
    bne t0, t1, 1f
    li t1, 3
    beq a7, t1, s_done           # U asked to finish
1:  la a0, str_strap
    call rt_puts
    csrr a0, scause
    call rt_puthex
    li a0, ' '
    call rt_putc
    csrr a0, stval
    call rt_puthex
    li a0, ' '
    call rt_putc
    csrr a0, sstatus
    andi a0, a0, SSTATUS_SPP
    call rt_puthex
    call rt_nl
    csrr t0, sepc
    addi t0, t0, 4
    csrw sepc, t0
    sret

s_done:
    # Back in S: TSR makes sret trap to M; TVM makes satp access trap; TW makes wfi trap.
    la a0, str_done
    call rt_puts
    li a7, 4
    ecall                        # M sets TSR, TVM, TW
    sret                         # -> M illegal
    csrr t0, satp                # -> M illegal
    wfi                          # -> M illegal
    li a7, 5
    ecall                        # M finishes

# ---- M-mode trap handler ----
    .balign 4
m_handler:
    la a0, str_mtrap
    call rt_puts
    csrr a0, mcause
    call rt_puthex
    li a0, ' '
    call rt_putc
    csrr a0, mtval
    call rt_puthex
    li a0, ' '
    call rt_putc
    csrr a0, mstatus
    srli a0, a0, 11
    andi a0, a0, 3
    call rt_puthex
    call rt_nl
    csrr t0, mcause
    li t1, 9
    bne t0, t1, 2f
    li t1, 4
    bne a7, t1, 1f
    li t0, (1 << 22) | (1 << 21) | (1 << 20)
    csrs mstatus, t0
    li t0, 1 << 2
    csrc medeleg, t0             # S's own illegal instructions now go to M
    j 2f
1:  li t1, 5
    bne a7, t1, 2f
    # MPRV: load through S permissions while in M
    li t0, (1 << 17)
    csrs mstatus, t0
    la t1, value
    ld a0, 0(t1)
    csrc mstatus, t0
    call rt_show
    csrr a0, minstret
    snez a0, a0
    call rt_show
    call rt_pass
2:  csrr t0, mepc
    addi t0, t0, 4
    csrw mepc, t0
    mret

    .section .rodata
str_s: .asciz "in S\n"
str_u: .asciz "in U\n"
str_done: .asciz "S again\n"
str_strap: .asciz "S trap "
str_mtrap: .asciz "M trap "
    .data
value: .dword 0x0123456789abcdef
