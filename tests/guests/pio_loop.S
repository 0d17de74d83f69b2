/* pio_loop: a tight loop of port I/O, for measuring the cost of one exit.
 * Command line: n=N iterations (default 100000), mode=0 writes 0x00 to port 0x80
 * (the POST/delay port), mode=1 reads COM1's line status register (0x3fd),
 * mode=2 writes to COM1's scratch register (0x3ff), mode=3 reads the PCI IDs of 00:00.0
 * and 00:01.0 through CONFIG_ADDRESS/CONFIG_DATA (0xcf8/0xcfc) in turn and prints the
 * 32-bit sum of all it read ("pio_loop sum 0x..."). Prints "pio_loop: mode <m> n <n>"
 * first and "pio_loop done" last, then exits EXIT_PASS. */
#include "guest.h"

    .text
    .globl main
main:
    push %ebx
    push %esi
    push %edi
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
    cmp $3, %esi
    je 6f
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
    jmp 9f
6:  xor %edi, %edi              /* the sum */
7:  mov $0x80000000, %eax       /* 00:00.0, register 0 */
    mov $0xcf8, %dx
    out %eax, %dx
    mov $0xcfc, %dx
    in %dx, %eax
    add %eax, %edi
    mov $0x80000800, %eax       /* 00:01.0, register 0 */
    mov $0xcf8, %dx
    out %eax, %dx
    mov $0xcfc, %dx
    in %dx, %eax
    add %eax, %edi
    dec %ecx
    jnz 7b
    PUTS "pio_loop sum "
    mov %edi, %eax
    call puthex32
    call newline
9:  PUTS "pio_loop done\n"
    mov $EXIT_PASS, %eax
    pop %edi
    pop %esi
    pop %ebx
    ret
