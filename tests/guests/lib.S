/* Runtime shared by the test guests: multiboot v1 header and entry, a flat GDT,
 * polled 16550 output on COM1, hex/decimal printers, the kernel command line
 * "key=value" finder, isa-debug-exit, a spinlock, and 32-bit IDT/8259 helpers.
 *
 * A guest provides `main` (32-bit protected mode, flat segments, interrupts off,
 * %eax = nothing); main returns an isa-debug-exit value in %eax.
 * State lives in .data (explicitly initialised), so nothing relies on the loader
 * zeroing .bss; .bss only holds stacks and tables that are written before use.
 */
#include "guest.h"

    .section .multiboot, "a"
    .p2align 2
    .long MB_MAGIC
    .long MB_FLAGS
    .long -(MB_MAGIC + MB_FLAGS)

/* ------------------------------------------------------------------ entry */
    .text
    .code32
    .globl _start
_start:
    cli
    cld
    mov $stack_top, %esp
    mov %eax, mb_magic
    mov %ebx, mb_info
    /* Multiboot leaves the GDT undefined: load ours before touching segments. */
    lgdt gdt_desc
    ljmp $SEL_CODE32, $1f
1:  mov $SEL_DATA32, %ax
    mov %ax, %ds
    mov %ax, %es
    mov %ax, %fs
    mov %ax, %gs
    mov %ax, %ss
    call serial_init
    cmpl $MB_BOOT_MAGIC, mb_magic
    je 2f
    PUTS "bad multiboot magic "
    mov mb_magic, %eax
    call puthex32
    call newline
    movl $0, mb_info
    mov $EXIT_BADBOOT, %eax
    jmp debug_exit
2:  call main
    /* fall through with the exit value in %eax */

/* debug_exit(%eax = value): never returns. */
    .globl debug_exit
debug_exit:
    mov $DEBUG_EXIT_PORT, %dx
    out %eax, %dx
    /* No isa-debug-exit device: say so and stop. */
    PUTS "debug-exit ignored, halting\n"
3:  cli
    hlt
    jmp 3b

/* ------------------------------------------------------------------ serial */
    .globl serial_init
serial_init:
    push %eax
    push %edx
    mov $COM1+1, %dx            /* IER: no interrupts */
    xor %al, %al
    out %al, %dx
    mov $COM1+3, %dx            /* LCR: DLAB */
    mov $0x80, %al
    out %al, %dx
    mov $COM1+0, %dx            /* divisor 1: 115200 baud */
    mov $1, %al
    out %al, %dx
    mov $COM1+1, %dx
    xor %al, %al
    out %al, %dx
    mov $COM1+3, %dx            /* 8N1 */
    mov $0x03, %al
    out %al, %dx
    mov $COM1+2, %dx            /* FCR: enable FIFOs (no clear: keep pending input) */
    mov $0x01, %al
    out %al, %dx
    mov $COM1+4, %dx            /* MCR: DTR | RTS */
    mov $0x03, %al
    out %al, %dx
    pop %edx
    pop %eax
    ret

/* putc(%al) */
    .globl putc
putc:
    push %edx
    push %eax
1:  mov $COM1+5, %dx            /* wait for THR empty */
    in %dx, %al
    test $0x20, %al
    jz 1b
    pop %eax
    mov $COM1, %dx
    out %al, %dx
    pop %edx
    ret

/* puts(%esi = NUL-terminated string) */
    .globl puts
puts:
    push %esi
    push %eax
1:  lodsb
    test %al, %al
    jz 2f
    call putc
    jmp 1b
2:  pop %eax
    pop %esi
    ret

/* putsn(%esi = string, %edx = max length): stops at NUL or the limit. */
    .globl putsn
putsn:
    push %esi
    push %edx
    push %eax
1:  test %edx, %edx
    jz 2f
    lodsb
    test %al, %al
    jz 2f
    call putc
    dec %edx
    jmp 1b
2:  pop %eax
    pop %edx
    pop %esi
    ret

    .globl newline
newline:
    push %eax
    mov $'\n', %al
    call putc
    pop %eax
    ret

    .globl space
space:
    push %eax
    mov $' ', %al
    call putc
    pop %eax
    ret

/* puthex_n(%eax = value, %edx = digit count 1..8): fixed width, no prefix. */
    .globl puthex_n
puthex_n:
    push %ecx
    push %edx
    push %eax
    mov %edx, %ecx
    shl $2, %ecx                /* bits to skip from the top: 32 - 4*n */
    neg %ecx
    add $32, %ecx
    rol %cl, %eax
1:  rol $4, %eax
    push %eax
    and $0xf, %eax
    mov hexdigits(%eax), %al
    call putc
    pop %eax
    dec %edx
    jnz 1b
    pop %eax
    pop %edx
    pop %ecx
    ret

/* puthex32(%eax): "0x" and 8 hex digits. */
    .globl puthex32
puthex32:
    push %edx
    push %eax
    mov $'0', %al
    call putc
    mov $'x', %al
    call putc
    pop %eax
    mov $8, %edx
    call puthex_n
    pop %edx
    ret

/* putdec(%eax): unsigned decimal. */
    .globl putdec
putdec:
    push %eax
    push %ecx
    push %edx
    push %ebx
    mov $10, %ebx
    xor %ecx, %ecx
1:  xor %edx, %edx
    div %ebx
    push %edx
    inc %ecx
    test %eax, %eax
    jnz 1b
2:  pop %eax
    add $'0', %al
    call putc
    loop 2b
    pop %ebx
    pop %edx
    pop %ecx
    pop %eax
    ret

/* ------------------------------------------------------------------ command line */
/* cmdline_ptr -> %eax = the multiboot command line, or 0 if none. */
    .globl cmdline_ptr
cmdline_ptr:
    mov mb_info, %eax
    test %eax, %eax
    jz 1f
    testl $4, MBI_FLAGS(%eax)
    jz 2f
    mov MBI_CMDLINE(%eax), %eax
    ret
2:  xor %eax, %eax
1:  ret

/* cmdline_find(%esi = key, NUL-terminated, without '=') -> %eax = pointer to the
 * value after "key=" in a space-separated token of the command line, or 0. */
    .globl cmdline_find
cmdline_find:
    push %ebx
    push %ecx
    push %edx
    push %edi
    call cmdline_ptr
    test %eax, %eax
    jz 9f
    mov %eax, %edi              /* %edi walks the command line */
    mov $1, %ebx                /* at a token start? */
1:  movb (%edi), %al
    test %al, %al
    jz 8f
    test %ebx, %ebx
    jz 5f
    /* compare key at %edi */
    xor %ecx, %ecx
2:  movb (%esi,%ecx), %dl
    test %dl, %dl
    jz 3f
    cmpb (%edi,%ecx), %dl
    jne 5f
    inc %ecx
    jmp 2b
3:  cmpb $'=', (%edi,%ecx)
    jne 5f
    lea 1(%edi,%ecx), %eax
    jmp 9f
5:  xor %ebx, %ebx
    cmpb $' ', (%edi)
    jne 6f
    mov $1, %ebx
6:  inc %edi
    jmp 1b
8:  xor %eax, %eax
9:  pop %edi
    pop %edx
    pop %ecx
    pop %ebx
    ret

/* parse_uint(%eax = string) -> %eax: decimal or 0x-hex, optional K/M/G suffix,
 * stops at the first other character. Overflow wraps (guest input is ours). */
    .globl parse_uint
parse_uint:
    push %ebx
    push %ecx
    push %edx
    push %esi
    mov %eax, %esi
    xor %eax, %eax              /* accumulator */
    mov $10, %ebx
    cmpb $'0', (%esi)
    jne 1f
    movb 1(%esi), %cl
    or $0x20, %cl
    cmp $'x', %cl
    jne 1f
    mov $16, %ebx
    add $2, %esi
1:  movzbl (%esi), %ecx
    sub $'0', %ecx
    cmp $9, %ecx
    jbe 2f
    cmp $16, %ebx
    jne 3f
    movzbl (%esi), %ecx
    or $0x20, %ecx
    sub $'a', %ecx
    cmp $5, %ecx
    ja 3f
    add $10, %ecx
2:  mul %ebx                    /* clobbers %edx */
    add %ecx, %eax
    inc %esi
    jmp 1b
3:  movzbl (%esi), %ecx
    or $0x20, %ecx
    cmp $'k', %ecx
    jne 4f
    shl $10, %eax
4:  cmp $'m', %ecx
    jne 5f
    shl $20, %eax
5:  cmp $'g', %ecx
    jne 6f
    shl $30, %eax
6:  pop %esi
    pop %edx
    pop %ecx
    pop %ebx
    ret

/* cmdline_uint(%esi = key, %eax = default) -> %eax */
    .globl cmdline_uint
cmdline_uint:
    push %edx
    mov %eax, %edx
    call cmdline_find
    test %eax, %eax
    jz 1f
    call parse_uint
    pop %edx
    ret
1:  mov %edx, %eax
    pop %edx
    ret

/* ram_end -> %eax: end of the RAM that starts at 1 MiB (1 MiB + mem_upper KiB),
 * saturated just below 4 GiB; 0 when the loader gave no memory information. */
    .globl ram_end
ram_end:
    mov mb_info, %eax
    test %eax, %eax
    jz 2f
    testl $1, MBI_FLAGS(%eax)
    jz 1f
    mov MBI_MEM_UPPER(%eax), %eax
    cmp $(0x100000000 - 0x100000) >> 10, %eax
    jb 3f
    mov $0xfffff000, %eax
    ret
3:  shl $10, %eax
    add $0x100000, %eax
    ret
1:  xor %eax, %eax
2:  ret

/* ------------------------------------------------------------------ spinlock */
/* spin_lock(%eax = lock address) / spin_unlock(%eax) */
    .globl spin_lock
spin_lock:
    push %edx
1:  mov $1, %edx
    xchg %edx, (%eax)
    test %edx, %edx
    jz 3f
2:  pause
    cmpl $0, (%eax)
    jne 2b
    jmp 1b
3:  pop %edx
    ret

    .globl spin_unlock
spin_unlock:
    movl $0, (%eax)
    ret

/* ------------------------------------------------------------------ 32-bit IDT */
/* idt_init: every vector gets a handler that reports it and exits EXIT_EXCEPTION. */
    .globl idt_init
idt_init:
    push %eax
    push %edx
    xor %eax, %eax
1:  cmp $32, %eax
    jae 2f
    mov exc_stub_table(,%eax,4), %edx
    jmp 3f
2:  mov $unexpected_irq, %edx
3:  call idt_set
    inc %eax
    cmp $256, %eax
    jb 1b
    lidt idt_desc
    pop %edx
    pop %eax
    ret

/* idt_set(%eax = vector, %edx = handler): 32-bit interrupt gate, DPL 0. */
    .globl idt_set
idt_set:
    push %ecx
    lea idt(,%eax,8), %ecx
    movw %dx, (%ecx)
    movw $SEL_CODE32, 2(%ecx)
    movw $0x8e00, 4(%ecx)
    push %edx
    shr $16, %edx
    movw %dx, 6(%ecx)
    pop %edx
    pop %ecx
    ret

    .macro EXC_STUB n
exc_stub_\n:
    push $\n
    jmp exc_common
    .endm
    .irp n, 0,1,2,3,4,5,6,7,8,9,10,11,12,13,14,15,16,17,18,19,20,21,22,23,24,25,26,27,28,29,30,31
    EXC_STUB \n
    .endr

exc_common:
    PUTS "\nexception "
    pop %eax
    call putdec
    PUTS " at "
    /* the frame may start with an error code; print the next two words */
    mov 4(%esp), %edx
    mov (%esp), %eax
    call puthex32
    call space
    mov %edx, %eax
    call puthex32
    call newline
    mov $EXIT_EXCEPTION, %eax
    jmp debug_exit

unexpected_irq:
    PUTS "\nunexpected interrupt\n"
    mov $EXIT_EXCEPTION, %eax
    jmp debug_exit

/* pic_init(%al = master mask, %ah = slave mask): remap the 8259s to 0x20/0x28. */
    .globl pic_init
pic_init:
    push %edx
    push %eax
    mov $0x11, %al              /* ICW1: edge, cascade, ICW4 */
    out %al, $0x20
    out %al, $0xa0
    mov $0x20, %al              /* ICW2: vector bases */
    out %al, $0x21
    mov $0x28, %al
    out %al, $0xa1
    mov $0x04, %al              /* ICW3: slave on IR2 */
    out %al, $0x21
    mov $0x02, %al
    out %al, $0xa1
    mov $0x01, %al              /* ICW4: 8086 mode */
    out %al, $0x21
    out %al, $0xa1
    pop %eax
    out %al, $0x21
    xchg %al, %ah
    out %al, $0xa1
    xchg %al, %ah
    pop %edx
    ret

/* ------------------------------------------------------------------ data */
    .section .rodata
hexdigits:
    .ascii "0123456789abcdef"
    .p2align 2
exc_stub_table:
    .irp n, 0,1,2,3,4,5,6,7,8,9,10,11,12,13,14,15,16,17,18,19,20,21,22,23,24,25,26,27,28,29,30,31
    .long exc_stub_\n
    .endr

    .data
    .p2align 3
    .globl gdt
gdt:
    .quad 0
    .quad 0x00cf9a000000ffff        /* 0x08: code32, flat */
    .quad 0x00cf92000000ffff        /* 0x10: data, flat */
    .quad 0x00af9a000000ffff        /* 0x18: code64 */
gdt_end:
    .globl gdt_limit
    .set gdt_limit, gdt_end - gdt - 1
    .p2align 2
    .word 0
    .globl gdt_desc
gdt_desc:
    .word gdt_end - gdt - 1
    .long gdt
    .word 0
idt_desc:
    .word 256 * 8 - 1
    .long idt

    .p2align 2
    .globl mb_magic, mb_info
mb_magic: .long 0
mb_info:  .long 0

    .bss
    .p2align 12
    .globl idt
idt:
    .skip 256 * 8
    .p2align 4
stack_bottom:
    .skip 16384
    .globl stack_top
stack_top:

    .section .note.GNU-stack, "", @progbits
