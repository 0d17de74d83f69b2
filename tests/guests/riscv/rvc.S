# Compressed instructions (RV64C): every integer form, explicitly encoded by the
# assembler, with results printed after each group.
    .section .text.init
    .globl _start
_start:
    la sp, _stack_top
    la s0, data
    addi sp, sp, -64
    c.addi4spn s1, sp, 16        # s1 = sp + 16
    sub a0, s1, sp
    call rt_show
    c.li a0, -7
    c.addi a0, 31
    call rt_show
    c.li a0, 1
    c.slli a0, 40
    c.addiw a0, -1               # 32-bit wrap
    call rt_show
    c.lui a0, 0xfffe1
    call rt_show
    c.addi16sp sp, -32
    c.addi16sp sp, 32
    c.li a1, -1
    c.mv a0, a1
    c.srli a0, 60
    call rt_show
    c.mv a0, a1
    c.srai a0, 60
    call rt_show
    c.mv a0, a1
    c.andi a0, 0x15
    call rt_show
    li a1, 0x1234
    li a2, 0x0ff0
    mv a0, a1
    c.sub a0, a2
    call rt_show
    mv a0, a1
    c.xor a0, a2
    call rt_show
    mv a0, a1
    c.or a0, a2
    call rt_show
    mv a0, a1
    c.and a0, a2
    call rt_show
    li a1, 0x7fffffff
    li a2, 1
    mv a0, a1
    c.addw a0, a2
    call rt_show
    li a1, 0x80000000
    mv a0, a1
    c.subw a0, a2
    call rt_show
    mv a0, a1
    c.add a0, a2
    call rt_show
    # loads and stores
    mv a1, s0
    c.ld a0, 8(a1)
    call rt_show
    c.lw a0, 4(a1)
    call rt_show
    li a2, -2
    c.sw a2, 0(a1)
    c.sd a2, 16(a1)
    c.ld a0, 16(a1)
    call rt_show
    c.lw a0, 0(a1)
    call rt_show
    c.sdsp a2, 8(sp)
    c.swsp a1, 20(sp)
    c.ldsp a0, 8(sp)
    call rt_show
    c.lwsp a0, 20(sp)
    sub a0, a0, s0
    call rt_show
    # control flow
    li a0, 0
    c.beqz a0, 1f
    li a0, 99
1:  c.bnez a0, 2f
    li a0, 5
2:  call rt_show
    la a1, func
    c.jalr a1
    call rt_show
    la a1, 3f
    c.jr a1
    li a0, 98
3:  c.j 4f
    li a0, 97
4:  call rt_show
    addi sp, sp, 64
    call rt_pass

func:
    li a0, 0x42
    c.jr ra

    .data
    .balign 8
data: .dword 0x1122334455667788, 0x99aabbccddeeff00, 0
