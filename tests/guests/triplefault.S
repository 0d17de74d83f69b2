/* triplefault: prints a line, then loads an empty IDT and executes ud2. The #UD cannot
 * be delivered, nor the #DF after it: the CPU shuts down (triple fault), which a PC
 * turns into a reset. Prints "triplefault: boot <n>" where n counts boots in CMOS byte
 * 0x40 (CMOS survives a reset), so a rebooting VM prints increasing numbers. */
#include "guest.h"

    .text
    .globl main
main:
    mov $0x40, %al
    out %al, $0x70
    in $0x71, %al
    inc %al
    mov %al, %cl
    mov $0x40, %al
    out %al, $0x70
    mov %cl, %al
    out %al, $0x71
    PUTS "triplefault: boot "
    movzbl %cl, %eax
    call putdec
    call newline
    lidt empty_idt
    ud2
1:  hlt
    jmp 1b

    .data
    .p2align 2
empty_idt:
    .word 0
    .long 0
