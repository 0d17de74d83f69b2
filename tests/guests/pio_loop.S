/* pio_loop: a tight loop of port I/O, for measuring the cost of one exit.
 * Command line: n=N iterations (default 100000), mode=0 writes 0x00 to port 0x80
 * (the POST/delay port), mode=1 reads COM1's line status register (0x3fd),
 * mode=2 writes to COM1's scratch register (0x3ff). Prints "pio_loop: mode <m> n <n>"
 * first and "pio_loop done" last, then exits EXIT_PASS. */
#include "guest.h"

    .text
    .globl main
main:
    push %ebx
    push %esi
    CMDLINE_UINT "n", 100000
    mov %eax, %ebx
    CMDLINE_UINT "mode", 0
    mov %eax, %esi
    PUTS "pio_loop: mode "
    mov %esi, %eax
    call putdec
    PUTS " n "
    mov %ebx, %eax
    call putdec
    call newline
    mov %ebx, %ecx
    test %ecx, %ecx
    jz 9f
    cmp $1, %esi
    je 2f
    cmp $2, %esi
    je 3f
    xor %eax, %eax
1:  out %al, $0x80
    dec %ecx
    jnz 1b
    jmp 9f
2:  mov $0x3fd, %dx
4:  in %dx, %al
    dec %ecx
    jnz 4b
    jmp 9f
3:  mov $0x3ff, %dx
5:  out %al, %dx
    dec %ecx
    jnz 5b
9:  PUTS "pio_loop done\n"
    mov $EXIT_PASS, %eax
    pop %esi
    pop %ebx
    ret
