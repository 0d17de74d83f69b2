/* A boot sector for the IDE firmware tests: int 13h extended reads of two runs of 16 KiB (DAP counts and
   LBAs patched by the test), the 16-bit word sum of each printed through int 10h as "IDE-BOOT dl=XX a=XXXX b=XXXX". */
.code16
.globl _start
_start:
    cli
    xor %ax, %ax
    mov %ax, %ds
    mov %ax, %ss
    mov $0x7c00, %sp
    sti
    mov %dl, drive
    mov $msg_start, %si
    call puts
    mov drive, %al
    call puthex8
    mov $0x41, %ah
    mov $0x55aa, %bx
    mov drive, %dl
    int $0x13
    jc fail
    cmp $0xaa55, %bx
    jne fail
    mov $dap1, %si
    call readsum
    mov $msg_a, %si
    call puts
    mov %bx, %ax
    call puthex16
    mov $dap2, %si
    call readsum
    mov $msg_b, %si
    call puts
    mov %bx, %ax
    call puthex16
    mov $msg_nl, %si
    call puts
halt:
    sti  /* the timer interrupt lets SeaBIOS flush its serial console */
    hlt
    jmp halt
fail:
    mov $msg_fail, %si
    call puts
    jmp halt

/* read with the DAP at %si into 0x1000:0, then sum 8192 words into %bx */
readsum:
    mov $0x42, %ah
    mov drive, %dl
    int $0x13
    jc fail
    push %ds
    mov $0x1000, %ax
    mov %ax, %ds
    xor %si, %si
    xor %bx, %bx
    mov $8192, %cx
1:  add (%si), %bx
    add $2, %si
    loop 1b
    pop %ds
    ret

puts:
    lodsb
    test %al, %al
    jz 2f
    call putc
    jmp puts
2:  ret

puthex16:
    push %ax
    mov %ah, %al
    call puthex8
    pop %ax
puthex8:
    push %ax
    shr $4, %al
    call nibble
    pop %ax
nibble:
    and $0xf, %al
    add $'0', %al
    cmp $'9', %al
    jbe 3f
    add $7, %al
3:  jmp putc

/* one character through the BIOS (SeaBIOS's serial console under -nographic keeps its own output in order) */
putc:
    push %bx
    mov $0x0e, %ah
    mov $0x0007, %bx
    int $0x10
    pop %bx
    ret

msg_start: .asciz "IDE-BOOT dl="
msg_a: .asciz " a="
msg_b: .asciz " b="
msg_nl: .asciz "\r\n"
msg_fail: .asciz " FAIL\r\n"
drive: .byte 0
.org 0x1c0
dap1: .byte 16, 0
      .word 32, 0, 0x1000
      .quad 1
dap2: .byte 16, 0
      .word 32, 0, 0x1000
      .quad 4000
.org 510
.byte 0x55, 0xaa
