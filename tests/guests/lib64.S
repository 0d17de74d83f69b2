/* Long-mode (64-bit) runtime for the guests that take interrupts: the switch from
 * 32-bit protected mode (identity map of the first 4 GiB with 2 MiB pages), and
 * 64-bit versions of the COM1 printers, debug exit and IDT helpers.
 *
 * Why: the host's PVM KVM cannot emulate a 32-bit protected-mode iret at CPL0 but
 * does run iretq, so interrupt-driven guests can run there from long mode.
 * Same convention as lib.S: arguments in %rax/%rdx/%rsi, result in %rax, all other
 * registers preserved.
 */
#include "guest.h"

    .text
    .code32
/* enter_long_mode(%eax = 64-bit entry point): never returns. Interrupts stay off;
 * the entry runs on the current stack with flat 64-bit code and data segments. */
    .globl enter_long_mode
enter_long_mode:
    cli
    mov %eax, lm_entry
    /* PML4[0] -> PDPT; PDPT[0..3] -> four page directories of 2 MiB pages. */
    mov $pdpt, %eax
    or $3, %eax
    mov %eax, pml4
    movl $0, pml4 + 4
    xor %ecx, %ecx
1:  mov %ecx, %eax
    shl $12, %eax
    add $pds, %eax
    or $3, %eax
    mov %eax, pdpt(,%ecx,8)
    movl $0, pdpt + 4(,%ecx,8)
    inc %ecx
    cmp $4, %ecx
    jb 1b
    xor %ecx, %ecx
2:  mov %ecx, %eax
    shl $21, %eax
    or $0x83, %eax              /* present, writable, 2 MiB */
    cmp $(0xc0000000 >> 21), %ecx
    jb 3f
    or $0x18, %eax              /* PCD | PWT above 3 GiB: MMIO */
3:  mov %eax, pds(,%ecx,8)
    movl $0, pds + 4(,%ecx,8)
    inc %ecx
    cmp $2048, %ecx
    jb 2b
    /* clear the rest of the PML4/PDPT: .bss is not assumed zero */
    mov $1, %ecx
4:  movl $0, pml4(,%ecx,8)
    movl $0, pml4 + 4(,%ecx,8)
    cmp $4, %ecx
    jb 5f
    movl $0, pdpt(,%ecx,8)
    movl $0, pdpt + 4(,%ecx,8)
5:  inc %ecx
    cmp $512, %ecx
    jb 4b

    mov %cr4, %eax
    or $0x20, %eax              /* PAE */
    mov %eax, %cr4
    mov $pml4, %eax
    mov %eax, %cr3
    mov $0xc0000080, %ecx       /* EFER.LME */
    rdmsr
    or $0x100, %eax
    wrmsr
    mov %cr0, %eax
    or $0x80000000, %eax
    mov %eax, %cr0
    ljmp $SEL_CODE64, $6f
    .code64
6:  mov $SEL_DATA32, %ax
    mov %ax, %ds
    mov %ax, %es
    mov %ax, %ss
    mov %esp, %esp              /* zero-extend */
    and $-16, %rsp
    mov lm_entry(%rip), %eax
    jmp *%rax

/* ------------------------------------------------------------------ output */
    .globl putc64
putc64:
    push %rdx
    push %rax
1:  mov $COM1+5, %dx
    in %dx, %al
    test $0x20, %al
    jz 1b
    pop %rax
    mov $COM1, %dx
    out %al, %dx
    pop %rdx
    ret

    .globl puts64
puts64:
    push %rsi
    push %rax
1:  lodsb
    test %al, %al
    jz 2f
    call putc64
    jmp 1b
2:  pop %rax
    pop %rsi
    ret

    .globl newline64
newline64:
    push %rax
    mov $'\n', %al
    call putc64
    pop %rax
    ret

/* putdec64(%eax): unsigned 32-bit decimal. */
    .globl putdec64
putdec64:
    push %rax
    push %rcx
    push %rdx
    push %rbx
    mov %eax, %eax
    mov $10, %ebx
    xor %ecx, %ecx
1:  xor %edx, %edx
    div %ebx
    push %rdx
    inc %ecx
    test %eax, %eax
    jnz 1b
2:  pop %rax
    add $'0', %al
    call putc64
    dec %ecx
    jnz 2b
    pop %rbx
    pop %rdx
    pop %rcx
    pop %rax
    ret

/* puthex64(%rax): "0x" and 16 hex digits. */
    .globl puthex64
puthex64:
    push %rax
    push %rcx
    push %rdx
    mov %rax, %rdx
    mov $'0', %al
    call putc64
    mov $'x', %al
    call putc64
    mov $16, %ecx
1:  rol $4, %rdx
    mov %edx, %eax
    and $0xf, %eax
    push %rsi
    lea hexdigits64(%rip), %rsi
    mov (%rsi,%rax), %al
    pop %rsi
    call putc64
    dec %ecx
    jnz 1b
    pop %rdx
    pop %rcx
    pop %rax
    ret

/* debug_exit64(%eax = value): never returns. */
    .globl debug_exit64
debug_exit64:
    mov $DEBUG_EXIT_PORT, %dx
    out %eax, %dx
    PUTS64 "debug-exit ignored, halting\n"
1:  cli
    hlt
    jmp 1b

/* ------------------------------------------------------------------ 64-bit IDT */
/* idt64_init: exceptions 0-31 report and exit EXIT_EXCEPTION, others likewise. */
    .globl idt64_init
idt64_init:
    push %rax
    push %rdx
    xor %eax, %eax
1:  cmp $32, %eax
    jae 2f
    lea exc64_stub_table(%rip), %rdx
    mov (%rdx,%rax,4), %edx
    jmp 3f
2:  lea unexpected_irq64(%rip), %rdx
3:  call idt64_set
    inc %eax
    cmp $256, %eax
    jb 1b
    lidt idt64_desc(%rip)
    pop %rdx
    pop %rax
    ret

/* idt64_set(%eax = vector, %rdx = handler): 64-bit interrupt gate, DPL 0, IST 0. */
    .globl idt64_set
idt64_set:
    push %rcx
    push %rdx
    mov %eax, %ecx
    shl $4, %ecx
    add $idt64, %ecx            /* entry address (below 4 GiB) */
    movw %dx, (%rcx)
    movw $SEL_CODE64, 2(%rcx)
    movw $0x8e00, 4(%rcx)
    shr $16, %rdx
    movw %dx, 6(%rcx)
    shr $16, %rdx
    movl %edx, 8(%rcx)
    movl $0, 12(%rcx)
    pop %rdx
    pop %rcx
    ret

    .macro EXC64_STUB n
exc64_stub_\n:
    push $\n
    jmp exc64_common
    .endm
    .irp n, 0,1,2,3,4,5,6,7,8,9,10,11,12,13,14,15,16,17,18,19,20,21,22,23,24,25,26,27,28,29,30,31
    EXC64_STUB \n
    .endr

exc64_common:
    PUTS64 "\nexception "
    pop %rax
    call putdec64
    PUTS64 " frame "
    mov (%rsp), %rax
    call puthex64
    mov $' ', %al
    call putc64
    mov 8(%rsp), %rax
    call puthex64
    call newline64
    mov $EXIT_EXCEPTION, %eax
    jmp debug_exit64

unexpected_irq64:
    PUTS64 "\nunexpected interrupt\n"
    mov $EXIT_EXCEPTION, %eax
    jmp debug_exit64

    .section .rodata
hexdigits64:
    .ascii "0123456789abcdef"
    .p2align 2
exc64_stub_table:               /* 32-bit entries: everything lives below 4 GiB */
    .irp n, 0,1,2,3,4,5,6,7,8,9,10,11,12,13,14,15,16,17,18,19,20,21,22,23,24,25,26,27,28,29,30,31
    .long exc64_stub_\n
    .endr

    .data
    .p2align 3
lm_entry: .quad 0
    .word 0, 0, 0
idt64_desc:
    .word 256 * 16 - 1
    .long idt64, 0

    .bss
    .p2align 12
pml4:   .skip 4096
pdpt:   .skip 4096
pds:    .skip 4 * 4096
idt64:  .skip 256 * 16

    .section .note.GNU-stack, "", @progbits
