/* timer: PIT channel 0 -> 8259 IRQ0 (remapped to vector 0x20). Counts ticks with
 * sti; hlt and prints every 10th tick, then exits EXIT_PASS.
 * By default the ticks are taken in long mode (iretq), which the host PVM KVM runs;
 * lm=0 stays in 32-bit protected mode, whose iret needs a complete KVM.
 * Command line: ticks=N (default 20), hz=N (default 100, clamped to 19..1000), lm=0|1. */
#include "guest.h"

#define PIT_HZ 1193182

    .text
    .code32
    .globl main
main:
    push %ebx
    CMDLINE_UINT "ticks", 20
    mov %eax, target
    CMDLINE_UINT "lm", 1
    mov %eax, long_mode
    CMDLINE_UINT "hz", 100
    cmp $19, %eax               /* the divisor must fit 16 bits */
    jae 1f
    mov $19, %eax
1:  cmp $1000, %eax
    jbe 2f
    mov $1000, %eax
2:  mov %eax, %ebx
    PUTS "timer: hz="
    call putdec
    PUTS " ticks="
    mov target, %eax
    call putdec
    PUTS " mode="
    cmpl $0, long_mode
    je 3f
    PUTS "long\n"
    jmp 4f
3:  PUTS "32\n"
4:  mov $0xfffe, %ax            /* only IRQ0 unmasked */
    call pic_init
    mov $PIT_HZ, %eax           /* divisor = PIT_HZ / hz */
    xor %edx, %edx
    div %ebx
    mov %eax, %ebx
    mov $0x34, %al              /* channel 0, lobyte/hibyte, mode 2 (rate generator) */
    out %al, $0x43
    mov %bl, %al
    out %al, $0x40
    mov %bh, %al
    out %al, $0x40

    cmpl $0, long_mode
    je 5f
    mov $main64, %eax
    jmp enter_long_mode

5:  call idt_init
    mov $0x20, %eax
    mov $irq0_handler, %edx
    call idt_set
wait32:
    sti
    hlt
    cli
6:  mov reported, %eax          /* print each multiple of 10 passed */
    add $10, %eax
    cmp ticks, %eax
    ja 7f
    cmp target, %eax
    ja 7f
    mov %eax, reported
    PUTS "tick "
    call putdec
    call newline
    jmp 6b
7:  mov ticks, %eax
    cmp target, %eax
    jb wait32
    PUTS "timer done\n"
    mov $EXIT_PASS, %eax
    pop %ebx
    ret

irq0_handler:
    push %eax
    incl ticks
    mov $0x20, %al              /* EOI */
    out %al, $0x20
    pop %eax
    iret

    .code64
main64:
    call idt64_init
    mov $0x20, %eax
    mov $irq0_handler64, %edx
    call idt64_set
wait64:
    sti
    hlt
    cli
1:  mov reported(%rip), %eax
    add $10, %eax
    cmp ticks(%rip), %eax
    ja 2f
    cmp target(%rip), %eax
    ja 2f
    mov %eax, reported(%rip)
    PUTS64 "tick "
    call putdec64
    call newline64
    jmp 1b
2:  mov ticks(%rip), %eax
    cmp target(%rip), %eax
    jb wait64
    PUTS64 "timer done\n"
    mov $EXIT_PASS, %eax
    jmp debug_exit64

irq0_handler64:
    push %rax
    incl ticks(%rip)
    mov $0x20, %al
    out %al, $0x20
    pop %rax
    iretq

    .data
    .p2align 2
ticks:     .long 0
target:    .long 0
reported:  .long 0
long_mode: .long 0

    .section .note.GNU-stack, "", @progbits
